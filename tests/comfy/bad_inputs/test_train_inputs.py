"""Train Style LoRA: bad and unusual inputs (issue #8) give a clear error or a documented fallback.

Each error names the input, what was expected and the fix; ``stays_clean`` (dst_fixtures) checks the shared MODEL
after every test.

Documented fallbacks (docs/safety.md): RGBA style images lose their alpha; a failing save leaves no file (and an
older file of that name intact).
"""

from __future__ import annotations

import os

import pytest
import safetensors.torch
import torch
from bad_input_tools import checked, train
from dst_fixtures import mods, one_torch_thread, probe, prompts, stays_clean  # noqa: F401 - fixtures

# ---------------------------------------------------------------------------------------------- clear errors


def test_empty_style_image_batch_asks_for_one_style_image(tiny, mods):
    with pytest.raises(
        ValueError, match=r"image: the style image batch is empty \(0 images\): connect at least one style image"
    ):
        train(tiny, mods, torch.zeros(0, 64, 64, 3))


def test_one_channel_style_image_asks_for_an_rgb_image(tiny, mods):
    with pytest.raises(
        ValueError,
        match=r"image: expected an RGB image with at least 1x1 pixels, got shape \[1, 64, 64, 1\]: connect a Load "
        r"Image",
    ):
        train(tiny, mods, torch.rand(1, 64, 64, 1))


def test_save_name_with_a_path_is_refused_before_the_run(mods):
    with pytest.raises(
        ValueError, match=r"save_name: '\.\./x' is not a plain file name; .*give a name such as 'my_style'"
    ):
        checked(mods.train.DiffStylerTrainStyleLoRA.validate_inputs(save_name="../x"))


def test_zero_training_steps_are_refused(tiny, mods):
    # in a graph ComfyUI's own min check refuses it first (tests/comfy/test_widget_ranges.py)
    with pytest.raises(ValueError, match=r"steps: expected at least 1 training step, got 0"):
        train(tiny, mods, torch.rand(1, 64, 64, 3), steps=0)


def test_rank_zero_is_refused(tiny, mods):
    with pytest.raises(ValueError, match=r"rank: expected a LoRA rank of at least 1, got 0"):
        train(tiny, mods, torch.rand(1, 64, 64, 3), rank=0)


# ---------------------------------------------------------------------------------------------- fallbacks


def test_rgba_style_image_trains_like_its_rgb_image(tiny, mods):
    rgb = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(7))
    a, _ = train(tiny, mods, rgb)
    b, _ = train(tiny, mods, torch.cat([rgb, torch.zeros(1, 64, 64, 1)], dim=-1))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "failure", [OSError(28, "No space left on device"), KeyboardInterrupt("Ctrl+C")], ids=["disk_full", "interrupted"]
)
def test_failing_lora_save_leaves_no_partial_file(tiny, mods, comfy_home, monkeypatch, failure):
    """The save writes half the file, then fails (disk full) or is interrupted (a BaseException)."""
    folder = comfy_home.models / "loras"
    path = folder / "rel_saved.safetensors"
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(8))
    train(tiny, mods, image, save_name="rel_saved")
    before = path.read_bytes()
    real_save = safetensors.torch.save_file

    def half_then_fail(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as f:
            f.truncate(os.path.getsize(filename) // 2)
        raise failure

    monkeypatch.setattr(safetensors.torch, "save_file", half_then_fail)
    listing = set(os.listdir(folder))
    with pytest.raises(type(failure)):
        train(tiny, mods, image, save_name="rel_saved", seed=1)
    with pytest.raises(type(failure)):
        train(tiny, mods, image, save_name="rel_new_name", seed=1)
    assert set(os.listdir(folder)) == listing, "no temporary or half-written file is left behind"
    assert path.read_bytes() == before, "the older file of that name is intact"
    assert not (folder / "rel_new_name.safetensors").exists()
