#!/usr/bin/env python3
"""Writes the tiny random-weight HuggingFace fixtures under tests/fixtures/hf/
that the Rust tests (tests/hf_fixtures.rs, no torch needed) compare the CPU
reference against, layer by layer.

    python3 -m venv /tmp/fx && /tmp/fx/bin/pip install torch transformers safetensors numpy
    /tmp/fx/bin/python scripts/make_hf_fixtures.py            # writes tests/fixtures/hf/

Not run by CI. Every fixture directory holds

- `config.json`, `model.safetensors`: the model as `save_pretrained` writes it
  (HuggingFace's own names), weights rounded to f16 and stored as f16 to keep
  the files small; the outputs below are computed in f32 *from those rounded
  weights*, so they are exact for what the file holds;
- `inputs.safetensors`: the inputs in `smarttrim run`'s format (per stream
  `S.pixels` f16 `[B, 3, H, W]`, `S.input_ids` i64 and `S.cu_seqlens` i32);
- `expected.safetensors`: HuggingFace's outputs, f32, packed over the batch
  (every instance run on its own, batch 1, no padding): `S.hidden.K`
  (`[rows, D]`; K = 0 the rows entering the first layer, K = l + 1 the rows
  leaving layer l), `S.final` (the stream's final rows), and where the model
  has them `S.pooler` / `S.pooled` `[B, D]` and `logits` `[B, n]`.

Fixtures: `roberta` (RobertaModel), `vit` (ViTModel with its pooler),
`clip_vision` (CLIPVisionModel; `image.final` is `post_layernorm` on every
row, as METER uses it, and `image.pooled` HF's `pooler_output`), `blip`
(BlipForImageTextRetrieval: both encoders and the ITM head), and `meter`: a
random METER state dict under METER's names (a Lightning-style `.ckpt`,
built here, not kept) converted by `scripts/convert_meter.py` with the
position table resized from 32 px to 40 px, its outputs computed by a
transcription of METER's own modules (CLIP's `VisualTransformer` with
`layers - 1` blocks, transformers' RoBERTa, METER's `BertCrossLayer`,
poolers, VQA classifier) in METER's `infer` order. `VERSIONS.json` records the
versions used.
"""

import json
import math
import os
import platform
import sys
import tempfile
from collections import OrderedDict

import numpy as np
import torch
import torch.nn as nn
import transformers
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # no __pycache__ under scripts/
sys.path.insert(0, HERE)
import convert_meter  # noqa: E402

OUT = os.path.join(HERE, "..", "tests", "fixtures", "hf")
B = 2
TEXT_LENS = [7, 5]


def reinit(model, seed):
    """Random weights with some structure (HF's own init is near zero for
    BLIP's vision tower), rounded to f16: LayerNorm gamma 1 + N(0, 0.1) and
    beta N(0, 0.1); embedding tables N(0, 0.5); matrices N(0, 1/fan_in);
    other vectors N(0, 0.1)."""
    g = torch.Generator().manual_seed(seed)
    ln_w, ln_b = set(), set()
    for mod in model.modules():
        if isinstance(mod, nn.LayerNorm):
            ln_w.add(id(mod.weight))
            ln_b.add(id(mod.bias))
    tables = ("word_embeddings", "position_embedding", "token_type_embeddings", "cls_token",
              "class_embedding", "positional_embedding", "mask_token")
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if id(p) in ln_w:
                p.copy_(1.0 + 0.1 * r)
            elif id(p) in ln_b:
                p.copy_(0.1 * r)
            elif any(t in name for t in tables):
                p.copy_(0.5 * r)
            elif p.dim() >= 2:
                p.copy_(r / math.sqrt(p[0].numel()))
            else:
                p.copy_(0.1 * r)
            p.copy_(p.half().float())


def first(out):
    if isinstance(out, (tuple, list)):
        return out[0]
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    return out


class Recorder:
    """Forward hooks collecting module outputs, per instance run."""

    def __init__(self):
        self.runs = []
        self.cur = None
        self.handles = []

    def hook(self, module, key, fn=first):
        def h(_m, _i, out):
            self.cur[key] = fn(out).detach().clone()
        self.handles.append(module.register_forward_hook(h))

    def start(self):
        self.cur = {}
        self.runs.append(self.cur)

    def packed(self, key):
        """[1, n, D] per run -> [sum n, D] (or [1, D] -> [B, D])."""
        return torch.cat([r[key].reshape(-1, r[key].shape[-1]) for r in self.runs], 0)


