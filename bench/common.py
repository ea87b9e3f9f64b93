"""Shared set-up for the benchmarks: ComfyUI in-process through the pack's harness, full-size random models, meters.

Every bench imports this module first: it makes the pack the package ``comfyui_diffstyler`` (the pack root never
goes on sys.path) so that the bench reaches the harness (``nodes/harness``) and the pack's nodes by that name.
"""

from __future__ import annotations

import math
import runpy
import statistics
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
runpy.run_path(str(ROOT / "nodes" / "harness" / "host.py"))["load_pack"]()

from comfyui_diffstyler.nodes.harness import executor, host, tiny  # noqa: E402 - the pack is a package from here

ATTENTION = host.ATTENTION  # --attention choices


def comfyui_root() -> Path:
    """The ComfyUI the benches run on (the harness's rule: $COMFYUI_PATH, the one holding the pack, ~/ComfyUI)."""
    root = host.find_comfyui()
    if root is None:
        raise SystemExit(host.NOT_FOUND)
    return root


def setup(cpu: bool, attention: str = "default"):
    """Import ComfyUI (CPU when asked or when there is no GPU) and the pack; returns the pack module.

    ``attention`` picks ComfyUI's attention backend as its command-line flags do (``default``: what ComfyUI
    chooses for the device: PyTorch SDPA on NVIDIA, sub-quadratic attention on the CPU).
    """
    host.import_comfy(comfyui_root(), cpu=True if cpu else None, attention=attention)
    import comfy.model_management  # noqa: F401 - after the device is set

    return host.load_pack()


def make_executor(server=None):
    """ComfyUI's ``PromptExecutor`` (classic cache) on any tested host (see nodes/harness/executor.py)."""
    return executor.make_executor(server)


def full_sd15(seed: int = 0, channels: int = 320):
    """A full-size SD1.5 UNet (random weights) as a ModelPatcher, fp16 on a GPU, fp32 on the CPU.

    ``channels`` < 320 keeps every layer and block of SD1.5 but narrows them (``model_channels``): little
    arithmetic per layer, so the time is dominated by per-layer overhead, as on a fast GPU at small sizes.
    """
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    import torch

    dev = mm.get_torch_device()
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    config = comfy.supported_models.SD15(tiny.sd15_unet_config(channels, context_dim=768, num_heads=8))
    config.set_inference_dtype(dtype, None)
    model = config.get_model({}, device=dev)
    g = torch.Generator(device=dev).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.copy_(
                    torch.randn(p.shape, generator=g, device=dev, dtype=torch.float32)
                    .div_(math.sqrt(max(1, p[0].numel())))
                    .to(p.dtype)
                )
                if name.startswith("diffusion_model.out.2"):
                    p.mul_(0.1)
            elif "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=dev, offload_device=mm.unet_offload_device())
    patcher.bench_config = config
    return patcher


def copy_unet(patcher):
    """An independent copy of the patcher's BaseModel (same weights), on the same device."""
    import comfy.model_management as mm

    c = patcher.bench_config.get_model({}, device=mm.get_torch_device())
    c.load_state_dict(patcher.model.state_dict())
    return c


def random_cond(seed: int, tokens: int = 77, dim: int = 768):
    return tiny.plain_conditioning(seed, tokens=tokens, dim=dim)


def random_lora(model, rank: int = 16, seed: int = 0, scale: float = 0.3) -> dict:
    """A kohya-format LoRA on every attention projection of ``model`` (alpha = rank)."""
    return tiny.random_lora(model, rank=rank, seed=seed, scale=scale, alpha=rank)


def random_flux_lora(model, rank: int = 4, seed: int = 0, scale: float = 0.3) -> dict:
    """A kohya-layout Flux LoRA (``lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight`` ..., alpha = rank) on
    every 2-D weight of ``model``'s double and single blocks (fused qkv / linear1 whole, projections, MLPs,
    modulations): random factors whose update's entries are about ``scale`` times a fan-in scaled weight's."""
    import torch

    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, w in model.model.diffusion_model.state_dict().items():
        if w.ndim != 2 or not key.endswith(".weight") or not key.startswith(("double_blocks", "single_blocks")):
            continue
        stem = "lora_unet_" + key[: -len(".weight")].replace(".", "_")
        sd[stem + ".lora_down.weight"] = torch.randn(rank, w.shape[1], generator=g)
        up = torch.randn(w.shape[0], rank, generator=g)
        sd[stem + ".lora_up.weight"] = up * (scale * math.sqrt(rank / w.shape[1]))
        sd[stem + ".alpha"] = torch.tensor(float(rank))
    return sd


