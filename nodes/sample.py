"""Masked Feature Fusion Sampler (all in one), and its GUIDER / SAMPLER / SIGMAS pieces."""

from __future__ import annotations

import comfy.utils
import latent_preview

from ._api import io
from .adapters.ddim import ddim_sampler
from .adapters.guider import BACKGROUNDS, DiffStylerGuider
from .core.masks import MASK_MODES
from .invert import INVERSION
from .style import STYLES

NEGATIVE_DEFAULT = "ugly, blurry, black, low res, unrealistic"


def _common_inputs():
    return [
        io.Model.Input("model", tooltip="The MODEL from Cross-LoRA Attention Injector (DiffStyler)."),
        INVERSION.Input("inversion", tooltip="The DDIM Inversion (DiffStyler) of the content latent."),
        io.Conditioning.Input(
            "positive",
            tooltip="Base prompt: used for the background branch when background = model. Flux-dev: its guidance "
            "(FluxGuidance) is the base branch's.",
        ),
        io.Conditioning.Input(
            "negative",
            tooltip=f"Negative prompt for every branch (paper: '{NEGATIVE_DEFAULT}'). Unused at cfg 1 (Flux-dev).",
        ),
        io.Float.Input(
            "cfg",
            default=10.5,
            min=0.0,
            max=100.0,
            step=0.1,
            round=0.01,
            tooltip="Classifier-free guidance scale. SD/SDXL: 10.5 (the paper). Flux-dev: 1.0 (its guidance is "
            "embedded: set it on the prompts with FluxGuidance; the content rows run at 1.0); above 1 each style "
            "also runs an uncond row.",
        ),
        io.Combo.Input(
            "background",
            options=list(BACKGROUNDS),
            default="exact",
            tooltip="exact (our addition): outside the masks the latent follows the inversion and ends on the content "
            "latent exactly. model (the released pipeline): a base branch without LoRA, with the base prompt and "
            "content injection on every step, predicts the background.",
        ),
        STYLES.Input(
            "styles",
            optional=True,
            tooltip="The styles (default: the ones the Injector patched). Must match the Injector's.",
        ),
        io.Combo.Input(
            "masks",
            options=list(MASK_MODES),
            default="hard",
            optional=True,
            tooltip="hard (the released pipeline): each mask is resized bilinearly to the latent grid and every "
            "value above 0 is inside; later styles overwrite earlier ones. soft (our option): area-averaged "
            "coverage, blended at the edges.",
        ),
    ]


def _styles_of(model, styles):
    from .adapters.injector.install import state_of

    state = state_of(model)
    if styles is None and state is not None:
        return state.styles  # the styles the Injector patched
    return styles


class DiffStylerMaskedFusionSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffStylerMaskedFusionSampler",
            display_name="Masked Feature Fusion Sampler (DiffStyler)",
            category="DiffStyler/sample",
            description=(
                "Samples every style branch in one batched model call per step, starting from the inverted latent, "
                "fuses their noise (SD) or velocity (Flux) predictions by mask before CFG and keeps the content "
                "outside the masks (paper Sec. 3.3). Steps come from the inversion: DDIM on SD/SDXL, Euler on Flux."
            ),
            inputs=_common_inputs(),
            outputs=[io.Latent.Output(tooltip="The stylized latent (decode with the checkpoint's VAE).")],
        )

    @classmethod
    def execute(cls, model, inversion, positive, negative, cfg, background, styles=None, masks="hard") -> io.NodeOutput:
        styles = _styles_of(model, styles)
        guider = DiffStylerGuider(model, inversion, styles, positive, negative, cfg, background, masks=masks)
        sigmas = inversion.sigmas
        x_t = model.model.process_latent_out(inversion.trajectory[0].clone())
        callback = latent_preview.prepare_callback(model, sigmas.shape[-1] - 1)
        samples = guider.sample(
            x_t * 0,
            x_t,
            ddim_sampler(),
            sigmas,
            callback=callback,
            disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED,
            seed=0,
        )
        return io.NodeOutput({"samples": samples.cpu()})


class DiffStylerGuiderNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffStylerGuider",
            display_name="Masked Fusion Guider (DiffStyler)",
            category="DiffStyler/sample",
            description="The DiffStyler GUIDER for SamplerCustomAdvanced: pair it with DDIM Sampler (DiffStyler), "
            "Inversion Sigmas (DiffStyler), DisableNoise and the inverted latent.",
            inputs=_common_inputs(),
            outputs=[io.Guider.Output(tooltip="GUIDER for SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, model, inversion, positive, negative, cfg, background, styles=None, masks="hard") -> io.NodeOutput:
        styles = _styles_of(model, styles)
        return io.NodeOutput(
            DiffStylerGuider(model, inversion, styles, positive, negative, cfg, background, masks=masks)
        )


class DiffStylerDDIMSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffStylerDDIMSampler",
            display_name="DDIM Sampler (DiffStyler)",
            category="DiffStyler/sample",
            description="DDIM (eta 0) SAMPLER that starts on the inversion's x_T and keeps the exact background when "
            "used with the DiffStyler guider; plain DDIM with any other guider. On a flow model (Flux) the same step "
            "is Euler.",
            inputs=[],
            outputs=[io.Sampler.Output(tooltip="SAMPLER for SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        return io.NodeOutput(ddim_sampler())


class DiffStylerInversionSigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffStylerInversionSigmas",
            display_name="Inversion Sigmas (DiffStyler)",
            category="DiffStyler/sample",
            description="The sigma schedule a DDIM Inversion used, for SamplerCustomAdvanced.",
            inputs=[INVERSION.Input("inversion", tooltip="The DDIM Inversion (DiffStyler) output.")],
            outputs=[io.Sigmas.Output(tooltip="The inversion's sigmas (SD: ddim_uniform; Flux: simple).")],
        )

    @classmethod
    def execute(cls, inversion) -> io.NodeOutput:
        return io.NodeOutput(inversion.sigmas.clone())


NODES = [DiffStylerMaskedFusionSampler, DiffStylerGuiderNode, DiffStylerDDIMSampler, DiffStylerInversionSigmas]
