"""Putting the original pixels back outside the styled region (no ComfyUI).

The sampler keeps the latent outside the style masks, but a VAE decode changes every pixel (its decoder
mixes the whole picture and loses detail). These helpers give the mask that ComfyUI's ImageCompositeMasked
needs to paste the decoded result onto the original picture: 1 inside the region the sampler restyled,
a linear ramp to 0 over ``feather`` pixels outside it, 0 beyond, so the original pixels come back bit for
bit everywhere farther than ``feather`` from the region.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Crop:
    """Where VAE Encode's crop lies in the picture: ``height x width`` pixels at offset (``x``, ``y``)."""

    x: int
    y: int
    width: int
    height: int


def vae_crop(height: int, width: int, ratio: int) -> Crop:
    """The centred crop to multiples of ``ratio`` that ComfyUI's VAE Encode takes (``vae_encode_crop_pixels``).

    A 517x389 (width x height) picture with ratio 8 is encoded at 512x384 from offset (2, 2).
    """
    if ratio < 1:
        raise ValueError(f"ratio: expected a positive VAE downscale ratio, got {ratio}")
    h, w = (height // ratio) * ratio, (width // ratio) * ratio
    return Crop(x=(width % ratio) // 2, y=(height % ratio) // 2, width=w, height=h)


def _min_shift(values: torch.Tensor, reach: int, dim: int) -> torch.Tensor:
    """``out[i] = min_{|d| <= reach} values[i + d] + d*d`` along ``dim`` (out of range counts as +inf)."""
    out = values.clone()
    n = values.shape[dim]
    for d in range(1, min(reach, n - 1) + 1):
        cost = float(d * d)
        ahead = values.narrow(dim, d, n - d) + cost  # values[i + d] for i < n - d
        behind = values.narrow(dim, 0, n - d) + cost  # values[i - d] for i >= d
        out.narrow(dim, 0, n - d).copy_(torch.minimum(out.narrow(dim, 0, n - d), ahead))
        out.narrow(dim, d, n - d).copy_(torch.minimum(out.narrow(dim, d, n - d), behind))
    return out


def distance_to_region(region: torch.Tensor, reach: int) -> torch.Tensor:
    """Euclidean distance in pixels from every pixel to the nearest pixel of ``region`` (bool ``[B,H,W]``).

    Exact up to ``reach``; farther pixels get a value above ``reach`` (``inf`` where no region pixel lies within
    ``reach`` in either axis). Separable: ``d^2 = min_dy (dy^2 + min_dx (dx^2 + [not region]))``.
    """
    inf = torch.full(region.shape, float("inf"), dtype=torch.float64)
    d2 = torch.where(region, torch.zeros((), dtype=torch.float64), inf)
    d2 = _min_shift(d2, reach, dim=2)
    d2 = _min_shift(d2, reach, dim=1)
    return d2.sqrt()


def feathered_paste_mask(region: torch.Tensor, feather: int) -> torch.Tensor:
    """float ``[B,H,W]``: 1 inside ``region`` (bool ``[B,H,W]``), ``1 - d/feather`` at distance ``d < feather``
    outside it, exactly 0 at ``d >= feather``. ``feather`` 0 gives the region itself."""
    if feather < 0:
        raise ValueError(f"feather: expected 0 or more pixels, got {feather}")
    if feather == 0:
        return region.float()
    d = distance_to_region(region, feather)
    return (1.0 - d / feather).clamp(0.0, 1.0).float()


def latent_region_to_pixels(region: torch.Tensor, ratio: int) -> torch.Tensor:
    """bool ``[B,1,h,w]`` latent cells -> bool ``[B,h*ratio,w*ratio]``: each cell covers its ``ratio x ratio``
    block of the decoded picture."""
    return region[:, 0].repeat_interleave(ratio, dim=1).repeat_interleave(ratio, dim=2)
