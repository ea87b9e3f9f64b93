"""The DIFFSTYLER_STYLES value passed between nodes (no ComfyUI)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Style:
    """One (LoRA, prompt, mask) triple of the paper (Sec. 3.3).

    ``lora``: a LoRA state dict (file contents or a LORA_MODEL) or None for a prompt-only region (or a MODEL style).
    ``conditioning``: the ComfyUI CONDITIONING of the style's prompt. ``mask``: MASK ``[B,H,W]``, or None for
    the whole picture (a global style). ``start_percent``/``end_percent``: the part of the sampling where the style
    is active (ComfyUI's convention: 0 = the first step, 1 = the last; ``start >= end`` = never active).
    ``model``: for a style held by a MODEL of the base's architecture (a fine-tuned checkpoint, or a MODEL with LoRAs
    merged by the core loader) instead of a LoRA: its rows run in an extra UNet call of that model.
    """

    uid: str
    name: str
    lora: dict | None
    strength: float
    conditioning: list
    mask: torch.Tensor | None
    start_percent: float = 0.0
    end_percent: float = 1.0
    model: object = None  # a MODEL (ModelPatcher) holding the style instead of a LoRA (Style Model node)

    @property
    def timed(self) -> bool:
        """True when the style is active on part of the sampling only."""
        return self.start_percent > 0.0 or self.end_percent < 1.0

    @property
    def never_active(self) -> bool:
        return self.start_percent >= self.end_percent


def style_uid(name: str, lora: dict | None, strength: float) -> str:
    """Identity of a style's LoRA binding (what the Injector patched), independent of prompt and mask."""
    h = hashlib.sha1(f"{name}|{float(strength):.8g}|".encode())
    if lora is not None:
        for k in sorted(lora)[:16]:
            v = lora[k]
            h.update(k.encode())
            if isinstance(v, torch.Tensor):
                h.update(str(tuple(v.shape)).encode())
                h.update(f"{float(v.detach().float().flatten()[:32].sum()):.6e}".encode())
        h.update(str(len(lora)).encode())
    return h.hexdigest()[:16]


def append_style(styles: list[Style] | None, style: Style, limit: int = 16) -> list[Style]:
    out = list(styles or []) + [style]
    if len(out) > limit:
        raise ValueError(f"styles: at most {limit} styles can be chained, got {len(out)}")
    return out
