"""FastSAM prompts: parse point/box/text prompts, pick detections, combine masks, draw the preview.

Pure torch + numpy: no ComfyUI, no ultralytics. FastSAM (Zhao et al., "Fast Segment Anything",
arXiv 2306.12156) works in two stages: all-instance segmentation, then prompt-guided selection among
those masks. This module is the second stage.

Shapes: IMAGE ``[B,H,W,C]`` float 0..1, MASK ``[B,H,W]`` float 0..1, the detections of one image
``[N,h,w]`` bool on a detection grid no finer than the image (FastSAM's inference resolution for large
pictures: memory must not grow with detections x pixels); :func:`scale_request` maps the prompts onto that
grid and :func:`upsample_mask` brings the one selected mask back to the image. Coordinates are pixels of
the input image, x to the right, y down; a point names a pixel, a box ``[x0,y0,x1,y1]`` spans
``x0 <= x < x1``. Coordinates are rounded to integers (half up), as the pack's point/box editor
(js/lib/geometry.js) does.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace

import numpy as np
import torch

MODES = ("everything", "points", "boxes", "text")
COMBINES = ("union", "largest", "index")

POINTS_EXAMPLE = '[{"x": 120, "y": 80, "label": 1}, {"x": 40, "y": 30, "label": 0}]'
BOXES_EXAMPLE = "[[10, 20, 200, 180]]"

MASK_COLOR = (0.12, 0.56, 1.0)
MASK_ALPHA = 0.5
POSITIVE_COLOR = (0.1, 0.9, 0.2)
NEGATIVE_COLOR = (0.95, 0.15, 0.15)
BOX_COLOR = (1.0, 0.84, 0.0)


@dataclass(frozen=True)
class PointPrompt:
    """A pixel ``(x, y)`` of the input image; positive points pick a mask, negative ones remove masks."""

    x: int
    y: int
    positive: bool = True


@dataclass(frozen=True)
class BoxPrompt:
    """A box in pixels of the input image, ``x0 < x1`` and ``y0 < y1`` (x1, y1 exclusive)."""

    x0: int
    y0: int
    x1: int
    y1: int

    def pixel_bounds(self, height: int, width: int) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)`` clipped to the image, for slicing ``[y0:y1, x0:x1]``."""
        x0 = min(max(self.x0, 0), width)
        y0 = min(max(self.y0, 0), height)
        return x0, y0, min(max(self.x1, x0), width), min(max(self.y1, y0), height)


@dataclass(frozen=True)
class MaskRequest:
    """What the FastSAM Mask node was asked for (one request serves every image of the batch)."""

    mode: str = "everything"
    points: tuple[PointPrompt, ...] = ()
    boxes: tuple[BoxPrompt, ...] = ()
    texts: tuple[str, ...] = ()
    combine: str = "union"
    index: int = 0
    imgsz: int = 1024
    conf: float = 0.4
    iou: float = 0.9


@dataclass(frozen=True)
class Selection:
    """The result of prompt-guided selection for one image.

    ``mask`` is ``[H,W]`` bool; ``picked`` the detection indices merged into it (after ``combine``);
    ``note`` says why the mask is empty when it is (logged as a warning by the caller).
    """

    mask: torch.Tensor
    picked: tuple[int, ...]
    note: str | None = None


# ---------------------------------------------------------------------------------------------- parsing


def _load_json(text: str | None, widget: str, example: str):
    if text is None or not str(text).strip():
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{widget}: invalid JSON ({e.msg} at line {e.lineno}, column {e.colno}); expected a list such as {example}"
        ) from e


