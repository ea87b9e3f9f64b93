"""The paste-back mask (issue #18 part 1): the region at latent size, the VAE crop, the feathered seam."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import torch
from comfyui_diffstyler.nodes.core import masks, region


def test_region_mask_latent_is_bilinear_then_any_value_above_zero():
    m = torch.zeros(1, 64, 64)
    m[:, 20:21, 30:31] = 1.0  # one pixel: bilinear to 8x8 reaches a cell only if a sample point sees it
    m2 = torch.zeros(1, 64, 64)
    m2[:, 59:61, 3:5] = 0.01  # faint, but above zero after bilinear
    got = masks.region_mask_latent([m, m2], 8, 8)
    ref = torch.nn.functional.interpolate(m.unsqueeze(1), size=(8, 8), mode="bilinear", align_corners=False) > 0
    ref2 = torch.nn.functional.interpolate(m2.unsqueeze(1), size=(8, 8), mode="bilinear", align_corners=False) > 0
    assert got.dtype == torch.bool and got.shape == (1, 1, 8, 8)
    assert torch.equal(got, ref | ref2) and int(got.sum()) == int(ref.sum()) + int(ref2.sum()) > 0
    # a mask batch of one is shared by a batch of two; 2 and 3 do not mix
    assert masks.region_mask_latent([m, torch.zeros(2, 64, 64)], 8, 8).shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="style 2 mask: a batch of 2 masks where another style has 3"):
        masks.region_mask_latent([torch.zeros(3, 8, 8), torch.zeros(2, 8, 8)], 8, 8)


@pytest.mark.parametrize("size, expected", [((389, 517), (2, 2, 512, 384)), ((424, 640), (0, 0, 640, 424))])
def test_vae_crop_is_comfyuis_centred_crop(size, expected):
    h, w = size
    crop = region.vae_crop(h, w, 8)
    assert (crop.x, crop.y, crop.width, crop.height) == expected
    # the same numbers as ComfyUI's VAE.vae_encode_crop_pixels: (dim // 8) * 8 from offset (dim % 8) // 2
    assert crop.height == (h // 8) * 8 and crop.y == (h % 8) // 2


@pytest.mark.parametrize("feather", [0, 1, 5, 16])
def test_feathered_mask_matches_scipy_distance_transform(feather):
    rng = np.random.default_rng(feather)
    cells = torch.from_numpy(rng.random((2, 1, 9, 13)) > 0.8)
    pixels = region.latent_region_to_pixels(cells, 8)
    assert pixels.shape == (2, 72, 104)
    assert torch.equal(pixels[:, ::8, ::8], cells[:, 0]) and torch.equal(pixels[:, 7::8, 7::8], cells[:, 0])
    got = region.feathered_paste_mask(pixels, feather)
    for b in range(2):
        dist = scipy.ndimage.distance_transform_edt(~pixels[b].numpy())  # distance to the nearest region pixel
        want = np.clip(1.0 - dist / feather, 0.0, 1.0) if feather else pixels[b].numpy().astype(np.float64)
        np.testing.assert_allclose(got[b].numpy(), want, atol=1e-6)
        # exactly 1 inside, exactly 0 at distance >= feather
        assert (got[b].numpy()[pixels[b].numpy()] == 1.0).all()
        assert (got[b].numpy()[dist >= max(feather, 1)] == 0.0).all()


def test_empty_region_and_bad_feather():
    empty = torch.zeros(1, 16, 16, dtype=torch.bool)
    assert float(region.feathered_paste_mask(empty, 8).max()) == 0.0
    with pytest.raises(ValueError, match="feather: expected 0 or more"):
        region.feathered_paste_mask(empty, -1)
