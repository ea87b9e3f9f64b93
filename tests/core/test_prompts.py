"""FastSAM prompt parsing, selection, combination and preview drawing on synthetic masks (no ComfyUI)."""

from __future__ import annotations

import pytest
import torch
from comfyui_diffstyler.nodes.core import prompts
from comfyui_diffstyler.nodes.core.prompts import BoxPrompt, MaskRequest, PointPrompt

H, W = 40, 60


def rect(x0, y0, x1, y1, h=H, w=W):
    m = torch.zeros(h, w, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.fixture
def masks():
    """0: left half (big), 1: small square inside 0, 2: right block, 3: whole image."""
    return torch.stack([rect(0, 0, 30, 40), rect(5, 5, 15, 15), rect(40, 10, 55, 30), rect(0, 0, 60, 40)])


# ------------------------------------------------------------------------------------------ parsing


def test_parse_points_formats():
    pts = prompts.parse_points('[{"x": 3, "y": 4, "label": 1}, {"x": 5.5, "y": 6.49, "label": 0}]')
    assert pts == (PointPrompt(3, 4, True), PointPrompt(6, 6, False))  # rounded half up, as the JS editor does
    # other point editors write no label: positive
    assert prompts.parse_points('[{"x": 1, "y": 2}]') == (PointPrompt(1, 2, True),)
    assert prompts.parse_points("[[1, 2], [3, 4, 0]]") == (PointPrompt(1, 2, True), PointPrompt(3, 4, False))
    assert prompts.parse_points('{"x": 7, "y": 8}') == (PointPrompt(7, 8, True),)
    assert prompts.parse_points("") == () and prompts.parse_points("  \n") == () and prompts.parse_points(None) == ()


@pytest.mark.parametrize(
    "text, match",
    [
        ('[{"x": 1, "y": 2', r"points: invalid JSON .*line 1"),
        ('[{"x": 1}]', r"points: point 0 needs 'x' and 'y'"),
        ('[{"x": 1, "y": 2, "label": 2}]', r"points: point 0 label must be 1 .* or 0"),
        ('[{"x": true, "y": 2}]', r"points: point 0 x must be a finite number"),
        ('[{"x": "3", "y": 2}]', r"points: point 0 x must be a finite number"),
        ('"hello"', r"points: expected a JSON list"),
        ("[[1]]", r"points: point 0 must be an object"),
    ],
)
def test_parse_points_errors_name_the_widget(text, match):
    with pytest.raises(ValueError, match=match):
        prompts.parse_points(text)


def test_parse_boxes():
    assert prompts.parse_boxes("[[1, 2, 30, 40], [0, 0, 5.5, 6.2]]") == (BoxPrompt(1, 2, 30, 40), BoxPrompt(0, 0, 6, 6))
    assert prompts.parse_boxes("[1, 2, 30, 40]") == (BoxPrompt(1, 2, 30, 40),)
    assert prompts.parse_boxes("") == ()
    with pytest.raises(ValueError, match=r"boxes: invalid JSON"):
        prompts.parse_boxes("[[1, 2, 3, 4]")
    with pytest.raises(ValueError, match=r"boxes: box 0 \[5, 2, 3, 4\] is empty"):
        prompts.parse_boxes("[[5, 2, 3, 4]]")
    with pytest.raises(ValueError, match=r"boxes: box 0 \[1, 2, 1, 4\] is empty"):  # empty once rounded
        prompts.parse_boxes("[[1.4, 2, 0.6, 4]]")
    with pytest.raises(ValueError, match=r"boxes: box 1 must be \[x0, y0, x1, y1\]"):
        prompts.parse_boxes("[[0, 0, 3, 4], [1, 2, 3]]")


def test_build_request_checks_widgets():
    req = prompts.build_request("points", '[{"x": 1, "y": 2}]', "", "", "largest", 2, 640, 0.3, 0.8)
    assert req == MaskRequest("points", (PointPrompt(1, 2),), (), (), "largest", 2, 640, 0.3, 0.8)
    assert prompts.build_request("text", text="a dog\n\n red car ").texts == ("a dog", "red car")
    with pytest.raises(ValueError, match="points: mode 'points' needs at least one point"):
        prompts.build_request("points", "")
    with pytest.raises(ValueError, match="boxes: mode 'boxes' needs at least one box"):
        prompts.build_request("boxes", boxes="[]")
    with pytest.raises(ValueError, match="text: mode 'text' needs"):
        prompts.build_request("text", text="  ")
    with pytest.raises(ValueError, match="imgsz: expected a multiple of 32"):
        prompts.build_request("everything", imgsz=1000)
    with pytest.raises(ValueError, match="combine: expected one of"):
        prompts.build_request("everything", combine="sum")
    with pytest.raises(ValueError, match="mode: expected one of"):
        prompts.build_request("all")


def test_prompts_outside_the_image_name_input_and_size():
    inside = prompts.build_request("points", '[{"x": 59, "y": 39}]', "[[0, 0, 60, 40]]")
    prompts.check_prompts_inside(inside, H, W)
    with pytest.raises(ValueError, match=r"points: point 0 \(x=60, y=3\) is outside the 60x40 image"):
        prompts.check_prompts_inside(prompts.build_request("points", '[{"x": 60, "y": 3}]'), H, W)
    with pytest.raises(ValueError, match=r"points: point 1 \(x=-1, y=3\)"):
        prompts.check_prompts_inside(prompts.build_request("points", "[[1, 1], [-1, 3]]"), H, W)
    with pytest.raises(ValueError, match=r"boxes: box 0 \[0, 0, 61, 10\] is outside the 60x40 image"):
        prompts.check_prompts_inside(prompts.build_request("boxes", boxes="[[0, 0, 61, 10]]"), H, W)


def test_to_rgb_channels():
    rgb = torch.rand(2, 5, 7, 3)
    assert torch.equal(prompts.to_rgb(rgb), rgb)
    rgba = torch.cat([rgb, torch.rand(2, 5, 7, 1)], dim=-1)
    assert torch.equal(prompts.to_rgb(rgba), rgb)
    gray = torch.rand(2, 5, 7, 1)
    out = prompts.to_rgb(gray)
    assert (
        out.shape == (2, 5, 7, 3) and torch.equal(out[..., 1], gray[..., 0]) and torch.equal(out[..., 2], gray[..., 0])
    )
    gray_alpha = torch.cat([gray, torch.rand(2, 5, 7, 1)], dim=-1)
    assert torch.equal(prompts.to_rgb(gray_alpha), out)
    with pytest.raises(ValueError, match=r"image: expected 1 to 4 channels .*got 5: convert the image to RGB"):
        prompts.to_rgb(torch.rand(1, 5, 7, 5))
    with pytest.raises(ValueError, match=r"image: expected an IMAGE tensor \[B,H,W,C\]"):
        prompts.to_rgb(torch.rand(5, 7, 3))


# ------------------------------------------------------------------------------------------ selection


def select(masks, mode, **kw):
    return prompts.select_mask(masks, MaskRequest(mode=mode, **kw))


def test_positive_point_picks_the_smallest_mask_containing_it(masks):
    sel = select(masks, "points", points=(PointPrompt(10, 10),))
    assert sel.picked == (1,) and torch.equal(sel.mask, masks[1])
    sel = select(masks, "points", points=(PointPrompt(25, 30),))  # in 0 but not in 1
    assert sel.picked == (0,) and torch.equal(sel.mask, masks[0])
    sel = select(masks, "points", points=(PointPrompt(35, 35),))  # only the whole-image mask
    assert sel.picked == (3,)
    two = select(masks, "points", points=(PointPrompt(10, 10), PointPrompt(45, 20)))
    assert set(two.picked) == {1, 2} and torch.equal(two.mask, masks[1] | masks[2])


def test_negative_point_removes_the_masks_that_contain_it(masks):
    # positive inside the small square, negative in the left half outside it: the big masks 0 and 3 go
    sel = select(masks, "points", points=(PointPrompt(10, 10), PointPrompt(25, 30, False)))
    assert sel.picked == (1,) and torch.equal(sel.mask, masks[1])
    # negative inside the chosen object: the positive point has no mask left without the negative one
    sel = select(masks, "points", points=(PointPrompt(25, 30), PointPrompt(10, 10, False)))
    assert sel.picked == () and not sel.mask.any() and sel.note
    # only negative points: everything that does not contain them, minus their own object
    sel = select(masks, "points", points=(PointPrompt(45, 20, False),))
    assert set(sel.picked) == {0, 1} and not sel.mask[20, 45] and torch.equal(sel.mask, masks[0])


def test_negative_point_region_is_cut_from_the_union():
    big = rect(0, 0, 40, 40)
    blob = rect(30, 0, 60, 40)
    inner = rect(32, 5, 38, 15)
    masks = torch.stack([big, blob, inner])
    # positive in big only; negative in the overlap of big and blob: big goes (contains it) ... so use blob's area
    sel = select(masks, "points", points=(PointPrompt(50, 20), PointPrompt(35, 10, False)))
    # blob contains the negative point too and is dropped; nothing else holds (50, 20)
    assert sel.picked == ()
    # positive in big outside blob, negative inside blob only (x=45): blob is cut from big's union
    sel = select(masks, "points", points=(PointPrompt(5, 5), PointPrompt(45, 20, False)))
    assert sel.picked == (0,)
    assert torch.equal(sel.mask, big & ~blob)
    assert not sel.mask[20, 45] and sel.mask[5, 5]


def test_box_keeps_the_mask_that_fits_it(masks):
    sel = select(masks, "boxes", boxes=(BoxPrompt(4, 4, 16, 16),))
    assert sel.picked == (1,)
    sel = select(masks, "boxes", boxes=(BoxPrompt(38, 8, 57, 32),))
    assert sel.picked == (2,)
    sel = select(masks, "boxes", boxes=(BoxPrompt(0, 0, 31, 40), BoxPrompt(40, 10, 55, 30)))
    assert set(sel.picked) == {0, 2}
    ious = prompts.box_ious(masks, BoxPrompt(5, 5, 15, 15))
    assert float(ious[1]) == pytest.approx(1.0) and float(ious[3]) == pytest.approx(100 / 2400)


def test_box_with_no_overlap_selects_nothing():
    masks = torch.stack([rect(0, 0, 10, 10)])
    sel = select(masks, "boxes", boxes=(BoxPrompt(20, 20, 30, 30),))
    assert sel.picked == () and not sel.mask.any() and "no detection matched" in sel.note


def test_combine_union_largest_index(masks):
    everything = select(masks, "everything")
    assert torch.equal(everything.mask, masks.any(0)) and everything.picked == (0, 1, 2, 3)
    assert select(masks, "everything", combine="largest").picked == (3,)
    assert select(masks, "everything", combine="index", index=1).picked == (0,)
    assert select(masks, "everything", combine="index", index=3).picked == (1,)
    past = select(masks, "everything", combine="index", index=4)
    assert past.picked == () and not past.mask.any() and "index 4" in past.note
    # index counts within the selection, largest first
    two = select(masks, "points", points=(PointPrompt(10, 10), PointPrompt(45, 20)), combine="index", index=0)
    assert two.picked == (2,)  # block 2 (300 px) is larger than square 1 (100 px)


def test_text_scores_pick_the_best_mask_per_phrase(masks):
    scores = torch.tensor([[0.1, 0.9, 0.2, 0.3], [0.5, 0.4, 0.3, 0.2]])
    sel = prompts.select_mask(masks, MaskRequest(mode="text", texts=("a", "b")), scores)
    assert set(sel.picked) == {0, 1}
    sel = prompts.select_mask(masks, MaskRequest(mode="text", texts=("a",)), scores[:1])
    assert sel.picked == (1,)
    with pytest.raises(ValueError, match="text mode needs CLIP similarity scores"):
        prompts.select_mask(masks, MaskRequest(mode="text", texts=("a",)))


def test_zero_detections_give_an_empty_mask():
    empty = torch.zeros(0, H, W, dtype=torch.bool)
    for mode, kw in [
        ("everything", {}),
        ("points", {"points": (PointPrompt(1, 1),)}),
        ("boxes", {"boxes": (BoxPrompt(0, 0, 5, 5),)}),
        ("text", {"texts": ("x",)}),
    ]:
        sel = prompts.select_mask(empty, MaskRequest(mode=mode, **kw), torch.zeros(1, 0))
        assert sel.mask.shape == (H, W) and not sel.mask.any() and "no objects" in sel.note


# ------------------------------------------------------------------------------------------ crops and preview


def test_masked_crops_cut_the_bbox_and_whiten_the_rest():
    image = torch.rand(H, W, 3)
    m = torch.zeros(H, W, dtype=torch.bool)
    m[10:20, 30:35] = True
    m[15, 40] = True
    (crop,) = prompts.masked_crops(image, m[None])
    assert crop.shape == (10, 11, 3)
    assert torch.equal(crop[0:10, 0:5], image[10:20, 30:35])
    assert torch.equal(crop[0, 10], torch.ones(3))  # outside the mask inside the bbox -> white
    assert torch.equal(crop[5, 10], image[15, 40])
    (blank,) = prompts.masked_crops(image, torch.zeros(1, H, W, dtype=torch.bool))
    assert blank.shape == (1, 1, 3)


def test_preview_tints_the_mask_and_draws_prompts():
    image = torch.full((2, H, W, 3), 0.5)
    mask = torch.zeros(2, H, W)
    mask[:, 0:10, 0:10] = 1.0
    points = (PointPrompt(30, 20), PointPrompt(50, 30, False))
    boxes = (BoxPrompt(2, 25, 20, 38),)
    out = prompts.draw_preview(image, mask, points, boxes)
    assert out.shape == (2, H, W, 3) and out.dtype == torch.float32
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    tinted = out[0, 5, 5]
    assert tinted[2] > 0.7 and tinted[0] < 0.4  # blue tint over the mask
    assert torch.allclose(out[0, 5, 40], torch.full((3,), 0.5))  # untouched elsewhere
    assert torch.allclose(out[1, 20, 30], torch.tensor(prompts.POSITIVE_COLOR))
    assert torch.allclose(out[1, 30, 50], torch.tensor(prompts.NEGATIVE_COLOR))
    assert torch.allclose(out[0, 25, 10], torch.tensor(prompts.BOX_COLOR))  # top edge of the box
    assert torch.allclose(out[0, 30, 10], torch.full((3,), 0.5))  # inside the box: not drawn


@pytest.mark.parametrize("size, grid", [(8192, 256), (1000, 128), (96, 96), (97, 32)])
def test_prompts_and_upsampled_mask_use_one_grid_mapping(size, grid):
    """A prompt's pixel in the upsampled mask is exactly the grid cell the selection tested."""
    g = torch.Generator().manual_seed(size)
    cells = torch.rand(grid, grid, generator=g) > 0.5
    full = prompts.upsample_mask(cells, size, size)
    assert full.shape == (size, size) and full.dtype == torch.bool
    xs = torch.randint(0, size, (200,), generator=g).tolist()
    ys = torch.randint(0, size, (200,), generator=g).tolist()
    request = MaskRequest(mode="points", points=tuple(PointPrompt(x, y) for x, y in zip(xs, ys)))
    scaled = prompts.scale_request(request, size, size, grid, grid)
    for p, q in zip(request.points, scaled.points):
        assert 0 <= q.x < grid and 0 <= q.y < grid
        assert bool(full[p.y, p.x]) == bool(cells[q.y, q.x])
    assert torch.equal(prompts.grid_index(size, grid), (torch.arange(size) * grid) // size)


def test_scaled_boxes_cover_the_cells_they_touch():
    request = MaskRequest(mode="boxes", boxes=(BoxPrompt(0, 0, 8192, 8192), BoxPrompt(33, 64, 65, 95)))
    full, part = prompts.scale_request(request, 8192, 8192, 256, 256).boxes
    assert full == BoxPrompt(0, 0, 256, 256)
    assert part == BoxPrompt(1, 2, 3, 3)  # x 33..64 -> cells 1..2, y 64..94 -> cell 2
    same = MaskRequest(mode="boxes", boxes=(BoxPrompt(1, 2, 3, 4),))
    assert prompts.scale_request(same, 50, 60, 50, 60) is same


def test_selection_on_a_coarse_grid_matches_selection_at_full_size():
    """Block-constant detections: selecting on the grid then upsampling == selecting on upsampled detections."""
    g = torch.Generator().manual_seed(3)
    coarse = torch.rand(12, 16, 16, generator=g) > 0.6
    full = torch.stack([prompts.upsample_mask(m, 64, 64) for m in coarse])
    for request in (
        MaskRequest(mode="points", points=(PointPrompt(10, 40), PointPrompt(50, 5, positive=False))),
        MaskRequest(mode="boxes", boxes=(BoxPrompt(8, 8, 40, 36),), combine="largest"),
        MaskRequest(mode="everything"),
    ):
        small = prompts.select_mask(coarse, prompts.scale_request(request, 64, 64, 16, 16))
        big = prompts.select_mask(full, request)
        assert torch.equal(prompts.upsample_mask(small.mask, 64, 64), big.mask), request.mode
        assert small.picked == big.picked


def test_resize_image_shrinks_by_area_and_keeps_the_range():
    image = torch.rand(64, 96, 3, generator=torch.Generator().manual_seed(0))
    small = prompts.resize_image(image, 16, 24)
    assert small.shape == (16, 24, 3)
    assert torch.allclose(small[0, 0], image[:4, :4].mean(dim=(0, 1)), atol=1e-6)
    assert prompts.resize_image(image, 64, 96) is image
    assert float(prompts.resize_image(image, 128, 192).max()) <= 1.0