def _number(value, widget: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{widget}: {what} must be a finite number, got {value!r}")
    return float(value)


def _round(v: float) -> int:
    """Round half up, as JavaScript's Math.round does in the editor."""
    return int(math.floor(v + 0.5))


def parse_points(text: str | None, widget: str = "points") -> tuple[PointPrompt, ...]:
    """Parse point prompts from JSON.

    Accepts ``[{"x": 10, "y": 20, "label": 1}, ...]`` (label 1 positive, 0 negative), the same without
    ``label`` (positive, as other point editors write), ``[[x, y], [x, y, label], ...]`` and a single
    point object. Coordinates are rounded half up, like the editor. Empty text gives no points.
    """
    data = _load_json(text, widget, POINTS_EXAMPLE)
    if data is None:
        return ()
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise ValueError(
            f"{widget}: expected a JSON list of points such as {POINTS_EXAMPLE}, got {type(data).__name__}"
        )
    out = []
    for i, item in enumerate(data):
        if isinstance(item, dict):
            if "x" not in item or "y" not in item:
                raise ValueError(
                    f"{widget}: point {i} needs 'x' and 'y' keys, got {item!r} (example: {POINTS_EXAMPLE})"
                )
            x, y, label = item["x"], item["y"], item.get("label", 1)
        elif isinstance(item, (list, tuple)) and len(item) in (2, 3):
            x, y, label = item[0], item[1], (item[2] if len(item) == 3 else 1)
        else:
            raise ValueError(f'{widget}: point {i} must be an object {{"x", "y", "label"}} or [x, y], got {item!r}')
        fx = _number(x, widget, f"point {i} x")
        fy = _number(y, widget, f"point {i} y")
        if isinstance(label, bool) or label not in (0, 1):
            raise ValueError(f"{widget}: point {i} label must be 1 (positive) or 0 (negative), got {label!r}")
        out.append(PointPrompt(_round(fx), _round(fy), bool(label == 1)))
    return tuple(out)


def parse_boxes(text: str | None, widget: str = "boxes") -> tuple[BoxPrompt, ...]:
    """Parse box prompts ``[[x0, y0, x1, y1], ...]`` (pixels; a single ``[x0, y0, x1, y1]`` is one box)."""
    data = _load_json(text, widget, BOXES_EXAMPLE)
    if data is None:
        return ()
    if isinstance(data, list) and len(data) == 4 and all(isinstance(v, (int, float)) for v in data):
        data = [data]
    if not isinstance(data, list):
        raise ValueError(f"{widget}: expected a JSON list of boxes such as {BOXES_EXAMPLE}, got {type(data).__name__}")
    out = []
    for i, item in enumerate(data):
        if not isinstance(item, (list, tuple)) or len(item) != 4:
            raise ValueError(f"{widget}: box {i} must be [x0, y0, x1, y1], got {item!r} (example: {BOXES_EXAMPLE})")
        x0, y0, x1, y1 = (_round(_number(v, widget, f"box {i} coordinate")) for v in item)
        if not (x1 > x0 and y1 > y0):
            raise ValueError(f"{widget}: box {i} {[x0, y0, x1, y1]} is empty: expected x0 < x1 and y0 < y1")
        out.append(BoxPrompt(x0, y0, x1, y1))
    return tuple(out)


def parse_texts(text: str | None) -> tuple[str, ...]:
    """One phrase per non-empty line."""
    if not text:
        return ()
    return tuple(line.strip() for line in str(text).splitlines() if line.strip())


def build_request(
    mode: str,
    points: str | None = "",
    boxes: str | None = "",
    text: str | None = "",
    combine: str = "union",
    index: int = 0,
    imgsz: int = 1024,
    conf: float = 0.4,
    iou: float = 0.9,
) -> MaskRequest:
    """Check the widget values and turn them into a :class:`MaskRequest` (errors name the widget)."""
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {list(MODES)}, got {mode!r}")
    if combine not in COMBINES:
        raise ValueError(f"combine: expected one of {list(COMBINES)}, got {combine!r}")
    check_imgsz(imgsz)
    if int(index) < 0:
        raise ValueError(f"index: expected 0 or more, got {index}")
    for name, value in (("conf", conf), ("iou", iou)):
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{name}: expected a value in 0..1, got {value}")
    req = MaskRequest(
        mode=mode,
        points=parse_points(points),
        boxes=parse_boxes(boxes),
        texts=parse_texts(text),
        combine=combine,
        index=int(index),
        imgsz=int(imgsz),
        conf=float(conf),
        iou=float(iou),
    )
    if mode == "points" and not req.points:
        raise ValueError(f"points: mode 'points' needs at least one point, e.g. {POINTS_EXAMPLE}")
    if mode == "boxes" and not req.boxes:
        raise ValueError(f"boxes: mode 'boxes' needs at least one box, e.g. {BOXES_EXAMPLE}")
    if mode == "text" and not req.texts:
        raise ValueError("text: mode 'text' needs a description of what to segment, e.g. 'a dog' (one per line)")
    return req


def check_imgsz(imgsz: int) -> None:
    if int(imgsz) < 32 or int(imgsz) % 32:
        raise ValueError(f"imgsz: expected a multiple of 32 (at least 32), got {imgsz}; FastSAM's stride is 32")


def check_prompts_inside(request: MaskRequest, height: int, width: int) -> None:
    """Raise ``ValueError`` naming the input and the image size when a prompt the mode uses lies outside the image.

    Prompts the mode does not use (points in ``boxes`` mode, say) are ignored, so stale editor values never
    block a run.
    """
    points = request.points if request.mode == "points" else ()
    boxes = request.boxes if request.mode == "boxes" else ()
    for i, p in enumerate(points):
        if not (0 <= p.x < width and 0 <= p.y < height):
            raise ValueError(
                f"points: point {i} (x={p.x}, y={p.y}) is outside the {width}x{height} image (x must be in "
                f"0..{width - 1}, y in 0..{height - 1}); give coordinates in pixels of the input image"
            )
    for i, b in enumerate(boxes):
        if b.x0 < 0 or b.y0 < 0 or b.x1 > width or b.y1 > height:
            raise ValueError(
                f"boxes: box {i} [{b.x0}, {b.y0}, {b.x1}, {b.y1}] is outside the {width}x{height} image "
                f"(x in 0..{width}, y in 0..{height}); give coordinates in pixels of the input image"
            )


# ---------------------------------------------------------------------------------------------- grids


def grid_index(size: int, grid: int) -> torch.Tensor:
    """For each of ``size`` image pixels along one axis, its cell on a ``grid``-cell axis: ``(i * grid) // size``.

    The one mapping used both ways (prompts to the grid, the grid mask back to the image), so a prompt's
    pixel in the upsampled mask is exactly the cell the selection tested.
    """
    return torch.div(torch.arange(size, dtype=torch.int64) * grid, size, rounding_mode="floor")


def scale_request(request: MaskRequest, height: int, width: int, grid_h: int, grid_w: int) -> MaskRequest:
    """``request`` with points and boxes moved from ``height x width`` image pixels to a ``grid_h x grid_w`` grid.

    A point goes to the cell holding it; a box ``[x0, x1)`` to the cells it touches (floor/ceil).
    """
    if (grid_h, grid_w) == (height, width):
        return request

    def cell(v: int, size: int, grid: int) -> int:
        return (v * grid) // size

    def cell_end(v: int, size: int, grid: int) -> int:
        return -((-v * grid) // size)

    points = tuple(PointPrompt(cell(p.x, width, grid_w), cell(p.y, height, grid_h), p.positive) for p in request.points)
    boxes = tuple(
        BoxPrompt(
            cell(b.x0, width, grid_w),
            cell(b.y0, height, grid_h),
            cell_end(b.x1, width, grid_w),
            cell_end(b.y1, height, grid_h),
        )
        for b in request.boxes
    )
    return replace(request, points=points, boxes=boxes)


def upsample_mask(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A ``[h,w]`` grid mask -> ``[height,width]`` (nearest cell, through :func:`grid_index`; a copy either way)."""
    h, w = mask.shape[-2:]
    if (h, w) == (height, width):
        return mask.clone()
    rows = grid_index(height, h).to(mask.device)
    cols = grid_index(width, w).to(mask.device)
    return mask.index_select(0, rows).index_select(1, cols)


def resize_image(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[H,W,3]`` float -> ``[height,width,3]`` (area average when shrinking, bilinear when growing)."""
    if tuple(image.shape[:2]) == (height, width):
        return image
    mode = "area" if height <= image.shape[0] and width <= image.shape[1] else "bilinear"
    chw = image.permute(2, 0, 1)[None].float()
    out = torch.nn.functional.interpolate(chw, size=(height, width), mode=mode)
    return out[0].permute(1, 2, 0).clamp(0.0, 1.0).contiguous()


# ---------------------------------------------------------------------------------------------- images


def to_rgb(image: torch.Tensor) -> torch.Tensor:
    """IMAGE ``[B,H,W,C]`` with C = 1 (gray), 2 (gray + alpha), 3 or 4 (RGBA) -> ``[B,H,W,3]`` float 0..1.

    Alpha is dropped (ComfyUI images carry straight, not premultiplied, colour).
    """
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image: expected an IMAGE tensor [B,H,W,C], got {shape}")
    if image.shape[0] == 0 or image.shape[1] == 0 or image.shape[2] == 0:
        raise ValueError(f"image: the image batch is empty ({tuple(image.shape)}): connect at least one image")
    c = image.shape[-1]
    if c in (1, 2):
        image = image[..., :1].expand(-1, -1, -1, 3)
    elif c in (3, 4):
        image = image[..., :3]
    else:
        raise ValueError(
            f"image: expected 1 to 4 channels (gray, gray + alpha, RGB, RGBA), got {c}: convert the image to RGB"
        )
    return image.float().clamp(0.0, 1.0).contiguous()


def masked_crops(image: torch.Tensor, masks: torch.Tensor, background: float = 1.0) -> list[torch.Tensor]:
    """For each detection, the image cropped to the mask's bounding box with the rest filled by ``background``.

    image ``[H,W,3]`` float 0..1, masks ``[N,H,W]`` bool -> N crops ``[h,w,3]`` (a 1x1 background crop for an
    empty mask). This is what CLIP scores in text mode (FastSAM's text prompt).
    """
    crops = []
    for m in masks:
        ys = torch.nonzero(m.any(dim=1)).flatten()
        xs = torch.nonzero(m.any(dim=0)).flatten()
        if ys.numel() == 0:
            crops.append(torch.full((1, 1, 3), background, dtype=image.dtype))
            continue
        y0, y1, x0, x1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
        region = image[y0:y1, x0:x1]
        keep = m[y0:y1, x0:x1].unsqueeze(-1)
        crops.append(torch.where(keep, region, torch.full_like(region, background)))
    return crops


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """``[...,3]`` float 0..1 -> uint8 numpy array of the same shape."""
    return (image.detach().cpu().float().clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()


# ---------------------------------------------------------------------------------------------- selection


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


# ---------------------------------------------------------------------------------------------- preview


def _paint(canvas: torch.Tensor, region: torch.Tensor, color: tuple[float, float, float]) -> None:
    canvas[region] = torch.tensor(color, dtype=canvas.dtype)


def draw_preview(
    image: torch.Tensor,
    mask: torch.Tensor,
    points: tuple[PointPrompt, ...] = (),
    boxes: tuple[BoxPrompt, ...] = (),
) -> torch.Tensor:
    """Overlay the mask and draw the prompts: image ``[B,H,W,3]``, mask ``[B,H,W]`` -> ``[B,H,W,3]`` float 0..1.

    The mask tints the image blue; boxes are yellow outlines; positive points green dots, negative points
    red dots, each with a dark ring so they show on any background.
    """
    image = image.float()
    m = mask.float().unsqueeze(-1).to(image.device)
    color = torch.tensor(MASK_COLOR, dtype=image.dtype, device=image.device)
    out = image * (1 - MASK_ALPHA * m) + color * (MASK_ALPHA * m)
    out = out.cpu().clone()
    _, h, w, _ = out.shape
    thick = max(1, round(min(h, w) / 256))
    for b in boxes:
        x0, y0, x1, y1 = b.pixel_bounds(h, w)
        outline = torch.zeros((h, w), dtype=torch.bool)
        outline[y0:y1, x0:x1] = True
        outline[y0 + thick : y1 - thick, x0 + thick : x1 - thick] = False
        for frame in out:
            _paint(frame, outline, BOX_COLOR)
    radius = max(2.0, min(h, w) / 128)
    yy = torch.arange(h, dtype=torch.float32).view(-1, 1)
    xx = torch.arange(w, dtype=torch.float32).view(1, -1)
    for p in points:
        d2 = (yy - p.y) ** 2 + (xx - p.x) ** 2
        ring = d2 <= (radius + 1.5) ** 2
        dot = d2 <= radius**2
        for frame in out:
            _paint(frame, ring, (0.0, 0.0, 0.0))
            _paint(frame, dot, POSITIVE_COLOR if p.positive else NEGATIVE_COLOR)
    return out.clamp(0.0, 1.0)
