"""DDIM Inversion: bad and unusual inputs (issue #8) give a clear error or a documented fallback.

Each error names the input, what was expected and the fix; ``stays_clean`` (dst_fixtures) checks the shared MODEL
after every test.

Documented fallback (docs/safety.md): steps 1 runs, but ComfyUI's ``ddim_uniform`` with one step goes from
sigma 0.041 (t = 1) to 0, so almost nothing changes.
"""

from __future__ import annotations

import pytest
import torch
from bad_input_tools import add_style, inject, invert, sample
from dst_fixtures import (  # noqa: F401 - fixtures
    content,
    content_latent,
    loras,
    mods,
    one_torch_thread,
    probe,
    prompts,
    stays_clean,
)

STEPS = 4

# ---------------------------------------------------------------------------------------------- clear errors


def test_inversion_without_clip_asks_for_the_checkpoint_clip(tiny, mods, content_latent):
    with pytest.raises(
        ValueError,
        match=r"DDIM Inversion needs the empty prompt for the content branch: connect the checkpoint's CLIP to "
        r"'clip'",
    ):
        invert(mods, tiny, content_latent, STEPS, clip=None)


def test_zero_inversion_steps_are_refused(tiny, mods, content_latent, prompts):
    # in a graph ComfyUI's own min check refuses it first (tests/comfy/test_widget_ranges.py)
    with pytest.raises(ValueError, match=r"steps: expected at least 1 inversion step, got 0"):
        mods.inversion.invert(tiny.model, content_latent, 0, prompts["empty"], disable_pbar=True)


def test_sixteen_channel_latent_asks_for_this_models_vae(tiny, mods):
    with pytest.raises(
        ValueError,
        match=r"latent: the latent has 16 channels but this model expects 4: encode the image with this model's VAE",
    ):
        invert(mods, tiny, torch.zeros(1, 16, 8, 8), STEPS)


def test_nan_latent_asks_to_encode_the_image_again(tiny, mods):
    with pytest.raises(ValueError, match=r"latent: the latent contains NaN or infinite values: re-encode the image"):
        invert(mods, tiny, torch.full((1, 4, 8, 8), float("nan")), STEPS)


def test_empty_latent_batch_asks_for_a_vae_encode_of_one_image(tiny, mods):
    with pytest.raises(
        ValueError,
        match=r"latent: the latent batch is empty \(0 images\): connect a VAE Encode of at least one image",
    ):
        invert(mods, tiny, torch.zeros(0, 4, 8, 8), STEPS)


def test_video_latent_asks_for_a_b_c_h_w_latent(tiny, mods):
    with pytest.raises(
        ValueError,
        match=r"latent: expected a LATENT with samples \[B,C,h,w\], got \[1, 4, 2, 8, 8\]: connect a VAE Encode "
        r"output",
    ):
        invert(mods, tiny, torch.zeros(1, 4, 2, 8, 8), STEPS)


# ---------------------------------------------------------------------------------------------- fallbacks


def test_one_step_runs_and_barely_changes_the_image(tiny, mods, content_latent, prompts, loras, stays_clean):
    one = mods.inversion.invert(tiny.model, content_latent, 1, prompts["empty"], disable_pbar=True, grid="sampling")
    assert one.sigmas.shape == (2,) and float(one.sigmas[0]) < 0.05  # ddim_uniform, 1 step: sigma[t=1] -> 0
    styles = add_style(mods, prompts["style"], torch.ones(1, 64, 64), lora=loras["good"])
    out = sample(mods, inject(mods, stays_clean, tiny.model, styles), one, prompts, styles)
    change = float((out - content_latent).abs().max())
    print(f"\nsteps=1: max latent change {change:.4f} (sigma {float(one.sigmas[0]):.4f} -> 0)")
    assert torch.isfinite(out).all() and 0 < change < 0.5
