"""Peak memory and time of ONE UNet call with N rows, per ComfyUI attention backend, each in a fresh process.

DiffStyler's extra memory over plain sampling is the extra rows of its UNet call (1 content row + 2 per
style while injection is on). How much a row costs is the attention backend's business: ComfyUI's
sub-quadratic attention (its default on the CPU) sizes its chunks by the free memory, so a wider call takes
more of whatever is free; PyTorch SDPA (ComfyUI's default on NVIDIA, ``--use-pytorch-cross-attention``)
never materialises the score matrix. This script shows the difference on the same call.

    python bench/attention_memory.py [--size 512] [--rows 3,7] [--attention pytorch,sub_quad] [--cpu] [--json]

Each (backend, rows) pair runs in its own process (no allocator state carried over); the last line with
``--json`` is ``{"size":..,"calls":[{"attention":..,"rows":..,"seconds":..,"base_mb":..,"peak_mb":..,
"delta_mb":..},..]}``. Memory is the process RSS on the CPU, the CUDA allocator's peak on a GPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import common


def one_call(size: int, rows: int, attention: str, cpu: bool, channels: int) -> dict:
    common.setup(cpu, attention)
    import comfy.ldm.modules.attention as attn
    import comfy.model_management as mm
    import torch

    model = common.full_sd15(channels=channels)
    mm.load_models_gpu([model])
    dev = mm.get_torch_device()
    dtype = model.model.get_dtype()
    h = size // 8
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, 4, h, h, generator=g).to(dev, dtype)
    ctx = torch.randn(rows, 77, 768, generator=g).to(dev, dtype)
    t = torch.full((rows,), 500.0, device=dev)
    with common.PeakMemory(dev) as idle:
        pass
    with torch.no_grad(), common.PeakMemory(dev) as pm:
        start = time.perf_counter()
        model.model.apply_model(x, t, c_crossattn=ctx, transformer_options={})
        if dev.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    base = idle.peak
    return {
        "attention": attn.optimized_attention.__name__,
        "rows": rows,
        "seconds": seconds,
        "base_mb": base / 2**20,
        "peak_mb": pm.peak / 2**20,
        "delta_mb": (pm.peak - base) / 2**20,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--rows", default="3,7", help="rows of the UNet call (DiffStyler k=1: 3, k=3: 7)")
    ap.add_argument("--attention", default="pytorch,sub_quad", help=f"comma-separated, of {sorted(common.ATTENTION)}")
    ap.add_argument("--channels", type=int, default=320, help="UNet model_channels (SD1.5: 320)")
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        attention, rows = args.child.split(":")
        print(json.dumps(one_call(args.size, int(rows), attention, args.cpu, args.channels)))
        return
    calls = []
    for attention in args.attention.split(","):
        if attention not in common.ATTENTION:
            raise SystemExit(f"--attention: {attention!r} is not one of {sorted(common.ATTENTION)}")
        for rows in (int(r) for r in args.rows.split(",")):
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", f"{attention}:{rows}"]
            cmd += ["--size", str(args.size), "--channels", str(args.channels)] + (["--cpu"] if args.cpu else [])
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"{attention} x {rows} rows failed:\n{proc.stderr[-3000:]}")
            calls.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"one UNet call, SD1.5 (model_channels {args.channels}), {args.size}x{args.size}")
    print(f"{'attention':<22}{'rows':>6}{'seconds':>10}{'peak MB':>10}{'+MB':>8}{'x fewest rows':>15}")
    for c in calls:
        first = next(d for d in calls if d["attention"] == c["attention"])
        print(
            f"{c['attention']:<22}{c['rows']:>6}{c['seconds']:>10.2f}{c['peak_mb']:>10.0f}{c['delta_mb']:>8.0f}"
            f"{c['peak_mb'] / first['peak_mb']:>15.3f}"
        )
    if args.json:
        print(json.dumps({"size": args.size, "model_channels": args.channels, "calls": calls}))


if __name__ == "__main__":
    main()
