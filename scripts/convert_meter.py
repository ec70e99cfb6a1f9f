#!/usr/bin/env python3
"""Converts a METER checkpoint (PyTorch Lightning `.ckpt`) into a smarttrim
model directory: `config.json` (smarttrim's config schema, kind `meter`) and
`model.safetensors` (smarttrim's tensor names).

    python3 scripts/convert_meter.py meter_clip16_288_roberta_vqa.ckpt \\
        --image-size 576 --out models/meter-vqa
    smarttrim info --model models/meter-vqa
    smarttrim init-weights --model models/meter-vqa --out models/meter-vqa/pruners.safetensors
    smarttrim run --model models/meter-vqa --pruners models/meter-vqa/pruners.safetensors \\
        --input IN.safetensors --output OUT.safetensors

Needs torch (and numpy); nothing else of METER. The name map is documented
in docs/FORMATS.md ("METER checkpoints"). In short:

- `vit_model.visual.*` (OpenAI CLIP names, METER builds 11 of CLIP's 12
  blocks) -> stream `image_encoder`: `conv1` (no bias) -> patch projection,
  `class_embedding`, `positional_embedding` (resized bicubically to
  `--image-size` exactly as METER's `adapt_position_encoding` does), `ln_pre`,
  `transformer.resblocks.N.{attn.in_proj_weight (Q;K;V), attn.out_proj, ln_1,
  mlp.c_fc, mlp.c_proj, ln_2}`, `ln_post` (applied to every row);
- `text_transformer.*` (RoBERTa names) -> stream `text_encoder`;
- `cross_modal_{text,image}_transform` + rows 0 / 1 of
  `token_type_embeddings` -> the input transforms and modality-type vectors
  of the fusion streams `text` / `image`;
- `cross_modal_{text,image}_layers.N.{attention, crossattention, intermediate,
  output}` -> the fusion layers; `cross_modal_{text,image}_pooler` -> poolers;
- `vqa_classifier.{0,1,3}` or `itm_score.fc` -> the task head (`--head`).

Knowingly ignored: CLIP's text-tower leftovers (`vit_model.positional_embedding`,
`vit_model.ln_final.*`, `vit_model.token_embedding.*`, `vit_model.transformer.*`,
`vit_model.text_projection`, `vit_model.logit_scale`, `vit_model.visual.proj`),
`text_transformer.pooler.*`, `*.position_ids`, `mlm_score.*`, `rank_output.*`,
the task heads not selected, `nlvr2_classifier.*`, `snli_classifier.*`. Any
other name is an error listing it.

Head counts are not stored in a state dict: CLIP's is width // 64 (as CLIP
and METER build it), RoBERTa-base's and METER's fusion's 12 for 768; the
defaults are hidden // 64, override with `--text-heads`, `--vision-heads`,
`--fusion-heads`.
"""

import argparse
import json
import math
import os
import re
import sys
import tempfile

import numpy as np
import torch


def adapt_position_encoding(pos, patch_size, after):
    """METER's `adapt_position_encoding` (meter/modules/clip_model.py) on one
    `[N, D]` table: the patch grid resized bicubically (align_corners False),
    the CLS row kept."""
    origin = pos.unsqueeze(0)
    grid_before = int(np.sqrt(origin.shape[1] - 1))
    grid_after = after // patch_size
    if after % patch_size != 0:
        raise SystemExit(f"--image-size {after} is not a multiple of the patch size {patch_size}")
    if grid_before == grid_after:
        return pos
    dim = origin.shape[-1]
    pe = origin[0, 1:, :].reshape((grid_before, grid_before, dim))
    pe = torch.nn.functional.interpolate(
        pe.permute((2, 0, 1)).unsqueeze(0), size=(grid_after, grid_after), mode="bicubic"
    )
    pe = pe.squeeze(0).permute((1, 2, 0)).reshape((-1, dim))
    pe = torch.cat((origin[0, 0:1, :], pe), dim=0)
    assert pe.shape == (grid_after * grid_after + 1, dim)
    return pe


