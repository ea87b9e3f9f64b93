"""The UNet families (SD1.x/SD2.x, SDXL): where content features are injected and how (design Sec. 1, step 3).

ResBlock injection: an object patch on the last layer of the decoder ResBlock's residual branch (its output is the
residual ``h``). Q/K injection: attn1 replaces on the decoder blocks, chained to other packs' replaces. Feature
fusion (our option): attn2 replaces on every transformer block.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ...core.blocks import AUTO
from .. import feature_fusion
from .attention import make_qk_replace, replace_block
from .layers import InjectedResidualMixin, install_view

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UNetFamily:
    """An SD-style UNet (``comfy.ldm.modules.diffusionmodules.openaimodel.UNetModel``)."""

    name: str
    decoder_blocks: int  # len(output_blocks)
    levels: int  # len(unet_config["channel_mult"])
    resblock: str  # module path of the decoder ResBlock whose residual is injected
    qk_blocks: tuple[int, ...]  # decoder (output) block ids whose self-attention Q/K are injected
    flow = False  # eps/v prediction on a DDIM schedule
    patch = 1  # masks on the latent grid itself
    time_scale = 1.0  # the Q/K blend's t is the model timestep (0..999)

    def matches(self, model) -> bool:
        dm = getattr(model.model, "diffusion_model", None)
        cfg = getattr(model.model.model_config, "unet_config", {})
        return len(getattr(dm, "output_blocks", [])) == self.decoder_blocks and len(cfg.get("channel_mult", [])) == (
            self.levels
        )

    def residual_path(self, model) -> str:
        """The module whose output is the injected ResBlock's residual ``h`` (everything but the skip).

        ComfyUI's ``ResBlock._forward`` ends ``skip_connection(x) + out_layers(h)`` (or, with scale-shift norm,
        ``out_layers[1:]``): both end in ``out_layers[-1]``, so an object patch on that layer sees exactly the
        residual, and the block's own forward stays ComfyUI's."""
        block = model.get_model_object(self.resblock)
        return f"{self.resblock}.out_layers.{len(block.out_layers) - 1}"

    def attention_modules(self, model, attr: str) -> dict:
        """``(block name, block id, transformer index)`` -> the ``attr`` ("attn1"/"attn2") module of that
        transformer block: the slots ComfyUI looks attention replaces up by (the middle block is id 0)."""
        dm = model.model.diffusion_model
        out = {}
        for name, blocks in (("input", dm.input_blocks), ("middle", [dm.middle_block]), ("output", dm.output_blocks)):
            for bid, block in enumerate(blocks):
                for layer in block:
                    for ti, tb in enumerate(getattr(layer, "transformer_blocks", [])):
                        if getattr(tb, attr, None) is not None:
                            out[(name, bid, ti)] = getattr(tb, attr)
        return out

    def qk_slots(self, model) -> list[tuple[str, int, int]]:
        """The self-attention slots whose Q/K are injected."""
        return sorted(s for s in self.attention_modules(model, "attn1") if s[0] == "output" and s[1] in self.qk_blocks)

    def qk_block_keys(self) -> list[tuple[str, int]]:
        """The ``(block name, block id)`` replace keys of the injected self-attention."""
        return [("output", i) for i in self.qk_blocks]

    def check_blocks(self, settings) -> None:
        """The UNet families inject at the released blocks only: ValueError for any other block choice."""
        for name in ("feature_blocks", "qk_blocks"):
            if getattr(settings, name).lower() != AUTO:
                raise ValueError(
                    f"{name}: {getattr(settings, name)!r} chooses blocks of a Flux model; an {self.name} UNet injects "
                    f"at the released pipeline's blocks ({self.resblock}, decoder attn1 of blocks "
                    f"{self.qk_blocks[0]}-{self.qk_blocks[-1]}): set it to 'auto'"
                )

    def bypass_rows(self, model, path: str):
        """None: the LoRA is bypassed in the whole injected self-attention layer (the released pipeline)."""
        return None

    def injected_attention_paths(self, model, settings=None) -> list[str]:
        """Module paths of the self-attention layers whose Q/K are injected (the LoRA is bypassed in them unless
        ``lora_in_injected_attention``)."""
        attn1 = self.attention_modules(model, "attn1")
        ids = {id(attn1[slot]) for slot in self.qk_slots(model)}
        return [path for path, m in model.model.named_modules() if id(m) in ids]

    def install_injection(self, patched, state) -> None:
        """The content injection on ``patched`` (after the per-row LoRA views, which the residual view may wrap)."""
        residual = self.residual_path(patched)
        install_view(patched, state, residual, InjectedResidualMixin)
        logger.info("DiffStyler: ResBlock feature injection at %s (its residual, %s)", self.resblock, residual)
        state.replace_slots = [("attn1", slot) for slot in self.qk_slots(patched)]
        for name, bid in self.qk_block_keys():
            for key in replace_block(patched, "attn1", name, bid, lambda previous: make_qk_replace(state, previous)):
                logger.info("DiffStyler: chained Q/K injection onto an existing attn1 replace at %s", key)
        logger.info("DiffStyler: Q/K injection on decoder blocks %s", list(self.qk_blocks))
        if state.settings.feature_fusion:
            attn2 = self.attention_modules(patched, "attn2")
            state.replace_slots += [("attn2", slot) for slot in sorted(attn2)]
            for name, bid in sorted({(n, b) for n, b, _t in attn2}):
                replace_block(
                    patched,
                    "attn2",
                    name,
                    bid,
                    lambda previous: feature_fusion.make_attn2_replace(state, attn2, previous),
                )
            logger.info("DiffStyler: feature-fusion cross-attention on %d transformer blocks", len(attn2))


SD1 = UNetFamily("sd1", 12, 4, resblock="diffusion_model.output_blocks.4.0", qk_blocks=tuple(range(4, 12)))
SDXL = UNetFamily("sdxl", 9, 3, resblock="diffusion_model.output_blocks.1.0", qk_blocks=tuple(range(1, 6)))
