"""Flux.1 LoRA files as per-style deltas on slices of the fused weights (design Sec. 6, "LoRA formats").

ComfyUI's key map (``comfy.lora.model_lora_keys_unet`` on a Flux model) sends

- kohya / BFL keys (``lora_unet_double_blocks_0_img_attn_qkv``, ``diffusion_model.double_blocks.0...``) to whole
  tensors of the fused layers;
- diffusers / ai-toolkit / PEFT keys (``transformer.transformer_blocks.0.attn.to_q``) to ``(weight key, (0, offset,
  size))`` slices of ``img_attn.qkv``, ``txt_attn.qkv`` and the single blocks' ``linear1`` (q, k, v, mlp), and
  ``norm_out.linear`` to the final modulation with its scale/shift halves swapped.

Here each becomes a :class:`LayerDelta` (``out_slice`` for a slice) that is never merged: ``{module path: [deltas of
that module's slices]}`` per style. Keys written as bare diffusers module paths (``transformer_blocks.0...``, PEFT's
``base_model.model.`` prefix) get the ``transformer.`` prefix first, so both tested hosts read them. A file with any
tensor that does not land on this model (text-encoder parts aside, which a style never patches) is refused by name,
as is a file for another family: never applied in part.
"""

from __future__ import annotations

import logging

import comfy.lora
import torch

from ..core.lora import LayerDelta
from .injector.flux import flux_kind
from .lora_file import EXTRA_KEYS, _full_delta, _low_rank

logger = logging.getLogger(__name__)

DIFFUSERS_BLOCKS = ("transformer_blocks.", "single_transformer_blocks.")
STRIP_PREFIXES = ("base_model.model.",)
TOP_LEVEL = ("x_embedder", "context_embedder", "time_text_embed", "norm_out", "proj_out")  # diffusers' outer layers
TEXT_ENCODER = ("lora_te", "text_encoder")
# a few key fragments per family, to name the family of a file that does not fit (messages only)
FAMILY_HINTS = (
    (("down_blocks", "up_blocks", "input_blocks", "output_blocks", "mid_block", "middle_block"), "an SD/SDXL UNet"),
    (("joint_blocks",), "SD3"),
    (("double_blocks", "single_blocks", "transformer.transformer_blocks"), "Flux (another size or version)"),
    (("layers_", "layers."), "a DiT such as Lumina/Z-Image"),
)


def flux1_model(model) -> None:
    """ValueError naming the family unless ``model`` (a ModelPatcher) is a Flux.1 model (dev or schnell)."""
    base = model.model
    if flux_kind(base) != "flux":
        image_model = (getattr(getattr(base, "model_config", None), "unet_config", None) or {}).get("image_model")
        raise ValueError(
            f"model: Flux LoRA parsing needs a Flux.1 (dev/schnell) MODEL, got {type(base).__name__} "
            f"(image_model {image_model!r}): Flux.2, Kontext-style reference models and other DiTs are not supported"
        )


def normalize_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Bare diffusers module paths (``transformer_blocks.0.attn.to_q.lora_A.weight``, PEFT's ``base_model.model.``
    prefix) -> ``transformer.``-prefixed keys, which ComfyUI's Flux key map reads on every tested host."""
    out = {}
    for k, v in sd.items():
        key = k
        for p in STRIP_PREFIXES:
            if key.startswith(p):
                key = key[len(p) :]
        if key.startswith(DIFFUSERS_BLOCKS) or key.split(".")[0] in TOP_LEVEL:
            key = "transformer." + key
        out[key] = v
    return out


def _target_key(target) -> str:
    return target if isinstance(target, str) else target[0]


def family_hint(keys) -> str:
    text = " ".join(keys)
    for fragments, family in FAMILY_HINTS:
        if any(f in text for f in fragments):
            return family
    return "an unknown model"