IGNORED = [
    r"^vit_model\.positional_embedding$",
    r"^vit_model\.ln_final\.",
    r"^vit_model\.token_embedding\.",
    r"^vit_model\.transformer\.",
    r"^vit_model\.text_projection$",
    r"^vit_model\.logit_scale$",
    r"^vit_model\.visual\.proj$",
    r"^text_transformer\.pooler\.",
    r"position_ids$",
    r"^mlm_score\.",
    r"^rank_output\.",
    r"^nlvr2_classifier\.",
    r"^snli_classifier\.",
]

BERT_LAYER = {
    "attention.output.dense": "self_attn.out",
    "attention.output.LayerNorm": "self_attn.ln",
    "crossattention.self.query": "cross_attn.q",
    "crossattention.output.dense": "cross_attn.out",
    "crossattention.output.LayerNorm": "cross_attn.ln",
    "intermediate.dense": "ffn.fc1",
    "output.dense": "ffn.fc2",
    "output.LayerNorm": "ffn.ln",
}
CLIP_BLOCK = {
    "attn.out_proj": "self_attn.out",
    "ln_1": "self_attn.ln",
    "ln_2": "ffn.ln",
    "mlp.c_fc": "ffn.fc1",
    "mlp.c_proj": "ffn.fc2",
}


def load_state_dict(path):
    # A Lightning checkpoint is a pickle: only convert files you trust.
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict):
        raise SystemExit(f"{path}: no state_dict found")
    return {k: v for k, v in sd.items() if torch.is_tensor(v)}


def count_layers(sd, prefix):
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    ids = {int(m.group(1)) for k in sd for m in [pat.match(k)] if m}
    n = len(ids)
    if ids != set(range(n)):
        raise SystemExit(f"layers under `{prefix}` are not numbered 0..{n - 1}: {sorted(ids)}")
    return n


