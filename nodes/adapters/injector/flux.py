"""The Flux.1 family (dev, schnell): content injection on the DiT (design Sec. 6).

Feature injection: in the chosen block(s), each style row's image-token residual update (block output minus block
input) is replaced by its content row's; text tokens untouched. Q/K injection: in the chosen blocks' joint attention,
each style row's image-token Q and K are blended with its content row's, ``r*content + (1-r)*style``; text tokens and
V untouched. Both through ``patches_replace["dit"]`` (``("double_block", i)`` / ``("single_block", i)``, chained to a
replace another pack set there); the Q/K through ``optimized_attention_override`` set only in the transformer options
that block receives (chained to an override already there). The override sees Q/K after RoPE, which acts on the
content and style rows alike (same token positions), so blending after it equals blending after the q/k norm.

The style LoRA is bypassed in the q and k output rows of the Q/K-injected blocks' fused projections (``img_attn.qkv``
of a double block, ``linear1`` of a single block), kept everywhere else (``bypass_rows``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import comfy.model_base
import torch

from ...core.blocks import AUTO, format_blocks, parse_blocks
from ...core.schedule import blend_qk_
from .state import PatchState

logger = logging.getLogger(__name__)

KINDS = {"double": "double_blocks", "single": "single_blocks"}
REPLACE = {"double": "double_block", "single": "single_block"}
PATCH = 2  # Flux.1 packs 2x2 latent cells into one token


def flux_kind(base) -> str | None:
    """``"flux"`` for a Flux.1 BaseModel (``model.model`` of a MODEL), else the ``image_model`` a Flux-derived model
    names (``"flux2"``, ...) or None for a model that is no Flux at all. The one place the pack tells Flux.1."""
    if not isinstance(base, comfy.model_base.Flux):
        return None
    return str((getattr(getattr(base, "model_config", None), "unet_config", None) or {}).get("image_model"))


@dataclass(frozen=True)
class FluxFamily:
    """Flux.1 (``comfy.ldm.flux.model.Flux`` with ``image_model == "flux"``)."""

    name: str = "flux"
    flow: bool = True  # flow matching: Euler on the sigmas, the model predicts v
    patch: int = PATCH
    time_scale: float = 1000.0  # the Q/K blend's t = 1000 * sigma (Flux's model timestep is sigma itself)

    def matches(self, model) -> bool:
        return flux_kind(model.model) == "flux"

    def depths(self, model) -> dict[str, int]:
        dm = model.model.diffusion_model
        return {kind: len(getattr(dm, attr)) for kind, attr in KINDS.items()}

    def feature_blocks(self, model, settings) -> tuple[tuple[str, int], ...]:
        """The blocks whose image-token residual update is injected (default: the last double block)."""
        d = self.depths(model)
        if settings.feature_blocks.lower() == AUTO:
            return (("double", d["double"] - 1),) if d["double"] else (("single", 0),)
        return parse_blocks(settings.feature_blocks, d, "feature_blocks")

    def qk_blocks(self, model, settings) -> tuple[tuple[str, int], ...]:
        """The blocks whose image-token Q/K are injected (default: the single blocks of the second half)."""
        d = self.depths(model)
        if settings.qk_blocks.lower() == AUTO:
            return tuple(("single", i) for i in range(d["single"] // 2, d["single"]))
        return parse_blocks(settings.qk_blocks, d, "qk_blocks")

    def check_blocks(self, settings) -> None:
        """Block choices are checked against the depth where they are read (``feature_blocks``, ``qk_blocks``)."""

    @staticmethod
    def projection(kind: str, index: int) -> str:
        """Module path of the fused projection computing a block's image-token Q/K."""
        if kind == "double":
            return f"diffusion_model.double_blocks.{index}.img_attn.qkv"
        return f"diffusion_model.single_blocks.{index}.linear1"

    def injected_attention_paths(self, model, settings) -> list[str]:
        """Module paths of the Q/K-injected blocks' fused projections (their q/k rows bypass the LoRA)."""
        return [self.projection(kind, i) for kind, i in self.qk_blocks(model, settings)]

    def bypass_rows(self, model, path: str) -> tuple[int, int]:
        """The output rows of ``path`` (a fused projection) that compute Q and K: ``[0, 2*hidden)``."""
        return 0, 2 * int(model.model.diffusion_model.hidden_size)

    def describe(self, model, settings) -> str:
        return (
            f"feature injection at {format_blocks(self.feature_blocks(model, settings))}, "
            f"Q/K injection at {format_blocks(self.qk_blocks(model, settings))}"
        )

    def install_injection(self, patched, state: PatchState) -> None:
        settings = state.settings
        feature = set(self.feature_blocks(patched, settings))
        qk = set(self.qk_blocks(patched, settings))
        table = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
        state.replace_slots = []
        for kind, i in sorted(feature | qk):
            slot = (REPLACE[kind], i)
            previous = table.get(slot)
            if previous is not None:
                logger.info("DiffStyler: chained Flux injection onto an existing dit replace at %s", slot)
            fn = make_block_replace(state, kind, (kind, i) in feature, (kind, i) in qk, previous)
            patched.set_model_patch_replace(fn, "dit", *slot)
            state.replace_slots.append(("dit", slot))
        logger.info("DiffStyler: Flux %s", self.describe(patched, settings))


