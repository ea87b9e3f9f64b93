"""The model families DiffStyler serves: a registry, as ``comfy/supported_models.py`` lists models.

Each family says whether a MODEL is one of its own (``matches``), where content features are injected (design
Sec. 1, step 3) and which attention slots ComfyUI looks replaces up by. A new family is one new class here (or in a
module of its own) plus one line in ``FAMILIES``; everything else (install, feature cache, style checks) asks the
family of the MODEL through ``family_for``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UNetFamily:
    """An SD-style UNet (``comfy.ldm.modules.diffusionmodules.openaimodel.UNetModel``)."""

    name: str
    decoder_blocks: int  # len(output_blocks)
    levels: int  # len(unet_config["channel_mult"])
    resblock: str  # module path of the decoder ResBlock whose residual is injected
    qk_blocks: tuple[int, ...]  # decoder (output) block ids whose self-attention Q/K are injected

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


SD1 = UNetFamily("sd1", 12, 4, resblock="diffusion_model.output_blocks.4.0", qk_blocks=tuple(range(4, 12)))
SDXL = UNetFamily("sdxl", 9, 3, resblock="diffusion_model.output_blocks.1.0", qk_blocks=tuple(range(1, 6)))

# SD1.x and SD2.x share one block map; SDXL has its own decoder layout
FAMILIES = (SD1, SDXL)
SUPPORTED = "SD1.x, SD2.x and SDXL"


def family_for(model):
    """The family of ``model`` (a ModelPatcher); ValueError naming what it is when none matches."""
    for family in FAMILIES:
        if family.matches(model):
            return family
    dm = getattr(model.model, "diffusion_model", None)
    n_out = len(getattr(dm, "output_blocks", []))
    raise ValueError(
        f"model: DiffStyler supports {SUPPORTED} UNets; this one ({type(model.model).__name__}, "
        f"{n_out} decoder blocks) is not one of them: load an SD1.x, SD2.x or SDXL checkpoint"
    )