def convert(sd, image_size=None, head="auto", text_heads=None, vision_heads=None,
            fusion_heads=None, text_type="roberta", text_eps=None):
    """Returns (config dict, {our name: tensor}, [ignored names])."""
    out = {}
    used = set()
    errors = []

    def take(name):
        if name not in sd:
            errors.append(f"missing tensor `{name}`")
            return None
        used.add(name)
        return sd[name]

    def put(ours, t):
        if t is not None:
            out[ours] = t

    # ---- CLIP image encoder -------------------------------------------------
    v = "vit_model.visual."
    conv = take(v + "conv1.weight")
    if conv is None:
        raise SystemExit("\n".join(errors))
    d_img, channels, patch, _ = conv.shape
    put("image_encoder.embeddings.patch.weight", conv.reshape(d_img, -1))
    put("image_encoder.embeddings.cls", take(v + "class_embedding"))
    pos = take(v + "positional_embedding")
    grid_before = int(round(math.sqrt(pos.shape[0] - 1)))
    if image_size is None:
        image_size = grid_before * patch
    if grid_before * patch != image_size:
        # Resized in f32 and kept in f32 (rounding the interpolated table back
        # to a 16-bit checkpoint dtype would lose what the resize computed).
        pos = adapt_position_encoding(pos.float(), patch, image_size)
    put("image_encoder.embeddings.position", pos)
    for k in ("weight", "bias"):
        put(f"image_encoder.embeddings.ln.{k}", take(v + f"ln_pre.{k}"))
        put(f"image_encoder.final_ln.{k}", take(v + f"ln_post.{k}"))
    n_img = count_layers(sd, v + "transformer.resblocks.")
    ffn_img = None
    for l in range(n_img):
        p = f"{v}transformer.resblocks.{l}."
        put(f"image_encoder.layers.{l}.self_attn.qkv.weight", take(p + "attn.in_proj_weight"))
        put(f"image_encoder.layers.{l}.self_attn.qkv.bias", take(p + "attn.in_proj_bias"))
        for src, dst in CLIP_BLOCK.items():
            for k in ("weight", "bias"):
                put(f"image_encoder.layers.{l}.{dst}.{k}", take(f"{p}{src}.{k}"))
        ffn_img = sd.get(p + "mlp.c_fc.weight", torch.zeros(0, 0)).shape[0]

    # ---- RoBERTa text encoder ----------------------------------------------
    t = "text_transformer."
    word = take(t + "embeddings.word_embeddings.weight")
    tpos = take(t + "embeddings.position_embeddings.weight")
    ttype = take(t + "embeddings.token_type_embeddings.weight")
    put("text_encoder.embeddings.word", word)
    put("text_encoder.embeddings.position", tpos)
    put("text_encoder.embeddings.token_type", ttype)
    for k in ("weight", "bias"):
        put(f"text_encoder.embeddings.ln.{k}", take(t + f"embeddings.LayerNorm.{k}"))
    n_txt = count_layers(sd, t + "encoder.layer.")
    ffn_txt = None

    def bert_layers(prefix, ours, n, cross):
        ffn = None
        for l in range(n):
            p = f"{prefix}{l}."
            for k in ("weight", "bias"):
                qkv = [take(f"{p}attention.self.{w}.{k}") for w in ("query", "key", "value")]
                if all(x is not None for x in qkv):
                    put(f"{ours}.layers.{l}.self_attn.qkv.{k}", torch.cat(qkv, 0))
                if cross:
                    kv = [take(f"{p}crossattention.self.{w}.{k}") for w in ("key", "value")]
                    if all(x is not None for x in kv):
                        put(f"{ours}.layers.{l}.cross_attn.kv.{k}", torch.cat(kv, 0))
                for src, dst in BERT_LAYER.items():
                    if src.startswith("crossattention") and not cross:
                        continue
                    put(f"{ours}.layers.{l}.{dst}.{k}", take(f"{p}{src}.{k}"))
            ffn = sd.get(p + "intermediate.dense.weight", torch.zeros(0, 0)).shape[0]
        return ffn

    ffn_txt = bert_layers(t + "encoder.layer.", "text_encoder", n_txt, False)

    # ---- fusion ----------------------------------------------------------------
    tt = take("token_type_embeddings.weight")
    n_fus = count_layers(sd, "cross_modal_text_layers.")
    n_fus_i = count_layers(sd, "cross_modal_image_layers.")
    if n_fus != n_fus_i:
        errors.append(f"{n_fus} text fusion layers but {n_fus_i} image fusion layers")
    fusion = {}
    for i, s in enumerate(("text", "image")):
        tw = take(f"cross_modal_{s}_transform.weight")
        put(f"{s}.embeddings.transform.weight", tw)
        put(f"{s}.embeddings.transform.bias", take(f"cross_modal_{s}_transform.bias"))
        if tt is not None:
            put(f"{s}.embeddings.type_vector", tt[i])
        for k in ("weight", "bias"):
            put(f"{s}.pooler.{k}", take(f"cross_modal_{s}_pooler.dense.{k}"))
        ffn = bert_layers(f"cross_modal_{s}_layers.", s, n_fus, True)
        fusion[s] = (tw.shape[0] if tw is not None else 0, tw.shape[1] if tw is not None else 0, ffn)

    # ---- task head -------------------------------------------------------------
    has_vqa = "vqa_classifier.0.weight" in sd
    has_itm = "itm_score.fc.weight" in sd
    if head == "auto":
        head = "vqa" if has_vqa else ("itm" if has_itm else "none")
    head_cfg = None
    if head == "vqa":
        for ours, src in (("fc1", "0"), ("ln", "1"), ("fc2", "3")):
            for k in ("weight", "bias"):
                put(f"head.{ours}.{k}", take(f"vqa_classifier.{src}.{k}"))
        labels = sd["vqa_classifier.3.weight"].shape[0] if has_vqa else 0
        head_cfg = {"type": "vqa", "labels": int(labels), "ln_eps": 1e-5}
    elif head == "itm":
        for k in ("weight", "bias"):
            put(f"head.fc.{k}", take(f"itm_score.fc.{k}"))
        head_cfg = {"type": "itm"}
    elif head != "none":
        raise SystemExit(f"--head {head}: expected auto, vqa, itm or none")
    ignored_heads = []
    if head != "vqa":
        ignored_heads.append(r"^vqa_classifier\.")
    if head != "itm":
        ignored_heads.append(r"^itm_score\.")

    ignored = []
    unknown = []
    for k in sorted(sd):
        if k in used:
            continue
        if any(re.search(p, k) for p in IGNORED + ignored_heads):
            ignored.append(k)
        else:
            unknown.append(k)
    if unknown:
        errors.append("unexpected tensors (neither used nor knowingly ignored): "
                      + ", ".join(f"`{k}`" for k in unknown))
    if errors:
        raise SystemExit("METER conversion failed:\n  " + "\n  ".join(errors))

    d_txt = word.shape[1]
    roberta = text_type == "roberta"
    layers = lambda n: [{} for _ in range(n)]
    config = {
        "kind": {"type": "meter"},
        "streams": [
            {
                "name": "text_encoder", "hidden": int(d_txt),
                "heads": int(text_heads or d_txt // 64), "ffn": int(ffn_txt),
                "ln_eps": text_eps if text_eps is not None else (1e-5 if roberta else 1e-12),
                "embedding": {
                    "type": "bert", "vocab_size": int(word.shape[0]),
                    "max_positions": int(tpos.shape[0]),
                    "type_vocab_size": int(ttype.shape[0]),
                    "position_offset": 2 if roberta else 0,
                },
                "layers": layers(n_txt),
            },
            {
                "name": "image_encoder", "hidden": int(d_img),
                "heads": int(vision_heads or d_img // 64), "ffn": int(ffn_img),
                "ln_eps": 1e-5, "pre_ln": True, "final_ln": True, "activation": "quick_gelu",
                "embedding": {
                    "type": "vit", "image_size": int(image_size), "patch_size": int(patch),
                    "channels": int(channels), "patch_bias": False, "ln": True,
                },
                "layers": layers(n_img),
            },
        ],
    }
    for s in ("text", "image"):
        d, din, ffn = fusion[s]
        config["streams"].append({
            "name": s, "hidden": int(d), "heads": int(fusion_heads or d // 64), "ffn": int(ffn),
            "ln_eps": 1e-12, "pooler": True,
            "embedding": {"type": "transform", "input_hidden": int(din), "type_vector": True},
            "layers": layers(n_fus),
        })
    if head_cfg is not None:
        config["head"] = head_cfg
    return config, out, ignored


def save(out_dir, config, tensors, dtype="keep"):
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    conv = {"keep": None, "f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[dtype]
    ts = {k: (v if conv is None else v.to(conv)).contiguous() for k, v in tensors.items()}
    # Written beside the target, then renamed: a crash leaves no half file.
    for name, write in (
        ("model.safetensors", lambda p: save_file(ts, p, metadata={"format": "pt"})),
        ("config.json", lambda p: open(p, "w").write(json.dumps(config, indent=2) + "\n")),
    ):
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.")
        os.close(fd)
        write(tmp)
        os.replace(tmp, os.path.join(out_dir, name))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ckpt", help="METER .ckpt (a Lightning checkpoint) or a torch state dict")
    ap.add_argument("--out", required=True, help="output directory (config.json, model.safetensors)")
    ap.add_argument("--image-size", type=int, default=None,
                    help="image side in pixels (METER VQA 576, NLVR2/retrieval 288); the position "
                         "table is resized bicubically to it; default: the table's own size")
    ap.add_argument("--head", default="auto", choices=["auto", "vqa", "itm", "none"])
    ap.add_argument("--text-heads", type=int, default=None)
    ap.add_argument("--vision-heads", type=int, default=None)
    ap.add_argument("--fusion-heads", type=int, default=None)
    ap.add_argument("--text-type", default="roberta", choices=["roberta", "bert"],
                    help="METER's text encoder (positions from 2 and eps 1e-5 for RoBERTa)")
    ap.add_argument("--dtype", default="keep", choices=["keep", "f32", "f16", "bf16"])
    a = ap.parse_args(argv)
    sd = load_state_dict(a.ckpt)
    config, tensors, ignored = convert(
        sd, a.image_size, a.head, a.text_heads, a.vision_heads, a.fusion_heads, a.text_type)
    save(a.out, config, tensors, a.dtype)
    print(f"wrote {a.out}/config.json and {a.out}/model.safetensors "
          f"({len(tensors)} tensors; {len(ignored)} knowingly ignored)")


if __name__ == "__main__":
    main()
