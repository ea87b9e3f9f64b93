"""The model-family registry (nodes/adapters/injector/arch.py): the family is read from the MODEL, and a new family
is one new entry (here one line of UNetFamily) that install and the inversion's feature cache follow."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from dst_fixtures import mods, one_torch_thread, prompts  # noqa: F401 - fixtures


def test_the_family_is_read_from_the_model(tiny):
    import dst_tiny
    from comfyui_diffstyler.nodes.adapters.injector import arch, unet

    assert arch.family_for(tiny.model) is unet.SD1
    assert arch.family_for(dst_tiny.tiny_unet("sd2v", seed=1)) is unet.SD1, "SD2.x shares SD1.x's block map"
    assert arch.family_for(dst_tiny.tiny_unet("sdxl", seed=1)) is unet.SDXL


def test_a_model_of_no_family_is_refused_naming_it(tiny, monkeypatch):
    from comfyui_diffstyler.nodes.adapters.injector import arch

    monkeypatch.setattr(arch, "FAMILIES", ())
    with pytest.raises(
        ValueError,
        match=r"model: DiffStyler supports SD1.x, SD2.x and SDXL UNets and Flux.1 \(dev, schnell\); this one "
        r"\(BaseModel",
    ):
        arch.family_for(tiny.model)


def test_a_new_family_is_one_registry_entry(tiny, mods, prompts, monkeypatch):  # noqa: F811
    """A family registered in front of SD1 (Q/K on decoder block 4 only, the residual of output_blocks.5.0) is what
    the Injector and the feature-cache recorder patch: nothing else names block ids."""
    from comfyui_diffstyler.nodes.adapters import feature_cache
    from comfyui_diffstyler.nodes.adapters.injector import arch, install, unet
    from comfyui_diffstyler.nodes.core.inversion import FeatureCache

    custom = dataclasses.replace(
        unet.SD1, name="sd1-narrow", resblock="diffusion_model.output_blocks.5.0", qk_blocks=(4,)
    )
    monkeypatch.setattr(arch, "FAMILIES", (custom, *arch.FAMILIES))
    styles = mods.style.DiffStylerStyleLoRA.execute("None", 1.0, prompts["style"], torch.ones(1, 64, 64)).args[0]
    patched = mods.inject.DiffStylerCrossLoRAInjector.execute(tiny.model, styles, 0.6, 0.5, "adaptive", False).args[0]
    state = install.state_of(patched)
    assert state.family is custom
    assert [slot for _kind, slot in state.replace_slots] == [("output", 4, 0)]
    assert "diffusion_model.output_blocks.5.0.out_layers.3" in patched.object_patches
    assert "diffusion_model.output_blocks.4.0.out_layers.3" not in patched.object_patches
    clone, _rec = feature_cache.recording_clone(tiny.model, FeatureCache(torch.float32, 0.6, 0.5), 10, "cpu")
    assert list(clone.object_patches) == ["diffusion_model.output_blocks.5.0.out_layers.3"]
    replaces = clone.model_options["transformer_options"]["patches_replace"]["attn1"]
    assert sorted(replaces) == [("output", 4)]
