"""Styles in time, finished (issue 25): an ended style's region goes on with the base model, and one run split
across two samplers (ComfyUI's SplitSigmas + two SamplerCustomAdvanced) equals one run."""

from __future__ import annotations

import dst_core
import pytest
import torch
from dst_fixtures import content, inverted, mods, one_torch_thread, prompts  # noqa: F401 - fixtures
from test_core import STEPS, half_mask, inject
from test_styles_in_time import active_steps, record_calls, sample, timed_styles


def left(t: torch.Tensor) -> torch.Tensor:
    return t[..., :4]


def right(t: torch.Tensor) -> torch.Tensor:
    return t[..., 4:]


def test_an_ended_style_goes_on_with_the_base_model_in_its_region(tiny, mods, inverted, prompts):
    """Exact background, a style on 0-0.5 and nothing after: its region is restyled (not reset to the content), the
    rest of the picture is the content bit for bit; the steps after its end run the base branch (its LoRA-free
    content row, cond, uncond) for that region; the result differs from the style on 0-1."""
    lora = dst_core.random_lora(tiny.model, seed=46)
    mask = half_mask(left=True)  # latent columns 0-3
    early = timed_styles(mods, [(lora, prompts["style"], mask, 0.0, 0.5)])
    whole = timed_styles(mods, [(lora, prompts["style"], mask, 0.0, 1.0)])
    p_early, p_whole = inject(mods, tiny.model, early, 0.6, 0.5), inject(mods, tiny.model, whole, 0.6, 0.5)
    calls = record_calls(mods, p_early)
    x = sample(mods, p_early, inverted, prompts, early, "exact")
    y = sample(mods, p_whole, inverted, prompts, whole, "exact")
    c = inverted.content_latent
    assert torch.equal(right(x), right(c)), "outside the region the content latent, bit for bit"
    gap_content = float((left(x) - left(c)).abs().max())
    gap_whole = float((left(x) - left(y)).abs().max())
    print(f"\nstyle on 0-0.5 then the base model: vs content {gap_content:.3e}, vs the style on 0-1 {gap_whole:.3e}")
    assert gap_content > 1e-3 and gap_whole > 1e-4
    n_active = len(active_steps(tiny, 0.0, 0.5, inverted.sigmas))
    assert [s for s, _r, _l in calls] == list(range(STEPS)), "one call per step, the base branch after the end"
    for step, rows, loras in calls:
        assert rows == 3, (step, rows)  # the style's or the base branch's content row + cond + uncond
        assert loras == ((0,) if step < n_active else ()), (step, loras)
    print(f"rows per step: style on 0-0.5 then the base branch {sum(r for _s, r, _l in calls) / STEPS:.1f}")


def test_a_style_that_starts_late_follows_the_inversion_until_it_starts(tiny, mods, inverted, prompts):
    """Before a style's range begins its region is untouched: the exact background (no base rows at all)."""
    lora = dst_core.random_lora(tiny.model, seed=52)
    late = timed_styles(mods, [(lora, prompts["style"], half_mask(left=True), 0.5, 1.0)])
    patched = inject(mods, tiny.model, late, 0.6, 0.5)
    calls = record_calls(mods, patched)
    out = sample(mods, patched, inverted, prompts, late, "exact")
    first = active_steps(tiny, 0.5, 1.0, inverted.sigmas)[0]
    assert [s for s, _r, _l in calls] == list(range(first, STEPS)), "no UNet call before the style starts"
    assert torch.equal(right(out), right(inverted.content_latent))
    assert not torch.equal(left(out), left(inverted.content_latent))


def test_region_mask_covers_every_style_that_ran_and_no_empty_range(tiny, mods, prompts):
    """Region Mask pastes where the final latent is not the content's: every style active at some step (an ended
    style included), never a style whose range is empty."""
    from comfyui_diffstyler.nodes.region import DiffStylerRegionMask

    image = torch.rand(1, 64, 64, 3)
    ended = timed_styles(mods, [(None, prompts["style"], half_mask(left=True), 0.0, 0.5)])
    empty = timed_styles(mods, [(None, prompts["style"], half_mask(left=True), 0.3, 0.3)])
    m_ended = DiffStylerRegionMask.execute(ended, image, tiny.vae, 0, True).args[0]
    m_empty = DiffStylerRegionMask.execute(empty, image, tiny.vae, 0, True).args[0]
    assert float(m_ended[..., :32].min()) == 1.0 and float(m_ended[..., 32:].max()) == 0.0
    assert float(m_empty.max()) == 0.0, "a style that never runs leaves the original pixels"


