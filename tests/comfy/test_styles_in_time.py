"""Styles combined in time (issue 21): a step range per style, hand-over between styles, rows per step, bad input."""

from __future__ import annotations

import dst_core
import pytest
import torch
from dst_fixtures import content, inverted, mods, one_torch_thread, prompts  # noqa: F401 - fixtures
from test_core import STEPS, half_mask, inject


def timed_styles(mods, items):
    """items: (lora, prompt, mask, start_percent, end_percent) in chain order."""
    styles = None
    for lora, cond, mask, start, end in items:
        styles = mods.style.DiffStylerStyleLoRA.execute(
            "None", 1.0, cond, mask, lora=lora, styles=styles, start_percent=start, end_percent=end
        ).args[0]
    return styles


def record_calls(mods, patched):
    """Per UNet call: (sampling step, rows, the styles whose LoRA rows it carries)."""
    calls = []
    state = mods.install.state_of(patched)

    def wrapper(executor, x, t, *args, **kwargs):
        sig = state.run.sample_sigmas
        step = int((sig[:-1] - float(state.run.model_sampling.sigma(t[:1]).float())).abs().argmin())
        calls.append((step, x.shape[0], tuple(sorted(state.call.lora_rows))))
        return executor(x, t, *args, **kwargs)

    import comfy.patcher_extension

    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "rows", wrapper)
    return calls


def sample(mods, patched, inverted, prompts, styles, background="exact", cfg=7.5):
    out = mods.sample.DiffStylerMaskedFusionSampler.execute(
        patched, inverted, prompts["base"], prompts["neg"], cfg, background, styles
    )
    return out.args[0]["samples"]


def active_steps(tiny, start: float, end: float, sigmas: torch.Tensor) -> list[int]:
    """ComfyUI's own rule for a conditioning's timestep range, on the sampler's steps."""
    ms = tiny.model.get_model_object("model_sampling")
    hi, lo = ms.percent_to_sigma(start), ms.percent_to_sigma(end)
    return [i for i, s in enumerate(sigmas[:-1].tolist()) if lo <= s <= hi]


@pytest.mark.parametrize("background", ["exact", "model"])
def test_a_style_with_an_empty_range_is_exactly_absent(tiny, mods, inverted, prompts, background):
    a = dst_core.random_lora(tiny.model, seed=41)
    b = dst_core.random_lora(tiny.model, seed=42)
    with_empty = timed_styles(
        mods,
        [
            (a, prompts["style"], half_mask(left=True), 0.0, 1.0),
            (b, prompts["style2"], torch.ones(1, 64, 64), 0.3, 0.3),
        ],
    )
    alone = timed_styles(mods, [(a, prompts["style"], half_mask(left=True), 0.0, 1.0)])
    p_empty = inject(mods, tiny.model, with_empty, 0.6, 0.5, lora_in_attn=False)
    p_alone = inject(mods, tiny.model, alone, 0.6, 0.5, lora_in_attn=False)
    calls_empty, calls_alone = record_calls(mods, p_empty), record_calls(mods, p_alone)
    x = sample(mods, p_empty, inverted, prompts, with_empty, background)
    y = sample(mods, p_alone, inverted, prompts, alone, background)
    assert calls_empty == calls_alone, "the same rows in every call"
    assert torch.equal(x, y), f"max |diff| {float((x - y).abs().max()):.3e}"


@pytest.mark.parametrize("background", ["exact", "model"])
def test_a_style_split_in_two_halves_equals_the_whole(tiny, mods, inverted, prompts, background):
    """A(0-1) = A(0-0.5) then A(0.5-1) chained on the same mask (same LoRA, same prompt)."""
    lora = dst_core.random_lora(tiny.model, seed=43)
    mask = half_mask(left=False)
    whole = timed_styles(mods, [(lora, prompts["style"], mask, 0.0, 1.0)])
    halves = timed_styles(mods, [(lora, prompts["style"], mask, 0.0, 0.5), (lora, prompts["style"], mask, 0.5, 1.0)])
    p_whole = inject(mods, tiny.model, whole, 0.6, 0.5, lora_in_attn=False)
    p_halves = inject(mods, tiny.model, halves, 0.6, 0.5, lora_in_attn=False)
    c_whole, c_halves = record_calls(mods, p_whole), record_calls(mods, p_halves)
    x = sample(mods, p_whole, inverted, prompts, whole, background)
    y = sample(mods, p_halves, inverted, prompts, halves, background)
    rel = float((x - y).norm() / x.norm())
    print(f"\nA(0-1) vs A(0-0.5)+A(0.5-1), background {background}: relative difference {rel:.2e}")
    assert rel <= 1e-5
    assert [rows for _s, rows, _l in c_whole] == [rows for _s, rows, _l in c_halves]
    first = active_steps(tiny, 0.0, 0.5, inverted.sigmas)
    for step, _rows, loras in c_halves:
        if loras:
            assert loras == ((0,) if step in first else (1,)), (step, loras)


