#!/usr/bin/env python3
"""PyTorch baseline: the *dense* passes of smarttrim's benchmark workloads.

Times the unpruned forward pass of each workload in PyTorch (fp16 on CUDA,
attention through ``torch.nn.functional.scaled_dot_product_attention``), in
eager mode and under ``torch.compile``, so that ``smarttrim bench --torch
FILE`` can set its pruned and dense GPU passes beside a well-known baseline.

Workloads (the shapes of the ``meter`` and ``blip-vit`` presets in
src/spec/config.rs; layer order as src/reference/model.rs):

``meter-vqa``
    METER's co-attention fusion encoder: two streams, text (40 rows) and
    image (577 rows), hidden 768, 12 heads, FFN 3072, LayerNorm eps 1e-12,
    6 ``CrossLayer``s per stream advancing in lockstep (each stream's layer
    ``l`` reads the other stream's rows entering layer ``l``). Post-LN::

        h = LN1(x + SA(x)); h = LN2(h + CA(h, y)); o = LN3(h + FFN(h))

    SA: fused QKV linear (D -> 3D, bias), attention, out linear (bias);
    CA: Q linear (D -> D), KV linear (D_other -> 2D), attention over the
    other stream's rows, out linear (all with bias); FFN: fc1 (D -> F, bias),
    GELU (erf form), fc2 (F -> D, bias). No final LN. Inputs are random rows
    (the fusion encoder has no embedding).

``blip-vit``
    ViT-B/16 at 384 px: patch embedding (a 16x16 stride-16 conv with bias,
    the same GEMM as smarttrim's im2col + linear), CLS row, position
    embeddings for 577 rows, 12 pre-LN ``EncoderLayer``s (eps 1e-6)::

        h = x + SA(LN1 x); o = h + FFN(LN3 h)

    then a final LayerNorm. Input: random pixels ``[B, 3, 384, 384]``.

Attention scale is ``1/sqrt(dh)`` (SDPA's default), no mask, no dropout.
Every sequence of a batch has the same length, so the padded ``[B, N, D]``
tensors here hold exactly the rows of smarttrim's packed layout and the
matrix-product FLOPs are the same. Weights are random (seeded), never zero:
LayerNorm gamma ``1 + 0.1 N(0,1)``, beta ``0.1 N(0,1)``, linear layers
PyTorch's default uniform init (biases included), CLS and position
embeddings ``0.02 N(0,1)``.

Differences that remain (none changes the FLOPs of the layers):

- the patch embedding runs as a cuDNN convolution, not im2col + GEMM, and
  it is inside the timed region: smarttrim's GPU pass (at the time of
  writing) embeds on the host, so if ``smarttrim bench`` times from the
  embedded rows, this figure carries ~0.6 % more FLOPs (2*576*768*768 per
  image against ~110 GFLOP for the 12 layers);
- the QKV projection is one fused ``[3D, D]`` linear as in smarttrim, but
  PyTorch picks its own GEMM kernels (cuBLAS), attention kernel (flash or
  memory-efficient SDPA backend) and LayerNorm/GELU kernels;
- on ``--device cpu`` the default dtype is float32 (fp16 matmuls on CPU are
  slow or missing); that mode exists only to smoke-test this script.

Timing: ``--warmup`` untimed forwards, then ``--iters`` timed ones, each
under ``torch.inference_mode()``, the device synchronised before each so
that a forward's time includes its launch overhead; on CUDA with CUDA events
around each forward, on CPU with ``time.perf_counter``. Reported: median,
p10 and p90 in milliseconds. Eager runs first for every workload and batch,
then ``torch.compile``: a compile that fails (or runs past the remaining
``--budget-seconds``) gives ``dense_ms: null`` and the error in ``note``.
Once the budget is spent, the remaining measurements are skipped (listed
with ``dense_ms: null`` and a note saying so).

Output: a table on stdout, and with ``--json FILE`` a JSON list of objects
``{"workload", "batch", "mode", "dense_ms", "p10_ms", "p90_ms", "device",
"torch_version", "note"}``.

Exit status: 0 when at least one eager measurement worked; 1 when none did;
2 when torch is missing, or CUDA is (unless ``--device cpu``).

Examples::

    python3 scripts/torch_baseline.py --json torch.json
    python3 scripts/torch_baseline.py --workload blip-vit --batch 8 --iters 100
    python3 scripts/torch_baseline.py --device cpu --tiny --no-compile
"""

