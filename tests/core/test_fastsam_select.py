"""FastSAM prompt-guided selection and combination on synthetic detections (no ComfyUI)."""

from __future__ import annotations

import pytest
import torch
from comfyui_diffstyler.nodes.core import fastsam_select
from comfyui_diffstyler.nodes.core.fastsam_prompts import BoxPrompt, MaskRequest, PointPrompt

H, W = 40, 60


def rect(x0, y0, x1, y1, h=H, w=W):
    m = torch.zeros(h, w, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.fixture
def masks():
    """0: left half (big), 1: small square inside 0, 2: right block, 3: whole image."""
    return torch.stack([rect(0, 0, 30, 40), rect(5, 5, 15, 15), rect(40, 10, 55, 30), rect(0, 0, 60, 40)])


def select(masks, mode, **kw):
    return fastsam_select.select_mask(masks, MaskRequest(mode=mode, **kw))


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
    ious = fastsam_select.box_ious(masks, BoxPrompt(5, 5, 15, 15))
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
    sel = fastsam_select.select_mask(masks, MaskRequest(mode="text", texts=("a", "b")), scores)
    assert set(sel.picked) == {0, 1}
    sel = fastsam_select.select_mask(masks, MaskRequest(mode="text", texts=("a",)), scores[:1])
    assert sel.picked == (1,)
    with pytest.raises(ValueError, match="text mode needs CLIP similarity scores"):
        fastsam_select.select_mask(masks, MaskRequest(mode="text", texts=("a",)))


def test_zero_detections_give_an_empty_mask():
    empty = torch.zeros(0, H, W, dtype=torch.bool)
    for mode, kw in [
        ("everything", {}),
        ("points", {"points": (PointPrompt(1, 1),)}),
        ("boxes", {"boxes": (BoxPrompt(0, 0, 5, 5),)}),
        ("text", {"texts": ("x",)}),
    ]:
        sel = fastsam_select.select_mask(empty, MaskRequest(mode=mode, **kw), torch.zeros(1, 0))
        assert sel.mask.shape == (H, W) and not sel.mask.any() and "no objects" in sel.note