def split_run(mods, patched, inverted, prompts, styles, background, at, cfg=7.5):
    """Two SamplerCustomAdvanced (ComfyUI's node) in a row, each with a DiffStyler guider, on SplitSigmas' halves."""
    from comfy_extras import nodes_custom_sampler as ncs
    from comfyui_diffstyler.nodes.sample import DiffStylerDDIMSampler, DiffStylerGuiderNode, DiffStylerInversionSigmas

    sigmas = DiffStylerInversionSigmas.execute(inverted).args[0]
    high, low = ncs.SplitSigmas.execute(sigmas, at).args
    sampler = DiffStylerDDIMSampler.execute().args[0]
    noise = ncs.Noise_EmptyNoise()
    latent = {"samples": mods.inv.latent_out(patched, inverted.trajectory[0])}
    outs = []
    for part in (high, low):
        guider = DiffStylerGuiderNode.execute(
            patched, inverted, prompts["base"], prompts["neg"], cfg, background, styles
        ).args[0]
        latent = ncs.SamplerCustomAdvanced.execute(noise, guider, sampler, part, latent).args[0]
        outs.append(latent["samples"])
    return outs


@pytest.mark.parametrize(("background", "at"), [("exact", 4), ("model", 6)])
def test_one_run_split_across_two_samplers_equals_one_run(tiny, mods, inverted, prompts, background, at):
    """SplitSigmas at step ``at`` + two SamplerCustomAdvanced with a DiffStyler guider each = the whole run on all
    the sigmas (two styles, one of them timed, so windows and ranges cross the split)."""
    a = dst_core.random_lora(tiny.model, seed=53)
    b = dst_core.random_lora(tiny.model, seed=54)
    styles = timed_styles(
        mods,
        [
            (a, prompts["style"], half_mask(left=True), 0.0, 1.0),
            (b, prompts["style2"], half_mask(left=False), 0.2, 0.8),
        ],
    )
    patched = inject(mods, tiny.model, styles, 0.6, 0.5)
    whole = mods.sample.DiffStylerMaskedFusionSampler.execute(
        patched, inverted, prompts["base"], prompts["neg"], 7.5, background, styles
    ).args[0]["samples"]
    first, second = split_run(mods, patched, inverted, prompts, styles, background, at)
    rel = float((second - whole).norm() / whole.norm())
    print(f"\none run vs two samplers split at step {at} ({background}): relative difference {rel:.2e}")
    assert rel <= 1e-5
    assert not torch.allclose(first, whole, rtol=1e-3), "the first half alone stops at its own sigma"


def test_a_slice_off_the_inversion_schedule_is_refused_with_the_fix(tiny, mods, inverted, prompts):
    from comfyui_diffstyler.nodes.adapters.ddim import ddim_sampler
    from comfyui_diffstyler.nodes.adapters.guider import DiffStylerGuider

    styles = timed_styles(mods, [(None, prompts["style"], half_mask(), 0.0, 1.0)])
    guider = DiffStylerGuider(inject(mods, tiny.model, styles), inverted, styles, prompts["base"], prompts["neg"], 7.5)
    lat = inverted.content_latent
    off = inverted.sigmas[2:6].clone() * 1.01  # the right length, not on the schedule
    with pytest.raises(ValueError, match="not a slice of the inversion's schedule .* SplitSigmas"):
        guider.sample(lat * 0, lat, ddim_sampler(), off)
    gap = torch.cat([inverted.sigmas[:3], inverted.sigmas[4:]])  # a step missing
    with pytest.raises(ValueError, match="not a slice of the inversion's schedule"):
        guider.sample(lat * 0, lat, ddim_sampler(), gap)
