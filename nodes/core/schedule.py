"""Step bookkeeping shared by inversion and sampling (pure torch, no ComfyUI).

ComfyUI samplers work in k-diffusion space: ``x = x0 + sigma * eps`` (EPS models) and a
sampler sees a descending sigma list ``sigmas[0] > ... > sigmas[n] = 0``. DDIM with eta 0 is
the Euler step in that space; DDIM inversion is the same step taken on the flipped list with the
noise prediction evaluated at the target sigma (paper Sec. 3.1, "DDIM inversion").
"""

from __future__ import annotations

import math

import torch


def ddim_step(x: torch.Tensor, eps: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """One deterministic DDIM (eta 0) step ``x_next = x + eps * (sigma_next - sigma)``.

    ``x`` and ``eps`` are ``[B,C,h,w]`` in k-diffusion space. Used forwards (sampling, sigma
    decreasing) and backwards (inversion, sigma increasing).
    """
    return x + eps * (sigma_next - sigma)


def find_sigma_index(sigmas: torch.Tensor, sigma: float | torch.Tensor, rtol: float = 1e-4) -> int:
    """Index of ``sigma`` in the 1-D schedule ``sigmas`` (exact up to ``rtol``), or -1 when absent.

    The lookup is by value, so it is independent of how a sampler counts its steps.
    """
    s = float(sigma)
    values = sigmas.tolist()  # in Python: no tensor ops (nor kernels) per sampling step
    diffs = [abs(v - s) for v in values]
    i = min(range(len(diffs)), key=diffs.__getitem__)
    tol = rtol * max(abs(s), 1e-6) + 1e-8
    return i if diffs[i] <= tol else -1


def window_steps(end_fraction: float, steps: int) -> int:
    """How many leading sampling steps fall inside an injection window ending at ``end_fraction``.

    The reference configuration injects ResBlock features for 30 of 50 steps (0.6) and Q/K for
    25 of 50 (0.5); ``round`` keeps those counts exact for any step count.
    """
    if not 0.0 <= end_fraction <= 1.0:
        raise ValueError(f"injection end must be a fraction of the steps in [0, 1], got {end_fraction}")
    return int(math.floor(end_fraction * steps + 0.5))


def in_window(step_index: int, end_fraction: float, steps: int) -> bool:
    """True while sampling step ``step_index`` (0 = first, noisiest) is inside the window."""
    return 0 <= step_index < window_steps(end_fraction, steps)


def qk_blend_ratio(timestep: float, mode: str) -> float:
    """Weight of the content branch in the Q/K blend (paper Sec. 3.2, adaptive fusion).

    ``adaptive``: ``r = min(1, 2 t / 1000)`` with ``t`` the model timestep (0..999);
    ``replace``: ``r = 1`` (plain Plug-and-Play behaviour).
    """
    if mode == "replace":
        return 1.0
    if mode == "adaptive":
        return min(1.0, 2.0 * float(timestep) / 1000.0)
    raise ValueError(f"qk_blend must be 'adaptive' or 'replace', got {mode!r}")


def blend_qk_(style: torch.Tensor, content: torch.Tensor, ratio: float) -> None:
    """``style = ratio * content + (1 - ratio) * style`` in place (one kernel; ``content`` broadcasts to ``style``)."""
    if ratio >= 1.0:
        style.copy_(content)
    elif ratio > 0.0:
        style.lerp_(content.to(style.dtype), ratio)


# inversion grids (design Sec. 5): the released pipeline inverts on every timestep t = 1, 2, ... (``fine``); the
# others are cheaper options of ours. The value is the stride between grid timesteps; 0 keeps only the sampling
# timesteps (the sampler's own schedule). Every grid holds every sampling timestep.
GRIDS = {"fine": 1, "fine/2": 2, "fine/5": 5, "fine/10": 10, "sampling": 0}


def inversion_grid(sampling_timesteps: list[int], grid: str) -> list[int]:
    """Ascending model timesteps ``[0, ..., t_first]`` the inversion walks (``t_first``: the first, noisiest
    sampling timestep, where sampling starts; nothing beyond it is needed). 0 is the clean latent's level
    (alphas_cumprod[0]); then every ``GRIDS[grid]``-th timestep from 1, and every sampling timestep."""
    if grid not in GRIDS:
        raise ValueError(f"inversion_grid: expected one of {list(GRIDS)}, got {grid!r}")
    ts = sorted({int(t) for t in sampling_timesteps if int(t) > 0})
    if not ts:
        raise ValueError("inversion: the sampling schedule has no timestep above 0")
    points = set(ts)
    stride = GRIDS[grid]
    if stride:
        points |= set(range(1, ts[-1] + 1, stride))
    return [0, *sorted(points)]
