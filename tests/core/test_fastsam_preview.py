"""FastSAM preview: the mask tinted, boxes and points drawn (no ComfyUI)."""

from __future__ import annotations

import torch
from comfyui_diffstyler.nodes.core import fastsam_preview
from comfyui_diffstyler.nodes.core.fastsam_prompts import BoxPrompt, PointPrompt

H, W = 40, 60


def test_preview_tints_the_mask_and_draws_prompts():
    image = torch.full((2, H, W, 3), 0.5)
    mask = torch.zeros(2, H, W)
    mask[:, 0:10, 0:10] = 1.0
    points = (PointPrompt(30, 20), PointPrompt(50, 30, False))
    boxes = (BoxPrompt(2, 25, 20, 38),)
    out = fastsam_preview.draw_preview(image, mask, points, boxes)
    assert out.shape == (2, H, W, 3) and out.dtype == torch.float32
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    tinted = out[0, 5, 5]
    assert tinted[2] > 0.7 and tinted[0] < 0.4  # blue tint over the mask
    assert torch.allclose(out[0, 5, 40], torch.full((3,), 0.5))  # untouched elsewhere
    assert torch.allclose(out[1, 20, 30], torch.tensor(fastsam_preview.POSITIVE_COLOR))
    assert torch.allclose(out[1, 30, 50], torch.tensor(fastsam_preview.NEGATIVE_COLOR))
    assert torch.allclose(out[0, 25, 10], torch.tensor(fastsam_preview.BOX_COLOR))  # top edge of the box
    assert torch.allclose(out[0, 30, 10], torch.full((3,), 0.5))  # inside the box: not drawn