def images(size, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((B, 3, size, size), generator=g).half().float()


def token_ids(vocab, lo, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(lo, vocab, (n,), generator=g) for n in TEXT_LENS]


def cu_seqlens(lens):
    return torch.tensor(np.concatenate([[0], np.cumsum(lens)]), dtype=torch.int32)


def write(dirname, model=None, inputs=None, expected=None):
    d = os.path.join(OUT, dirname)
    os.makedirs(d, exist_ok=True)
    if model is not None:
        model.half().save_pretrained(d, safe_serialization=True)
        model.float()
    save_file({k: v.contiguous() for k, v in inputs.items()}, os.path.join(d, "inputs.safetensors"))
    save_file({k: v.float().contiguous() for k, v in expected.items()},
              os.path.join(d, "expected.safetensors"))
    print(f"{dirname}: " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in sorted(expected.items())))


def text_inputs(name, ids):
    return {
        f"{name}.input_ids": torch.cat(ids).to(torch.int64),
        f"{name}.cu_seqlens": cu_seqlens([len(i) for i in ids]),
    }


# ---------------------------------------------------------------------------
# RoBERTa


def make_roberta():
    from transformers import RobertaConfig, RobertaModel

    cfg = RobertaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=24, type_vocab_size=1,
                        layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                        hidden_act="gelu")
    m = RobertaModel(cfg).eval()
    reinit(m, 1)
    ids = token_ids(64, 3, 11)
    rec = Recorder()
    rec.hook(m.embeddings, "h0")
    for i, layer in enumerate(m.encoder.layer):
        rec.hook(layer, f"h{i + 1}")
    with torch.no_grad():
        for x in ids:
            rec.start()
            out = m(input_ids=x[None], attention_mask=torch.ones(1, len(x), dtype=torch.long))
            rec.cur["final"] = out.last_hidden_state
    exp = {f"text.hidden.{k}": rec.packed(f"h{k}") for k in range(3)}
    exp["text.final"] = rec.packed("final")
    write("roberta", m, text_inputs("text", ids), exp)


# ---------------------------------------------------------------------------
# ViT


def make_vit():
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, image_size=32, patch_size=8, num_channels=3,
                    layer_norm_eps=1e-12, hidden_act="gelu")
    m = ViTModel(cfg, add_pooling_layer=True).eval()
    reinit(m, 2)
    px = images(32, 12)
    rec = Recorder()
    rec.hook(m.embeddings, "h0")
    layers = m.encoder.layer if hasattr(m, "encoder") else m.layers
    for i, layer in enumerate(layers):
        rec.hook(layer, f"h{i + 1}")
    with torch.no_grad():
        for b in range(B):
            rec.start()
            out = m(pixel_values=px[b:b + 1])
            rec.cur["final"] = out.last_hidden_state
            rec.cur["pooler"] = out.pooler_output
    exp = {f"image.hidden.{k}": rec.packed(f"h{k}") for k in range(3)}
    exp["image.final"] = rec.packed("final")
    exp["image.pooler"] = rec.packed("pooler")
    write("vit", m, {"image.pixels": px.half()}, exp)


# ---------------------------------------------------------------------------
# CLIP vision


def make_clip_vision():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    cfg = CLIPVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, image_size=32, patch_size=8, num_channels=3,
                           layer_norm_eps=1e-5, hidden_act="quick_gelu", projection_dim=16)
    m = CLIPVisionModel(cfg).eval()
    reinit(m, 3)
    px = images(32, 13)
    vm = getattr(m, "vision_model", m)  # transformers 5 flattens the wrapper
    rec = Recorder()
    rec.hook(vm.pre_layrnorm, "h0")
    for i, layer in enumerate(vm.encoder.layers):
        rec.hook(layer, f"h{i + 1}")
    with torch.no_grad():
        for b in range(B):
            rec.start()
            out = m(pixel_values=px[b:b + 1])
            rec.cur["final"] = vm.post_layernorm(out.last_hidden_state)
            rec.cur["pooled"] = out.pooler_output
    exp = {f"image.hidden.{k}": rec.packed(f"h{k}") for k in range(3)}
    exp["image.final"] = rec.packed("final")
    exp["image.pooled"] = rec.packed("pooled")
    write("clip_vision", m, {"image.pixels": px.half()}, exp)


