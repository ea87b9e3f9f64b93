"""What the benches and tests measure a run with: UNet calls and rows, a plain DDIM reference, network attempts, RSS.

Nothing here imports ComfyUI at module import time.
"""

from __future__ import annotations

import gc
import math
import os
import socket


def count_unet_calls(model, key: str = "diffstyler-count", on_call=None, calls: list | None = None) -> list[int]:
    """Add a keyed DIFFUSION_MODEL wrapper to ``model`` (a ModelPatcher) that records each UNet call's batch size
    (its rows; ``sum()`` of the list is the rows run) in ``calls`` (a new list when None: pass one list to count
    several models together). ``on_call(n)`` runs before the n-th call (1-based) goes through. Returns the (live)
    list of batch sizes."""
    import comfy.patcher_extension

    calls = [] if calls is None else calls

    def wrapper(executor, x, *args, **kwargs):
        calls.append(int(x.shape[0]))
        if on_call is not None:
            on_call(len(calls))
        return executor(x, *args, **kwargs)

    wrapper.diffstyler_cache_neutral = True  # it only observes: the content cache may serve its runs
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, key, wrapper)
    return calls


def plain_ddim(model, x_t_latent, steps, positive, negative, cfg, last: str = "released"):
    """Core DDIM sampling (ComfyUI's "ddim" sampler, no added noise) from an inverted latent on ddim_uniform.

    ``last='released'``: the last step goes to the model's smallest sigma (alphas_cumprod[0], as the released
    DiffStyler's diffusers DDIM with set_alpha_to_one false) and the result is that VP latent ``x * sqrt(alpha)``;
    ``last='zero'``: ComfyUI's own schedule down to sigma 0 (KSamplerAdvanced).
    """
    import comfy.sample
    import comfy.samplers
    import torch

    ms = model.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(ms, "ddim_uniform", steps).cpu()
    smin = float(ms.sigma_min)
    if last == "released":
        sigmas[-1] = smin
    out = comfy.sample.sample_custom(
        model,
        torch.zeros_like(x_t_latent),
        cfg,
        comfy.samplers.sampler_object("ddim"),
        sigmas,
        positive,
        negative,
        x_t_latent,
        disable_pbar=True,
        seed=0,
    )
    if last == "released":
        out = out / math.sqrt(1.0 + smin * smin)
    return out


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


def rss_bytes() -> int:
    """Resident set size of this process after ``gc.collect()`` (psutil when installed, else /proc/self/statm)."""
    gc.collect()
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
