"""Masked Feature Fusion Sampler and its guider: bad and unusual inputs (issue #8) give a clear error or a documented
fallback.

Each error names the input, what was expected and the fix; ``stays_clean`` (dst_fixtures) checks the shared MODEL
after every test.

Documented fallbacks (docs/safety.md):

* cfg 1: no uncond rows; cfg 0: the style branches' negative-prompt prediction only;
* a latent batch of 4 with 4 masks: every item is styled in its own region, like a batch of 1;
* a 60x60 image: VAE Encode crops to 56x56 (centred), the latent is 7x7; a 60x60 (or 64x64) mask is
  area-resized to 7x7 (same aspect ratio), the output decodes to 56x56;
* a prompt with an area that covers part of the latent is refused by name; one that covers all of it runs.
"""

from __future__ import annotations

import pytest
import reliability_tools as rt
import torch
from bad_input_tools import add_style, half, inject, sample
from dst_fixtures import (  # noqa: F401 - fixtures
    content,
    content_latent,
    inverted,
    loras,
    mods,
    one_torch_thread,
    probe,
    prompts,
    stays_clean,
)

STEPS = 4

# ---------------------------------------------------------------------------------------------- clear errors


def test_sampler_on_an_unpatched_model_asks_for_the_injector_output(tiny, mods, inverted, prompts):
    styles = add_style(mods, prompts["style"], half())
    with pytest.raises(
        ValueError,
        match=r"model: this MODEL has no DiffStyler patches: connect the MODEL output of Cross-LoRA Attention "
        r"Injector",
    ):
        sample(mods, tiny.model, inverted, prompts, styles)


def test_sampler_given_other_styles_than_the_injector_asks_for_the_same_styles(
    tiny, mods, inverted, prompts, loras, stays_clean
):
    styles = add_style(mods, prompts["style"], half())
    other = add_style(mods, prompts["style"], half(), strength=0.5, lora=loras["good"])
    with pytest.raises(
        ValueError,
        match=r"styles: the sampler got 1 style\(s\) that differ from the 1 the Injector patched \(LoRA, strength or "
        r"order\): connect the same DIFFSTYLER_STYLES to both nodes",
    ):
        sample(mods, inject(mods, stays_clean, tiny.model, styles), inverted, prompts, other)


def test_inversion_made_with_another_model_is_refused(mods, inverted, prompts, stays_clean):
    import dst_tiny

    styles = add_style(mods, prompts["style"], half())
    other = dst_tiny.tiny_unet("sd15", seed=9)
    with pytest.raises(
        ValueError,
        match=r"inversion: the inversion was made with another model .*: feed DDIM Inversion the same MODEL that "
        r"goes into the sampler",
    ):
        sample(mods, inject(mods, stays_clean, other, styles), inverted, prompts, styles)


def test_three_masks_for_one_image_ask_for_one_mask_or_one_per_image(tiny, mods, inverted, prompts, stays_clean):
    styles = add_style(mods, prompts["style"], half(batch=3))
    with pytest.raises(
        ValueError,
        match=r"style 1 \(prompt only\) mask: the mask batch has 3 masks but the content latent batch has 1 images: "
        r"give one mask \(shared\) or 1 masks",
    ):
        sample(mods, inject(mods, stays_clean, tiny.model, styles), inverted, prompts, styles)


def test_mask_of_another_aspect_ratio_asks_to_make_it_from_the_content_image(
    tiny, mods, inverted, prompts, stays_clean
):
    styles = add_style(mods, prompts["style"], half(64, 128))
    with pytest.raises(
        ValueError,
        match=r"style 1 \(prompt only\) mask: the mask is 128x64 \(width x height\) but the content latent is 8x8 "
        r"\(64x64 image\): the aspect ratios differ; make the mask from the content image or resize it to the image "
        r"size",
    ):
        sample(mods, inject(mods, stays_clean, tiny.model, styles), inverted, prompts, styles)