def test_rows_run_only_on_the_style_range_and_hand_over(tiny, mods, inverted, prompts):
    """Style A on the region for the first 40 %, style B after: each step runs the active style's rows only (its
    content row while the windows are open); a style on half the steps costs about half its rows."""
    a = dst_core.random_lora(tiny.model, seed=44)
    b = dst_core.random_lora(tiny.model, seed=45)
    mask = half_mask(left=True)
    styles = timed_styles(mods, [(a, prompts["style"], mask, 0.0, 0.4), (b, prompts["style2"], mask, 0.4, 1.0)])
    patched = inject(mods, tiny.model, styles, 0.6, 0.5, lora_in_attn=False)
    calls = record_calls(mods, patched)
    sample(mods, patched, inverted, prompts, styles)
    steps_a = active_steps(tiny, 0.0, 0.4, inverted.sigmas)
    assert steps_a == list(range(len(steps_a))) and 0 < len(steps_a) < STEPS
    res_steps = round(0.6 * STEPS)  # the ResBlock window (the longer one): a content row on these steps
    assert [s for s, _r, _l in calls] == list(range(STEPS)), "one call per step"
    for step, rows, loras in calls:
        assert loras == ((0,) if step in steps_a else (1,)), (step, loras)
        assert rows == (3 if step < res_steps else 2), (step, rows)

    half = timed_styles(mods, [(a, prompts["style"], mask, 0.0, 0.5)])
    full = timed_styles(mods, [(a, prompts["style"], mask, 0.0, 1.0)])
    p_half, p_full = inject(mods, tiny.model, half, 0.6, 0.5), inject(mods, tiny.model, full, 0.6, 0.5)
    c_half, c_full = record_calls(mods, p_half), record_calls(mods, p_full)
    sample(mods, p_half, inverted, prompts, half)
    sample(mods, p_full, inverted, prompts, full)
    n_half = len(active_steps(tiny, 0.0, 0.5, inverted.sigmas))
    style_rows = sum(r for _s, r, loras in c_half if loras)
    rows_half, rows_full = sum(r for _s, r, _l in c_half), sum(r for _s, r, _l in c_full)
    print(
        f"\nrows per step: style on 0-0.5 {style_rows / STEPS:.1f} (+ the base branch after it ends: "
        f"{(rows_half - style_rows) / STEPS:.1f}), on 0-1 {rows_full / STEPS:.1f}"
    )
    assert style_rows == 3 * n_half and rows_full == 3 * res_steps + 2 * (STEPS - res_steps)