# ---------------------------------------------------------------------------
# BLIP


def make_blip():
    from transformers import BlipConfig, BlipForImageTextRetrieval

    cfg = BlipConfig(
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, image_size=32, patch_size=8,
                           layer_norm_eps=1e-5, hidden_act="gelu"),
        text_config=dict(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=24, layer_norm_eps=1e-12, hidden_act="gelu",
                         pad_token_id=0, bos_token_id=30, sep_token_id=31),
        image_text_hidden_size=16,
    )
    m = BlipForImageTextRetrieval(cfg).eval()
    reinit(m, 4)
    px = images(32, 14)
    ids = token_ids(64, 2, 15)
    rec = Recorder()
    rec.hook(m.vision_model.embeddings, "i0")
    for i, layer in enumerate(m.vision_model.encoder.layers):
        rec.hook(layer, f"i{i + 1}")
    rec.hook(m.vision_model, "ifinal")
    rec.hook(m.text_encoder.embeddings, "t0")
    for i, layer in enumerate(m.text_encoder.encoder.layer):
        rec.hook(layer, f"t{i + 1}")
    rec.hook(m.text_encoder, "tfinal")
    with torch.no_grad():
        for b in range(B):
            rec.start()
            x = ids[b][None]
            out = m(input_ids=x, pixel_values=px[b:b + 1],
                    attention_mask=torch.ones_like(x), use_itm_head=True)
            rec.cur["logits"] = out.itm_score
    exp = {f"image.hidden.{k}": rec.packed(f"i{k}") for k in range(3)}
    exp.update({f"text.hidden.{k}": rec.packed(f"t{k}") for k in range(3)})
    exp["image.final"] = rec.packed("ifinal")
    exp["text.final"] = rec.packed("tfinal")
    exp["logits"] = rec.packed("logits")
    inputs = {"image.pixels": px.half()}
    inputs.update(text_inputs("text", ids))
    write("blip", m, inputs, exp)


# ---------------------------------------------------------------------------
# METER: its modules transcribed from github.com/zdou0830/METER
# (meter/modules/clip_model.py, bert_model.py, heads.py, meter_module.py).


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, d_model, n_head):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, n_head)
        self.ln_1 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(d_model, d_model * 4)),
            ("gelu", QuickGELU()),
            ("c_proj", nn.Linear(d_model * 4, d_model)),
        ]))
        self.ln_2 = nn.LayerNorm(d_model)

    def forward(self, x):
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        x = x + self.mlp(self.ln_2(x))
        return x


class Transformer(nn.Module):
    def __init__(self, width, layers, heads):
        super().__init__()
        # METER: `layers - 1` blocks (11 of CLIP ViT-B/16's 12).
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads) for _ in range(layers - 1)])

    def forward(self, x):
        for block in self.resblocks:
            x = block(x)
        return x


class VisualTransformer(nn.Module):
    def __init__(self, patch_size, width, layers, heads, resolution_after):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width))
        self.positional_embedding = nn.Parameter(torch.randn((resolution_after // patch_size) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)

    def forward(self, x):
        x = self.conv1(x)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        t = self.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
        x = torch.cat([t, x], dim=1)
        x = x + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        x = x.permute(1, 0, 2)
        x = self.transformer(x)
        x = x.permute(1, 0, 2)
        return self.ln_post(x)


class CLIP(nn.Module):
    """The parts of METER's CLIP class that end up in its state dict."""

    def __init__(self, patch_size, width, layers, heads, resolution_after, context_length=8, tw=16):
        super().__init__()
        self.visual = VisualTransformer(patch_size, width, layers, heads, resolution_after)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, tw))
        self.ln_final = nn.LayerNorm(tw)

    def forward(self, image):
        return self.visual(image)


class Cfg:
    def __init__(self, hidden, heads, ffn, eps=1e-12):
        self.hidden_size, self.num_attention_heads, self.intermediate_size = hidden, heads, ffn
        self.layer_norm_eps = eps


class BertSelfAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.h, self.dh = c.num_attention_heads, c.hidden_size // c.num_attention_heads
        self.query = nn.Linear(c.hidden_size, c.hidden_size)
        self.key = nn.Linear(c.hidden_size, c.hidden_size)
        self.value = nn.Linear(c.hidden_size, c.hidden_size)

    def t(self, x):
        return x.view(x.size()[:-1] + (self.h, self.dh)).permute(0, 2, 1, 3)

    def forward(self, hidden_states, encoder_hidden_states=None):
        kv = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = self.t(self.query(hidden_states)), self.t(self.key(kv)), self.t(self.value(kv))
        s = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.dh)
        p = nn.Softmax(dim=-1)(s)
        ctx = torch.matmul(p, v).permute(0, 2, 1, 3).contiguous()
        return ctx.view(ctx.size()[:-2] + (self.h * self.dh,))