def test_guider_refuses_an_unknown_background_mode(tiny, mods, inverted, prompts, stays_clean):
    styles = add_style(mods, prompts["style"], half())
    patched = inject(mods, stays_clean, tiny.model, styles)
    with pytest.raises(ValueError, match=r"background: expected one of \('exact', 'model'\), got 'blur'"):
        mods.guider.DiffStylerGuider(patched, inverted, styles, prompts["base"], prompts["neg"], 5.0, "blur")


def test_guider_given_a_latent_for_the_inversion_asks_for_ddim_inversion(
    tiny, mods, content_latent, prompts, stays_clean
):
    styles = add_style(mods, prompts["style"], half())
    patched = inject(mods, stays_clean, tiny.model, styles)
    with pytest.raises(TypeError, match=r"inversion: connect the inversion output of DDIM Inversion \(DiffStyler\)"):
        mods.guider.DiffStylerGuider(patched, {"samples": content_latent}, styles, prompts["base"], prompts["neg"], 5.0)


def test_guider_given_a_latent_of_another_shape_than_the_inversion_is_refused(
    tiny, mods, inverted, prompts, stays_clean
):
    styles = add_style(mods, prompts["style"], half())
    patched = inject(mods, stays_clean, tiny.model, styles)
    g = mods.guider.DiffStylerGuider(patched, inverted, styles, prompts["base"], prompts["neg"], 5.0)
    with pytest.raises(
        ValueError,
        match=r"latent_image: got shape \[1, 4, 8, 12\] but the inversion's content latent is \[1, 4, 8, 8\]: "
        r"connect the inverted latent of the same DDIM Inversion",
    ):
        g.sample(torch.zeros(1, 4, 8, 12), torch.zeros(1, 4, 8, 12), mods.ddim.ddim_sampler(), inverted.sigmas)


# ---------------------------------------------------------------------------------------------- fallbacks


def test_cfg_one_runs_no_uncond_rows_and_cfg_zero_is_the_negative_prompts_prediction(
    tiny, mods, inverted, prompts, loras, stays_clean
):
    styles = add_style(mods, prompts["style"], half(), lora=loras["good"])
    patched = inject(mods, stays_clean, tiny.model, styles)
    counter = patched.clone()
    rows = rt.count_unet_calls(counter)
    one = sample(mods, counter, inverted, prompts, styles, cfg=1.0)
    assert rows[0] == 2 and rows[-1] == 1, rows  # content + cond while injecting, then cond only: no uncond rows
    zero = sample(mods, patched, inverted, prompts, styles, cfg=0.0)
    neg_styles = add_style(mods, prompts["neg"], half(), lora=loras["good"])
    ref = sample(mods, inject(mods, stays_clean, tiny.model, neg_styles), inverted, prompts, neg_styles, cfg=1.0)
    assert float((zero - ref).abs().max()) <= 1e-5, "cfg 0 = the negative prompt's prediction on the style rows"
    assert float((zero - one).abs().max()) > 1e-3


def test_latent_batch_of_four_styles_each_image_in_its_own_mask_like_a_batch_of_one(
    tiny, mods, prompts, loras, stays_clean
):
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        lat = tiny.vae.encode(torch.rand(4, 64, 64, 3, generator=g)).float()
    inv4 = mods.inversion.invert(tiny.model, lat, STEPS, prompts["empty"], disable_pbar=True, grid="sampling")
    masks = torch.zeros(4, 64, 64)
    for i in range(4):
        masks[i, 16 * i : 16 * i + 16, :] = 1  # a different band per image
    styles = add_style(mods, prompts["style"], masks, lora=loras["good"])
    out = sample(mods, inject(mods, stays_clean, tiny.model, styles), inv4, prompts, styles)
    assert out.shape == lat.shape
    for i in range(4):
        band = torch.zeros(8, dtype=torch.bool)
        band[2 * i : 2 * i + 2] = True
        assert torch.equal(out[i][:, ~band], lat[i][:, ~band]), f"image {i}: outside its mask = content"
        assert not torch.allclose(out[i][:, band], lat[i][:, band])
    one = mods.inversion.invert(tiny.model, lat[2:3], STEPS, prompts["empty"], disable_pbar=True, grid="sampling")
    single = add_style(mods, prompts["style"], masks[2:3], lora=loras["good"])
    ref = sample(mods, inject(mods, stays_clean, tiny.model, single), one, prompts, single)
    assert float((out[2:3] - ref).abs().max()) <= 1e-4, "a batch item is styled like a batch of one"
    two = add_style(mods, prompts["style"], masks[:2], lora=loras["good"])
    with pytest.raises(
        ValueError,
        match=r"the mask batch has 2 masks but the content latent batch has 4 images: give "
        r"one mask \(shared\) or 4 masks",
    ):
        sample(mods, inject(mods, stays_clean, tiny.model, two), inv4, prompts, two)


