"""Cross-LoRA Attention Injector node: per-style LoRA rows, ResBlock and Q/K injection on a MODEL clone."""

from __future__ import annotations

from ._api import io
from .adapters import flux_lora, lora_file
from .adapters.injector import arch, install
from .adapters.injector.state import BASE_INJECTIONS, CONTENT_ROWS, DEFAULTS, FUSIONS, QK_BLENDS, InjectorSettings
from .style import STYLES


class DiffStylerCrossLoRAInjector(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffStylerCrossLoRAInjector",
            display_name="Cross-LoRA Attention Injector (DiffStyler)",
            category="DiffStyler/inject",
            description=(
                "Patches a clone of the MODEL for DiffStyler: each style's LoRA acts only on that style's batch rows, "
                "and the content branch's decoder ResBlock features and self-attention Q/K are injected into the "
                "style branches during the first part of the schedule (paper Sec. 3.2). The input MODEL is untouched."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (the same one DDIM Inversion used)."),
                STYLES.Input("styles", tooltip="The styles from Style LoRA Loader (DiffStyler)."),
                io.Float.Input(
                    "feature_injection_end",
                    default=DEFAULTS.feature_injection_end,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="Fraction of the steps during which the content features are injected (paper: 0.6 = 30 "
                    "of 50 steps). SD/SDXL: the decoder ResBlock's residual; Flux: the image tokens' residual update "
                    "of feature_blocks. 0 turns it off.",
                ),
                io.Float.Input(
                    "qk_injection_end",
                    default=DEFAULTS.qk_injection_end,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="Fraction of the steps during which self-attention Q/K are injected (paper: 0.5). "
                    "SD/SDXL: decoder attn1; Flux: the image tokens' Q/K in qk_blocks. 0 turns it off.",
                ),
                io.Combo.Input(
                    "qk_blend",
                    options=list(QK_BLENDS),
                    default=DEFAULTS.qk_blend,
                    tooltip="adaptive: q = r*q_content + (1-r)*q_style with r = min(1, 2t/1000) (the paper; Flux: "
                    "t = 1000*sigma); replace: r = 1 (plain Plug-and-Play).",
                ),
                io.Boolean.Input(
                    "lora_in_injected_attention",
                    default=DEFAULTS.lora_in_injected_attention,
                    tooltip="Off (the released pipeline): the style LoRA is bypassed inside the Q/K-injected decoder "
                    "self-attention layers (Flux: in the q/k rows of the Q/K blocks' fused projections only), in every "
                    "branch and at every step. On: the LoRA acts there too (our option; stronger style, less content "
                    "structure).",
                ),
                io.Combo.Input(
                    "fusion",
                    options=list(FUSIONS),
                    default=DEFAULTS.fusion,
                    optional=True,
                    tooltip="noise: one cond/uncond pair per style, fused by mask (the paper; Flux: v predictions). "
                    "feature (experimental, SD/SDXL only): all styles share one pair; each style's LoRA acts on its "
                    "region's tokens and each region attends to its own prompt. Faster for several styles.",
                ),
                io.Combo.Input(
                    "content_rows",
                    options=list(CONTENT_ROWS),
                    default=DEFAULTS.content_rows,
                    optional=True,
                    tooltip="per style (the released pipeline): each style's injected features come from the content "
                    "latent evaluated with that style's own LoRA (one content row per style). shared (faster, our "
                    "option): one content row without any LoRA feeds every style.",
                ),
                io.Combo.Input(
                    "base_injection",
                    options=list(BASE_INJECTIONS),
                    default=DEFAULTS.base_injection,
                    optional=True,
                    tooltip="For background = model: the base branch injects ResBlock features and Q/K on all steps "
                    "(the released pipeline) or only inside the style windows above.",
                ),
                io.String.Input(
                    "feature_blocks",
                    default=DEFAULTS.feature_blocks,
                    optional=True,
                    tooltip="Where the content features are injected. auto: the family's default. SD/SDXL: the "
                    "released decoder ResBlock's residual (only auto). Flux: the image tokens' residual update "
                    "(block output minus input) of these blocks, written kind:index or kind:first-last, comma "
                    "separated, e.g. double:18 (auto: the last double block); none: no block.",
                ),
                io.String.Input(
                    "qk_blocks",
                    default=DEFAULTS.qk_blocks,
                    optional=True,
                    tooltip="Where self-attention Q/K are injected. auto: the family's default. SD/SDXL: the released "
                    "decoder attn1 layers (only auto). Flux: the image tokens' Q/K in these blocks' joint attention, "
                    "e.g. single:19-37 (auto: the single blocks of the second half); none: no block.",
                ),
            ],
            outputs=[io.Model.Output(tooltip="The patched MODEL clone; feed it to the Masked Feature Fusion Sampler.")],
        )

    @classmethod
    def execute(
        cls,
        model,
        styles,
        feature_injection_end: float,
        qk_injection_end: float,
        qk_blend: str,
        lora_in_injected_attention: bool,
        fusion: str = DEFAULTS.fusion,
        content_rows: str = DEFAULTS.content_rows,
        base_injection: str = DEFAULTS.base_injection,
        feature_blocks: str = DEFAULTS.feature_blocks,
        qk_blocks: str = DEFAULTS.qk_blocks,
    ) -> io.NodeOutput:
        if not styles:
            raise ValueError("styles: no styles connected: chain at least one Style LoRA Loader (DiffStyler)")
        if install.state_of(model) is not None:
            raise ValueError(
                "model: this MODEL already comes from a Cross-LoRA Attention Injector (DiffStyler); one Injector "
                "patches a model for all its styles: connect the MODEL before that Injector, and chain every style "
                "into the DIFFSTYLER_STYLES of one Injector"
            )
        family = arch.family_for(model)
        if family.flow and fusion == "feature":
            raise ValueError(
                "fusion: 'feature' (shared rows with region cross-attention) is a UNet option; on Flux set fusion to "
                "'noise' (the v predictions fused by mask)"
            )
        deltas = []
        for i, s in enumerate(styles):
            if s.model is not None:  # a MODEL style: its own weights, in an extra UNet call (patched below)
                install.check_style_model(model, s.model, f"style {i + 1} ({s.name})")
                deltas.append({})
                continue
            if s.lora is None or s.strength == 0:
                deltas.append({})
                continue
            source = f"style {i + 1} LoRA ({s.name})"
            if family.flow:  # kohya/BFL and diffusers/PEFT keys, on slices of the fused qkv / linear1
                p = flux_lora.flux_patches(s.lora, model, source)
                deltas.append(flux_lora.flux_layer_deltas(p, model, s.strength, source))
            else:
                p = lora_file.unet_patches(s.lora, model, source)
                deltas.append(lora_file.layer_deltas(p, model, s.strength, source))
        settings = InjectorSettings(
            feature_injection_end=feature_injection_end,
            qk_injection_end=qk_injection_end,
            qk_blend=qk_blend,
            lora_in_injected_attention=lora_in_injected_attention,
            fusion=fusion,
            content_rows=content_rows,
            base_injection=base_injection,
            feature_blocks=feature_blocks,
            qk_blocks=qk_blocks,
        )
        patched, state = install.install(model, deltas, tuple(s.uid for s in styles), settings)
        state.styles = list(styles)
        model_styles = [i for i, s in enumerate(styles) if s.model is not None]
        if model_styles:
            if fusion == "feature":
                raise ValueError(
                    f"fusion: style {model_styles[0] + 1} is held by a MODEL, whose rows run in a UNet call of their "
                    "own, which feature fusion cannot share: set fusion to 'noise'"
                )
            install.install_style_models(patched, state, {i: styles[i].model for i in model_styles})
        return io.NodeOutput(patched)


NODES = [DiffStylerCrossLoRAInjector]