class BertSelfOutput(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, h, x):
        return self.LayerNorm(self.dense(h) + x)


class BertAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.self = BertSelfAttention(c)
        self.output = BertSelfOutput(c)

    def forward(self, x, encoder_hidden_states=None):
        return self.output(self.self(x, encoder_hidden_states), x)


class BertIntermediate(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.intermediate_size)

    def forward(self, x):
        return nn.functional.gelu(self.dense(x))  # ACT2FN["gelu"]: the erf form


class BertOutput(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dense = nn.Linear(c.intermediate_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, h, x):
        return self.LayerNorm(self.dense(h) + x)


class BertCrossLayer(nn.Module):
    """METER's co-attention layer: self-attention, cross-attention to the
    other stream, FFN, each post-LN (meter/modules/bert_model.py)."""

    def __init__(self, c):
        super().__init__()
        self.attention = BertAttention(c)
        self.crossattention = BertAttention(c)
        self.intermediate = BertIntermediate(c)
        self.output = BertOutput(c)

    def forward(self, hidden_states, encoder_hidden_states):
        a = self.attention(hidden_states)
        a = self.crossattention(a, encoder_hidden_states)
        return self.output(self.intermediate(a), a)


class Pooler(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.activation = nn.Tanh()

    def forward(self, h):
        return self.activation(self.dense(h[:, 0]))


class ITMHead(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.fc = nn.Linear(hidden, 2)


class MLMHead(nn.Module):
    def __init__(self, hidden, vocab):
        super().__init__()
        self.transform = nn.Linear(hidden, hidden)
        self.bias = nn.Parameter(torch.zeros(vocab))


class METER(nn.Module):
    def __init__(self, resolution, text_cfg, hs=32, vw=32, patch=8, clip_layers=3, fusion_layers=2,
                 vqa_labels=10):
        super().__init__()
        from transformers import RobertaModel

        fc = Cfg(hs, 2, 2 * hs)
        self.cross_modal_text_transform = nn.Linear(text_cfg.hidden_size, hs)
        self.cross_modal_image_transform = nn.Linear(vw, hs)
        self.token_type_embeddings = nn.Embedding(2, hs)
        self.vit_model = CLIP(patch, vw, clip_layers, 2, resolution)
        self.text_transformer = RobertaModel(text_cfg)
        self.cross_modal_image_layers = nn.ModuleList([BertCrossLayer(fc) for _ in range(fusion_layers)])
        self.cross_modal_text_layers = nn.ModuleList([BertCrossLayer(fc) for _ in range(fusion_layers)])
        self.cross_modal_image_pooler = Pooler(hs)
        self.cross_modal_text_pooler = Pooler(hs)
        self.mlm_score = MLMHead(hs, text_cfg.vocab_size)
        self.itm_score = ITMHead(hs * 2)
        self.vqa_classifier = nn.Sequential(
            nn.Linear(hs * 2, hs * 2), nn.LayerNorm(hs * 2), nn.GELU(), nn.Linear(hs * 2, vqa_labels))

    def infer(self, text_ids, img, rec):
        """METER's `infer` (one instance, no padding: masks are all ones)."""
        text_embeds = self.text_transformer.embeddings(input_ids=text_ids)
        rec["text_encoder.hidden.0"] = text_embeds
        for i, layer in enumerate(self.text_transformer.encoder.layer):
            text_embeds = first(layer(text_embeds))
            rec[f"text_encoder.hidden.{i + 1}"] = text_embeds
        rec["text_encoder.final"] = text_embeds
        text_embeds = self.cross_modal_text_transform(text_embeds)
        image_embeds = self.vit_model(img)
        rec["image_encoder.final"] = image_embeds
        image_embeds = self.cross_modal_image_transform(image_embeds)
        text_embeds = text_embeds + self.token_type_embeddings(torch.zeros_like(text_ids))
        image_embeds = image_embeds + self.token_type_embeddings(
            torch.full(image_embeds.shape[:2], 1, dtype=torch.long))
        x, y = text_embeds, image_embeds
        rec["text.hidden.0"], rec["image.hidden.0"] = x, y
        for i, (tl, il) in enumerate(zip(self.cross_modal_text_layers, self.cross_modal_image_layers)):
            x1 = tl(x, y)
            y1 = il(y, x)
            x, y = x1, y1
            rec[f"text.hidden.{i + 1}"], rec[f"image.hidden.{i + 1}"] = x, y
        rec["text.final"], rec["image.final"] = x, y
        ct = self.cross_modal_text_pooler(x)
        ci = self.cross_modal_image_pooler(y)
        rec["text.pooler"], rec["image.pooler"] = ct, ci
        rec["logits"] = self.vqa_classifier(torch.cat([ct, ci], dim=-1))


def make_meter():
    from transformers import RobertaConfig

    text_cfg = RobertaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=24, type_vocab_size=1,
                             layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    before, after, patch = 32, 40, 8
    m = METER(before, text_cfg).eval()
    reinit(m, 5)
    sd = {k: v.detach().clone() for k, v in m.state_dict().items()}
    # The checkpoint as METER's training writes it (Lightning: a pickled state_dict).
    tmp = tempfile.mkdtemp()
    ckpt = os.path.join(tmp, "meter_tiny.ckpt")
    torch.save({"state_dict": {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()},
                "hyper_parameters": {"config": {"image_size": before}}}, ckpt)
    out_dir = os.path.join(OUT, "meter")
    convert_meter.main([ckpt, "--out", out_dir, "--image-size", str(after), "--head", "vqa",
                        "--text-heads", "2", "--vision-heads", "2", "--fusion-heads", "2"])
    # METER's own load path: adapt_position_encoding at load, then the model
    # built for the new resolution.
    sd_meter = dict(sd)
    key = "vit_model.visual.positional_embedding"
    sd_meter[key] = convert_meter.adapt_position_encoding(sd[key], patch, after)
    m2 = METER(after, text_cfg).eval()
    m2.load_state_dict(sd_meter, strict=True)
    px = images(after, 16)
    ids = token_ids(64, 3, 17)
    runs = []
    cur = {}
    vis = m2.vit_model.visual
    hooks = [(vis.ln_pre, "image_encoder.hidden.0")] + [
        (blk, f"image_encoder.hidden.{i + 1}") for i, blk in enumerate(vis.transformer.resblocks)]
    for mod, key in hooks:  # outputs [n, 1, D] (CLIP's LND layout) or [1, n, D]
        mod.register_forward_hook(lambda _m, _i, o, key=key: cur.__setitem__(key, o.detach().clone()))
    with torch.no_grad():
        for b in range(B):
            cur.clear()
            rec = {}
            m2.infer(ids[b][None], px[b:b + 1], rec)
            rec.update(cur)
            runs.append(rec)
    exp = {k: torch.cat([r[k].reshape(-1, r[k].shape[-1]) for r in runs], 0) for k in runs[0]}
    inputs = {"image_encoder.pixels": px.half()}
    inputs.update(text_inputs("text_encoder", ids))
    write("meter", None, inputs, exp)


def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    make_roberta()
    make_vit()
    make_clip_vision()
    make_blip()
    make_meter()
    import safetensors
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
    }
    with open(os.path.join(OUT, "VERSIONS.json"), "w") as f:
        json.dump(versions, f, indent=2)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(dp, fn)) for dp, _, fns in os.walk(OUT) for fn in fns)
    print(f"versions: {versions}; {total / 1024:.0f} KiB under {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
