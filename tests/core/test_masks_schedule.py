"""Pure math of masks, fusion weights, schedules and LoRA deltas (no ComfyUI)."""

from __future__ import annotations

import pytest
import torch
from comfyui_diffstyler.nodes.core import lora, masks, schedule
from comfyui_diffstyler.nodes.core.inversion import InversionFingerprint


def test_fusion_weights_painters_order_and_sum_to_one():
    a = torch.zeros(1, 1, 4, 4)
    a[..., :3] = 1.0
    b = torch.zeros(1, 1, 4, 4)
    b[..., 2:] = 1.0
    soft = torch.full((1, 1, 4, 4), 0.25)
    w, bg = masks.fusion_weights([a, b, soft])
    total = w[0] + w[1] + w[2] + bg
    assert torch.allclose(total, torch.ones_like(total))
    # the later mask b wins the overlap column 2 over a; the soft last mask takes a quarter everywhere
    assert torch.allclose(w[1][..., 2], torch.full_like(w[1][..., 2], 0.75))
    assert torch.all(w[0][..., 2] == 0)
    assert torch.allclose(w[0][..., 0], torch.full_like(w[0][..., 0], 0.75))
    assert torch.allclose(w[2], soft)


def test_resize_mask_area_and_errors():
    m = torch.zeros(1, 64, 96)
    m[:, :, :48] = 1
    out = masks.resize_mask_to_latent(m, 2, 8, 12, "mask 0")
    assert out.shape == (2, 1, 8, 12)
    assert torch.all(out[..., :6] == 1) and torch.all(out[..., 6:] == 0)
    edge = torch.zeros(1, 64, 64)
    edge[:, :, :4] = 1  # half of a latent cell: area resize gives 0.5
    assert float(masks.resize_mask_to_latent(edge, 1, 8, 8, "m")[0, 0, 0, 0]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="mask 0: the mask batch has 3 masks but the content latent batch has 2"):
        masks.resize_mask_to_latent(torch.ones(3, 64, 96), 2, 8, 12, "mask 0")
    with pytest.raises(ValueError, match=r"mask 0: the mask is 512x768 .* 64x64 \(512x512 image\)"):
        masks.resize_mask_to_latent(torch.ones(1, 768, 512), 1, 64, 64, "mask 0")
    with pytest.raises(ValueError, match="NaN"):
        masks.as_mask_batch(torch.full((1, 4, 4), float("nan")), "m")
    tokens = masks.resize_mask_to_tokens(out, 4, 6)
    assert tokens.shape == (2, 24, 1)


def test_inside_region_threshold():
    m = torch.tensor([0.0, 0.4, 0.6, 1.0]).view(1, 1, 1, 4)
    assert masks.inside_region([m]).flatten().tolist() == [False, False, True, True]


def test_schedule_helpers():
    assert schedule.window_steps(0.6, 50) == 30 and schedule.window_steps(0.5, 50) == 25
    assert schedule.in_window(29, 0.6, 50) and not schedule.in_window(30, 0.6, 50)
    assert schedule.qk_blend_ratio(999, "adaptive") == 1.0
    assert schedule.qk_blend_ratio(250, "adaptive") == pytest.approx(0.5)
    assert schedule.qk_blend_ratio(10, "replace") == 1.0
    with pytest.raises(ValueError):
        schedule.qk_blend_ratio(10, "nope")
    sig = torch.tensor([14.6, 3.0, 0.5, 0.0])
    assert schedule.find_sigma_index(sig, 3.0) == 1
    assert schedule.find_sigma_index(sig, 0.0) == 3
    assert schedule.find_sigma_index(sig, 2.9) == -1
    x, eps = torch.ones(2), torch.full((2,), 0.5)
    assert torch.allclose(schedule.ddim_step(x, eps, 2.0, 1.0), torch.full((2,), 0.5))


def test_fingerprint_mismatch_messages():
    a = InversionFingerprint("m1", 50, (1, 4, 64, 64), "d")
    assert a.mismatch(a) is None
    assert "another model" in a.mismatch(InversionFingerprint("m2", 50, (1, 4, 64, 64), "d"))
    assert "50 steps but the sampler uses 30" in a.mismatch(InversionFingerprint("m1", 30, (1, 4, 64, 64), "e"))
    assert "shape [1, 4, 64, 64]" in a.mismatch(InversionFingerprint("m1", 50, (1, 4, 64, 96), "d"))


def test_lora_delta_matches_merged_weight():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 5, generator=g)
    down, up = torch.randn(2, 5, generator=g), torch.randn(6, 2, generator=g)
    d = lora.LayerDelta(down=down, up=up, scale=0.7)
    x = torch.randn(3, 4, 5, generator=g)
    merged = torch.nn.functional.linear(x, w + 0.7 * up @ down)
    assert torch.allclose(torch.nn.functional.linear(x, w) + lora.linear_delta(x, d), merged, atol=1e-5)
    wc = torch.randn(6, 5, 3, 3, generator=g)
    dc = lora.LayerDelta(down=torch.randn(2, 5, 3, 3, generator=g), up=torch.randn(6, 2, 1, 1, generator=g), scale=0.3)
    xc = torch.randn(2, 5, 7, 7, generator=g)
    full = wc + 0.3 * (dc.up.flatten(1) @ dc.down.flatten(1)).reshape(wc.shape)
    ref = torch.nn.functional.conv2d(xc, full, padding=1)
    got = torch.nn.functional.conv2d(xc, wc, padding=1) + lora.conv2d_delta(xc, dc, 1, 1, 1)
    assert torch.allclose(got, ref, atol=1e-4)
