"""DDIM Inversion node (paper Sec. 3.1)."""

from __future__ import annotations

from ._api import io
from .adapters import inversion, style_cache
from .core.schedule import GRIDS

INVERSION = io.Custom("DIFFSTYLER_INVERSION")


class DiffStylerInvert(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffStylerInvert",
            display_name="DDIM Inversion (DiffStyler)",
            category="DiffStyler/invert",
            description=(
                "DDIM-inverts the content latent (eta 0, cfg 1, empty prompt) as the released DiffStyler does: on "
                "every timestep from 1 up to the first sampling timestep of the ddim_uniform schedule the sampler "
                "uses (about 1000 UNet rows), keeping the latents at the sampling timesteps. ComfyUI caches the "
                "result, so changing styles, prompts or masks does not re-invert."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model; use the same MODEL for sampling."),
                io.Latent.Input("latent", tooltip="The content image's latent (VAE Encode). Any batch size."),
                io.Int.Input(
                    "steps",
                    default=50,
                    min=1,
                    max=1000,
                    tooltip="DDIM steps; the sampler uses the same schedule. The paper uses 50.",
                ),
                io.Clip.Input(
                    "clip",
                    optional=True,
                    tooltip="Used to encode the empty prompt for the content branch when no conditioning is given.",
                ),
                io.Conditioning.Input(
                    "conditioning",
                    optional=True,
                    tooltip="Content-branch prompt. Default: the empty prompt (encoded with the clip input).",
                ),
                io.Combo.Input(
                    "feature_cache",
                    options=["off", "fp16", "fp32"],
                    default="off",
                    optional=True,
                    tooltip="Speed-up option (not the released method): record the content features at inversion, "
                    "without any LoRA, so sampling runs no content rows (faster; costs memory: see the log). The "
                    "released pipeline evaluates each style's content row with that style's LoRA.",
                ),
                io.Float.Input(
                    "cache_feature_end",
                    default=0.6,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    optional=True,
                    tooltip="Record ResBlock features for this fraction of the steps (match the Injector's "
                    "feature_injection_end).",
                ),
                io.Float.Input(
                    "cache_qk_end",
                    default=0.5,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    optional=True,
                    tooltip="Record self-attention Q/K for this fraction of the steps (match the Injector's "
                    "qk_injection_end).",
                ),
                io.Combo.Input(
                    "inversion_grid",
                    options=list(GRIDS),
                    default="fine",
                    optional=True,
                    tooltip="Timesteps the inversion walks. fine: every timestep t = 1, 2, ... (the released "
                    "pipeline, ~1000 UNet rows). fine/2, fine/5, fine/10: every 2nd/5th/10th (2-10x cheaper). "
                    "sampling: only the sampler's own steps (cheapest, ~steps rows). See docs/options.md (Inversion "
                    "grids) for what each changes.",
                ),
                io.Int.Input(
                    "content_cache_mb",
                    default=2048,
                    min=0,
                    max=1048576,
                    step=64,
                    optional=True,
                    tooltip="Memory bound of the per-style content cache, in MB (0: off). The sampler keeps each "
                    "style's content features (ResBlock residual, decoder self-attention Q/K, evaluated with that "
                    "style's LoRA) with this inversion, so a re-run that changes only prompts, masks or cfg runs no "
                    "content rows where they are stored (2 rows per style per step instead of 3) and gives the same "
                    "result. Freed with this node's output; least recently used styles go first; the log gives the MB "
                    "per step.",
                ),
            ],
            outputs=[
                INVERSION.Output(
                    "inversion",
                    display_name="inversion",
                    tooltip="The trajectory, sigmas and a fingerprint of model, steps and latent shape.",
                ),
                io.Latent.Output(
                    "inverted_latent", display_name="inverted_latent", tooltip="x_T, the inverted latent."
                ),
            ],
        )

    @classmethod
    def execute(
        cls,
        model,
        latent,
        steps: int,
        clip=None,
        conditioning=None,
        feature_cache: str = "off",
        cache_feature_end: float = 0.6,
        cache_qk_end: float = 0.5,
        inversion_grid: str = "fine",
        content_cache_mb: int = 2048,
    ) -> io.NodeOutput:
        if conditioning is None:
            if clip is None:
                raise ValueError(
                    "DDIM Inversion needs the empty prompt for the content branch: connect the checkpoint's CLIP to "
                    "'clip' (or a CONDITIONING to 'conditioning')"
                )
            conditioning = clip.encode_from_tokens_scheduled(clip.tokenize(""))
        samples = latent["samples"] if isinstance(latent, dict) and "samples" in latent else latent
        result = inversion.invert(
            model,
            samples,
            steps,
            conditioning,
            cache_dtype=feature_cache,
            cache_feature_end=cache_feature_end,
            cache_qk_end=cache_qk_end,
            grid=inversion_grid,
        )
        if int(content_cache_mb) > 0:
            result.source_cache = style_cache.ContentCache(int(content_cache_mb) * 2**20)
        out = dict(latent) if isinstance(latent, dict) else {}
        out.pop("noise_mask", None)
        out["samples"] = inversion.latent_out(model, result.trajectory[0])
        return io.NodeOutput(result, out)


NODES = [DiffStylerInvert]
