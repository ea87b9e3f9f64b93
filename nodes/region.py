"""Region Mask node: where the sampler restyled, for pasting the decoded result onto the original picture."""

from __future__ import annotations

import logging

import torch

from ._api import io
from .core import region as core
from .core.masks import region_mask_latent, to_patch_grid
from .style import STYLES

logger = logging.getLogger(__name__)

FEATHER_DEFAULT = 16


class DiffStylerRegionMask(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffStylerRegionMask",
            display_name="Region Mask (DiffStyler)",
            category="DiffStyler/sample",
            description=(
                "The region the sampler restyled (the union of the style masks at latent size, kept as the sampler "
                "keeps it), brought to the size of the decoded picture and feathered outward. Connect mask, x and y "
                "to ComfyUI's Image Composite Masked with the content picture as destination and the VAE Decode "
                "result as source: the output is the original picture, at its original size, with the restyled "
                "region pasted in. Every pixel farther than 'feather' from the region is the original's, bit for "
                "bit (a VAE decode alone changes the whole picture)."
            ),
            inputs=[
                STYLES.Input("styles", tooltip="The styles given to the sampler (their masks make the region)."),
                io.Image.Input(
                    "image", tooltip="The content picture as loaded, before VAE Encode (its size and crop)."
                ),
                io.Vae.Input("vae", tooltip="The VAE that encoded the content (its crop to multiples of 8)."),
                io.Int.Input(
                    "feather",
                    default=FEATHER_DEFAULT,
                    min=0,
                    max=256,
                    tooltip="Seam width in pixels outside the region: the decoded result fades into the original "
                    "over this distance. 0: a hard edge on the latent grid.",
                ),
                io.Boolean.Input(
                    "keep_original",
                    default=True,
                    tooltip="On: the original pixels outside the region (for background = exact). Off: the whole "
                    "decoded picture (for background = model, where the model repaints the background).",
                ),
            ],
            outputs=[
                io.Mask.Output(
                    "mask",
                    display_name="mask",
                    tooltip="MASK [B,H,W] at the decoded picture's size: 1 in the region, fading to 0 over "
                    "'feather' pixels. Connect to Image Composite Masked's mask.",
                ),
                io.Int.Output("x", display_name="x", tooltip="Left of VAE Encode's crop in the picture: Composite x."),
                io.Int.Output("y", display_name="y", tooltip="Top of VAE Encode's crop in the picture: Composite y."),
            ],
        )

    @classmethod
    def execute(cls, styles, image, vae, feather: int, keep_original: bool) -> io.NodeOutput:
        ratio = int(vae.spacial_compression_encode())
        height, width = int(image.shape[1]), int(image.shape[2])
        if getattr(vae, "crop_input", True):
            crop = core.vae_crop(height, width, ratio)
        else:
            crop = core.Crop(0, 0, width, height)
        h, w = crop.height // ratio, crop.width // ratio
        if h < 1 or w < 1:
            raise ValueError(
                f"image: {width}x{height} is smaller than the VAE's {ratio}x{ratio} cell: give a larger picture"
            )
        if not styles:
            raise ValueError("styles: no styles: connect the Style LoRA Loader chain given to the sampler")
        if keep_original:
            # every style that runs at some step (an ended style's region goes on with the base model, so it is
            # restyled too); a style with an empty step range leaves the content as it was
            live = [s.mask for s in styles if not s.never_active]
            region = region_mask_latent(live, h, w) if live else torch.zeros(1, 1, h, w, dtype=torch.bool)
            region = to_patch_grid(region.float(), token_patch(vae)) > 0  # Flux: the sampler restyles whole tokens
            mask = core.feathered_paste_mask(core.latent_region_to_pixels(region, ratio), int(feather))
        else:
            mask = torch.ones(1, h * ratio, w * ratio)
        logger.info(
            "DiffStyler Region Mask: %dx%d picture, crop %dx%d at (%d, %d), %.1f%% of it restyled or in the seam",
            width,
            height,
            crop.width,
            crop.height,
            crop.x,
            crop.y,
            100.0 * float((mask > 0).float().mean()),
        )
        return io.NodeOutput(mask, crop.x, crop.y)


NODES = [DiffStylerRegionMask]


def token_patch(vae) -> int:
    """Latent cells per token side of the model this VAE's latents go to: 16-channel latents are a DiT's with 2x2
    patches (Flux.1, whose sampler fuses the styles on its token grid), 1 for the UNets' 4-channel latents."""
    return 2 if int(getattr(vae, "latent_channels", 4)) == 16 else 1
