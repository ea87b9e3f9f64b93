"""DDIM Inversion node (paper Sec. 3.1)."""

from __future__ import annotations

from ._api import io
from .adapters import flux_inversion, inversion, style_cache
from .adapters.injector import arch
from .core.flow import FLOW_GRIDS
from .core.schedule import GRIDS

INVERSION = io.Custom("DIFFSTYLER_INVERSION")
AUTO_GRID = "auto"
GRID_OPTIONS = [AUTO_GRID, *GRIDS, *(g for g in FLOW_GRIDS if g not in GRIDS)]
FLUX_DEFAULT_GRID = "sampling"  # design Sec. 6's rule on the tiny Flux (docs/performance.md, flow inversion grids)


class DiffStylerInvert(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffStylerInvert",
            display_name="DDIM Inversion (DiffStyler)",
            category="DiffStyler/invert",
            description=(
                "Inverts the content latent as the released DiffStyler does (cfg 1, empty prompt), keeping the latents "
                "at the sampling steps. SD1.x/SD2.x/SDXL: DDIM (eta 0) on every timestep from 1 up to the first "
                "sampling timestep of the ddim_uniform schedule (about 1000 UNet rows). Flux.1: Euler on the flipped "
                "flow schedule (the MODEL's simple sigmas with its shift) at guidance 1.0. ComfyUI caches the result, "
                "so changing styles, prompts or masks does not re-invert."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model; use the same MODEL for sampling."),
                io.Latent.Input("latent", tooltip="The content image's latent (VAE Encode). Any batch size."),
                io.Int.Input(
                    "steps",
                    default=50,
                    min=1,
                    max=1000,
                    tooltip="Sampling steps; the sampler uses the same schedule (SD: ddim_uniform; Flux: the MODEL's "
                    "simple sigmas). The paper uses 50.",
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
                    "released pipeline evaluates each style's content row with that style's LoRA. SD/SDXL only: keep "
                    "it off on Flux.",
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
                    options=GRID_OPTIONS,
                    default=AUTO_GRID,
                    optional=True,
                    tooltip="Points the inversion walks; the meaning depends on the model family. auto: the family's "
                    "default (SD/SDXL: fine, the released pipeline; Flux: sampling, the cheapest grid within 2x of the "
                    "finest grid's reconstruction error). SD/SDXL (DDIM): fine = every timestep t = 1, 2, ... (~1000 "
                    "UNet rows); fine/2, fine/5, fine/10 = every 2nd/5th/10th; sampling = only the sampler's steps. "
                    "Flux (Euler on the flipped flow schedule): sampling = the sampler's sigmas (steps rows); fine/2, "
                    "fine/4, fine/8 = each step cut into 2/4/8 sub-steps. See docs/options.md (Inversion grids).",
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
                    "per step. SD/SDXL only: not used on Flux.",
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
        inversion_grid: str = AUTO_GRID,
        content_cache_mb: int = 2048,
    ) -> io.NodeOutput:
        family = arch.family_for(model)
        if conditioning is None:
            if clip is None:
                raise ValueError(
                    "DDIM Inversion needs the empty prompt for the content branch: connect the checkpoint's CLIP to "
                    "'clip' (or a CONDITIONING to 'conditioning')"
                )
            conditioning = clip.encode_from_tokens_scheduled(clip.tokenize(""))
        samples = latent["samples"] if isinstance(latent, dict) and "samples" in latent else latent
        if family.flow:
            result = _invert_flow(model, samples, steps, conditioning, feature_cache, inversion_grid)
        else:
            if inversion_grid not in GRIDS and inversion_grid != AUTO_GRID:
                raise ValueError(
                    f"inversion_grid: {inversion_grid!r} is a Flux grid; an SD/SDXL model inverts on one of "
                    f"{[AUTO_GRID, *GRIDS]}"
                )
            result = inversion.invert(
                model,
                samples,
                steps,
                conditioning,
                cache_dtype=feature_cache,
                cache_feature_end=cache_feature_end,
                cache_qk_end=cache_qk_end,
                grid="fine" if inversion_grid == AUTO_GRID else inversion_grid,
            )
        if int(content_cache_mb) > 0 and not family.flow:
            result.source_cache = style_cache.ContentCache(int(content_cache_mb) * 2**20)
        out = dict(latent) if isinstance(latent, dict) else {}
        out.pop("noise_mask", None)
        out["samples"] = inversion.latent_out(model, result.trajectory[0])
        return io.NodeOutput(result, out)


NODES = [DiffStylerInvert]


def _invert_flow(model, samples, steps: int, conditioning, feature_cache: str, grid: str):
    """The flow-matching inversion of a Flux MODEL (design Sec. 6)."""
    if feature_cache != "off":
        raise ValueError(
            "feature_cache: the content-feature cache records UNet features; on a Flux model set it to 'off'"
        )
    if grid not in FLOW_GRIDS and grid != AUTO_GRID:
        raise ValueError(
            f"inversion_grid: {grid!r} is an SD/SDXL grid; a Flux model inverts on one of {[AUTO_GRID, *FLOW_GRIDS]}"
        )
    grid = FLUX_DEFAULT_GRID if grid == AUTO_GRID else grid
    return flux_inversion.invert(model, samples, steps, conditioning, grid=grid)
