"""Train Style LoRA benchmark: seconds per training step and peak memory, tiny UNet vs full-size SD1.5 UNet.

Both UNets are built from ComfyUI's own SD1.5 config (``comfy.supported_models.SD15``) with random weights,
loaded the way ComfyUI's checkpoint loader loads a state dict (inside ``torch.inference_mode()``, dtype and
initial device chosen by model management), and trained inside inference mode as a node would be; no CLIP or
VAE: the prompt is a random context tensor and the style latent a random latent. Each model runs in its own
subprocess. Step times come from the progress-bar hook (one call per step, after ``loss.item()``, so GPU
work is finished); the warm-up steps are dropped. Memory: RSS before training, the peak RSS while training
(sampled every 20 ms), and ``torch.cuda.max_memory_allocated`` on a GPU.

    python bench/train_bench.py                       # tiny + sd15 at 256 px, 3 steps after 1 warm-up
    python bench/train_bench.py --steps 2 --json      # JSON summary as the last line
    python bench/train_bench.py --models tiny --resolution 512 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time

import common

UNETS = {
    # SD1.5 topology (block ids, heads, depth) with 32 channels: the test suite's tiny model
    "tiny": {"model_channels": 32, "context_dim": 64, "num_heads": 4},
    # the real SD1.5 UNet architecture (~860M parameters)
    "sd15": {"model_channels": 320, "context_dim": 768, "num_heads": 8},
}


def import_comfy(device: str):
    """ComfyUI in-process on ``device`` and the pack as a package (bench/common.py does the work)."""
    common.setup(device == "cpu")


def build_unet(name: str, dtype_name: str):
    """A ModelPatcher around an SD1.5-config BaseModel with random weights, built in inference mode."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    import torch

    cfg = UNETS[name]
    from comfyui_diffstyler.nodes.harness.tiny import sd15_unet_config

    unet_config = sd15_unet_config(cfg["model_channels"], cfg["context_dim"], cfg["num_heads"])
    model_config = comfy.supported_models.SD15(unet_config)
    load_device = mm.get_torch_device()
    if dtype_name == "auto":
        dtype = mm.unet_dtype(supported_dtypes=list(model_config.supported_inference_dtypes))
    else:
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    manual_cast = mm.unet_manual_cast(dtype, load_device, model_config.supported_inference_dtypes)
    model_config.set_inference_dtype(dtype, manual_cast)
    # random weights as a state dict, loaded the way ComfyUI's checkpoint loader does (inside inference mode,
    # on the device ComfyUI picks for the initial load)
    g = torch.Generator().manual_seed(0)
    with torch.device("meta"):
        shapes = {k: (v.shape, v.ndim) for k, v in model_config.get_model({}).diffusion_model.state_dict().items()}
    sd = {}
    for k, (shape, ndim) in shapes.items():
        if ndim >= 2:
            sd[k] = torch.randn(shape, generator=g) / max(1, shape[1:].numel()) ** 0.5
        elif k.endswith("weight"):
            sd[k] = 1.0 + 0.01 * torch.randn(shape, generator=g)
        else:
            sd[k] = 0.01 * torch.randn(shape, generator=g)
    n_bytes = sum(v.numel() for v in sd.values()) * torch.tensor([], dtype=dtype).element_size()
    with torch.inference_mode():
        base = model_config.get_model(sd, "", device=mm.unet_inital_load_device(n_bytes, dtype))
        base.load_model_weights(sd, "")
        del sd
        patcher = comfy.model_patcher.ModelPatcher(
            base, load_device=load_device, offload_device=mm.unet_offload_device()
        )
    n_params = sum(p.numel() for p in base.diffusion_model.parameters())
    return patcher, cfg["context_dim"], n_params, dtype


def rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        return float("nan")


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


class RssSampler(threading.Thread):
    """Samples this process's RSS every ``interval`` seconds until stopped; ``peak`` is the largest seen (MB)."""

    def __init__(self, interval: float = 0.02):
        super().__init__(daemon=True)
        self.interval, self.peak, self._stop_event = interval, rss_mb(), threading.Event()

    def run(self):
        while not self._stop_event.is_set():
            self.peak = max(self.peak, rss_mb())
            time.sleep(self.interval)

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        self.peak = max(self.peak, rss_mb())
        return self.peak


