"""FastSAM image tensors: the node's IMAGE to RGB, RGB to uint8 for ultralytics and CLIP, masked crops for CLIP.

Pure torch + numpy: no ComfyUI, no ultralytics. IMAGE ``[B,H,W,C]`` float 0..1, crops ``[h,w,3]`` float 0..1.
"""

from __future__ import annotations

import numpy as np
import torch


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
