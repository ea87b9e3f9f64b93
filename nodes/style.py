"""Style LoRA Loader node: one (LoRA, prompt, mask) triple, chainable into DIFFSTYLER_STYLES."""

from __future__ import annotations

import logging
import math

import folder_paths

from ._api import io
from .adapters import lora_file
from .core.masks import as_mask_batch
from .core.styles import Style, append_style, style_uid

logger = logging.getLogger(__name__)

STYLES = io.Custom("DIFFSTYLER_STYLES")
NO_LORA = "None"


class DiffStylerStyleLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffStylerStyleLoRA",
            display_name="Style LoRA Loader (DiffStyler)",
            category="DiffStyler/style",
            description=(
                "One style of a DiffStyler run: a style LoRA (from models/loras or a LORA_MODEL), its strength, the "
                "style's prompt and the mask of the region it restyles. Chain several loaders for several styles; "
                "later styles win where masks overlap. The LoRA is never merged into the model."
            ),
            inputs=[
                io.Combo.Input(
                    "lora_name",
                    options=[NO_LORA] + folder_paths.get_filename_list("loras"),
                    tooltip="A LoRA file from models/loras (kohya, diffusers, PEFT, LyCORIS). 'None' for a prompt-only "
                    "style or when a LORA_MODEL is connected.",
                ),
                io.Float.Input(
                    "strength",
                    default=1.0,
                    min=-10.0,
                    max=10.0,
                    step=0.01,
                    tooltip="LoRA strength for this style's branch only. 0 gives the plain model.",
                ),
                io.Conditioning.Input(
                    "conditioning",
                    tooltip="The style's prompt, e.g. 'painting of <sss>, deer' (CLIP Text Encode).",
                ),
                io.Mask.Input(
                    "mask",
                    optional=True,
                    tooltip="Where this style goes (FastSAM Mask or any MASK; the sampler takes every value above 0 "
                    "as inside). Not connected: the whole picture (a global style).",
                ),
                io.LoraModel.Input(
                    "lora",
                    optional=True,
                    tooltip="A LORA_MODEL (e.g. from Train Style LoRA). Used instead of lora_name when connected.",
                ),
                STYLES.Input("styles", optional=True, tooltip="Earlier styles to append this one to."),
            ],
            outputs=[STYLES.Output("styles", display_name="styles", tooltip="The chained styles.")],
        )

    @classmethod
    def execute(cls, lora_name: str, strength: float, conditioning, mask=None, lora=None, styles=None) -> io.NodeOutput:
        if not math.isfinite(float(strength)):
            raise ValueError(f"strength: expected a finite number, got {strength}: set a strength such as 1.0")
        if lora is not None:
            sd, name = dict(lora), "LORA_MODEL"
        elif lora_name and lora_name != NO_LORA:
            sd, name = lora_file.load_lora_file(lora_name), lora_name
        else:
            sd, name = None, "prompt only"
        if mask is None:
            logger.info(
                "DiffStyler: style %d (%s) has no mask: it restyles the whole picture", len(styles or []) + 1, name
            )
        else:
            mask = as_mask_batch(mask, f"style {len(styles or []) + 1} ({name}) mask")
        if not conditioning:
            raise ValueError("conditioning: empty CONDITIONING: connect a CLIP Text Encode of the style's prompt")
        style = Style(
            uid=style_uid(name, sd, strength),
            name=name,
            lora=sd,
            strength=float(strength),
            conditioning=conditioning,
            mask=mask,
        )
        return io.NodeOutput(append_style(styles, style))


NODES = [DiffStylerStyleLoRA]
