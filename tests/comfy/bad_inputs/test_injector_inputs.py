"""Cross-LoRA Attention Injector: bad and unusual inputs (issue #8) give a clear error or a documented fallback.

Each error names the input, what was expected and the fix; ``stays_clean`` (dst_fixtures) checks the shared MODEL
after every test.

Documented fallback (docs/safety.md): eight styles run in one UNet call per step (1 content row + 16 style
rows).
"""

from __future__ import annotations

import dst_core
import pytest
import reliability_tools as rt
import torch
from bad_input_tools import add_style, half, inject, sample, unknown_unet
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


def test_injector_without_styles_asks_for_a_style_loader(tiny, mods, stays_clean):
    with pytest.raises(
        ValueError, match=r"styles: no styles connected: chain at least one Style LoRA Loader \(DiffStyler\)"
    ):
        inject(mods, stays_clean, tiny.model, [])


def test_unknown_unet_is_refused_naming_the_supported_families(mods, prompts, stays_clean):
    styles = add_style(mods, prompts["style"], half())
    with pytest.raises(
        ValueError,
        match=r"model: DiffStyler supports SD1\.x, SD2\.x and SDXL UNets and Flux\.1 \(dev, schnell\); this one "
        r"\(BaseModel, 6 decoder blocks\) is not one of them: load an SD1\.x, SD2\.x, SDXL or Flux\.1 model",
    ):
        inject(mods, stays_clean, unknown_unet(), styles)


def test_injecting_an_injected_model_again_is_refused(tiny, mods, prompts, loras, stays_clean):
    styles = add_style(mods, prompts["style"], half(), lora=loras["good"])
    with pytest.raises(
        ValueError,
        match=r"model: this MODEL already comes from a Cross-LoRA Attention Injector \(DiffStyler\); one Injector "
        r"patches a model for all its styles",
    ):
        inject(mods, stays_clean, inject(mods, stays_clean, tiny.model, styles), styles)


# ---------------------------------------------------------------------------------------------- fallbacks


def test_eight_styles_run_in_one_unet_call_per_step(tiny, mods, inverted, prompts, stays_clean):
    styles = None
    for i in range(8):
        band = torch.zeros(1, 64, 64)
        band[:, 8 * i : 8 * i + 8, :] = 1
        styles = add_style(
            mods, prompts["style"], band, lora=dst_core.random_lora(tiny.model, seed=50 + i), styles=styles
        )
    patched = inject(mods, stays_clean, tiny.model, styles)
    counter = patched.clone()
    rows = rt.count_unet_calls(counter)
    out = sample(mods, counter, inverted, prompts, styles)
    assert len(rows) == STEPS and rows[0] == 3 * 8 and rows[-1] == 16, rows  # a content row per style
    assert torch.isfinite(out).all()
    assert float((out != inverted.content_latent).float().mean()) > 0.99
