"""FastSAM grid geometry: the letterboxed inference grid, prompts mapped onto it and the selected mask mapped back.

Pure torch: no ComfyUI, no ultralytics. ultralytics letterboxes a picture into an ``imgsz`` grid (a multiple of
32, centred padding) and returns the masks of every detection on that grid. :func:`detection_grid` cuts the
picture's window out of it, no finer than the image (memory must not grow with detections x pixels);
:func:`scale_request` maps the prompts onto that grid and :func:`upsample_mask` brings the one selected mask back
to the image, both through :func:`grid_index`.

Shapes: masks ``[N,h,w]`` bool (or 0/1 uint8 / float as ultralytics gives them), images ``[H,W,3]`` float 0..1.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from .fastsam_prompts import BoxPrompt, MaskRequest, PointPrompt


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


def letterbox_window(grid: tuple[int, int], image: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of the picture inside a letterboxed ``grid`` (ultralytics' centred padding)."""
    (gh, gw), (h, w) = grid, image
    gain = min(gh / h, gw / w)
    pad_h, pad_w = (gh - h * gain) / 2, (gw - w * gain) / 2
    top, left = int(round(pad_h - 0.1)), int(round(pad_w - 0.1))
    return top, gh - int(round(pad_h + 0.1)), left, gw - int(round(pad_w + 0.1))


def detection_grid(data: torch.Tensor, height: int, width: int, chunk: int = 32) -> torch.Tensor:
    """Letterboxed masks ``[N,gh,gw]`` -> bool ``[N,h,w]``: the picture's window, no finer than the image.

    A window larger than the image (small pictures are scaled up to imgsz) is resized down to the image
    (bilinear, > 0.5, ``chunk`` masks at a time); a smaller one is kept as it is. Masks left with no pixel
    (all in the padding, or thinner than a pixel of the image) are dropped, as ultralytics drops empty ones.
    """
    top, bottom, left, right = letterbox_window(tuple(data.shape[-2:]), (height, width))
    cropped = (top, left, bottom, right) != (0, 0, *data.shape[-2:])
    window = data[:, top:bottom, left:right] if cropped else data
    gh, gw = window.shape[-2:]
    if (gh, gw) == (height, width) or gh * gw < height * width:
        # ultralytics >= 8.1 gives 0/1 uint8 masks: reinterpret them, no pass over N x h x w
        out = (window.view(torch.bool) if window.dtype == torch.uint8 else window > 0.5).cpu()
    else:
        cropped = True
        out = torch.empty((data.shape[0], height, width), dtype=torch.bool)
        for start in range(0, data.shape[0], chunk):
            part = window[start : start + chunk].float()[None]
            out[start : start + chunk] = (
                torch.nn.functional.interpolate(part, size=(height, width), mode="bilinear")[0] > 0.5
            ).cpu()
    if not cropped:  # ultralytics already dropped the empty masks
        return out
    keep = out.flatten(1).any(dim=1)
    return out if bool(keep.all()) else out[keep]
