"""Pure torch parts of style-LoRA training (paper Sec. 3, "Style LoRA"; no ComfyUI import).

DiffStyler learns each style as a LoRA on the UNet attention projections from ONE style image:
rank 16, 200 steps, AdamW at lr 2e-4, the noise-prediction (epsilon) loss of DDPM with a uniformly
sampled timestep, and a frozen text encoder fed a trigger prompt ("painting of <sss>"). On Flux.1 (design
Sec. 6) the LoRA goes on the double blocks' image-stream attention projections and the loss is flow
matching's. This module holds what does not need ComfyUI: the configuration, image sizing, timestep
sampling, LoRA targets, factor initialisation and deltas, the losses, the kohya key naming, and the
loss-curve plot.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch alias

TARGET_CHOICES = ("attention", "all_linear")
ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
_ATTENTION_RE = re.compile(r"(^|\.)attn[12]\.(to_q|to_k|to_v|to_out\.0)$")
# Flux.1 (module paths inside the diffusion model): the double blocks' image-stream attention projections, and the
# blocks themselves (every Linear in them is what targets="all_linear" trains on Flux)
_FLUX_ATTENTION_RE = re.compile(r"^double_blocks\.\d+\.img_attn\.(qkv|proj)$")
_FLUX_BLOCK_RE = re.compile(r"^(double_blocks|single_blocks)\.\d+\.")
_SAVE_NAME_BAD = ("/", "\\", ":", "\x00")


@dataclass(frozen=True)
class TrainingConfig:
    """What one style-LoRA training run does; the defaults are the paper's.

    ``steps``: optimizer steps (one style image per step, cycling through the batch).
    ``learning_rate``/``weight_decay``: AdamW. ``rank``: LoRA rank; ``alpha`` defaults to the rank
    (scale alpha/rank = 1). ``targets``: ``"attention"`` (to_q, to_k, to_v, to_out.0 of attn1 and attn2)
    or ``"all_linear"`` (every Linear and 1x1 conv of the UNet). ``resolution``: the short side the style
    image is resized to (aspect kept, sides multiples of 8). ``seed`` seeds LoRA init, noise and timesteps.
    """

    steps: int = 200
    learning_rate: float = 2e-4
    rank: int = 16
    targets: str = "attention"
    seed: int = 0
    resolution: int = 512
    weight_decay: float = 1e-2
    alpha: float | None = None
    log_every: int = 20

    def __post_init__(self):
        validate_config(self)

    @property
    def lora_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)


def validate_config(cfg: TrainingConfig) -> None:
    """Raise ValueError naming the first bad field of ``cfg``."""
    if int(cfg.steps) < 1:
        raise ValueError(f"steps: expected at least 1 training step, got {cfg.steps}")
    if int(cfg.rank) < 1:
        raise ValueError(f"rank: expected a LoRA rank of at least 1, got {cfg.rank}")
    if not (cfg.learning_rate > 0 and math.isfinite(cfg.learning_rate)):
        raise ValueError(f"learning_rate: expected a positive number, got {cfg.learning_rate}")
    if cfg.targets not in TARGET_CHOICES:
        raise ValueError(f"targets: expected one of {list(TARGET_CHOICES)}, got {cfg.targets!r}")
    if int(cfg.resolution) < 8:
        raise ValueError(f"resolution: expected a short side of at least 8 pixels, got {cfg.resolution}")
    if cfg.weight_decay < 0:
        raise ValueError(f"weight_decay: expected 0 or more, got {cfg.weight_decay}")


def check_save_name(name: str) -> str:
    """The file stem to save under ``models/loras`` ("" = don't save); ValueError for path-like names.

    A trailing ``.safetensors`` is dropped (the saver adds it). Names with path separators, drive
    colons or ``..`` are refused so a file can never land outside the loras folder.
    """
    stem = (name or "").strip()
    if stem.lower().endswith(".safetensors"):
        stem = stem[: -len(".safetensors")]
    if not stem:
        return ""
    if any(c in stem for c in _SAVE_NAME_BAD) or ".." in stem or stem.startswith("."):
        raise ValueError(
            f"save_name: {name!r} is not a plain file name; it must not contain '/', '\\', ':' or '..' nor start "
            "with '.': give a name such as 'my_style' (saved as models/loras/my_style.safetensors), or leave it "
            "empty to not save"
        )
    return stem


# ---------------------------------------------------------------------------- images


def training_size(height: int, width: int, resolution: int) -> tuple[int, int]:
    """``(h, w)`` with the short side at ``resolution``, the aspect kept and both sides multiples of 8.

    >>> training_size(768, 1024, 512)
    (512, 680)
    """
    if height < 1 or width < 1:
        raise ValueError(f"image: expected a non-empty image, got {height}x{width} pixels")
    short = max(8, int(round(resolution / 8)) * 8)
    scale = short / min(height, width)
    h = max(8, int(round(height * scale / 8)) * 8)
    w = max(8, int(round(width * scale / 8)) * 8)
    return h, w


def resize_images(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize an IMAGE ``[B,H,W,C]`` (0..1) to ``size = (h, w)``: antialiased bicubic, clamped to 0..1."""
    if images.ndim != 4:
        raise ValueError(f"image: expected an IMAGE [B,H,W,C], got shape {list(images.shape)}")
    if tuple(images.shape[1:3]) == tuple(size):
        return images.clone()
    x = images.movedim(-1, 1).float()
    x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
    return x.clamp(0.0, 1.0).movedim(1, -1).to(images.dtype)


# ---------------------------------------------------------------------------- timesteps


def sample_timestep_indices(generator: torch.Generator, count: int, num_timesteps: int) -> torch.Tensor:
    """``count`` training timesteps ``t ~ U{0, ..., num_timesteps-1}`` (DDPM, the FULL range), int64 on CPU."""
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps: expected at least 1, got {num_timesteps}")
    return torch.randint(0, num_timesteps, (count,), generator=generator, dtype=torch.int64)


def fixed_timestep_indices(num_timesteps: int, count: int = 10) -> torch.Tensor:
    """``count`` timesteps spread evenly over ``[0, num_timesteps)`` (centres of equal bins), for evaluation."""
    if count < 1:
        raise ValueError(f"count: expected at least 1, got {count}")
    edges = (torch.arange(count, dtype=torch.float64) + 0.5) * num_timesteps / count
    return edges.floor().clamp(0, num_timesteps - 1).to(torch.int64)


# ---------------------------------------------------------------------------- loss


def output_space_mse(denoised: torch.Tensor, clean: torch.Tensor, output_scale: torch.Tensor) -> torch.Tensor:
    """The MSE between the model's raw output and its training target, from the denoised prediction.

    Every ComfyUI model sampling writes ``denoised = A(x_t, sigma) + B(sigma) * output`` (affine in the
    raw output). The target output is the one that makes ``denoised`` equal the clean latent
    ``x_0``, so ``output - target = (denoised - x_0) / B``. For EPS models ``B = -sigma`` and this is
    ``||eps_pred - eps||^2``, the DDPM noise-prediction loss the paper trains with; for v-prediction
    it is ``||v_pred - v||^2``; for flow (CONST) models ``||v_pred - (noise - x_0)||^2``.

    ``denoised``/``clean``: ``[B,C,h,w]``. ``output_scale``: ``B`` broadcastable to them (``[B,1,1,1]``).
    Returns a scalar (float32).
    """
    diff = (denoised.float() - clean.float()) / output_scale.float()
    return diff.pow(2).mean()


def flow_noised(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Flow matching's noised latent ``x_s = s*noise + (1-s)*x0`` (``sigma`` ``[B]``, latents ``[B,C,h,w]``)."""
    s = sigma.reshape((-1,) + (1,) * (x0.ndim - 1)).to(x0.dtype)
    return s * noise + (1.0 - s) * x0


def flow_matching_mse(
    x_s: torch.Tensor, denoised: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    """The flow-matching loss ``||v_pred - (noise - x0)||^2`` (rectified flow, as Flux.1 is trained).

    A flow model's denoised output is ``x_s - s * v_pred`` (ComfyUI's CONST model sampling), so the predicted
    velocity is ``(x_s - denoised) / s``. ``sigma``: ``[B]`` in (0, 1]; latents ``[B,C,h,w]``. Scalar, float32.
    """
    s = sigma.reshape((-1,) + (1,) * (x0.ndim - 1)).float()
    v_pred = (x_s.float() - denoised.float()) / s
    return (v_pred - (noise.float() - x0.float())).pow(2).mean()


# ---------------------------------------------------------------------------- LoRA targets and factors


@dataclass(frozen=True)
class LoraTarget:
    """One layer that gets a LoRA: its state-dict key ``diffusion_model.<path>.weight`` and weight shape."""

    weight_key: str
    shape: tuple[int, ...]

    @property
    def prefix(self) -> str:
        return kohya_prefix(self.weight_key)


def is_flux_target(module_path: str, targets: str) -> bool:
    """Whether the Linear at ``module_path`` (inside a Flux.1 diffusion model) gets a LoRA for ``targets``.

    ``"attention"``: the double blocks' image-stream ``img_attn.qkv`` and ``img_attn.proj`` (the single blocks'
    ``linear1``/``linear2`` serve text and image tokens alike and fuse the MLP; docs/training.md says why they are
    left out). ``"all_linear"``: every Linear of the double and single blocks.
    """
    if targets == "attention":
        return _FLUX_ATTENTION_RE.match(module_path) is not None
    if targets == "all_linear":
        return _FLUX_BLOCK_RE.match(module_path) is not None
    raise ValueError(f"targets: expected one of {list(TARGET_CHOICES)}, got {targets!r}")


def is_attention_projection(module_path: str) -> bool:
    """True for ``...attn1.to_q`` / ``to_k`` / ``to_v`` / ``to_out.0`` (and the same for ``attn2``)."""
    return _ATTENTION_RE.search(module_path) is not None


def init_lora_factors(
    weight_shape: Sequence[int], rank: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(down, up)`` for a Linear ``[out, in]`` or 1x1 conv ``[out, in, 1, 1]`` weight (float32, CPU).

    ``down`` (``[rank, in]``, or ``[rank, in, 1, 1]``) is drawn from N(0, (1/rank)^2), as the released
    DiffStyler training does (design Sec. 5; not kaiming-uniform); ``up`` (``[out, rank]`` / ``[out, rank, 1, 1]``)
    is zero, so training starts at the base model exactly.
    """
    shape = tuple(int(s) for s in weight_shape)
    if len(shape) not in (2, 4) or (len(shape) == 4 and shape[2:] != (1, 1)):
        raise ValueError(f"LoRA target: expected a Linear [out,in] or 1x1 conv weight, got shape {list(shape)}")
    out_f, in_f = shape[0], shape[1]
    tail = shape[2:]
    down = torch.randn((rank, in_f) + tail, dtype=torch.float32, generator=generator) * (1.0 / rank)
    up = torch.zeros((out_f, rank) + tail, dtype=torch.float32)
    return down, up


def lora_delta(down: torch.Tensor, up: torch.Tensor, scale: float, shape: Sequence[int]) -> torch.Tensor:
    """``scale * up @ down`` reshaped to the target weight's ``shape`` (differentiable)."""
    return (scale * (up.flatten(1) @ down.flatten(1))).reshape(tuple(shape))


def kohya_prefix(weight_key: str) -> str:
    """``diffusion_model.<path>.weight`` -> ``lora_unet_<path with . as _>`` (what comfy.lora maps back)."""
    prefix, suffix = "diffusion_model.", ".weight"
    if not (weight_key.startswith(prefix) and weight_key.endswith(suffix)):
        raise ValueError(f"expected a UNet weight key 'diffusion_model.<path>.weight', got {weight_key!r}")
    return "lora_unet_" + weight_key[len(prefix) : -len(suffix)].replace(".", "_")


# ---------------------------------------------------------------------------- loss curve


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` values (shorter at the start); same length as ``values``."""
    window = max(1, int(window))
    out, acc = [], 0.0
    vals = [float(v) for v in values]
    for i, v in enumerate(vals):
        acc += v
        if i >= window:
            acc -= vals[i - window]
        out.append(acc / min(i + 1, window))
    return out


def default_window(n: int) -> int:
    return max(1, min(50, round(n / 10)))


def _fmt(v: float) -> str:
    return f"{v:.3g}" if (v == 0 or 1e-3 <= abs(v) < 1e4) else f"{v:.2e}"


def draw_loss_curve(
    losses: Sequence[float], width: int = 640, height: int = 360, window: int | None = None, title: str = "loss"
):
    """The training loss drawn with PIL: a ``width`` x ``height`` RGB ``PIL.Image``.

    Axes with min/mid/max and first/last step labels, the raw per-step loss (light blue) and its
    trailing moving average (red, ``window`` steps, default n/10). Non-finite values are left out.
    """
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    left, right, top, bottom = 64, 16, 28, 40
    x0, x1, y0, y1 = left, width - right, top, height - bottom
    vals = [float(v) for v in losses]
    finite = [v for v in vals if math.isfinite(v)]
    n = len(vals)
    draw.text((x0, 6), f"{title} ({n} steps)", fill=(0, 0, 0), font=font)
    if finite:
        lo, hi = min(finite), max(finite)
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5 * abs(lo) - 1e-6, hi + 0.5 * abs(hi) + 1e-6

        def px(i: int, v: float) -> tuple[float, float]:
            x = x0 + (x1 - x0) * (i / max(1, n - 1))
            y = y1 - (y1 - y0) * ((v - lo) / (hi - lo))
            return x, y

        # horizontal grid + y labels
        for frac in (0.0, 0.5, 1.0):
            v = lo + frac * (hi - lo)
            _, y = px(0, v)
            draw.line([(x0, y), (x1, y)], fill=(225, 225, 225), width=1)
            draw.text((4, y - 6), _fmt(v), fill=(0, 0, 0), font=font)
        draw.line([(x0, y0), (x0, y1), (x1, y1)], fill=(0, 0, 0), width=1)
        win = default_window(n) if window is None else window
        avg = moving_average([v if math.isfinite(v) else 0.0 for v in vals], win)
        for series, color, lw in ((vals, (150, 180, 235), 1), (avg, (200, 40, 30), 2)):
            pts = [px(i, v) for i, v in enumerate(series) if math.isfinite(v)]
            if len(pts) == 1:
                x, y = pts[0]
                draw.ellipse([(x - 2, y - 2), (x + 2, y + 2)], fill=color)
            elif pts:
                draw.line(pts, fill=color, width=lw)
        draw.text((x1 - 200, 6), "raw", fill=(90, 130, 220), font=font)
        draw.text((x1 - 170, 6), f"moving average ({win} steps)", fill=(200, 40, 30), font=font)
    else:
        draw.line([(x0, y0), (x0, y1), (x1, y1)], fill=(0, 0, 0), width=1)
        draw.text((x0 + 8, (y0 + y1) // 2), "no finite loss values", fill=(200, 0, 0), font=font)
    draw.text((x0 - 3, y1 + 6), "1" if n else "0", fill=(0, 0, 0), font=font)
    draw.text((x1 - 24, y1 + 6), str(n), fill=(0, 0, 0), font=font)
    draw.text(((x0 + x1) // 2 - 12, y1 + 20), "step", fill=(0, 0, 0), font=font)
    return img


def plot_loss_curve(
    losses: Sequence[float], width: int = 640, height: int = 360, window: int | None = None, title: str = "loss"
) -> torch.Tensor:
    """:func:`draw_loss_curve` as an IMAGE ``[1,height,width,3]`` float32 0..1."""
    import numpy as np

    img = draw_loss_curve(losses, width=width, height=height, window=window, title=title)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(arr.copy())[None]
