"""Flow-matching inversion for Flux.1 (pure torch, no ComfyUI; design Sec. 6, "inversion").

Flow matching: ``x_s = s*noise + (1-s)*x0`` and the model predicts the velocity ``v = dx/ds`` (``noise - x0``);
ComfyUI's sampler sees a descending sigma list ``sigmas[0] > ... > sigmas[n]`` (``sigmas[n]`` usually 0). Plain
Euler sampling moves ``x`` along ``-v`` from ``sigmas[i]`` to ``sigmas[i+1]`` with ``v`` evaluated at the step's
start. The inversion is Euler on the flipped schedule: ``x`` moves along ``+v`` from ``s_prev`` to ``s``
(``s > s_prev``), the model evaluated on the current latent at the step's start (``x_prev`` at ``s_prev``).

Grids: the sampler's own sigmas (``sampling``), or each sampling interval cut into ``m`` equal sub-steps
(``fine/m``: the step divided by m). Whatever the grid, only the latents at the sampling sigmas are kept. The
model is a ``predict(x, sigma) -> v`` callable, so every function here runs on toy models as on a real one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Predict = Callable[[torch.Tensor, float], torch.Tensor]

# grid name -> sub-steps per sampling interval (``fine/m``: each interval's sigma step divided by m)
FLOW_GRIDS = {"sampling": 1, "fine/2": 2, "fine/4": 4, "fine/8": 8}
ERROR_RATIO = 2.0  # design Sec. 6: the default grid is the cheapest within 2x of the finest grid's error


def substeps(grid: str) -> int:
    """Sub-steps per sampling interval of the named grid; ValueError naming the known grids."""
    if grid not in FLOW_GRIDS:
        raise ValueError(f"inversion_grid: expected one of {list(FLOW_GRIDS)} for a flow model, got {grid!r}")
    return FLOW_GRIDS[grid]


def check_sigmas(sigmas: torch.Tensor) -> None:
    """ValueError unless ``sigmas`` is a 1-D strictly descending schedule ``[n+1]`` (n >= 1) in [0, 1]."""
    if not isinstance(sigmas, torch.Tensor) or sigmas.ndim != 1 or sigmas.shape[0] < 2:
        got = list(sigmas.shape) if isinstance(sigmas, torch.Tensor) else type(sigmas).__name__
        raise ValueError(f"sigmas: expected a 1-D schedule of at least 2 sigmas, got {got}")
    values = sigmas.tolist()
    if any(b >= a for a, b in zip(values, values[1:])):
        raise ValueError(f"sigmas: expected a strictly descending schedule, got {[round(v, 6) for v in values]}")
    if values[-1] < 0.0 or values[0] > 1.0:
        raise ValueError(
            f"sigmas: a flow-matching schedule lies in [0, 1], got {values[0]:.6g} .. {values[-1]:.6g}: "
            "use the sigmas of a flow model (Flux)"
        )


def flow_grid(sigmas: torch.Tensor, grid: str | int) -> tuple[torch.Tensor, list[int]]:
    """The ascending inversion grid for the descending sampling ``sigmas`` ``[n+1]``, and the grid index of each
    sampling sigma in the order of ``sigmas`` (so ``grid[keep[i]] == sigmas[i]``).

    ``grid``: a name from :data:`FLOW_GRIDS` or the sub-step count ``m``; each interval ``[sigmas[i+1], sigmas[i]]``
    is cut into ``m`` equal sub-steps. The grid holds every sampling sigma exactly (the same float values).
    """
    m = substeps(grid) if isinstance(grid, str) else int(grid)
    if m < 1:
        raise ValueError(f"inversion grid: expected at least 1 sub-step per interval, got {m}")
    check_sigmas(sigmas)
    asc = sigmas.detach().to("cpu", torch.float64).flip(0)
    points = [asc[:1]]
    for i in range(asc.shape[0] - 1):
        lo, hi = asc[i], asc[i + 1]
        inner = lo + (hi - lo) * torch.arange(1, m, dtype=torch.float64) / m
        points += [inner, asc[i + 1 : i + 2]]
    out = torch.cat(points).to(sigmas.dtype)
    n = sigmas.shape[0] - 1
    out[::m] = sigmas.detach().cpu().flip(0)  # the sampling sigmas themselves, bit for bit
    keep = [(n - i) * m for i in range(n + 1)]
    return out, keep


def grid_rows(steps: int, grid: str | int) -> int:
    """Model rows (evaluations per latent) the inversion of ``steps`` sampling steps costs on ``grid``."""
    return int(steps) * (substeps(grid) if isinstance(grid, str) else int(grid))


def euler_step(x: torch.Tensor, v: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """``x + v * (sigma_next - sigma)``: one Euler step of the flow ODE, either way (inversion: sigma_next > sigma)."""
    return x + v * (float(sigma_next) - float(sigma))


def walk_grid(
    predict: Predict,
    x: torch.Tensor,
    grid: torch.Tensor,
    keep: list[int] | set[int] = (),
    on_step: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Euler along the ascending ``grid`` from ``x`` at ``grid[0]``: each step ``grid[i] -> grid[i+1]`` evaluates
    ``predict`` on the current latent at ``grid[i]`` and moves along ``+v``. Returns the last latent and the latents
    at the grid indices in ``keep`` (``{index: latent}``). ``on_step(i, x_new, v)`` runs after each step (progress,
    interrupt: whatever it raises stops the walk)."""
    values = grid.tolist()
    keep = set(keep)
    kept = {0: x.clone()} if 0 in keep else {}
    for i in range(len(values) - 1):
        v = predict(x, values[i])
        x = euler_step(x, v, values[i], values[i + 1])
        if (i + 1) in keep:
            kept[i + 1] = x.clone()
        if on_step is not None:
            on_step(i, x, v)
    return x, kept