import argparse
import json
import math
import os
import signal
import sys
import time

WORKLOADS = ("meter-vqa", "blip-vit")


def shapes(tiny):
    """Model sizes per workload (full: the presets; tiny: tiny-meter/tiny-vit)."""
    if tiny:
        return {
            "meter-vqa": dict(hidden=64, heads=4, ffn=128, eps=1e-12, layers=3,
                              text_rows=8, image_rows=17),
            "blip-vit": dict(hidden=64, heads=4, ffn=128, eps=1e-6, layers=3,
                             image_size=32, patch_size=8, channels=3),
        }
    return {
        "meter-vqa": dict(hidden=768, heads=12, ffn=3072, eps=1e-12, layers=6,
                          text_rows=40, image_rows=577),
        "blip-vit": dict(hidden=768, heads=12, ffn=3072, eps=1e-6, layers=12,
                         image_size=384, patch_size=16, channels=3),
    }


def build(torch, workload, s, device, dtype, seed):
    """The seeded dense model of one workload, on `device` in `dtype`.

    Its ``state_dict()`` names are smarttrim's weight names (docs/FORMATS.md),
    except the ViT's ``image.embeddings.patch.weight`` (a conv weight
    ``[D, C, P, P]``, ours ``[D, C*P*P]``), ``.cls`` (``[1, 1, D]``, ours
    ``[D]``) and ``.position`` (``[1, N, D]``, ours ``[N, D]``): same values,
    other shapes. scripts/torch_baseline_check.py relies on this.
    """
    nn = torch.nn
    F = torch.nn.functional

    def attend(q, k, v, heads):
        # q [B, N, D], k/v [B, M, D] -> [B, N, D]
        b, n, d = q.shape
        m = k.shape[1]
        dh = d // heads
        q = q.view(b, n, heads, dh).transpose(1, 2)
        k = k.view(b, m, heads, dh).transpose(1, 2)
        v = v.view(b, m, heads, dh).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v)
        return o.transpose(1, 2).reshape(b, n, d)

    class SelfAttention(nn.Module):
        def __init__(self, d, heads, eps):
            super().__init__()
            self.heads = heads
            self.qkv = nn.Linear(d, 3 * d)
            self.out = nn.Linear(d, d)
            self.ln = nn.LayerNorm(d, eps=eps)

        def forward(self, x):
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            return self.out(attend(q, k, v, self.heads))

    class CrossAttention(nn.Module):
        def __init__(self, d, d_other, heads, eps):
            super().__init__()
            self.heads = heads
            self.q = nn.Linear(d, d)
            self.kv = nn.Linear(d_other, 2 * d)
            self.out = nn.Linear(d, d)
            self.ln = nn.LayerNorm(d, eps=eps)

        def forward(self, x, y):
            k, v = self.kv(y).chunk(2, dim=-1)
            return self.out(attend(self.q(x), k, v, self.heads))

    class Ffn(nn.Module):
        def __init__(self, d, f, eps):
            super().__init__()
            self.fc1 = nn.Linear(d, f)
            self.fc2 = nn.Linear(f, d)
            self.ln = nn.LayerNorm(d, eps=eps)

        def forward(self, x):
            return self.fc2(F.gelu(self.fc1(x), approximate="none"))

    class CrossLayer(nn.Module):
        """Post-LN: self-attention, cross-attention, FFN (METER)."""

        def __init__(self, d, heads, f, eps):
            super().__init__()
            self.self_attn = SelfAttention(d, heads, eps)
            self.cross_attn = CrossAttention(d, d, heads, eps)
            self.ffn = Ffn(d, f, eps)

        def forward(self, x, y):
            h = self.self_attn.ln(x + self.self_attn(x))
            h = self.cross_attn.ln(h + self.cross_attn(h, y))
            return self.ffn.ln(h + self.ffn(h))

    class PreLnLayer(nn.Module):
        """Pre-LN encoder layer: self-attention, FFN (ViT)."""

        def __init__(self, d, heads, f, eps):
            super().__init__()
            self.self_attn = SelfAttention(d, heads, eps)
            self.ffn = Ffn(d, f, eps)

        def forward(self, x):
            h = x + self.self_attn(self.self_attn.ln(x))
            return h + self.ffn(self.ffn.ln(h))

    class CrossStream(nn.Module):
        def __init__(self, d, heads, f, eps, layers):
            super().__init__()
            self.layers = nn.ModuleList(CrossLayer(d, heads, f, eps) for _ in range(layers))

    class MeterFusion(nn.Module):
        def __init__(self, d, heads, f, eps, layers):
            super().__init__()
            self.text = CrossStream(d, heads, f, eps, layers)
            self.image = CrossStream(d, heads, f, eps, layers)

        def forward(self, t, i):
            for lt, li in zip(self.text.layers, self.image.layers):
                # lockstep: both read the other's rows entering this layer
                t, i = lt(t, i), li(i, t)
            return t, i

    class VitEmbeddings(nn.Module):
        def __init__(self, d, image_size, patch_size, channels):
            super().__init__()
            g = image_size // patch_size
            self.patch = nn.Conv2d(channels, d, patch_size, stride=patch_size, bias=True)
            self.cls = nn.Parameter(torch.empty(1, 1, d))
            self.position = nn.Parameter(torch.empty(1, 1 + g * g, d))

        def forward(self, px):
            x = self.patch(px).flatten(2).transpose(1, 2)  # [B, P, D], patches row-major
            return torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.position

    class VitStream(nn.Module):
        def __init__(self, d, heads, f, eps, layers, image_size, patch_size, channels):
            super().__init__()
            self.embeddings = VitEmbeddings(d, image_size, patch_size, channels)
            self.layers = nn.ModuleList(PreLnLayer(d, heads, f, eps) for _ in range(layers))
            self.final_ln = nn.LayerNorm(d, eps=eps)

    class Vit(nn.Module):
        def __init__(self, *a):
            super().__init__()
            self.image = VitStream(*a)

        def forward(self, px):
            x = self.image.embeddings(px)
            for layer in self.image.layers:
                x = layer(x)
            return self.image.final_ln(x)

    torch.manual_seed(seed)
    if workload == "meter-vqa":
        model = MeterFusion(s["hidden"], s["heads"], s["ffn"], s["eps"], s["layers"])
    else:
        model = Vit(s["hidden"], s["heads"], s["ffn"], s["eps"], s["layers"],
                    s["image_size"], s["patch_size"], s["channels"])
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.LayerNorm):
                mod.weight.copy_(1.0 + 0.1 * torch.randn_like(mod.weight))
                mod.bias.copy_(0.1 * torch.randn_like(mod.bias))
        if workload == "blip-vit":
            emb = model.image.embeddings
            emb.cls.copy_(0.02 * torch.randn_like(emb.cls))
            emb.position.copy_(0.02 * torch.randn_like(emb.position))
        for name, p in model.named_parameters():
            if not bool((p != 0).any()):
                raise RuntimeError(f"parameter {name} is all zero")
    return model.to(device=device, dtype=dtype).eval()


