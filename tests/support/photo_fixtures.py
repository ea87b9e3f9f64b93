"""Photo-like test pictures made on the spot (no test picture is downloaded).

:func:`photo` draws a landscape-like RGB picture of any size: a sky gradient with soft clouds, two ridges
with irregular edges, textured ground with fine grain (the detail a VAE loses), a few hard-edged objects and
thin dark strokes like lettering. Deterministic for a seed.
"""

from __future__ import annotations

import numpy as np


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Value noise in 0..1: a coarse random grid bilinearly upsampled to ``height x width``."""
    gh, gw = height // cell + 2, width // cell + 2
    grid = rng.random((gh, gw))
    y = np.arange(height) / cell
    x = np.arange(width) / cell
    y0, x0 = y.astype(int), x.astype(int)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    a = grid[y0][:, x0]
    b = grid[y0][:, x0 + 1]
    c = grid[y0 + 1][:, x0]
    d = grid[y0 + 1][:, x0 + 1]
    return a * (1 - fy) * (1 - fx) + b * (1 - fy) * fx + c * fy * (1 - fx) + d * fy * fx


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 ``[H,W,3]`` photo-like picture (see the module docstring)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    v = yy / max(height - 1, 1)
    img = np.empty((height, width, 3))
    img[...] = np.stack([90 + 80 * v, 140 + 60 * v, 230 - 40 * v], axis=-1)  # sky
    clouds = _smooth_noise(rng, height, width, max(8, width // 6)) * 0.6 + _smooth_noise(rng, height, width, 9) * 0.4
    img += (np.clip(clouds - 0.45, 0, 1) * 160)[..., None]
    for level, colour, amp in ((0.45, (70, 100, 70), 0.08), (0.62, (60, 120, 40), 0.05)):
        edge = (
            level
            + amp * np.sin(xx[0] / width * 9 + rng.random() * 6)
            + 0.03 * (_smooth_noise(rng, 1, width, 7)[0] - 0.5)
        )
        below = v >= edge[None, :]
        grain = _smooth_noise(rng, height, width, 3) * 50 - 25 + rng.normal(0, 9, (height, width))
        img[below] = np.array(colour)[None, :] + grain[below][:, None] * np.array([0.8, 1.0, 0.6])[None, :]
    for _ in range(4):  # hard-edged objects: discs and boxes
        cy, cx, r = rng.random() * height, rng.random() * width, 6 + rng.random() * min(height, width) / 8
        colour = rng.integers(20, 240, 3)
        if rng.random() < 0.5:
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = colour
        else:
            img[(abs(yy - cy) < r * 0.7) & (abs(xx - cx) < r * 1.3)] = colour
    for k in range(6):  # thin strokes, like lettering
        y0 = int(height * (0.08 + 0.05 * k))
        x0 = int(width * 0.05)
        for j in range(12):
            x = x0 + j * 7
            if x + 5 < width and y0 + 9 < height:
                img[y0 : y0 + 9, x : x + 1] = 20
                if rng.random() < 0.5:
                    img[y0 + 4, x : x + 5] = 20
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def region_like_sampler(masks: list[np.ndarray], height: int, width: int, ratio: int = 8):
    """The region the sampler restyles, at picture size: bool ``[H,W]`` (False in VAE Encode's border), and the
    crop ``(x, y, width, height)``. ``masks`` are float 0..1 ``[H,W]`` at the picture's size; like the sampler, each
    whole mask is resized bilinearly onto the latent of the crop and any value above 0 is in."""
    import torch

    cw, ch = width // ratio * ratio, height // ratio * ratio
    x, y = (width % ratio) // 2, (height % ratio) // 2
    cells = np.zeros((ch // ratio, cw // ratio), bool)
    for m in masks:
        t = torch.from_numpy(np.asarray(m, np.float32))[None, None]
        cells |= (torch.nn.functional.interpolate(t, size=cells.shape, mode="bilinear") > 0)[0, 0].numpy()
    full = np.zeros((height, width), bool)
    full[y : y + ch, x : x + cw] = np.kron(cells, np.ones((ratio, ratio), bool))
    return full, (x, y, cw, ch)
