"""FastSAM Mask orchestration: detect, score, select and upsample over a batch, then draw the preview.

The node calls :func:`mask_and_preview`. It ties the adapters (ultralytics in :mod:`.fastsam_model`, CLIP in
:mod:`.fastsam_clip`) to the pure stages in ``nodes/core`` (``fastsam_prompts``, ``fastsam_geometry``,
``fastsam_select``, ``fastsam_images``, ``fastsam_preview``). FastSAM: Zhao et al., arXiv 2306.12156.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import comfy.model_management
import comfy.utils
import torch

from ..core.fastsam_geometry import resize_image, scale_request, upsample_mask
from ..core.fastsam_images import to_rgb
from ..core.fastsam_preview import draw_preview
from ..core.fastsam_prompts import MaskRequest, check_prompts_inside
from ..core.fastsam_select import select_mask
from .fastsam_clip import ClipScorer, load_clip, text_scores
from .fastsam_model import FastSAMModel, detect, on_compute_device

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MaskOutput:
    """What the FastSAM Mask node returns: ``mask`` MASK ``[B,H,W]``, ``preview`` and ``rgb`` IMAGE ``[B,H,W,3]``.

    ``rgb`` is the input as RGB (the editor draws the prompts over it).
    """

    mask: torch.Tensor
    preview: torch.Tensor
    rgb: torch.Tensor


def mask_and_preview(
    model: FastSAMModel, image: torch.Tensor, request: MaskRequest, clip_folder: str = "none"
) -> MaskOutput:
    """The FastSAM Mask node's run: IMAGE ``[B,H,W,C]`` (gray, RGB, RGBA) -> :class:`MaskOutput`.

    Checks the prompts against the image size and loads the CLIP folder (text mode) before any detection.
    """
    rgb = to_rgb(image)
    check_prompts_inside(request, rgb.shape[1], rgb.shape[2])
    clip = load_clip(clip_folder) if request.mode == "text" else None
    mask = segment(model, rgb, request, clip=clip)
    return MaskOutput(mask, draw_preview(rgb, mask, request.points, request.boxes), rgb)


def estimate_memory(model: FastSAMModel, request: MaskRequest, height: int, width: int, clip=None) -> int:
    """Rough bytes FastSAM needs on the compute device: weights, activations and up to 300 masks at imgsz."""
    activations = request.imgsz * request.imgsz * 3 * 4 * 64
    masks = 300 * request.imgsz * request.imgsz * 4
    return model.weight_bytes() + activations + masks + (clip.weight_bytes() if clip is not None else 0)


def segment(
    model: FastSAMModel,
    images: torch.Tensor,
    request: MaskRequest,
    clip: ClipScorer | None = None,
) -> torch.Tensor:
    """FastSAM + prompt-guided selection over a batch: images ``[B,H,W,3]`` RGB 0..1 -> MASK ``[B,H,W]`` float 0..1.

    Selection runs on the detection grid (at most FastSAM's inference resolution) with the prompts mapped onto
    it; only the selected mask is brought back to the image's size, so memory does not grow with detections x
    pixels. Checks ComfyUI's interrupt before each image and advances a progress bar per image. An image with
    no detection (or no matching detection) gets an empty mask and a logged warning.
    """
    b, h, w, _ = images.shape
    if request.mode == "text" and clip is None:
        raise ValueError("clip_folder: mode 'text' needs a CLIP folder")
    out = torch.zeros((b, h, w), dtype=torch.float32)
    pbar = comfy.utils.ProgressBar(b)
    memory = estimate_memory(model, request, h, w, clip)
    with on_compute_device(model, clip if request.mode == "text" else None, memory):
        for i in range(b):
            comfy.model_management.throw_exception_if_processing_interrupted()
            dets = detect(model, images[i], request.imgsz, request.conf, request.iou)
            gh, gw = dets.shape[-2:]
            scores = None
            if request.mode == "text":
                scores = text_scores(clip, resize_image(images[i], gh, gw), dets, request.texts)
            sel = select_mask(dets, scale_request(request, h, w, gh, gw), scores)
            found = int(dets.shape[0])
            del dets
            if sel.note:
                logger.warning(
                    "DiffStyler FastSAM Mask: image %d of %d: %s (%d detection(s), mode %s, conf %.2f): empty mask",
                    i,
                    b,
                    sel.note,
                    found,
                    request.mode,
                    request.conf,
                )
            out[i] = upsample_mask(sel.mask, h, w)
            pbar.update(1)
    return out