def count_rows(patcher) -> tuple[object, list[int]]:
    """A clone of ``patcher`` and the live list of the rows of each UNet call it makes (a MODEL style's own UNet,
    an additional model of the clone, counted in the same list): rows per step are measured, not assumed."""
    from comfyui_diffstyler.nodes.harness.probes import count_unet_calls

    clone = patcher.clone()
    calls = count_unet_calls(clone, "diffstyler_bench_rows")
    for extra in clone.get_additional_models_with_key("diffstyler_style_models"):
        count_unet_calls(extra, "diffstyler_bench_rows", calls=calls)
    return clone, calls


def stripes(k: int, size: int):
    """k vertical stripe masks ``[1,size,size]`` covering the left 3/4 of the image."""
    import torch

    masks = []
    width = (3 * size // 4) // k
    for i in range(k):
        m = torch.zeros(1, size, size)
        m[:, :, i * width : (i + 1) * width] = 1.0
        masks.append(m)
    return masks


def trim_allocator():
    """Give the C allocator's free pages back to the OS (glibc ``malloc_trim``; a no-op elsewhere)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
    except OSError:
        pass


class PeakMemory:
    """Peak memory while the block runs: ``peak`` is the CUDA allocator's peak on a GPU, else the process's
    peak RSS; ``rss`` is always the process's peak RSS (polled every 5 ms). Both are totals, model included."""

    def __init__(self, device):
        self.device = device
        self.peak = 0
        self.rss = 0

    def __enter__(self):
        import gc

        import psutil
        import torch

        gc.collect()
        trim_allocator()  # what earlier cases freed must not count as this case's peak

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.proc = psutil.Process()
        self.max = self.proc.memory_info().rss
        self.stop = threading.Event()

        def poll():
            while not self.stop.is_set():
                self.max = max(self.max, self.proc.memory_info().rss)
                time.sleep(0.005)

        self.thread = threading.Thread(target=poll, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.stop.set()
        self.thread.join()
        self.rss = max(self.max, self.proc.memory_info().rss)
        self.peak = torch.cuda.max_memory_allocated() if self.device.type == "cuda" else self.rss
        return False


class KernelCount:
    """Counts the ATen operations that launch work (views and allocations excluded) while active: the
    per-kernel cost that bounds a fast GPU at small sizes (launches, dispatch), counted alike on any device.
    Re-entrant per instance (``n`` accumulates)."""

    def __init__(self):
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode

        aten = torch.ops.aten
        NO_KERNEL = {aten._unsafe_view, aten.empty, aten.empty_like, aten.empty_strided, aten.detach}  # noqa: N806
        SYNC = {aten._local_scalar_dense, aten.nonzero, aten.equal, aten.is_nonzero}  # noqa: N806
        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if not (func.is_view or func.overloadpacket in NO_KERNEL):
                    counter.n += 1
                    counter.syncs += func.overloadpacket in SYNC
                return func(*args, **(kwargs or {}))

        self.n = 0
        self.syncs = 0  # of which: values read back by the host (a device sync on a GPU)
        self._mode_cls = Mode
        self._modes = []

    def __enter__(self):
        mode = self._mode_cls()
        self._modes.append(mode)
        mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._modes.pop().__exit__(*exc)
        return False


def timed(fn, device, repeats: int, warmup: int = 1):
    """``(median seconds of `repeats` runs of fn() after `warmup` untimed runs, the last result)``."""
    import torch

    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def kernels_per_step(fn, steps: int) -> tuple[float, float]:
    """ATen operations that launch work, and host reads of device values among them, per sampling step, in one
    more (untimed) run of ``fn``."""
    with KernelCount() as kc:
        fn()
    return kc.n / steps, kc.syncs / steps
