"""FastSAM prompt-guided selection: pick detections by points, boxes or text scores and merge them into one mask.

Pure torch: no ComfyUI, no ultralytics. FastSAM (Zhao et al., "Fast Segment Anything", arXiv 2306.12156)
works in two stages: all-instance segmentation, then prompt-guided selection among those masks. This module
is the second stage; the prompts come from :mod:`.fastsam_prompts`, already mapped onto the detection grid
(:func:`.fastsam_geometry.scale_request`).

Shapes: the detections of one image ``[N,h,w]`` bool, the selected mask ``[h,w]`` bool. Coordinates are cells
of that grid, x to the right, y down.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .fastsam_prompts import COMBINES, MODES, BoxPrompt, MaskRequest, PointPrompt


@dataclass(frozen=True)
class Selection:
    """The result of prompt-guided selection for one image.

    ``mask`` is ``[H,W]`` bool; ``picked`` the detection indices merged into it (after ``combine``);
    ``note`` says why the mask is empty when it is (logged as a warning by the caller).
    """

    mask: torch.Tensor
    picked: tuple[int, ...]
    note: str | None = None


def mask_areas(masks: torch.Tensor) -> torch.Tensor:
    """``[N,H,W]`` bool -> ``[N]`` int32 pixel counts (summed as bytes: twice as fast as a bool sum)."""
    flat = masks.reshape(masks.shape[0], -1).contiguous()
    if flat.dtype == torch.bool:
        flat = flat.view(torch.uint8)
    return flat.sum(dim=1, dtype=torch.int32)


def _smallest_containing(masks: torch.Tensor, areas: torch.Tensor, p: PointPrompt, allowed: torch.Tensor) -> int | None:
    hit = masks[:, p.y, p.x] & allowed
    if not bool(hit.any()):
        return None
    idx = torch.nonzero(hit).flatten()
    return int(idx[torch.argmin(areas[idx])])


def select_by_points(masks: torch.Tensor, points: tuple[PointPrompt, ...]) -> tuple[list[int], torch.Tensor | None]:
    """Detections picked by point prompts, and the region negative points cut away.

    1. Masks that contain a negative point are dropped (FastSAM: background points exclude masks).
    2. Each positive point picks the smallest remaining mask that contains it (the most specific object
       under the point). Without positive points every remaining mask is kept.
    3. The returned ``[H,W]`` bool region is, for each negative point, the smallest mask that contains it
       and no positive point; the caller subtracts it from the combined mask.

    So a negative point is never inside the result, and a positive point is inside it whenever some
    detection contains it and no negative point.
    """
    n = masks.shape[0]
    areas = mask_areas(masks)
    negatives = [p for p in points if not p.positive]
    positives = [p for p in points if p.positive]
    touches_negative = torch.zeros(n, dtype=torch.bool, device=masks.device)
    for p in negatives:
        touches_negative |= masks[:, p.y, p.x]
    touches_positive = torch.zeros(n, dtype=torch.bool, device=masks.device)
    for p in positives:
        touches_positive |= masks[:, p.y, p.x]
    allowed = ~touches_negative
    if positives:
        chosen: list[int] = []
        for p in positives:
            i = _smallest_containing(masks, areas, p, allowed)
            if i is not None and i not in chosen:
                chosen.append(i)
    else:
        chosen = [i for i in range(n) if bool(allowed[i])]
    cut = None
    for p in negatives:
        i = _smallest_containing(masks, areas, p, ~touches_positive)
        if i is not None:
            cut = masks[i].clone() if cut is None else cut | masks[i]
    return chosen, cut


def box_ious(masks: torch.Tensor, box: BoxPrompt) -> torch.Tensor:
    """IoU of each ``[N,H,W]`` mask with the filled box region -> ``[N]`` float."""
    h, w = masks.shape[-2:]
    x0, y0, x1, y1 = box.pixel_bounds(h, w)
    inside = masks[:, y0:y1, x0:x1].flatten(1).sum(dim=1).float()
    box_area = float((x1 - x0) * (y1 - y0))
    union = mask_areas(masks).float() + box_area - inside
    return inside / union.clamp(min=1.0)


def select_by_boxes(masks: torch.Tensor, boxes: tuple[BoxPrompt, ...]) -> list[int]:
    """For each box, the detection with the highest IoU with the box region (none when every IoU is 0)."""
    chosen: list[int] = []
    if masks.shape[0] == 0:
        return chosen
    for box in boxes:
        ious = box_ious(masks, box)
        best = int(torch.argmax(ious))
        if float(ious[best]) > 0 and best not in chosen:
            chosen.append(best)
    return chosen


def select_by_scores(scores: torch.Tensor) -> list[int]:
    """``[T,N]`` similarity of T phrases with N detections -> the best detection for each phrase."""
    chosen: list[int] = []
    if scores.ndim != 2 or scores.shape[1] == 0:
        return chosen
    for row in scores:
        best = int(torch.argmax(row))
        if best not in chosen:
            chosen.append(best)
    return chosen


def combine_selection(masks: torch.Tensor, chosen: list[int], combine: str, index: int = 0) -> Selection:
    """Merge the chosen detections: ``union`` of all, the ``largest``, or the ``index``-th by area (largest first).

    ``picked`` lists the merged detections in index order for ``union`` (no areas needed: a few hundred
    full-size masks are costly to count), else the one picked.
    """
    h, w = masks.shape[-2:]
    empty = torch.zeros((h, w), dtype=torch.bool, device=masks.device)
    if not chosen:
        return Selection(empty, (), "no detection matched the prompt")
    if combine == "union":
        picked = tuple(sorted(chosen))
        merged = masks if len(picked) == masks.shape[0] else masks[list(picked)]
        return Selection(merged.any(dim=0), picked)
    areas = mask_areas(masks[chosen])
    by_area = [chosen[j] for j in sorted(range(len(chosen)), key=lambda j: (-int(areas[j]), chosen[j]))]
    if combine == "largest":
        picked = (by_area[0],)
    elif combine == "index":
        if index >= len(by_area):
            return Selection(empty, (), f"index {index} is past the {len(by_area)} selected mask(s) (0-based)")
        picked = (by_area[index],)
    else:
        raise ValueError(f"combine: expected one of {list(COMBINES)}, got {combine!r}")
    return Selection(masks[list(picked)].any(dim=0), picked)


def select_mask(masks: torch.Tensor, request: MaskRequest, text_scores: torch.Tensor | None = None) -> Selection:
    """Prompt-guided selection for one image: detections ``[N,H,W]`` bool -> a :class:`Selection`.

    ``everything`` keeps all detections, ``points``/``boxes`` see :func:`select_by_points` and
    :func:`select_by_boxes`, ``text`` takes the best-scoring detection per phrase (``text_scores`` ``[T,N]``).
    ``combine`` then merges the selection.
    """
    masks = masks.bool()
    if masks.shape[0] == 0:
        return Selection(torch.zeros(masks.shape[-2:], dtype=torch.bool), (), "FastSAM found no objects")
    cut = None
    if request.mode == "everything":
        chosen = list(range(masks.shape[0]))
    elif request.mode == "points":
        chosen, cut = select_by_points(masks, request.points)
    elif request.mode == "boxes":
        chosen = select_by_boxes(masks, request.boxes)
    elif request.mode == "text":
        if text_scores is None:
            raise ValueError("text mode needs CLIP similarity scores for the detections")
        chosen = select_by_scores(text_scores)
    else:
        raise ValueError(f"mode: expected one of {list(MODES)}, got {request.mode!r}")
    sel = combine_selection(masks, chosen, request.combine, request.index)
    if cut is not None:
        mask = sel.mask & ~cut
        note = sel.note or (None if bool(mask.any()) else "negative points removed the whole selection")
        sel = Selection(mask, sel.picked, note)
    return sel
