"""Shared set-up for the benchmarks: ComfyUI in-process, the pack as a package, full-size random models."""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACK = "comfyui_diffstyler"
SUPPORT = ROOT / "tests" / "support"  # comfy_host: how ComfyUI hosts differ (shared with the tests and the runner)

SD15_FULL = {
    "use_checkpoint": False,
    "image_size": 32,
    "out_channels": 4,
    "use_spatial_transformer": True,
    "legacy": False,
    "adm_in_channels": None,
    "in_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "channel_mult": [1, 2, 4, 4],
    "transformer_depth_middle": 1,
    "use_linear_in_transformer": False,
    "context_dim": 768,
    "num_heads": 8,
    "num_head_channels": -1,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_temporal_resblock": False,
    "use_temporal_attention": False,
}


def find_comfyui() -> Path:
    for c in (
        os.environ.get("COMFYUI_PATH"),
        ROOT.parent.parent if ROOT.parent.name == "custom_nodes" else None,
        Path.home() / "ComfyUI",
    ):
        if c and (Path(c) / "comfy" / "model_management.py").is_file():
            return Path(c).resolve()
    raise SystemExit("ComfyUI not found: set COMFYUI_PATH")


ATTENTION = {  # --attention choice -> the ComfyUI command-line flag it stands for
    "default": None,
    "pytorch": "use_pytorch_cross_attention",
    "sub_quad": "use_quad_cross_attention",
    "split": "use_split_cross_attention",
}


def setup(cpu: bool, attention: str = "default"):
    """Import ComfyUI (CPU when asked or when there is no GPU) and the pack; returns the pack module.

    ``attention`` picks ComfyUI's attention backend as its command-line flags do (``default``: what ComfyUI
    chooses for the device: PyTorch SDPA on NVIDIA, sub-quadratic attention on the CPU).
    """
    root = str(find_comfyui())
    if root in sys.path:
        sys.path.remove(root)
    sys.path.insert(0, root)
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args
    import torch

    comfy.cli_args.args.cpu = cpu or not torch.cuda.is_available()
    if ATTENTION[attention]:
        setattr(comfy.cli_args.args, ATTENTION[attention], True)
    import comfy.model_management  # noqa: F401
    import utils.extra_config  # noqa: F401

    if PACK not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            PACK, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
        )
        mod = importlib.util.module_from_spec(spec)
        sys.modules[PACK] = mod
        spec.loader.exec_module(mod)
    return sys.modules[PACK]


def make_executor(server):
    """ComfyUI's ``PromptExecutor`` (classic cache) on any tested host: see tests/support/comfy_host.py."""
    if str(SUPPORT) not in sys.path:
        sys.path.insert(0, str(SUPPORT))
    import comfy_host

    return comfy_host.make_executor(server)


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
    config = comfy.supported_models.SD15(dict(SD15_FULL, model_channels=channels))
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
    import torch

    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, dim, generator=g), {}]]


def random_lora(model, rank: int = 16, seed: int = 0, scale: float = 0.3) -> dict:
    """A kohya-format LoRA on every attention projection of ``model``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, w in model.model.state_dict().items():
        if not (
            key.startswith("diffusion_model.")
            and key.endswith(".weight")
            and any(p in key for p in (".to_q.", ".to_k.", ".to_v.", ".to_out.0."))
        ):
            continue
        base = "lora_unet_" + key[len("diffusion_model.") : -len(".weight")].replace(".", "_")
        out[base + ".lora_down.weight"] = torch.randn(rank, w.shape[1], generator=g) * scale / math.sqrt(w.shape[1])
        out[base + ".lora_up.weight"] = torch.randn(w.shape[0], rank, generator=g) * scale / math.sqrt(rank)
        out[base + ".alpha"] = torch.tensor(float(rank))
    return out


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
