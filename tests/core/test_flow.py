"""Flow-matching inversion for Flux (design Sec. 6), on toy velocity models (no ComfyUI)."""

from __future__ import annotations

import pytest
import torch
from comfyui_diffstyler.nodes.core import flow


def flux_like_sigmas(steps: int, shift: float = 3.0) -> torch.Tensor:
    """A shifted flow schedule like ComfyUI's "simple" on ModelSamplingFlux: descending from 1 to 0."""
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return (shift * t / (1 + (shift - 1) * t)).to(torch.float32)


def straight_model(x0: torch.Tensor, noise: torch.Tensor):
    """The exact velocity of the straight path ``x_s = s*noise + (1-s)*x0``: ``v = noise - x0`` everywhere."""
    v = noise - x0
    return lambda x, s: v


def nonlinear_model(seed: int = 0, dim: int = 6):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, dim, generator=g, dtype=torch.float64) / dim**0.5
    b = torch.randn(dim, generator=g, dtype=torch.float64)
    return lambda x, s: torch.tanh(x @ w) * 1.5 + b * (0.5 + s) - 0.8 * x * s


def test_grid_holds_every_sampling_sigma_and_cuts_intervals_equally():
    sigmas = flux_like_sigmas(5)
    for name, m in flow.FLOW_GRIDS.items():
        grid, keep = flow.flow_grid(sigmas, name)
        assert grid.shape[0] == 5 * m + 1 and grid.dtype == sigmas.dtype
        assert torch.all(grid[1:] > grid[:-1]), "the inversion grid ascends"
        assert torch.equal(grid[keep], sigmas), "every sampling sigma is on the grid, bit for bit"
        assert keep[0] == 5 * m and keep[-1] == 0
        for i in range(5):
            part = grid[i * m : (i + 1) * m + 1].double()
            steps = part[1:] - part[:-1]
            assert torch.allclose(steps, steps.mean().expand_as(steps), rtol=1e-5), f"{name}: unequal sub-steps"
        assert flow.grid_rows(5, name) == grid.shape[0] - 1


def test_straight_paths_invert_to_the_path_and_sample_back_exactly():
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    sigmas = flux_like_sigmas(6)
    predict = straight_model(x0, noise)
    for grid in flow.FLOW_GRIDS:
        traj = flow.invert_flow(predict, x0, sigmas, grid)
        assert traj.shape == (7, 2, 4, 3, 3)
        assert torch.equal(traj[-1], x0)
        for i, s in enumerate(sigmas.tolist()):  # x moves along +v: the inverted latent is on the path itself
            assert torch.allclose(traj[i], s * noise + (1 - s) * x0, atol=1e-5), (grid, i)
        back = flow.sample_euler(predict, traj[0], sigmas)
        assert flow.reconstruction_error(x0, back) < 1e-6, grid


def test_each_step_evaluates_the_current_latent_at_the_step_start():
    sigmas = flux_like_sigmas(3)
    calls = []

    def predict(x, s):
        calls.append((x.clone(), s))
        return torch.ones_like(x)

    x0 = torch.zeros(1, 2)
    grid, keep = flow.flow_grid(sigmas, "fine/2")
    last, kept = flow.walk_grid(predict, x0, grid, keep)
    assert len(calls) == 6
    assert calls[0][1] == 0.0 and torch.equal(calls[0][0], x0), "the first step evaluates the clean latent at 0"
    values = grid.tolist()
    for i, (x, s) in enumerate(calls):
        assert s == values[i]
        assert torch.allclose(x, torch.full_like(x, values[i])), "x at the step's start (v = 1: x == sigma)"
    assert sorted(kept) == sorted(keep) and torch.allclose(last, torch.full_like(last, values[-1]))


def test_finer_grid_reconstructs_better_on_a_nonlinear_model():
    predict = nonlinear_model()
    x0 = torch.randn(3, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    sigmas = flux_like_sigmas(8).double()
    errors = {}
    for grid in flow.FLOW_GRIDS:
        traj = flow.invert_flow(predict, x0, sigmas, grid)
        errors[grid] = flow.reconstruction_error(x0, flow.sample_euler(predict, traj[0], sigmas))
    ordered = [errors[g] for g in ("sampling", "fine/2", "fine/4", "fine/8")]
    assert all(a > b for a, b in zip(ordered, ordered[1:])), errors
    assert ordered[0] > 1e-3, "the toy must be nonlinear enough for the grid to matter"
    # Euler's errors of the two directions add on the coarse grid and only sampling's remains on fine ones
    assert 1.5 < ordered[0] / ordered[-1] < 2.5, errors


def test_pick_grid_takes_the_cheapest_within_twice_the_finest():
    errors = {"sampling": 0.30, "fine/2": 0.19, "fine/4": 0.15, "fine/8": 0.10}
    assert flow.pick_grid(errors) == "fine/2"
    assert flow.pick_grid({**errors, "fine/2": 0.21}) == "fine/4"
    assert flow.pick_grid({**errors, "sampling": 0.2}) == "sampling"
    assert flow.pick_grid({"fine/4": 1.0, "fine/8": 0.9}) == "fine/4"  # the finest measured, not fine/8 by name
    with pytest.raises(ValueError, match="no grid"):
        flow.pick_grid({})


def test_interrupt_from_the_step_hook_stops_the_walk():
    calls = []

    class StopError(Exception):
        pass

    def on_step(i, x, v):
        calls.append(i)
        if i == 2:
            raise StopError

    with pytest.raises(StopError):
        flow.invert_flow(lambda x, s: x, torch.ones(1, 2), flux_like_sigmas(4), "fine/2", on_step=on_step)
    assert calls == [0, 1, 2]


def test_bad_schedules_and_grids_are_refused():
    with pytest.raises(ValueError, match="inversion_grid: expected one of"):
        flow.flow_grid(flux_like_sigmas(3), "fine")
    with pytest.raises(ValueError, match="strictly descending"):
        flow.flow_grid(torch.tensor([1.0, 0.5, 0.5, 0.0]), "sampling")
    with pytest.raises(ValueError, match=r"lies in \[0, 1\]"):
        flow.flow_grid(torch.tensor([14.6, 1.0, 0.0]), "sampling")
    with pytest.raises(ValueError, match="at least 2 sigmas"):
        flow.flow_grid(torch.tensor([1.0]), "sampling")
    with pytest.raises(ValueError, match="at least 1 sub-step"):
        flow.flow_grid(flux_like_sigmas(3), 0)