def test_sixty_pixel_image_is_cropped_by_the_vae_and_its_mask_resized_to_the_latent(
    tiny, mods, prompts, loras, stays_clean
):
    import nodes

    img = torch.rand(1, 60, 60, 3, generator=torch.Generator().manual_seed(6))
    (latent,) = nodes.VAEEncode().encode(tiny.vae, img)
    assert latent["samples"].shape == (1, 4, 7, 7)  # ComfyUI crops to 56x56 (multiples of 8), centred
    inversion, _ = mods.invert.DiffStylerInvert.execute(
        tiny.model, latent, STEPS, clip=tiny.clip, inversion_grid="sampling"
    ).args
    for mask in (half(60, 60), half(64, 64)):
        styles = add_style(mods, prompts["style"], mask, lora=loras["good"])
        out = sample(mods, inject(mods, stays_clean, tiny.model, styles), inversion, prompts, styles)
        assert out.shape == (1, 4, 7, 7)
        assert torch.equal(out[..., 4:], latent["samples"][..., 4:])  # right of the (binarized) half mask
        assert not torch.allclose(out[..., :3], latent["samples"][..., :3])
    (decoded,) = nodes.VAEDecode().decode(tiny.vae, {"samples": out})
    assert decoded.shape == (1, 56, 56, 3)


def test_prompts_with_an_area_are_refused_by_name(tiny, mods, inverted, prompts, loras, stays_clean):
    """ComfyUI runs a conditioning with an area (ConditioningSetArea, or a mask with its area set to the bounds) on
    a crop of the latent, where the content row and the injected features do not line up: a clear error naming
    the input instead of a tensor-size error from inside the UNet. An area that covers the whole latent runs."""
    import node_helpers

    def with_area(cond, h, w, y=0, x=0):
        return node_helpers.conditioning_set_values(cond, {"area": (h, w, y, x), "strength": 1.0})

    cropped = add_style(mods, with_area(prompts["style"], 4, 4), half(), lora=loras["good"])
    with pytest.raises(ValueError, match=r"styles \(style 1, .*: its prompt\): this conditioning covers part"):
        sample(mods, inject(mods, stays_clean, tiny.model, cropped), inverted, prompts, cropped)
    styles = add_style(mods, prompts["style"], half(), lora=loras["good"])
    patched = inject(mods, stays_clean, tiny.model, styles)
    area_base = dict(prompts, base=with_area(prompts["base"], 8, 4, 0, 4))
    with pytest.raises(ValueError, match=r"^positive: .*an area of 8x4 at \(0, 4\) of the 8x8 latent"):
        sample(mods, patched, inverted, area_base, styles)
    whole = add_style(mods, with_area(prompts["style"], 8, 8), half(), lora=loras["good"])
    out = sample(mods, inject(mods, stays_clean, tiny.model, whole), inverted, prompts, whole)
    # ComfyUI copies each area into the other prompts when it prepares them: equal up to float rounding
    assert float((out - sample(mods, patched, inverted, prompts, styles)).abs().max()) <= 1e-5