def write_json(path, results):
    """Writes the list atomically (a temporary file beside it, then rename)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(results, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


def percentile(sorted_xs, q):
    """Linear interpolation between closest ranks, q in [0, 1]."""
    if not sorted_xs:
        return None
    pos = q * (len(sorted_xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def all_finite(torch, out):
    outs = out if isinstance(out, tuple) else (out,)
    return all(bool(torch.isfinite(o).all()) for o in outs)


def time_forward(torch, fn, inputs, warmup, iters, cuda):
    """Returns (times_ms sorted, finite) of `iters` timed calls after `warmup`."""
    times = []
    finite = True
    with torch.inference_mode():
        for _ in range(warmup):
            out = fn(*inputs)
        if cuda:
            torch.cuda.synchronize()
        if warmup:
            finite = all_finite(torch, out)
        for _ in range(iters):
            if cuda:
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize()
                start.record()
                out = fn(*inputs)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                out = fn(*inputs)
                times.append((time.perf_counter() - t0) * 1e3)
        if not warmup:
            finite = all_finite(torch, out)
    return sorted(times), finite


class CompileTimeout(BaseException):
    """Raised by SIGALRM while torch.compile runs past the remaining budget.

    A BaseException so that nothing inside torch swallows it as an Exception.
    """


def first_line(e):
    msg = f"{type(e).__name__}: {e}".strip()
    line = msg.splitlines()[0] if msg else type(e).__name__
    return line[:300]


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Dense PyTorch baseline of smarttrim's benchmark workloads.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See the module docstring for the exact model structure.",
    )
    ap.add_argument("--workload", action="append", choices=WORKLOADS,
                    help="workload to run (repeatable; default: all)")
    ap.add_argument("--batch", type=int, action="append",
                    help="batch size (repeatable; default: 1 and 32)")
    ap.add_argument("--warmup", type=int, default=10, help="untimed forwards first (default 10)")
    ap.add_argument("--iters", type=int, default=50, help="timed forwards (default 50)")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--dtype", choices=("float16", "bfloat16", "float32"),
                    help="default: float16 on cuda, float32 on cpu")
    ap.add_argument("--tiny", action="store_true",
                    help="tiny shapes (hidden 64, 4 heads, FFN 128, 3 layers, short sequences)")
    ap.add_argument("--no-compile", action="store_true", help="eager mode only")
    ap.add_argument("--compile-mode", default="default",
                    choices=("default", "reduce-overhead", "max-autotune",
                             "max-autotune-no-cudagraphs"),
                    help="torch.compile mode (default: default; named in each note otherwise)")
    ap.add_argument("--budget-seconds", type=float, default=120.0,
                    help="stop starting new measurements after this many seconds (default 120)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="FILE", help="write the results as a JSON list")
    args = ap.parse_args(argv)
    if args.warmup < 0 or args.iters < 1:
        ap.error("--warmup must be >= 0 and --iters >= 1")
    batches = args.batch or [1, 32]
    if any(b < 1 for b in batches):
        ap.error("--batch must be >= 1")
    workloads = args.workload or list(WORKLOADS)

    t_start = time.monotonic()
    try:
        import torch
    except ImportError as e:
        print(f"torch_baseline: PyTorch is not installed ({e}); nothing measured", file=sys.stderr)
        return 2
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        print(f"torch_baseline: torch {torch.__version__} sees no CUDA device "
              f"(torch.version.cuda={torch.version.cuda}); use --device cpu to smoke-test",
              file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype or ("float16" if cuda else "float32"))
    device = torch.device(args.device)
    dev_name = torch.cuda.get_device_name() if cuda else "cpu"
    sizes = shapes(args.tiny)
    base_note = []
    if args.tiny:
        base_note.append("tiny shapes")
    if dtype != torch.float16:
        base_note.append(str(dtype).replace("torch.", ""))
    print(f"torch {torch.__version__} on {dev_name}, {str(dtype).replace('torch.', '')}, "
          f"warmup {args.warmup}, iters {args.iters}, budget {args.budget_seconds:g} s"
          + (", tiny shapes" if args.tiny else ""), flush=True)

    results = []
    budget_msg_shown = [False]

    def remaining():
        return args.budget_seconds - (time.monotonic() - t_start)

    def record(workload, batch, mode, times=None, note=""):
        notes = list(base_note)
        if mode == "compile" and args.compile_mode != "default":
            notes.append(f"mode={args.compile_mode}")
        notes += [note] if note else []
        r = {
            "workload": workload,
            "batch": batch,
            "mode": mode,
            "dense_ms": percentile(times, 0.5) if times else None,
            "p10_ms": percentile(times, 0.1) if times else None,
            "p90_ms": percentile(times, 0.9) if times else None,
            "device": dev_name,
            "torch_version": torch.__version__,
            "note": "; ".join(notes),
        }
        results.append(r)
        if args.json:
            # after every measurement, so that a run killed from outside
            # (a timeout) still leaves what it measured
            write_json(args.json, results)
        ms = "null" if r["dense_ms"] is None else f"{r['dense_ms']:.3f} ms"
        print(f"  {workload} batch {batch} {mode}: {ms}"
              + (f" ({r['note']})" if r["note"] else ""), flush=True)

    def over_budget(workload, batch, mode):
        if remaining() > 0:
            return False
        if not budget_msg_shown[0]:
            print(f"torch_baseline: --budget-seconds {args.budget_seconds:g} reached after "
                  f"{time.monotonic() - t_start:.0f} s; skipping the remaining measurements",
                  flush=True)
            budget_msg_shown[0] = True
        record(workload, batch, mode,
               note=f"skipped: --budget-seconds {args.budget_seconds:g} reached")
        return True

    # Models are built once per workload (weights do not depend on the batch)
    # and kept for the compile phase; inputs per (workload, batch).
    models = {}
    inputs = {}

    def get(workload, batch):
        if workload not in models:
            models[workload] = build(torch, workload, sizes[workload], device, dtype, args.seed)
        key = (workload, batch)
        if key not in inputs:
            inputs[key] = build_inputs(torch, workload, sizes[workload], batch, device, dtype, args.seed)
        return models[workload], inputs[key]

    eager_ok = 0
    for workload in workloads:
        for batch in batches:
            if over_budget(workload, batch, "eager"):
                continue
            try:
                model, inp = get(workload, batch)
                times, finite = time_forward(torch, model, inp, args.warmup, args.iters, cuda)
                record(workload, batch, "eager", times,
                       "" if finite else "output holds NaN/Inf")
                eager_ok += 1
            except Exception as e:  # noqa: BLE001 - record and go on
                record(workload, batch, "eager", note=f"failed: {first_line(e)}")
            finally:
                if cuda:
                    torch.cuda.empty_cache()

    if not args.no_compile:
        compiled = {}
        for workload in workloads:
            for batch in batches:
                if over_budget(workload, batch, "compile"):
                    continue
                old = None
                try:
                    model, inp = get(workload, batch)
                    if workload not in compiled:
                        compiled[workload] = torch.compile(
                            model, dynamic=False,
                            mode=None if args.compile_mode == "default" else args.compile_mode)
                    # The first call compiles (a new batch recompiles): cap it
                    # by what is left of the budget.
                    if hasattr(signal, "SIGALRM"):
                        def on_alarm(_sig, _frame):
                            raise CompileTimeout()
                        old = signal.signal(signal.SIGALRM, on_alarm)
                        signal.alarm(max(1, int(math.ceil(remaining()))))
                    try:
                        times, finite = time_forward(torch, compiled[workload], inp,
                                                     max(1, args.warmup), args.iters, cuda)
                    finally:
                        if old is not None:
                            signal.alarm(0)
                            signal.signal(signal.SIGALRM, old)
                    record(workload, batch, "compile", times,
                           "" if finite else "output holds NaN/Inf")
                except CompileTimeout:
                    record(workload, batch, "compile",
                           note=f"compile/run stopped: --budget-seconds {args.budget_seconds:g} reached")
                except Exception as e:  # noqa: BLE001 - compile failures are data
                    record(workload, batch, "compile", note=f"failed: {first_line(e)}")
                finally:
                    if cuda:
                        torch.cuda.empty_cache()

    print()
    print(f"{'workload':<10} {'batch':>5} {'mode':<8} {'median ms':>10} {'p10 ms':>9} "
          f"{'p90 ms':>9}  note")
    for r in results:
        def f(x):
            return "-" if x is None else f"{x:.3f}"
        print(f"{r['workload']:<10} {r['batch']:>5} {r['mode']:<8} {f(r['dense_ms']):>10} "
              f"{f(r['p10_ms']):>9} {f(r['p90_ms']):>9}  {r['note']}")
    print(f"total {time.monotonic() - t_start:.1f} s")

    if args.json:
        write_json(args.json, results)
        print(f"wrote {args.json}")
    if eager_ok == 0:
        print("torch_baseline: no eager measurement worked", file=sys.stderr)
        return 1
    return 0


def build_inputs(torch, workload, s, batch, device, dtype, seed):
    """Seeded random inputs of one workload: (text, image) rows or (pixels,)."""
    g = torch.Generator(device="cpu").manual_seed(seed + 1 + batch)
    if workload == "meter-vqa":
        t = torch.randn(batch, s["text_rows"], s["hidden"], generator=g)
        i = torch.randn(batch, s["image_rows"], s["hidden"], generator=g)
        return (t.to(device, dtype), i.to(device, dtype))
    c, n = s["channels"], s["image_size"]
    px = torch.randn(batch, c, n, n, generator=g)
    return (px.to(device, dtype),)


if __name__ == "__main__":
    sys.exit(main())