def flux_patches(sd: dict[str, torch.Tensor], model, source: str) -> dict:
    """ComfyUI's patch dict ``{weight key or (weight key, (dim, offset, size)[, function]): adapter}`` for a Flux.1
    LoRA state dict. ValueError naming ``source`` when the model is not Flux.1, when nothing matches (naming the
    family the keys look like), or when any tensor is left unused (text-encoder tensors aside: logged)."""
    flux1_model(model)
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    sd = normalize_keys(sd)
    patches = comfy.lora.load_lora(sd, key_map, log_missing=False)
    patches = {k: v for k, v in patches.items() if _target_key(k).startswith("diffusion_model.")}
    weights = [k for k in sd if not k.endswith(".alpha")]
    if not patches:
        raise ValueError(
            f"{source}: 0 of its {len(weights)} tensors match this Flux.1 model; its keys look like a LoRA for "
            f"{family_hint(sd)} (e.g. {', '.join(sorted(weights)[:2])}): pick a LoRA trained for Flux.1 dev/schnell"
        )
    used: set[str] = set()
    for adapter in patches.values():
        used |= set(getattr(adapter, "loaded_keys", ()) or ())
    loaded_targets = set(patches)
    for stem, target in key_map.items():
        if target in loaded_targets:
            used.update(stem + s for s in EXTRA_KEYS if stem + s in sd)
    unused = [k for k in sd if k not in used]
    text_encoder = [k for k in unused if k.startswith(TEXT_ENCODER)]
    other = [k for k in unused if k not in text_encoder]
    if other:
        raise ValueError(
            f"{source}: {len(other)} of its {len(sd)} tensors do not land on this Flux.1 model (e.g. "
            f"{', '.join(sorted(other)[:3])}): it is a LoRA for {family_hint(other)} or a format DiffStyler does not "
            "read (kohya/BFL, diffusers, ai-toolkit, PEFT and LyCORIS factors are read); applying the rest would run "
            "a half-applied LoRA. Pick a LoRA trained for this checkpoint, or merge it with the core LoraLoader"
        )
    if text_encoder:
        logger.info(
            "%s: %d text-encoder tensors not used (a DiffStyler style patches the diffusion model only; apply them "
            "to the CLIP with the core LoraLoader at strength_model 0)",
            source,
            len(text_encoder),
        )
    return patches


def flux_layer_deltas(patches: dict, model, strength: float, source: str = "LoRA") -> dict[str, list[LayerDelta]]:
    """``{module path: [LayerDelta, ...]}`` for one style at ``strength`` (module path without ``.weight``), each
    module's deltas in output order (a whole-tensor delta first). A slice's delta has ``out_slice = (offset, size)``
    on the fused weight's output rows. ValueError naming ``source`` when a factor's shape does not fit its
    (slice of the) weight, or a patch slices anything but the output rows."""
    flux1_model(model)
    state = model.model.state_dict()
    out: dict[str, list[LayerDelta]] = {}
    for target, adapter in patches.items():
        key, where, function = (target, None, None) if isinstance(target, str) else (*target, None)[:3]
        if key not in state:
            continue
        if not key.endswith(".weight"):
            raise ValueError(f"{source}: a patch of {key} (not a weight) cannot be applied per style")
        base = state[key]
        if where is not None:
            dim, offset, size = where
            if dim != 0:
                raise ValueError(f"{source}: a patch of {key} on dimension {dim} cannot be applied per output row")
            base = base.narrow(0, offset, size)
            out_slice = (int(offset), int(size))
        else:
            out_slice = None
        delta = _delta(adapter, key, base, strength, source, out_slice)
        if function is not None:  # ComfyUI applies it to the update: a row permutation (swap_scale_shift)
            delta.up = None if delta.up is None else function(delta.up)
            delta.weight = None if delta.weight is None else function(delta.weight)
        out.setdefault(key[: -len(".weight")], []).append(delta)
    for deltas in out.values():
        deltas.sort(key=lambda d: (-1, 0) if d.out_slice is None else d.out_slice)
    return out


def _delta(adapter, key: str, base: torch.Tensor, strength: float, source: str, out_slice) -> LayerDelta:
    """The LayerDelta of one patch on ``base`` (the weight, or its slice)."""
    low_rank = _low_rank(adapter)
    where = f"{key}" + ("" if out_slice is None else f" rows {out_slice[0]}..{out_slice[0] + out_slice[1] - 1}")
    if low_rank is not None:
        up, down, alpha = low_rank
        if up.shape[0] != base.shape[0] or down.flatten(1).shape[1] != base[0].numel() or up.shape[1] != down.shape[0]:
            raise ValueError(
                f"{source}: its LoRA factors for {where} give [{up.shape[0]}, {down.flatten(1).shape[1]}] but this "
                f"model's weight there is {list(base.shape)}: it is a LoRA for another Flux size or family"
            )
        rank = down.shape[0]
        scale = float(strength) * ((alpha / rank) if alpha is not None else 1.0)
        return LayerDelta(down=down.float(), up=up.flatten(1).float(), scale=scale, out_slice=out_slice)
    weight = _full_delta(adapter, where, base, strength, source)
    return LayerDelta(weight=weight, out_slice=out_slice)
