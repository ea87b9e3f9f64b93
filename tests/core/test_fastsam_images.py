"""FastSAM image tensors: IMAGE channels to RGB, masked crops for CLIP (no ComfyUI)."""

from __future__ import annotations

import pytest
import torch
from comfyui_diffstyler.nodes.core import fastsam_images

H, W = 40, 60


def test_to_rgb_channels():
    rgb = torch.rand(2, 5, 7, 3)
    assert torch.equal(fastsam_images.to_rgb(rgb), rgb)
    rgba = torch.cat([rgb, torch.rand(2, 5, 7, 1)], dim=-1)
    assert torch.equal(fastsam_images.to_rgb(rgba), rgb)
    gray = torch.rand(2, 5, 7, 1)
    out = fastsam_images.to_rgb(gray)
    assert (
        out.shape == (2, 5, 7, 3) and torch.equal(out[..., 1], gray[..., 0]) and torch.equal(out[..., 2], gray[..., 0])
    )
    gray_alpha = torch.cat([gray, torch.rand(2, 5, 7, 1)], dim=-1)
    assert torch.equal(fastsam_images.to_rgb(gray_alpha), out)
    with pytest.raises(ValueError, match=r"image: expected 1 to 4 channels .*got 5: convert the image to RGB"):
        fastsam_images.to_rgb(torch.rand(1, 5, 7, 5))
    with pytest.raises(ValueError, match=r"image: expected an IMAGE tensor \[B,H,W,C\]"):
        fastsam_images.to_rgb(torch.rand(5, 7, 3))


# ------------------------------------------------------------------------------------------ selection


def test_masked_crops_cut_the_bbox_and_whiten_the_rest():
    image = torch.rand(H, W, 3)
    m = torch.zeros(H, W, dtype=torch.bool)
    m[10:20, 30:35] = True
    m[15, 40] = True
    (crop,) = fastsam_images.masked_crops(image, m[None])
    assert crop.shape == (10, 11, 3)
    assert torch.equal(crop[0:10, 0:5], image[10:20, 30:35])
    assert torch.equal(crop[0, 10], torch.ones(3))  # outside the mask inside the bbox -> white
    assert torch.equal(crop[5, 10], image[15, 40])
    (blank,) = fastsam_images.masked_crops(image, torch.zeros(1, H, W, dtype=torch.bool))
    assert blank.shape == (1, 1, 3)
