"""What a Train Style LoRA run trains on: the style image(s) VAE-encoded (posterior mean and spread) and the prompt
encoded once by the frozen text encoder."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..core import training as core

logger = logging.getLogger(__name__)


@dataclass
class TrainingInputs:
    """What a run trains on: the style latents (VAE space ``[B,C,h,w]`` float32, CPU) and the prompt's CONDITIONING."""

    latent: torch.Tensor
    conditioning: list
    prompt: str = ""
    size: tuple[int, int] = (0, 0)
    # the VAE posterior's standard deviation (VAE space, like ``latent``, which is its mean); training draws a fresh
    # sample ``latent + latent_std * N(0, 1)`` every step (design Sec. 5). None: the VAE has no Gaussian posterior
    latent_std: torch.Tensor | None = None


def validate_images(images) -> None:
    """ValueError naming ``image`` unless ``images`` is a non-empty IMAGE ``[B,H,W,C]``."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = list(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"image: expected an IMAGE [B,H,W,C], got {shape}: connect a Load Image output")
    if images.shape[0] == 0:
        raise ValueError("image: the style image batch is empty (0 images): connect at least one style image")
    if images.shape[1] < 1 or images.shape[2] < 1 or images.shape[3] < 3:
        raise ValueError(
            f"image: expected an RGB image with at least 1x1 pixels, got shape {list(images.shape)}: "
            "connect a Load Image output"
        )


def prepare_inputs(
    clip, vae, images: torch.Tensor, prompt: str, resolution: int, conditioning: list | None = None
) -> TrainingInputs:
    """Resize the style image(s) (short side ``resolution``, multiples of 8), VAE-encode them, encode the prompt.

    The text encoder is frozen: the prompt is encoded once, without gradients. A given ``conditioning``
    (CONDITIONING, e.g. a Flux prompt with its guidance) is used as it is instead, and ``clip`` is not needed.
    """
    validate_images(images)
    if conditioning is not None and not (isinstance(conditioning, list) and conditioning):
        got = "an empty list" if isinstance(conditioning, list) else type(conditioning).__name__
        raise ValueError(
            f"conditioning: expected a non-empty CONDITIONING, got {got}: connect a CLIP Text Encode output"
        )
    if clip is None and conditioning is None:
        raise ValueError(
            "clip: the prompt needs a text encoder: connect the checkpoint's CLIP, or a CONDITIONING to 'conditioning'"
        )
    if vae is None:
        raise ValueError("vae: the style image is encoded to a latent with the VAE: connect the checkpoint's VAE")
    size = core.training_size(int(images.shape[1]), int(images.shape[2]), int(resolution))
    pixels = core.resize_images(images[..., :3].float(), size)
    with torch.no_grad():
        latent, std = encode_posterior(vae, pixels)
        if conditioning is None:
            conditioning = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))
    return TrainingInputs(latent=latent, conditioning=conditioning, prompt=prompt, size=size, latent_std=std)


def encode_posterior(vae, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """VAE-encode ``pixels`` (IMAGE ``[B,H,W,C]``) with ComfyUI's own ``VAE.encode``; returns the posterior mean
    (what ``encode`` gives, ``[B,C,h,w]`` float32 CPU) and its standard deviation, read from the moments that reach
    the VAE's Gaussian regularizer (None when the VAE has none)."""
    moments = []
    reg = getattr(getattr(vae, "first_stage_model", None), "regularization", None)
    handle = None
    if reg is not None and type(reg).__name__ == "DiagonalGaussianRegularizer":
        handle = reg.register_forward_pre_hook(lambda _m, args: moments.append(args[0].detach().float().cpu()))
    try:
        mean = vae.encode(pixels).float().cpu()
    finally:
        if handle is not None:
            handle.remove()
    if not moments:
        return mean, None
    params = torch.cat(moments) if len(moments) > 1 else moments[0]
    if params.shape[0] != mean.shape[0] or params.shape[1] != 2 * mean.shape[1] or params.shape[2:] != mean.shape[2:]:
        logger.warning("DiffStyler: the VAE posterior was encoded in tiles; training on its mean")
        return mean, None
    _mu, logvar = torch.chunk(params, 2, dim=1)
    return mean, torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
