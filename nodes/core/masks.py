"""Masks: validation, resizing to the latent and to token grids, and fusion weights (no ComfyUI).

A ComfyUI MASK is ``[B,H,W]`` float 0..1 (``[H,W]`` is accepted as a batch of one). DiffStyler
fuses the style branches' noise predictions by mask (paper Sec. 3.3): later styles win where
masks overlap, and outside every mask the content is kept. By default masks are hard, as in the released
pipeline (bilinear to the latent grid, any value above 0 is in); soft masks (area-averaged, blending) are an option.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F  # noqa: N812

logger = logging.getLogger(__name__)

ASPECT_TOLERANCE = 0.05


def as_mask_batch(mask: torch.Tensor, name: str) -> torch.Tensor:
    """Return ``mask`` as float ``[B,H,W]``; ValueError naming ``name`` for other shapes or NaNs."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name}: expected a MASK tensor, got {type(mask).__name__}")
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.ndim != 3:
        raise ValueError(
            f"{name}: expected a MASK of shape [B,H,W], got {list(mask.shape)}: connect a MASK (Load Image Mask, "
            "FastSAM Mask)"
        )
    if mask.shape[0] == 0 or mask.shape[1] == 0 or mask.shape[2] == 0:
        raise ValueError(
            f"{name}: the mask is empty (shape {list(mask.shape)}): connect a mask with at least one pixel"
        )
    mask = mask.float()
    if not torch.isfinite(mask).all():
        raise ValueError(f"{name}: the mask contains NaN or infinite values: check the node that made it")
    return mask.clamp(0.0, 1.0)


MASK_MODES = ("hard", "soft")


def resize_mask_to_latent(
    mask: torch.Tensor, batch: int, height: int, width: int, name: str, mode: str = "soft"
) -> torch.Tensor:
    """Resize a MASK to the latent grid: ``[B,H,W]`` -> ``[batch,1,height,width]``.

    ``mode='hard'`` is the released pipeline's rule (design Sec. 5): bilinear interpolation to the latent grid
    (``align_corners=False``, no antialiasing), then every value above 0 is inside (1) and the rest outside (0).
    ``mode='soft'`` (an option of ours) area-averages to the latent grid, keeping fractional coverage.

    A mask batch of 1 is shared by every latent; otherwise it must equal the latent batch. The
    mask's aspect ratio must match the latent's (within 5%), because stretching would move the region.
    """
    if mode not in MASK_MODES:
        raise ValueError(f"mask mode: expected one of {MASK_MODES}, got {mode!r}")
    mask = as_mask_batch(mask, name)
    mb, mh, mw = mask.shape
    if mb not in (1, batch):
        raise ValueError(
            f"{name}: the mask batch has {mb} masks but the content latent batch has {batch} images: "
            f"give one mask (shared) or {batch} masks"
        )
    latent_ratio = width / height
    mask_ratio = mw / mh
    if abs(mask_ratio / latent_ratio - 1.0) > ASPECT_TOLERANCE:
        raise ValueError(
            f"{name}: the mask is {mw}x{mh} (width x height) but the content latent is {width}x{height} "
            f"({width * 8}x{height * 8} image): the aspect ratios differ; make the mask from the content image "
            "or resize it to the image size"
        )
    m = mask.unsqueeze(1)
    if mode == "hard":
        if (mh, mw) != (height, width):
            m = F.interpolate(m, size=(height, width), mode="bilinear", align_corners=False)
        m = (m > 0).to(torch.float32)
    elif (mh, mw) != (height, width):
        if mh >= height and mw >= width:
            m = F.adaptive_avg_pool2d(m, (height, width))
        else:
            m = F.interpolate(m, size=(height, width), mode="bilinear", align_corners=False)
    if mb == 1 and batch > 1:
        m = m.expand(batch, -1, -1, -1)
    return m.clamp(0.0, 1.0).contiguous()


