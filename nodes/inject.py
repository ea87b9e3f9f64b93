"""Cross-LoRA Attention Injector node: per-style LoRA rows, ResBlock and Q/K injection on a MODEL clone."""

from __future__ import annotations

from ._api import io
from .adapters import lora_file, patches
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
                    default=0.6,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="Fraction of the steps during which the content ResBlock features are injected "
                    "(paper: 0.6 = 30 of 50 steps). 0 turns it off.",
                ),
                io.Float.Input(
                    "qk_injection_end",
                    default=0.5,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="Fraction of the steps during which decoder self-attention Q/K are injected "
                    "(paper: 0.5). 0 turns it off.",
                ),
                io.Combo.Input(
                    "qk_blend",
                    options=["adaptive", "replace"],
                    default="adaptive",
                    tooltip="adaptive: q = r*q_content + (1-r)*q_style with r = min(1, 2t/1000) (the paper); "
                    "replace: r = 1 (plain Plug-and-Play).",
                ),
                io.Boolean.Input(
                    "lora_in_injected_attention",
                    default=True,
                    tooltip="Apply the style LoRA inside the injected decoder self-attention layers too. Off "
                    "reproduces the reference scripts, which bypass the LoRA there.",
                ),
                io.Combo.Input(
                    "fusion",
                    options=["noise", "feature"],
                    default="noise",
                    optional=True,
                    tooltip="noise: one cond/uncond pair per style, fused by mask (the paper). feature "
                    "(experimental): all styles share one pair; each style's LoRA acts on its region's tokens and "
                    "each region attends to its own prompt. Faster for several styles.",
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
        fusion: str = "noise",
    ) -> io.NodeOutput:
        if not styles:
            raise ValueError("styles: no styles connected: chain at least one Style LoRA Loader (DiffStyler)")
        if patches.state_of(model) is not None:
            raise ValueError(
                "model: this MODEL already comes from a Cross-LoRA Attention Injector (DiffStyler); one Injector "
                "patches a model for all its styles: connect the MODEL before that Injector, and chain every style "
                "into the DIFFSTYLER_STYLES of one Injector"
            )
        deltas = []
        for i, s in enumerate(styles):
            if s.lora is None or s.strength == 0:
                deltas.append({})
                continue
            p = lora_file.unet_patches(s.lora, model, f"style {i + 1} LoRA ({s.name})")
            deltas.append(lora_file.layer_deltas(p, model, s.strength, f"style {i + 1} LoRA ({s.name})"))
        settings = {
            "feature_injection_end": float(feature_injection_end),
            "qk_injection_end": float(qk_injection_end),
            "qk_blend": qk_blend,
            "lora_in_injected_attention": bool(lora_in_injected_attention),
            "fusion": fusion,
        }
        patched, state = patches.install(model, deltas, tuple(s.uid for s in styles), settings)
        state.styles = list(styles)
        return io.NodeOutput(patched)


NODES = [DiffStylerCrossLoRAInjector]
