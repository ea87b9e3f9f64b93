"""The pack's style nodes run directly (no executor) on given models and inputs: what the fidelity tests and the
option benches compare. Nothing here imports ComfyUI at module import time."""

from __future__ import annotations


def overlapping_masks(k: int, size: int = 64) -> list:
    """k masks ``[1,size,size]`` that overlap, one with a soft (fractional) edge, so hard vs soft masks matter."""
    import torch

    out = []
    a = torch.zeros(1, size, size)
    a[:, :, : size * 5 // 8] = 1.0
    a[:, :, size * 5 // 8 : size * 5 // 8 + 6] = torch.linspace(0.6, 0.05, 6)  # a feathered edge
    out.append(a)
    b = torch.zeros(1, size, size)
    b[:, size // 4 :, size * 3 // 8 :] = 1.0
    out.append(b)
    c = torch.zeros(1, size, size)
    c[:, size // 8 : size // 2, size // 8 : size // 2] = 0.3  # faint everywhere: hard masks take it whole
    out.append(c)
    return out[:k]


def chain_styles(loras: list, conditionings: list, masks: list):
    """Style LoRA Loader (strength 1) once per (LoRA state dict, prompt, mask), chained: the DIFFSTYLER_STYLES."""
    from ..style import DiffStylerStyleLoRA

    styles = None
    for lora, cond, mask in zip(loras, conditionings, masks):
        styles = DiffStylerStyleLoRA.execute("None", 1.0, cond, mask, lora=lora, styles=styles).args[0]
    return styles


def inject(model, styles, lora_in_attention: bool = False, **options):
    """The Injector with the paper's windows (features 0.6, Q/K 0.5, adaptive blend); ``options``: its other inputs
    (fusion, content_rows, base_injection). Returns the patched MODEL."""
    from ..inject import DiffStylerCrossLoRAInjector

    return DiffStylerCrossLoRAInjector.execute(model, styles, 0.6, 0.5, "adaptive", lora_in_attention, **options).args[
        0
    ]


def sample(patched, inversion, styles, positive, negative, cfg: float = 10.5, background="exact", masks="hard"):
    """The Masked Feature Fusion Sampler on ``inversion``; returns the final latent ``[B,4,h,w]``."""
    from ..sample import DiffStylerMaskedFusionSampler

    out = DiffStylerMaskedFusionSampler.execute(patched, inversion, positive, negative, cfg, background, styles, masks)
    return out.args[0]["samples"]


def run_styles(model, inversion, loras, prompts: dict, masks_in, background="exact", masks="hard", **inject_options):
    """Chain the styles (``prompts["styles"]``, one LoRA and mask each), inject, sample with ``prompts["base"]`` and
    ``prompts["neg"]`` at cfg 10.5; ``inject_options`` go to :func:`inject`. Returns the final latent."""
    styles = chain_styles(loras, prompts["styles"], masks_in)
    patched = inject(model, styles, **inject_options)
    return sample(patched, inversion, styles, prompts["base"], prompts["neg"], 10.5, background, masks)
