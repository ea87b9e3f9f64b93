"""Flow-matching inversion of a Flux MODEL through ComfyUI's sampler machinery (design Sec. 6, issue #26 item 2).

The adapter must compute exactly what the pure core computes with the model's own velocity (Euler on the flipped
schedule, guidance 1.0, the velocity at sigma 0 included), keep the latents at the sampling sigmas only, report
progress and stop on ComfyUI's interrupt as the DDIM inversion does, and refuse what it cannot invert.
"""

from __future__ import annotations

import logging

import pytest
import torch
from comfyui_diffstyler.nodes.harness import executor as comfy_host

STEPS = 3


@pytest.fixture(scope="module")
def mods(pack):
    from comfyui_diffstyler.nodes.adapters import flux_inversion
    from comfyui_diffstyler.nodes.core import flow
    from comfyui_diffstyler.nodes.harness import tiny_flux

    class M:
        pass

    m = M()
    m.fi, m.flow, m.tf = flux_inversion, flow, tiny_flux
    return m


@pytest.fixture(scope="module")
def dev(mods):
    spec = mods.tf.TinyFlux(seed=4)
    return spec, mods.tf.build_model(spec)


@pytest.fixture(scope="module")
def content(mods):
    return mods.tf.latent(8, 8, seed=3)


def empty_prompt(mods, spec):
    return mods.tf.conditioning(spec, tokens=16, seed=9, guidance=None)


@pytest.mark.parametrize("grid", ["sampling", "fine/2"])
def test_adapter_equals_the_core_on_the_models_own_velocity(mods, dev, content, grid):
    spec, model = dev
    empty = empty_prompt(mods, spec)
    inv = mods.fi.invert(model, content, STEPS, empty, grid=grid, disable_pbar=True)
    sigmas = mods.fi.sampling_sigmas(model, STEPS)
    assert torch.equal(inv.sigmas, sigmas) and float(sigmas[0]) == pytest.approx(1.0) and float(sigmas[-1]) == 0.0
    assert inv.trajectory.shape == (STEPS + 1, *content.shape)
    assert inv.unet_rows == mods.flow.grid_rows(STEPS, grid) and inv.grid == grid
    clean = model.model.process_latent_in(content)
    assert torch.equal(inv.trajectory[-1], clean), "the last entry is the clean content latent (model space)"
    assert all(c[1]["guidance"] == 1.0 for c in inv.conditioning), "inverted at guidance 1.0"

    def velocity(guidance):
        cond = [[empty[0][0], {**empty[0][1], "guidance": guidance}]]
        return lambda x, s: mods.tf.comfy_velocity(model, x, s, cond)

    want = mods.flow.invert_flow(velocity(1.0), clean, sigmas, grid)
    assert float((inv.trajectory - want).abs().max()) <= 1e-6 * float(want.abs().max())
    # guidance 1.0 is what was used: the model's default 3.5 gives another trajectory
    other = mods.flow.invert_flow(velocity(3.5), clean, sigmas, grid)
    assert float((inv.trajectory - other).abs().max()) > 1e-4 * float(want.abs().max())


def test_schnell_inverts_without_guidance(mods, content):
    spec = mods.tf.TinyFlux(guidance=False, seed=5)
    model = mods.tf.build_model(spec)
    empty = empty_prompt(mods, spec)
    inv = mods.fi.invert(model, content, STEPS, empty, grid="sampling", disable_pbar=True)
    sigmas = mods.fi.sampling_sigmas(model, STEPS)
    clean = model.model.process_latent_in(content)
    want = mods.flow.invert_flow(lambda x, s: mods.tf.comfy_velocity(model, x, s, empty), clean, sigmas, "sampling")
    assert float((inv.trajectory - want).abs().max()) <= 1e-6 * float(want.abs().max())


def test_finer_grids_reconstruct_better_and_the_rule_picks_a_default(mods, dev, content, caplog):
    """Invert on each grid, sample back with plain Euler and the same empty prompt: the finer the grid, the closer
    the content comes back (the measured errors and rows are logged)."""
    spec, model = dev
    empty = empty_prompt(mods, spec)
    errors, rows = {}, {}
    for grid in mods.flow.FLOW_GRIDS:
        inv = mods.fi.invert(model, content, STEPS, empty, grid=grid, disable_pbar=True)
        back = mods.fi.sample_euler(model, inv.trajectory[0], inv.sigmas, inv.conditioning)
        errors[grid], rows[grid] = mods.flow.reconstruction_error(content, back), inv.unet_rows
    order = list(mods.flow.FLOW_GRIDS)
    assert all(errors[a] > errors[b] for a, b in zip(order, order[1:])), errors
    assert errors["fine/8"] < 0.5, "the tiny model's flow is smooth enough to come back close"
    assert [rows[g] for g in order] == [STEPS, 2 * STEPS, 4 * STEPS, 8 * STEPS]
    pick = mods.flow.pick_grid(errors, STEPS)
    assert errors[pick] <= 2 * errors["fine/8"]
    logging.getLogger(__name__).warning(
        "flow inversion, tiny Flux dev, %d steps: %s; default by the 2x rule: %s",
        STEPS,
        ", ".join(f"{g} {errors[g]:.4f} ({rows[g]} rows)" for g in order),
        pick,
    )


def test_progress_reaches_every_grid_step(mods, dev, content):
    spec, model = dev
    seen = []
    with comfy_host.progress_hook(lambda value, total, *a, **k: seen.append((value, total))):
        mods.fi.invert(model, content, STEPS, empty_prompt(mods, spec), grid="fine/2", disable_pbar=True)
    assert seen and seen[-1] == (2 * STEPS, 2 * STEPS)


def test_interrupt_stops_within_one_step(mods, dev, content):
    import comfy.model_management
    import comfy.patcher_extension

    spec, model = dev
    counted = model.clone()
    calls = []

    def count(executor, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            comfy.model_management.interrupt_current_processing(True)
        return executor(*args, **kwargs)

    counted.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test-count", count)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            mods.fi.invert(counted, content, STEPS, empty_prompt(mods, spec), grid="fine/4", disable_pbar=True)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert len(calls) == 2, "no model call starts after the interrupt"
    again = mods.fi.invert(model, content, STEPS, empty_prompt(mods, spec), grid="sampling", disable_pbar=True)
    assert torch.isfinite(again.trajectory).all()


def test_refuses_what_it_cannot_invert(mods, dev, content, tiny):
    spec, model = dev
    empty = empty_prompt(mods, spec)
    with pytest.raises(ValueError, match="flow-matching inversion needs a flow model .* use DDIM inversion"):
        mods.fi.invert(tiny.model, torch.zeros(1, 4, 8, 8), STEPS, empty)
    with pytest.raises(ValueError, match="inversion_grid: expected one of .*'fine'"):
        mods.fi.invert(model, content, STEPS, empty, grid="fine")
    with pytest.raises(ValueError, match="latent has 4 channels but this model expects 16"):
        mods.fi.invert(model, torch.zeros(1, 4, 8, 8), STEPS, empty)
    with pytest.raises(ValueError, match="steps: expected at least 1"):
        mods.fi.invert(model, content, 0, empty)
    with pytest.raises(ValueError, match="scheduler: expected one of"):
        mods.fi.invert(model, content, STEPS, empty, scheduler="nope")
