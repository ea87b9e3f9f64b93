"""FastSAM grid geometry: prompts onto the detection grid and the mask back, image resizing (no ComfyUI)."""

from __future__ import annotations

import pytest
import torch
from comfyui_diffstyler.nodes.core import fastsam_geometry, fastsam_select
from comfyui_diffstyler.nodes.core.fastsam_prompts import BoxPrompt, MaskRequest, PointPrompt


@pytest.mark.parametrize("size, grid", [(8192, 256), (1000, 128), (96, 96), (97, 32)])
def test_prompts_and_upsampled_mask_use_one_grid_mapping(size, grid):
    """A prompt's pixel in the upsampled mask is exactly the grid cell the selection tested."""
    g = torch.Generator().manual_seed(size)
    cells = torch.rand(grid, grid, generator=g) > 0.5
    full = fastsam_geometry.upsample_mask(cells, size, size)
    assert full.shape == (size, size) and full.dtype == torch.bool
    xs = torch.randint(0, size, (200,), generator=g).tolist()
    ys = torch.randint(0, size, (200,), generator=g).tolist()
    request = MaskRequest(mode="points", points=tuple(PointPrompt(x, y) for x, y in zip(xs, ys)))
    scaled = fastsam_geometry.scale_request(request, size, size, grid, grid)
    for p, q in zip(request.points, scaled.points):
        assert 0 <= q.x < grid and 0 <= q.y < grid
        assert bool(full[p.y, p.x]) == bool(cells[q.y, q.x])
    assert torch.equal(fastsam_geometry.grid_index(size, grid), (torch.arange(size) * grid) // size)


def test_scaled_boxes_cover_the_cells_they_touch():
    request = MaskRequest(mode="boxes", boxes=(BoxPrompt(0, 0, 8192, 8192), BoxPrompt(33, 64, 65, 95)))
    full, part = fastsam_geometry.scale_request(request, 8192, 8192, 256, 256).boxes
    assert full == BoxPrompt(0, 0, 256, 256)
    assert part == BoxPrompt(1, 2, 3, 3)  # x 33..64 -> cells 1..2, y 64..94 -> cell 2
    same = MaskRequest(mode="boxes", boxes=(BoxPrompt(1, 2, 3, 4),))
    assert fastsam_geometry.scale_request(same, 50, 60, 50, 60) is same


def test_selection_on_a_coarse_grid_matches_selection_at_full_size():
    """Block-constant detections: selecting on the grid then upsampling == selecting on upsampled detections."""
    g = torch.Generator().manual_seed(3)
    coarse = torch.rand(12, 16, 16, generator=g) > 0.6
    full = torch.stack([fastsam_geometry.upsample_mask(m, 64, 64) for m in coarse])
    for request in (
        MaskRequest(mode="points", points=(PointPrompt(10, 40), PointPrompt(50, 5, positive=False))),
        MaskRequest(mode="boxes", boxes=(BoxPrompt(8, 8, 40, 36),), combine="largest"),
        MaskRequest(mode="everything"),
    ):
        small = fastsam_select.select_mask(coarse, fastsam_geometry.scale_request(request, 64, 64, 16, 16))
        big = fastsam_select.select_mask(full, request)
        assert torch.equal(fastsam_geometry.upsample_mask(small.mask, 64, 64), big.mask), request.mode
        assert small.picked == big.picked


def test_resize_image_shrinks_by_area_and_keeps_the_range():
    image = torch.rand(64, 96, 3, generator=torch.Generator().manual_seed(0))
    small = fastsam_geometry.resize_image(image, 16, 24)
    assert small.shape == (16, 24, 3)
    assert torch.allclose(small[0, 0], image[:4, :4].mean(dim=(0, 1)), atol=1e-6)
    assert fastsam_geometry.resize_image(image, 64, 96) is image
    assert float(fastsam_geometry.resize_image(image, 128, 192).max()) <= 1.0


@pytest.mark.parametrize(
    "grid, image, window",
    [
        ((96, 128), (64, 96), (5, 91, 0, 128)),  # the test pictures at imgsz 128: bars above and below
        ((128, 96), (96, 64), (0, 128, 5, 91)),  # portrait: bars left and right
        ((1024, 1024), (1024, 1024), (0, 1024, 0, 1024)),  # no padding
        ((96, 128), (256, 384), (5, 91, 0, 128)),  # a large picture shrinks into the same window
    ],
)
def test_letterbox_window_is_the_picture_inside_the_padding(grid, image, window):
    top, bottom, left, right = fastsam_geometry.letterbox_window(grid, image)
    assert (top, bottom, left, right) == window
    (gh, gw), (h, w) = grid, image
    assert abs((bottom - top) / (right - left) - h / w) < 2 / min(gh, gw)  # the picture's aspect ratio
    assert abs(top - (gh - bottom)) <= 1 and abs(left - (gw - right)) <= 1  # centred


def test_detection_grid_crops_the_window_resizes_down_and_drops_empty_masks():
    data = torch.zeros(3, 96, 128, dtype=torch.uint8)  # ultralytics' 0/1 masks on the letterboxed grid
    data[0, 5:91] = 1  # the whole picture
    data[1, 0:5] = 1  # only in the padding bar above the picture
    data[2, 5:48, 0:64] = 1  # the picture's top-left quarter
    small = fastsam_geometry.detection_grid(data, 64, 96)  # the window (86x128) is larger: resized to the image
    assert small.dtype == torch.bool and small.shape == (2, 64, 96)
    assert bool(small[0].all())
    quarter = torch.zeros(64, 96, dtype=torch.bool)
    quarter[:32, :48] = True
    assert int((small[1] ^ quarter).sum()) <= 64 + 48  # one row/column of rounding at the edge, no more
    large = fastsam_geometry.detection_grid(data, 256, 384)  # the window is smaller: kept at grid resolution
    assert large.dtype == torch.bool and large.shape == (2, 86, 128)
    assert torch.equal(large, data[[0, 2], 5:91].bool())
    same = fastsam_geometry.detection_grid(data[[0, 2], 5:91], 86, 128)  # no padding: nothing cropped or dropped
    assert torch.equal(same, large)
    floats = fastsam_geometry.detection_grid(data.float() * 0.9, 256, 384)  # float masks: > 0.5
    assert torch.equal(floats, large)
