"""Style LoRA Loader node: one (LoRA, prompt, mask) triple, chainable into DIFFSTYLER_STYLES."""

from __future__ import annotations

import logging
import math

import folder_paths

from ._api import io
from .adapters import lora_file
from .core.masks import as_mask_batch
from .core.step_range import check_step_range
from .core.styles import Style, append_style, style_uid

logger = logging.getLogger(__name__)

STYLES = io.Custom("DIFFSTYLER_STYLES")
NO_LORA = "None"


def range_inputs() -> list:
    """The step-range inputs every style node has (issue 21)."""
    return [
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
    ]


def check_range(styles, start_percent: float, end_percent: float) -> int:
    """The number the new style gets in the chain; ValueError naming it for a bad step range."""
    number = len(styles or []) + 1
    check_step_range(number, start_percent, end_percent)
    return number


def check_common(number: int, name: str, conditioning, mask, start_percent: float, end_percent: float):
    """The checks and log lines every style node shares; returns the mask as ``[B,H,W]`` (or None: global)."""
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
    return mask


def common_inputs() -> list:
    """The prompt and mask inputs every style node has."""
    return [
        io.Conditioning.Input(
            "conditioning",
            tooltip="The style's prompt, e.g. 'painting of <sss>, deer' (CLIP Text Encode). Flux-dev: its guidance "
            "(FluxGuidance, e.g. 3.5) is this style's.",
        ),
        io.Mask.Input(
            "mask",
            optional=True,
            tooltip="Where this style goes (FastSAM Mask or any MASK; the sampler takes every value above 0 "
            "as inside; on Flux a 2x2-cell token is inside when any of its cells is). Not connected: the whole "
            "picture (a global style).",
        ),
    ]


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
                    tooltip="A LoRA file from models/loras (SD/SDXL: kohya, diffusers, PEFT, LyCORIS; Flux.1: "
                    "kohya/BFL, diffusers/ai-toolkit/PEFT). It must fit the Injector's MODEL. 'None' for a "
                    "prompt-only style or when a LORA_MODEL is connected.",
                ),
                io.Float.Input(
                    "strength",
                    default=1.0,
                    min=-10.0,
                    max=10.0,
                    step=0.01,
                    tooltip="LoRA strength for this style's branch only. 0 gives the plain model.",
                ),
                *common_inputs(),
                io.LoraModel.Input(
                    "lora",
                    optional=True,
                    tooltip="A LORA_MODEL (e.g. from Train Style LoRA). Used instead of lora_name when connected.",
                ),
                STYLES.Input("styles", optional=True, tooltip="Earlier styles to append this one to."),
                *range_inputs(),
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
        number = check_range(styles, start_percent, end_percent)
        if lora is not None:
            sd, name = dict(lora), "LORA_MODEL"
        elif lora_name and lora_name != NO_LORA:
            sd, name = lora_file.load_lora_file(lora_name), lora_name
        else:
            sd, name = None, "prompt only"
        mask = check_common(number, name, conditioning, mask, start_percent, end_percent)
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


class DiffStylerStyleModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffStylerStyleModel",
            display_name="Style Model (DiffStyler)",
            category="DiffStyler/style",
            description=(
                "One style of a DiffStyler run held by a MODEL instead of a LoRA: a checkpoint fine-tuned on a style "
                "(DreamBooth, a full fine-tune) or a MODEL with LoRAs merged by the core LoRA loader, of the same "
                "architecture as the Injector's MODEL. Its rows run in one extra UNet call of that model per step "
                "(a second UNet in memory); the content injection and the fusion by mask work as for a LoRA style."
            ),
            inputs=[
                io.Model.Input(
                    "model",
                    tooltip="The style's MODEL (same architecture and latent format as the MODEL of the Cross-LoRA "
                    "Attention Injector). Its content row is evaluated with these weights too.",
                ),
                *common_inputs(),
                STYLES.Input("styles", optional=True, tooltip="Earlier styles to append this one to."),
                *range_inputs(),
            ],
            outputs=[STYLES.Output("styles", display_name="styles", tooltip="The chained styles.")],
        )

    @classmethod
    def execute(
        cls, model, conditioning, mask=None, styles=None, start_percent: float = 0.0, end_percent: float = 1.0
    ) -> io.NodeOutput:
        from .adapters.fingerprint import model_fingerprint

        number = check_range(styles, start_percent, end_percent)
        if model is None or not hasattr(model, "model"):
            raise ValueError(f"model: style {number} needs a MODEL (Load Checkpoint's MODEL output)")
        name = f"MODEL {type(model.model).__name__}"
        mask = check_common(number, name, conditioning, mask, start_percent, end_percent)
        fingerprint = model_fingerprint(model)
        style = Style(
            uid=style_uid(f"{name} {fingerprint} {id(model):x}", None, 1.0),
            name=name,
            lora=None,
            strength=1.0,
            conditioning=conditioning,
            mask=mask,
            start_percent=float(start_percent),
            end_percent=float(end_percent),
            model=model,
        )
        return io.NodeOutput(append_style(styles, style))


NODES = [DiffStylerStyleLoRA, DiffStylerStyleModel]
