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
                "later styles win where masks overlap. No mask: the whole picture. start_percent/end_percent give "
                "the part of the sampling where the style is active (two styles on one mask hand the region over in "
                "time). The LoRA is never merged into the model."
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
                io.Float.Input(
                    "start_percent",
                    default=0.0,
                    min=0.0,
                    max=1.0,
                    step=0.001,
                    optional=True,
                    tooltip="Where in the sampling this style starts (0 = the first step), as in "
                    "ConditioningSetTimestepRange. Outside its range the style runs no UNet rows; another style with "
                    "the same mask (later in the chain) can take over.",
                ),
                io.Float.Input(
                    "end_percent",
                    default=1.0,
                    min=0.0,
                    max=1.0,
                    step=0.001,
                    optional=True,
                    tooltip="Where this style stops (1 = the last step). Equal to start_percent: the style never runs.",
                ),
            ],
            outputs=[STYLES.Output("styles", display_name="styles", tooltip="The chained styles.")],
        )

    @classmethod
    def execute(
        cls,
        lora_name: str,
        strength: float,
        conditioning,
        mask=None,
        lora=None,
        styles=None,
        start_percent: float = 0.0,
        end_percent: float = 1.0,
    ) -> io.NodeOutput:
        if not math.isfinite(float(strength)):
            raise ValueError(f"strength: expected a finite number, got {strength}: set a strength such as 1.0")
        number = len(styles or []) + 1
        for name, value in (("start_percent", start_percent), ("end_percent", end_percent)):
            if not (math.isfinite(float(value)) and 0.0 <= float(value) <= 1.0):
                raise ValueError(
                    f"{name}: style {number} got {value}; a step range is given as fractions of the sampling "
                    "between 0 (the first step) and 1 (the last)"
                )
        if float(start_percent) > float(end_percent):
            raise ValueError(
                f"start_percent: style {number} starts at {start_percent} after it ends ({end_percent}): set "
                "start_percent <= end_percent (0 = the first step, 1 = the last)"
            )
        if lora is not None:
            sd, name = dict(lora), "LORA_MODEL"
        elif lora_name and lora_name != NO_LORA:
            sd, name = lora_file.load_lora_file(lora_name), lora_name
        else:
            sd, name = None, "prompt only"
        if mask is None:
            logger.info("DiffStyler: style %d (%s) has no mask: it restyles the whole picture", number, name)
        else:
            mask = as_mask_batch(mask, f"style {number} ({name}) mask")
        if float(start_percent) == float(end_percent):
            logger.warning(
                "DiffStyler: style %d (%s) has an empty step range (%s to %s): it never runs",
                number,
                name,
                start_percent,
                end_percent,
            )
        if not conditioning:
            raise ValueError("conditioning: empty CONDITIONING: connect a CLIP Text Encode of the style's prompt")
        style = Style(
            uid=style_uid(name, sd, strength),
            name=name,
            lora=sd,
            strength=float(strength),
            conditioning=conditioning,
            mask=mask,
            start_percent=float(start_percent),
            end_percent=float(end_percent),
        )
        return io.NodeOutput(append_style(styles, style))


NODES = [DiffStylerStyleLoRA]