FLUX = FluxFamily()


def image_tokens(state: PatchState) -> int:
    """Image tokens of the call in progress (the latent's 2x2 patches)."""
    h, w = state.run.latent_hw
    return math.ceil(h / PATCH) * math.ceil(w / PATCH)


def _replace_image_update(call, x_in: torch.Tensor, x_out: torch.Tensor, start: int) -> torch.Tensor:
    """``x_out`` (the block's fresh output; ``x_in`` its input as it came) with each injected row's image tokens
    (``[start:]``) set, in place, to its own input plus its content row's residual update; every other row and
    every text token as the block gave them."""
    rows, src = call.res_rows, call.res_src
    update = x_out[:, start:].index_select(0, src) - x_in[:, start:].index_select(0, src)
    x_out[:, start:].index_copy_(0, rows, x_in[:, start:].index_select(0, rows) + update.to(x_out.dtype))
    return x_out


def _blend_image_qk(call, t: torch.Tensor, n_img: int) -> torch.Tensor:
    """``t`` ``[B, heads, L, D]`` (the attention's own Q or K, fresh from RoPE) with each injected row's image tokens
    (the last ``n_img``) blended in place with its content row's: ``r*content + (1-r)*style``."""
    start = t.shape[2] - n_img
    img = t[:, :, start:]
    rows = img.index_select(0, call.qk_rows)
    blend_qk_(rows, img.index_select(0, call.qk_src), call.qk_ratio)
    img.index_copy_(0, call.qk_rows, rows)
    return t


def make_qk_override(call, n_img: int, previous=None):
    """An ``optimized_attention_override`` for one block: blends the image tokens' Q/K, then runs the attention (the
    override that was set before, else ComfyUI's)."""

    def diffstyler_flux_qk(func, q, k, v, *args, **kwargs):
        if kwargs.get("skip_reshape"):  # Flux's attention: q, k [B, heads, L, D]
            q, k = _blend_image_qk(call, q, n_img), _blend_image_qk(call, k, n_img)
        if previous is not None:
            return previous(func, q, k, v, *args, **kwargs)
        return func(q, k, v, *args, **kwargs)

    return diffstyler_flux_qk


def make_block_replace(state: PatchState, kind: str, feature: bool, qk: bool, previous=None):
    """A ``patches_replace["dit"]`` entry for one double/single block (see the module docstring)."""

    def diffstyler_flux_block(args, extra):
        def run(a):
            return previous(a, extra) if previous is not None else extra["original_block"](a)

        call = state.active_call()
        do_res = feature and call is not None and call.res_rows is not None
        do_qk = qk and call is not None and call.qk_rows is not None
        if not (do_res or do_qk):
            return run(args)
        n_img = image_tokens(state)
        if do_qk:
            opts = dict(args.get("transformer_options") or {})
            opts["optimized_attention_override"] = make_qk_override(
                call, n_img, opts.get("optimized_attention_override")
            )
            args = {**args, "transformer_options": opts}
        # ComfyUI's Flux blocks add their update to the input in place (``img += ...``): keep the input as it came
        x_in = args["img"].clone() if do_res else None
        out = run(args)
        if do_res:
            out = dict(out)
            x_out = out["img"]
            out["img"] = _replace_image_update(call, x_in, x_out, x_out.shape[1] - n_img)
        return out

    diffstyler_flux_block.diffstyler_previous = previous
    diffstyler_flux_block.diffstyler_owner = state
    return diffstyler_flux_block