def invert_flow(
    predict: Predict,
    x0: torch.Tensor,
    sigmas: torch.Tensor,
    grid: str | int = "sampling",
    on_step: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Invert ``x0`` (the latent at ``sigmas[-1]``, the clean latent when it is 0) up to ``sigmas[0]``.

    Returns the trajectory ``[n+1, *x0.shape]`` in the order of ``sigmas``: ``traj[i]`` is the inverted latent at
    ``sigmas[i]``, ``traj[-1]`` is ``x0`` itself, ``traj[0]`` where sampling starts.
    """
    ascending, keep = flow_grid(sigmas, grid)
    _, kept = walk_grid(predict, x0, ascending, keep, on_step)
    return torch.stack([kept[j] for j in keep])


def sample_euler(predict: Predict, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Plain Euler sampling from ``x`` at ``sigmas[0]`` down the descending ``sigmas`` (ComfyUI's "euler" sampler on
    a flow model): the reference the inversion is measured against."""
    values = sigmas.tolist()
    for i in range(len(values) - 1):
        x = euler_step(x, predict(x, values[i]), values[i], values[i + 1])
    return x


def reconstruction_error(x0: torch.Tensor, reconstructed: torch.Tensor) -> float:
    """Relative error ``||reconstructed - x0|| / ||x0||`` (Frobenius over the whole batch)."""
    return float((reconstructed.double() - x0.double()).norm() / x0.double().norm().clamp_min(1e-12))


def pick_grid(errors: dict[str, float], steps: int = 1) -> str:
    """Design Sec. 6's default: the cheapest grid (fewest rows) whose reconstruction error is within
    :data:`ERROR_RATIO` of the finest grid measured (most rows). ``errors``: grid name -> error."""
    if not errors:
        raise ValueError("pick_grid: no grid errors measured")
    by_cost = sorted(errors, key=lambda g: grid_rows(steps, g))
    finest = errors[by_cost[-1]]
    return next(g for g in by_cost if errors[g] <= ERROR_RATIO * finest)
