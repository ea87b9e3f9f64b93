"""Helpers for the reliability tests (issue #8) and ``bench/soak.py``.

* API-format graphs: the two-style DiffStyler graph of ``tests/comfy/test_core.py::test_graph_two_styles``
  (:func:`two_style_prompt`, inputs written by :func:`write_two_style_inputs`) and a plain core KSampler graph
  (:func:`core_ksampler_prompt`).
* :class:`ModelProbe` - a fixed short core DDIM sampling of a MODEL, to show a MODEL is bit-identical to what it
  was (nothing left patched) after an error or an interrupt.
* :class:`NetworkGuard` - records and refuses every outgoing connection and DNS lookup.
* :func:`count_unet_calls` / :class:`Interrupter` - count UNet calls through a keyed DIFFUSION_MODEL wrapper and
  fire ComfyUI's interrupt from inside a run.
* :func:`bootstrap` - in-process ComfyUI with the pack for scripts (the soak), the way the test fixtures do it.

Nothing here imports ComfyUI at module import time.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import socket
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
SUPPORT = TESTS / "support"
LORA_NAMES = ("rel_style20.safetensors", "rel_style21.safetensors")
CONTENT_IMAGE = "rel_deer.png"
MASK_IMAGES = ("rel_left.png", "rel_right.png")


# ---------------------------------------------------------------------------------------------- graphs


def write_two_style_inputs(home, model, size: int = 64) -> None:
    """The content picture, a left/right mask pair and two random style LoRAs (seeds 20, 21) for ``model``."""
    import dst_core
    import numpy as np
    import safetensors.torch
    from PIL import Image

    rng = np.random.default_rng(1)
    Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(home.input / CONTENT_IMAGE)
    left = np.zeros((size, size), np.uint8)
    left[:, : size // 2] = 255
    Image.fromarray(left).save(home.input / MASK_IMAGES[0])
    Image.fromarray(255 - left).save(home.input / MASK_IMAGES[1])
    for seed, name in zip((20, 21), LORA_NAMES):
        path = home.models / "loras" / name
        if not path.exists():
            safetensors.torch.save_file(dst_core.random_lora(model, seed=seed), str(path))


def two_style_prompt(
    checkpoint: str,
    steps: int = 4,
    cfg: float = 10.5,
    strength2: float = 0.8,
    save: bool = False,
    grid: str = "sampling",
) -> dict:
    """test_graph_two_styles' graph: checkpoint -> VAE Encode -> DDIM Inversion -> two Style LoRA Loaders ->
    Injector -> Masked Feature Fusion Sampler -> VAE Decode -> Preview/Save Image. Node "15" is the sampler.
    ``grid``: the inversion grid (the sampler's own steps by default, for speed; the node's default is fine)."""

    def enc(text):
        return {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["1", 1]}}

    def mask(name):
        return {"class_type": "LoadImageMask", "inputs": {"image": name, "channel": "red"}}

    out = (
        {"class_type": "SaveImage", "inputs": {"images": ["16", 0], "filename_prefix": "diffstyler_reliability"}}
        if save
        else {"class_type": "PreviewImage", "inputs": {"images": ["16", 0]}}
    )
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "DiffStylerTestTinyVAE", "inputs": {"seed": 0}},
        "3": {"class_type": "LoadImage", "inputs": {"image": CONTENT_IMAGE}},
        "4": {"class_type": "VAEEncode", "inputs": {"pixels": ["3", 0], "vae": ["2", 0]}},
        "5": {
            "class_type": "DiffStylerInvert",
            "inputs": {"model": ["1", 0], "latent": ["4", 0], "steps": steps, "clip": ["1", 1], "inversion_grid": grid},
        },
        "6": enc("painting of <sss>, deer"),
        "7": enc("sketch of <ttt>, grass"),
        "8": enc("a deer on grass"),
        "9": enc("ugly, blurry, black, low res, unrealistic"),
        "10": mask(MASK_IMAGES[0]),
        "11": mask(MASK_IMAGES[1]),
        "12": {
            "class_type": "DiffStylerStyleLoRA",
            "inputs": {"lora_name": LORA_NAMES[0], "strength": 1.0, "conditioning": ["6", 0], "mask": ["10", 0]},
        },
        "13": {
            "class_type": "DiffStylerStyleLoRA",
            "inputs": {
                "lora_name": LORA_NAMES[1],
                "strength": strength2,
                "conditioning": ["7", 0],
                "mask": ["11", 0],
                "styles": ["12", 0],
            },
        },
        "14": {
            "class_type": "DiffStylerCrossLoRAInjector",
            "inputs": {
                "model": ["1", 0],
                "styles": ["13", 0],
                "feature_injection_end": 0.6,
                "qk_injection_end": 0.5,
                "qk_blend": "adaptive",
                "lora_in_injected_attention": True,
            },
        },
        "15": {
            "class_type": "DiffStylerMaskedFusionSampler",
            "inputs": {
                "model": ["14", 0],
                "inversion": ["5", 0],
                "positive": ["8", 0],
                "negative": ["9", 0],
                "cfg": cfg,
                "background": "exact",
                "styles": ["13", 0],
            },
        },
        "16": {"class_type": "VAEDecode", "inputs": {"samples": ["15", 0], "vae": ["2", 0]}},
        "17": out,
    }


def core_ksampler_prompt(checkpoint: str, model_from=("1", 0), seed: int = 3, steps: int = 4, prefix="k") -> dict:
    """A plain core graph: checkpoint -> CLIP Text Encode x2 -> KSampler (euler) -> VAE Decode (tiny) -> Preview.

    Node ids carry ``prefix`` so the graph can be merged into another; ``model_from`` is the MODEL link.
    """
    p = prefix
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        f"{p}2": {"class_type": "DiffStylerTestTinyVAE", "inputs": {"seed": 0}},
        f"{p}3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a deer on grass", "clip": ["1", 1]}},
        f"{p}4": {"class_type": "CLIPTextEncode", "inputs": {"text": "ugly, blurry", "clip": ["1", 1]}},
        f"{p}5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        f"{p}6": {
            "class_type": "KSampler",
            "inputs": {
                "model": list(model_from),
                "seed": seed,
                "steps": steps,
                "cfg": 6.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "positive": [f"{p}3", 0],
                "negative": [f"{p}4", 0],
                "latent_image": [f"{p}5", 0],
                "denoise": 1.0,
            },
        },
        f"{p}7": {"class_type": "VAEDecode", "inputs": {"samples": [f"{p}6", 0], "vae": [f"{p}2", 0]}},
        f"{p}8": {"class_type": "PreviewImage", "inputs": {"images": [f"{p}7", 0]}},
    }


# ---------------------------------------------------------------------------------------------- model state


class ModelProbe:
    """A fixed 2-step core DDIM sampling (cfg 1: one UNet row per step) of ``model``, recorded at creation.

    It runs through ``comfy.sample`` and model management, so wrappers, attention replaces and object patches
    left on the MODEL (or on its shared BaseModel) would show in :meth:`output`.
    """

    def __init__(self, model, positive, negative=None):
        import torch

        self.model = model
        self.positive, self.negative = positive, positive if negative is None else negative
        self.latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1234))
        self.reference = self.output()

    def output(self, model=None):
        import dst_core

        return dst_core.plain_ddim(model or self.model, self.latent.clone(), 2, self.positive, self.negative, 1.0)

    def unchanged(self, model=None) -> bool:
        import torch

        return torch.equal(self.output(model), self.reference)


def attachment_run(model):
    """The DiffStyler run plan a patched MODEL holds (None when no run is active or the MODEL is not patched)."""
    state = model.get_attachment("diffstyler")
    return None if state is None else (state.run, state.call)


# ---------------------------------------------------------------------------------------------- network


class NetworkGuard:
    """Refuses and records every outgoing connection and DNS lookup while installed.

    The refusal raises ``OSError``; ``attempts`` keeps every try, also the ones a library catches and hides.
    """

    def __init__(self):
        self.attempts: list[str] = []
        self._saved: list[tuple[object, str, object]] = []

    def _refuse(self, what):
        def refuse(*args, **kwargs):
            target = args[1:] if what.startswith("socket.") and len(args) > 1 else args
            self.attempts.append(f"{what}{target!r}")
            raise OSError(f"network access attempted: {what}{target!r}")

        return refuse

    def install(self) -> NetworkGuard:
        for owner, name, label in (
            (socket.socket, "connect", "socket.connect"),
            (socket.socket, "connect_ex", "socket.connect_ex"),
            (socket, "create_connection", "create_connection"),
            (socket, "getaddrinfo", "getaddrinfo"),
        ):
            self._saved.append((owner, name, getattr(owner, name)))
            setattr(owner, name, self._refuse(label))
        return self

    def uninstall(self) -> None:
        while self._saved:
            owner, name, original = self._saved.pop()
            setattr(owner, name, original)


# ---------------------------------------------------------------------------------------------- UNet calls


def count_unet_calls(model, key: str = "reliability-count", on_call=None) -> list[int]:
    """Add a keyed DIFFUSION_MODEL wrapper to ``model`` (a ModelPatcher) that records each UNet call's batch size.

    ``on_call(n)`` runs before the n-th call (1-based) goes through. Returns the (live) list of batch sizes.
    """
    import comfy.patcher_extension

    calls: list[int] = []

    def wrapper(executor, x, *args, **kwargs):
        calls.append(int(x.shape[0]))
        if on_call is not None:
            on_call(len(calls))
        return executor(x, *args, **kwargs)

    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, key, wrapper)
    return calls


class Interrupter:
    """Fires ``comfy.model_management.interrupt_current_processing(True)`` at the ``at``-th event it sees and counts
    how many UNet calls start afterwards (:attr:`calls_after`)."""

    def __init__(self, at: int):
        self.at = at
        self.events = 0
        self.fired = False
        self.calls_after = 0

    def event(self, *_args, **_kwargs) -> None:
        import comfy.model_management

        self.events += 1
        if self.events == self.at and not self.fired:
            self.fired = True
            comfy.model_management.interrupt_current_processing(True)

    def unet_call(self, _n: int) -> None:
        if self.fired:
            self.calls_after += 1


def clear_interrupt() -> None:
    import comfy.model_management

    comfy.model_management.interrupt_current_processing(False)


# ---------------------------------------------------------------------------------------------- process


@contextlib.contextmanager
def torch_threads(n: int = 1):
    """Run with ``n`` torch CPU threads, then restore the previous count.

    The tiny test models run hundreds of small ops per UNet call; on a busy 2-core machine every OpenMP barrier of a
    2-thread pool can wait for a descheduled thread (measured here under load: 7.1 s per tiny UNet call with 2
    threads, 0.036 s with 1).
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def rss_bytes() -> int:
    """Resident set size of this process (psutil when installed, else /proc/self/statm)."""
    gc.collect()
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_growth(fn):
    """Run ``fn()``; return ``(its result, peak RSS growth in bytes over the RSS before)``, polled every 5 ms."""
    import threading
    import time

    import psutil

    proc = psutil.Process()
    gc.collect()
    start = proc.memory_info().rss
    peak = [start]
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.005)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        result = fn()
    finally:
        stop.set()
        thread.join()
    peak[0] = max(peak[0], proc.memory_info().rss)
    return result, peak[0] - start


class LogRecords(logging.Handler):
    """Collects the messages logged under ``logger_name`` while used as a context manager."""

    def __init__(self, logger_name: str = "comfyui_diffstyler", level: int = logging.WARNING):
        super().__init__(level)
        self.logger_name = logger_name
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())

    def __enter__(self) -> LogRecords:
        logging.getLogger(self.logger_name).addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger(self.logger_name).removeHandler(self)


def bootstrap(base: Path):
    """In-process ComfyUI (CPU) with the pack and the test pack registered, folders under ``base``.

    Returns ``(home, tiny)`` as the ``comfy_home`` and ``tiny`` fixtures do (``tests/conftest.py`` finds ComfyUI
    and loads the pack as a package; importing it needs pytest, a dev dependency).
    """
    for p in (str(SUPPORT), str(TESTS)):
        if p not in sys.path:
            sys.path.insert(0, p)
    import conftest

    if conftest.COMFYUI is None:
        raise SystemExit("ComfyUI not found: set COMFYUI_PATH or stage it at ~/ComfyUI")
    import comfy_setup

    home = comfy_setup.setup(conftest.COMFYUI, Path(base))
    return home, comfy_setup.tiny_models(home)
