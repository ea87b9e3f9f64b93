"""Style LoRA Loader: bad and unusual inputs (issue #8) give a clear error or a documented fallback.

Each error names the input, what was expected and the fix. After every test (error or not) ``stays_clean``
(dst_fixtures) checks that the shared tiny MODEL still samples bit-identically and that no MODEL an Injector patched
holds an active DiffStyler run.

Documented fallbacks (docs/safety.md):

* all-zero mask: a warning, the style is skipped; full mask: the whole image is restyled; mask values outside 0..1
  are clamped;
* strength 0: the plain model on that style's rows; negative strength: the LoRA is subtracted (= core merge at
  that strength).
"""

from __future__ import annotations

import dst_core
import pytest
import reliability_tools as rt
import torch
from bad_input_tools import add_style, half, inject, sample
from dst_fixtures import (  # noqa: F401 - fixtures
    content,
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


def test_missing_lora_file_names_the_loras_folder(mods, prompts):
    with pytest.raises(
        FileNotFoundError,
        match=r"lora_name: 'rel_missing\.safetensors' was not found in the loras model folder\(s\) .*: put the file "
        r"there",
    ):
        add_style(mods, prompts["style"], half(), name="rel_missing.safetensors")


def test_truncated_lora_file_asks_to_download_it_again(mods, prompts, loras):
    with pytest.raises(
        ValueError,
        match=r"lora_name: 'rel_truncated\.safetensors' could not be read as a LoRA file \(.*incomplete.*\): "
        r"re-download or re-save it",
    ):
        add_style(mods, prompts["style"], half(), name="rel_truncated.safetensors")


def test_text_file_named_safetensors_asks_to_download_it_again(mods, prompts, loras):
    with pytest.raises(
        ValueError,
        match=r"lora_name: 'rel_text\.safetensors' could not be read as a LoRA file \(.*\): re-download or re-save it",
    ):
        add_style(mods, prompts["style"], half(), name="rel_text.safetensors")


def test_flux_lora_whose_keys_match_no_unet_layer_is_refused(tiny, mods, prompts, loras, stays_clean):
    styles = add_style(mods, prompts["style"], half(), name="rel_flux.safetensors")
    with pytest.raises(
        ValueError,
        match=r"style 1 LoRA \(rel_flux\.safetensors\): 0 of its 6 tensors match this model's UNet \(BaseModel, "
        r"TinySD15\): it is a LoRA for another architecture .*pick a LoRA trained for this checkpoint's family",
    ):
        inject(mods, stays_clean, tiny.model, styles)


def test_sdxl_lora_whose_shapes_do_not_fit_an_sd15_unet_is_refused(tiny, mods, prompts, loras, stays_clean):
    styles = add_style(mods, prompts["style"], half(), name="rel_sdxl.safetensors")
    with pytest.raises(
        ValueError,
        match=r"style 1 LoRA \(rel_sdxl\.safetensors\): \d+ of its \d+ matching layers have shapes that do not fit "
        r"this model \(e\.g\. .*LoRA gives \[.*\], model has \[.*\]\): it is a LoRA for another architecture; pick "
        r"one trained for this checkpoint's family",
    ):
        inject(mods, stays_clean, tiny.model, styles)


def test_nan_strength_is_refused_when_the_node_runs(mods, prompts):
    # NaN passes ComfyUI's min/max check (every comparison is False): the node refuses it when it runs
    with pytest.raises(ValueError, match=r"strength: expected a (finite )?number, got (NaN|nan)"):
        add_style(mods, prompts["style"], half(), strength=float("nan"))


def test_nan_strength_with_a_linked_lora_is_refused(mods, prompts, loras):
    with pytest.raises(ValueError, match=r"strength: expected a (finite )?number, got nan"):
        add_style(mods, prompts["style"], half(), lora=loras["good"], strength=float("nan"))


def test_empty_conditioning_asks_for_a_text_encode_of_the_style_prompt(mods):
    with pytest.raises(
        ValueError, match=r"conditioning: empty CONDITIONING: connect a CLIP Text Encode of the style's prompt"
    ):
        add_style(mods, [], half())


def test_mask_of_zero_height_is_refused_as_empty(mods, prompts):
    with pytest.raises(
        ValueError,
        match=r"style 1 \(prompt only\) mask: the mask is empty \(shape \[1, 0, 64\]\): connect a mask with at least "
        r"one pixel",
    ):
        add_style(mods, prompts["style"], torch.zeros(1, 0, 64))


def test_empty_mask_batch_is_refused(mods, prompts):
    with pytest.raises(
        ValueError,
        match=r"style 1 \(prompt only\) mask: the mask is empty \(shape \[0, 64, 64\]\): connect a mask with at "
        r"least one",
    ):
        add_style(mods, prompts["style"], torch.zeros(0, 64, 64))


def test_nan_mask_asks_to_check_the_node_that_made_it(mods, prompts):
    with pytest.raises(
        ValueError,
        match=r"style 1 \(prompt only\) mask: the mask contains NaN or infinite values: check the node that made it",
    ):
        add_style(mods, prompts["style"], torch.full((1, 64, 64), float("nan")))


def test_infinite_value_in_the_second_style_mask_names_style_2_and_its_lora(mods, prompts, loras):
    styles = add_style(mods, prompts["style"], half())
    m = half()
    m[0, 0, 0] = float("inf")
    with pytest.raises(
        ValueError, match=r"style 2 \(rel_good\.safetensors\) mask: the mask contains NaN or infinite values"
    ):
        add_style(mods, prompts["style"], m, name="rel_good.safetensors", styles=styles)


def test_five_dimensional_mask_asks_for_a_b_h_w_mask(mods, prompts):
    with pytest.raises(
        ValueError,
        match=r"style 1 \(prompt only\) mask: expected a MASK of shape \[B,H,W\], got \[1, 2, 3, 64, 64\]: "
        r".*(connect|use)",
    ):
        add_style(mods, prompts["style"], torch.ones(1, 2, 3, 64, 64))


def test_seventeenth_chained_style_is_refused(mods, prompts):
    with pytest.raises(ValueError, match=r"styles: at most 16 styles can be chained, got 17"):
        styles = None
        for _ in range(17):
            styles = add_style(mods, prompts["style"], half(), styles=styles)


# ---------------------------------------------------------------------------------------------- fallbacks


def test_all_zero_mask_skips_that_style_with_a_warning(tiny, mods, inverted, prompts, loras, stays_clean):
    other = dst_core.random_lora(tiny.model, seed=41)
    right = add_style(mods, prompts["style2"], half(left=False), lora=other)
    both = add_style(mods, prompts["style"], torch.zeros(1, 64, 64), lora=loras["good"])
    both = add_style(mods, prompts["style2"], half(left=False), lora=other, styles=both)
    with rt.LogRecords() as logs:
        out = sample(mods, inject(mods, stays_clean, tiny.model, both), inverted, prompts, both)
    assert any("style 1" in m and "all-zero mask" in m and "skipped" in m for m in logs.messages), logs.messages
    alone = sample(mods, inject(mods, stays_clean, tiny.model, right), inverted, prompts, right)
    assert torch.allclose(out, alone, atol=1e-6)
    assert torch.equal(out[..., :4], inverted.content_latent[..., :4])


def test_full_mask_restyles_the_whole_image(tiny, mods, inverted, prompts, loras, stays_clean):
    styles = add_style(mods, prompts["style"], torch.ones(1, 64, 64), lora=loras["good"])
    out = sample(mods, inject(mods, stays_clean, tiny.model, styles), inverted, prompts, styles)
    assert torch.isfinite(out).all()
    assert float((out != inverted.content_latent).float().mean()) > 0.99


def test_mask_values_outside_zero_to_one_are_clamped(mods, prompts):
    m = torch.linspace(-1.0, 2.0, 64 * 64).reshape(1, 64, 64)
    (style,) = add_style(mods, prompts["style"], m)
    assert torch.equal(style.mask, m.clamp(0, 1)), "a 0..255 or signed mask is read as 0..1 (clamped)"


def test_strength_zero_patches_no_lora_layer_and_samples_as_the_plain_model(
    tiny, mods, inverted, prompts, loras, stays_clean
):
    zero = add_style(mods, prompts["style"], half(), lora=loras["good"], strength=0.0)
    none = add_style(mods, prompts["style"], half())
    patched = inject(mods, stays_clean, tiny.model, zero)
    lora_layers = [k for k in patched.object_patches if "output_blocks.4.0" not in k]
    assert lora_layers == [], "strength 0 must not patch any LoRA layer"
    a = sample(mods, patched, inverted, prompts, zero)
    b = sample(mods, inject(mods, stays_clean, tiny.model, none), inverted, prompts, none)
    assert torch.equal(a, b)


def test_negative_strength_subtracts_the_lora_like_a_merge_at_that_strength(
    tiny, mods, inverted, prompts, loras, stays_clean
):
    import nodes

    full = torch.ones(1, 64, 64)
    outs = {}
    for s in (-0.7, 0.0, 0.7):
        styles = add_style(mods, prompts["style"], full, name="rel_good.safetensors", strength=s)
        outs[s] = sample(mods, inject(mods, stays_clean, tiny.model, styles, 0.0, 0.0), inverted, prompts, styles)
    (merged,) = nodes.LoraLoaderModelOnly().load_lora_model_only(tiny.model, "rel_good.safetensors", -0.7)
    xt = mods.inversion.latent_out(tiny.model, inverted.trajectory[0])
    ref = dst_core.plain_ddim(merged, xt, STEPS, prompts["style"], prompts["neg"], 7.5)
    assert float((outs[-0.7] - ref).abs().max()) <= 1e-4
    assert float((outs[-0.7] - outs[0.0]).abs().max()) > 1e-3
    assert float((outs[-0.7] - outs[0.7]).abs().max()) > 1e-3