def to_patch_grid(mask: torch.Tensor, patch: int) -> torch.Tensor:
    """A latent-grid mask ``[B,1,h,w]`` on the token grid of a model that packs ``patch`` x ``patch`` cells into one
    token (Flux.1: 2): a token is in as far as its most covered cell is (design Sec. 6: any cell in, the token in),
    and each of its cells gets the token's value. ``patch`` 1: the mask itself."""
    if patch <= 1:
        return mask
    h, w = mask.shape[-2:]
    tokens = torch.nn.functional.max_pool2d(mask, patch, patch, ceil_mode=True)
    return tokens.repeat_interleave(patch, -2).repeat_interleave(patch, -1)[..., :h, :w].contiguous()


def resize_mask_to_tokens(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[B,1,h,w]`` latent mask -> ``[B, height*width, 1]`` token weights for a layer's grid (area resize)."""
    if mask.shape[-2:] != (height, width):
        if mask.shape[-2] >= height and mask.shape[-1] >= width:
            mask = F.adaptive_avg_pool2d(mask, (height, width))
        else:
            mask = F.interpolate(mask, size=(height, width), mode="bilinear", align_corners=False)
    return mask.flatten(2).transpose(1, 2)


def fusion_weights(masks: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Painter's-order weights for masks ``[B,1,h,w]``: later masks cover earlier ones.

    ``w_i = m_i * prod_{j>i} (1 - m_j)`` and the background weight ``prod_j (1 - m_j)``; they sum to 1
    everywhere, so fusing predictions with them is a convex blend (soft masks blend smoothly).
    """
    if not masks:
        raise ValueError("no style masks to fuse")
    weights: list[torch.Tensor] = [torch.empty(0)] * len(masks)
    cover = torch.ones_like(masks[0])
    for i in range(len(masks) - 1, -1, -1):
        weights[i] = masks[i] * cover
        cover = cover * (1.0 - masks[i])
    return weights, cover


def fuse(
    preds: list[torch.Tensor], weights: list[torch.Tensor], background: torch.Tensor, background_weight: torch.Tensor
) -> torch.Tensor:
    """``sum_i w_i * pred_i + w_bg * background`` (all ``[B,C,h,w]``, weights ``[B,1,h,w]``)."""
    out = background * background_weight
    for p, w in zip(preds, weights):
        out = out + p * w
    return out


def inside_region(masks: list[torch.Tensor], threshold: float = 0.5) -> torch.Tensor:
    """Binary ``[B,1,h,w]`` union of the masks (soft union ``1 - prod(1 - m)`` above ``threshold``; for hard 0/1
    masks this is their plain union).

    Outside this region the exact background keeps the content latent bit for bit.
    """
    cover = torch.ones_like(masks[0])
    for m in masks:
        cover = cover * (1.0 - m)
    return (1.0 - cover) > threshold


def is_empty(mask: torch.Tensor, eps: float = 1e-6) -> bool:
    return float(mask.max()) <= eps


def region_mask_latent(masks: list[torch.Tensor], h: int, w: int) -> torch.Tensor:
    """The region the sampler restyles, at latent size: bool ``[B,1,h,w]`` (B = the largest mask batch).

    A mask of None is the whole picture (a global style). The sampler's rule: each MASK ``[B,H,W]`` is resized
    to the latent grid ``h x w`` with bilinear
    interpolation and any value above 0 is inside; the region is the union over the styles (later masks
    overwrite earlier ones only in which style a cell gets, not in whether it is styled).
    """
    if not masks:
        raise ValueError("no style masks: chain at least one Style LoRA Loader (DiffStyler)")
    batches = [
        torch.ones(1, h, w) if m is None else as_mask_batch(m, f"style {i + 1} mask") for i, m in enumerate(masks)
    ]
    size = max(m.shape[0] for m in batches)
    region = torch.zeros(size, 1, h, w, dtype=torch.bool)
    for i, m in enumerate(batches):
        if m.shape[0] not in (1, size):
            raise ValueError(
                f"style {i + 1} mask: a batch of {m.shape[0]} masks where another style has {size}: give one mask "
                f"(shared) or {size}"
            )
        m = m.unsqueeze(1)
        if tuple(m.shape[-2:]) != (h, w):
            m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
        region = region | (m > 0).expand(size, -1, -1, -1)
    return region
