"""FastSAM preview: the input image with the mask tinted and the point/box prompts drawn.

Pure torch: no ComfyUI. IMAGE ``[B,H,W,3]`` float 0..1, MASK ``[B,H,W]`` float 0..1; prompts in pixels of the
input image (:mod:`.fastsam_prompts`).
"""

from __future__ import annotations

import torch

from .fastsam_prompts import BoxPrompt, PointPrompt

MASK_COLOR = (0.12, 0.56, 1.0)
MASK_ALPHA = 0.5
POSITIVE_COLOR = (0.1, 0.9, 0.2)
NEGATIVE_COLOR = (0.95, 0.15, 0.15)
BOX_COLOR = (1.0, 0.84, 0.0)


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
