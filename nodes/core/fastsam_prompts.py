"""FastSAM prompts: parse the point/box/text widgets, check them, and build the :class:`MaskRequest`.

Pure Python + the standard library: no ComfyUI, no ultralytics. FastSAM (Zhao et al., "Fast Segment Anything",
arXiv 2306.12156) selects among its detections by these prompts (:mod:`.fastsam_select`).

Coordinates are pixels of the input image, x to the right, y down; a point names a pixel, a box
``[x0,y0,x1,y1]`` spans ``x0 <= x < x1``. Coordinates are rounded to integers (half up), as the pack's point/box
editor (js/lib/geometry.js) does.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

MODES = ("everything", "points", "boxes", "text")
COMBINES = ("union", "largest", "index")

POINTS_EXAMPLE = '[{"x": 120, "y": 80, "label": 1}, {"x": 40, "y": 30, "label": 0}]'
BOXES_EXAMPLE = "[[10, 20, 200, 180]]"


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
