#!/usr/bin/env python3
"""Checks that scripts/torch_baseline.py computes smarttrim's dense pass.

Builds each baseline workload in PyTorch (float32, CPU), writes its weights
under smarttrim's names (docs/FORMATS.md), a config with no pruners and
random inputs, runs the CPU reference (``smarttrim run --dense``) on them
and compares the final rows: relative error ``||torch - ref|| / ||ref||``.
Needs torch (any build; no GPU) and a built smarttrim executable:

    cargo build --release --bin smarttrim
    python3 scripts/torch_baseline_check.py target/release/smarttrim          # tiny shapes
    python3 scripts/torch_baseline_check.py target/release/smarttrim --full   # the real ones

Exit status 0 when every workload agrees within --tol (default 1e-4).
"""

import argparse
import ctypes
import json
import os
import struct
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_baseline as tb  # noqa: E402

DTYPES = {"F32": 4, "I32": 4}


def write_safetensors(path, tensors):
    """Minimal safetensors writer: {name: (dtype tag, torch tensor)}."""
    header, blobs, off = {}, [], 0
    for name, (tag, t) in tensors.items():
        t = t.contiguous()
        raw = ctypes.string_at(t.data_ptr(), t.numel() * t.element_size())
        header[name] = {"dtype": tag, "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def read_safetensors_f32(path, name, torch):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    if name not in header:
        raise KeyError(f"{path} has no tensor {name} (has {sorted(header)[:8]}...)")
    e = header[name]
    if e["dtype"] != "F32":
        raise ValueError(f"{name} is {e['dtype']}, expected F32")
    lo, hi = e["data_offsets"]
    buf = bytearray(data[8 + n + lo:8 + n + hi])
    return torch.frombuffer(buf, dtype=torch.float32).reshape(e["shape"]).clone()


def smarttrim_weights(workload, model):
    out = {}
    for name, t in model.state_dict().items():
        t = t.detach().float().cpu()
        if workload == "blip-vit":
            if name == "image.embeddings.patch.weight":
                t = t.reshape(t.shape[0], -1)  # [D, C, P, P] -> [D, C*P*P], (c, ky, kx)
            elif name == "image.embeddings.cls":
                t = t.reshape(-1)
            elif name == "image.embeddings.position":
                t = t[0]
        out[name] = ("F32", t)
    return out


def config(workload, s):
    common = {"hidden": s["hidden"], "heads": s["heads"], "ffn": s["ffn"], "ln_eps": s["eps"],
              "layers": [{} for _ in range(s["layers"])]}
    if workload == "meter-vqa":
        return {"kind": {"type": "co_attention"}, "streams": [
            dict(name="text", embedding={"type": "none"}, **common),
            dict(name="image", embedding={"type": "none"}, **common)]}
    return {"kind": {"type": "encoder"}, "streams": [
        dict(name="image", pre_ln=True, final_ln=True,
             embedding={"type": "vit", "image_size": s["image_size"],
                        "patch_size": s["patch_size"], "channels": s["channels"]},
             **common)]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("smarttrim", help="path to the smarttrim executable")
    ap.add_argument("--full", action="store_true", help="the benchmark shapes (slow on a CPU)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--keep", metavar="DIR", help="write the files here and keep them")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    sizes = tb.shapes(not args.full)
    failed = 0
    tmp = args.keep or tempfile.mkdtemp(prefix="torch_baseline_check.")
    os.makedirs(tmp, exist_ok=True)
    for workload in tb.WORKLOADS:
        s = sizes[workload]
        model = tb.build(torch, workload, s, torch.device("cpu"), torch.float32, seed=7)
        inp = tb.build_inputs(torch, workload, s, args.batch, torch.device("cpu"),
                              torch.float32, seed=7)
        with torch.inference_mode():
            out = model(*inp)
        b = args.batch
        if workload == "meter-vqa":
            names = ["text", "image"]
            tensors = {}
            for n, x in zip(names, inp):
                rows = x.shape[1]
                tensors[f"{n}.rows"] = ("F32", x.reshape(-1, x.shape[-1]))
                tensors[f"{n}.cu_seqlens"] = (
                    "I32", torch.arange(0, (b + 1) * rows, rows, dtype=torch.int32))
            outs = dict(zip(names, out))
        else:
            tensors = {"image.pixels": ("F32", inp[0])}
            outs = {"image": out}
        pre = os.path.join(tmp, workload)
        with open(pre + ".config.json", "w") as f:
            json.dump(config(workload, s), f, indent=1)
        write_safetensors(pre + ".weights.safetensors", smarttrim_weights(workload, model))
        write_safetensors(pre + ".input.safetensors", tensors)
        cmd = [args.smarttrim, "run", "--config", pre + ".config.json",
               "--weights", pre + ".weights.safetensors", "--input", pre + ".input.safetensors",
               "--output", pre + ".output.safetensors", "--dense"]
        print("$ " + " ".join(cmd), flush=True)
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            print(f"{workload}: smarttrim run failed (rc {r.returncode}):\n{r.stderr}{r.stdout}")
            failed += 1
            continue
        for n, o in outs.items():
            ref = read_safetensors_f32(pre + ".output.safetensors", f"{n}.rows", torch)
            got = o.reshape(-1, o.shape[-1])
            if got.shape != ref.shape:
                print(f"{workload} {n}: shape {tuple(got.shape)} vs reference {tuple(ref.shape)}")
                failed += 1
                continue
            rel = float((got.double() - ref.double()).norm() / ref.double().norm())
            ok = rel < args.tol
            failed += not ok
            print(f"{workload} {n}: rows {tuple(ref.shape)}, relative error {rel:.3e} "
                  f"({'ok' if ok else 'FAIL'}, tol {args.tol:g})", flush=True)
    if not args.keep:
        for f in os.listdir(tmp):
            os.remove(os.path.join(tmp, f))
        os.rmdir(tmp)
    print("all agree" if not failed else f"{failed} mismatch(es)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