def run_one(name: str, args) -> dict:
    import_comfy(args.device)
    import comfy.utils
    import torch
    from comfyui_diffstyler.nodes.adapters import training
    from comfyui_diffstyler.nodes.core.training import TrainingConfig

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    patcher, ctx_dim, n_params, dtype = build_unet(name, args.dtype)
    side = args.resolution // 8
    g = torch.Generator().manual_seed(1)
    with torch.inference_mode():  # as ComfyUI's nodes see their inputs
        inputs = training.TrainingInputs(
            latent=torch.randn(1, 4, side, side, generator=g),
            conditioning=[[torch.randn(1, 77, ctx_dim, generator=g), {}]],
            size=(args.resolution, args.resolution),
        )
    cfg = TrainingConfig(
        steps=args.warmup + args.steps,
        learning_rate=2e-4,
        rank=args.rank,
        targets=args.targets,
        resolution=args.resolution,
        log_every=10**9,
    )
    stamps: list[float] = []
    comfy.utils.set_progress_bar_global_hook(
        lambda value, total, preview, node_id=None: stamps.append(time.perf_counter())
    )
    cuda = torch.cuda.is_available() and args.device != "cpu"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rss_before = rss_mb()
    sampler = RssSampler()
    sampler.start()
    t0 = time.perf_counter()
    with torch.inference_mode():  # ComfyUI runs nodes (and loads models) in inference mode
        result = training.train(patcher, inputs, cfg, progress=False)
    rss_train_peak = sampler.stop()
    times = [b - a for a, b in zip([t0] + stamps[:-1], stamps)][args.warmup :]
    lora_params = sum(t.numel() for t in result.lora.parameters())
    return {
        "model": name,
        "device": str(patcher.load_device) + (f" ({torch.cuda.get_device_name()})" if cuda else ""),
        "dtype": str(dtype).replace("torch.", ""),
        "resolution": args.resolution,
        "unet_params_m": round(n_params / 1e6, 1),
        "lora_layers": len(result.targets),
        "lora_params_m": round(lora_params / 1e6, 2),
        "steps_timed": len(times),
        "s_per_step": round(statistics.median(times), 4),
        "s_per_step_mean": round(statistics.mean(times), 4),
        "rss_before_mb": round(rss_before, 0),
        "rss_train_peak_mb": round(rss_train_peak, 0),
        "rss_process_peak_mb": round(peak_rss_mb(), 0),
        "cuda_peak_mb": round(torch.cuda.max_memory_allocated() / 2**20, 0) if cuda else None,
        "final_loss": round(result.losses[-1], 4),
        "lora_up_abs_max": float(f"{max(float(u.abs().max()) for _, u in result.lora.factors.values()):.3g}"),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny,sd15", help="comma-separated: tiny, sd15")
    ap.add_argument("--steps", type=int, default=3, help="timed steps (after the warm-up)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--targets", default="attention", choices=["attention", "all_linear"])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    for n in names:
        if n not in UNETS:
            raise SystemExit(f"--models: unknown model {n!r}; choose from {sorted(UNETS)}")

    if args.child:
        print(json.dumps(run_one(names[0], args)))
        return

    rows = []
    for n in names:
        passed = ("steps", "warmup", "resolution", "rank", "targets", "device", "dtype", "threads")
        cmd = [sys.executable, __file__, "--child", "--models", n] + [f"--{k}={getattr(args, k)}" for k in passed]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"benchmark of {n} failed (exit {proc.returncode})")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))

    cols = [
        ("model", "model"), ("device", "device"), ("dtype", "dtype"), ("resolution", "res"),
        ("unet_params_m", "UNet M"), ("lora_layers", "LoRA layers"), ("lora_params_m", "LoRA M"),
        ("s_per_step", "s/step (median)"), ("s_per_step_mean", "s/step (mean)"), ("rss_before_mb", "RSS before MB"),
        ("rss_train_peak_mb", "peak RSS training MB"),
        ("cuda_peak_mb", "peak CUDA MB"),
    ]  # fmt: skip
    table = [[h for _, h in cols]] + [[str(r[k]) for k, _ in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    print(
        f"Train Style LoRA: {args.steps} timed steps after {args.warmup} warm-up, rank {args.rank}, {args.targets}; "
        f"{os.cpu_count()} CPUs, torch threads {rows[0]['cpu_threads']}, load average {os.getloadavg()[0]:.2f}"
    )
    for i, row in enumerate(table):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    if len(rows) == 2:
        a, b = rows
        print(f"{b['model']}/{a['model']} time per step: {b['s_per_step'] / a['s_per_step']:.1f}x")
    if args.json:
        print(json.dumps({"benchmark": "train_style_lora", "args": vars(args), "results": rows}))


if __name__ == "__main__":
    main()