def test_with_the_model_background_an_ended_style_is_denoised_on_by_the_base_branch(tiny, mods, inverted, prompts):
    """background = model: the base branch denoises an ended style's region on from where the style left it (the
    exact background's rule for ended styles: tests/comfy/test_ended_styles_and_split_runs.py)."""
    lora = dst_core.random_lora(tiny.model, seed=46)
    early = timed_styles(mods, [(lora, prompts["style"], half_mask(left=True), 0.0, 0.5)])
    model_bg = sample(mods, inject(mods, tiny.model, early, 0.6, 0.5), inverted, prompts, early, "model")
    whole = timed_styles(mods, [(lora, prompts["style"], half_mask(left=True), 0.0, 1.0)])
    model_whole = sample(mods, inject(mods, tiny.model, whole, 0.6, 0.5), inverted, prompts, whole, "model")
    assert not torch.equal(model_bg, model_whole)


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        (0.6, 0.4, "start_percent: style 1 starts at 0.6 after it ends (0.4): set start_percent <= end_percent"),
        (-0.1, 0.5, "start_percent: style 1 got -0.1"),
        (0.0, 1.5, "end_percent: style 1 got 1.5"),
        (float("nan"), 1.0, "start_percent: style 1 got nan"),
    ],
)
def test_a_bad_range_is_refused_by_the_style_node(tiny, mods, prompts, start, end, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        timed_styles(mods, [(None, prompts["style"], half_mask(), start, end)])


def test_feature_fusion_refuses_a_timed_style_before_sampling(tiny, mods, inverted, prompts):
    styles = timed_styles(mods, [(dst_core.random_lora(tiny.model, seed=47), prompts["style"], half_mask(), 0.0, 0.5)])
    patched = inject(mods, tiny.model, styles, 0.6, 0.5, fusion="feature")
    with pytest.raises(ValueError, match=r"style 1 \(LORA_MODEL\) is active on part of the sampling only"):
        mods.sample.DiffStylerMaskedFusionSampler.execute(
            patched, inverted, prompts["base"], prompts["neg"], 7.5, "exact", styles
        )


# ------------------------------------------------------------------ a style held by a MODEL


def model_with_lora(tiny, seed: int, same_weights: bool = False):
    """The tiny checkpoint loaded again by the core loader (or the tiny MODEL itself: ``same_weights``) with a random
    LoRA merged by ComfyUI's own loader, as a second Load Checkpoint + LoraLoader make one."""
    import comfy.lora
    import comfy_setup

    import nodes

    model = (
        tiny.model if same_weights else nodes.CheckpointLoaderSimple().load_checkpoint(comfy_setup.CHECKPOINT_NAME)[0]
    )
    clone = model.clone()
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    clone.add_patches(comfy.lora.load_lora(dst_core.random_lora(model, seed=seed), key_map), 1.0)
    return clone


def model_style(mods, model, cond, mask, styles=None, start=0.0, end=1.0):
    return mods.style.DiffStylerStyleModel.execute(model, cond, mask, styles, start, end).args[0]


def test_a_model_style_runs_one_extra_call_per_step_on_its_range(tiny, mods, inverted, prompts):
    """A MODEL style's rows (its content row while the windows are open, its cond/uncond rows) run in one call of
    that model per step, only on its range; the base call keeps the LoRA style's rows."""
    import comfy.patcher_extension

    lora = dst_core.random_lora(tiny.model, seed=48)
    styles = timed_styles(mods, [(lora, prompts["style"], half_mask(left=True), 0.0, 1.0)])
    styles = model_style(mods, model_with_lora(tiny, 49), prompts["style2"], half_mask(left=False), styles, 0.0, 0.5)
    patched = inject(mods, tiny.model, styles, 0.6, 0.5, lora_in_attn=False)
    base_calls = record_calls(mods, patched)
    (style_model,) = patched.get_additional_models_with_key(mods.install.STYLE_MODELS_KEY)
    other = []
    style_model.add_wrapper_with_key(
        comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL,
        "rows",
        lambda ex, x, *a, **kw: other.append(x.shape[0]) or ex(x, *a, **kw),
    )
    out = sample(mods, patched, inverted, prompts, styles)
    res_steps = round(0.6 * STEPS)
    n_active = len(active_steps(tiny, 0.0, 0.5, inverted.sigmas))
    # the LoRA style's rows, and after the MODEL style ends the base branch's (its content row, cond, uncond) for
    # the MODEL style's region
    style_rows = [3 if step < res_steps else 2 for step in range(STEPS)]
    n_model = len(active_steps(tiny, 0.0, 0.5, inverted.sigmas))
    assert [r for _s, r, _l in base_calls] == [r + (3 if s >= n_model else 0) for s, r in enumerate(style_rows)]
    assert other == [3] * n_active, "the MODEL style's own call: content row + cond + uncond on its steps only"
    print(f"\nMODEL style on 0-0.5: {sum(other) / STEPS:.1f} extra rows per step in a call of its own")
    assert not torch.equal(out, inverted.content_latent)


def test_a_model_style_of_another_architecture_is_refused_before_sampling(tiny, mods, inverted, prompts):
    import dst_tiny

    for kind, what in (("sdxl", "it is a SDXL"), ("sd2v", "noise schedule")):
        other = dst_tiny.tiny_unet(kind, seed=1)
        styles = model_style(mods, other, prompts["style"], half_mask())
        with pytest.raises(ValueError, match=r"styles: style 1 \(MODEL [A-Za-z0-9]+\) is held by a MODEL that cannot"):
            inject(mods, tiny.model, styles, 0.6, 0.5)
        with pytest.raises(ValueError, match=what):
            inject(mods, tiny.model, styles, 0.6, 0.5)


def test_a_model_style_refuses_feature_fusion(tiny, mods, prompts):
    styles = model_style(mods, model_with_lora(tiny, 50), prompts["style"], half_mask())
    with pytest.raises(ValueError, match="fusion: style 1 is held by a MODEL"):
        inject(mods, tiny.model, styles, 0.6, 0.5, fusion="feature")


def test_a_model_style_sharing_the_base_weights_is_refused(tiny, mods, prompts):
    """A LoRA merged by the core loader onto the Injector's own MODEL output shares its weights object: ComfyUI
    keeps those weights patched for one MODEL at a time, so it cannot run as a second UNet; the message says what
    to do instead."""
    styles = model_style(mods, model_with_lora(tiny, 51, same_weights=True), prompts["style"], half_mask())
    with pytest.raises(
        ValueError, match="style 1 .* shares its weights with the Injector's MODEL .* second Load Checkpoint"
    ):
        inject(mods, tiny.model, styles, 0.6, 0.5)
