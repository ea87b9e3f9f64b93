"""Reading style LoRAs: files from ``models/loras`` or a LORA_MODEL, mapped with ComfyUI's key maps.

``comfy.lora.load_lora`` with ``comfy.lora.model_lora_keys_unet`` understands kohya, diffusers and
LyCORIS (LoHa, LoKr, LoCon, DoRA) files; PEFT files (``...attn1.to_q.lora_A.weight``) are renamed
to kohya names first. The result is a per-layer :class:`LayerDelta` that is never merged.
"""

from __future__ import annotations

import logging
import os

import comfy.lora
import comfy.utils
import folder_paths
import torch

from ..core.lora import LayerDelta

logger = logging.getLogger(__name__)

PEFT_PREFIXES = ("base_model.model.unet.", "base_model.model.", "unet.")


def resolve_lora_path(name: str) -> str:
    """Absolute path of ``name`` inside ``models/loras``; refuses names that leave the folder."""
    if not name or os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
        raise ValueError(f"lora_name: {name!r} must be a file name inside models/loras (no absolute path or '..')")
    path = folder_paths.get_full_path("loras", name)
    if path is None:
        raise FileNotFoundError(
            f"lora_name: {name!r} was not found in the loras model folder(s) "
            f"{folder_paths.get_folder_paths('loras')}: put the file there and refresh"
        )
    return path


def load_lora_file(name: str) -> dict[str, torch.Tensor]:
    """Read a LoRA file safely (safetensors, or torch weights-only for .pt/.ckpt)."""
    path = resolve_lora_path(name)
    try:
        return comfy.utils.load_torch_file(path, safe_load=True)
    except Exception as e:
        raise ValueError(
            f"lora_name: {name!r} could not be read as a LoRA file ({e}): re-download or re-save it"
        ) from e


def is_peft(sd: dict) -> bool:
    return any(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in sd) and not any(
        k.startswith(("lora_unet_", "lora_te")) for k in sd
    )


def rename_peft(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """PEFT UNet keys (diffusers module paths + ``lora_A``/``lora_B``) -> kohya ``lora_unet_`` keys."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        base = k
        for p in PEFT_PREFIXES:
            if base.startswith(p):
                base = base[len(p) :]
                break
        for src, dst in (
            (".lora_A.weight", ".lora_down.weight"),
            (".lora_B.weight", ".lora_up.weight"),
            (".alpha", ".alpha"),
        ):
            if base.endswith(src):
                module = base[: -len(src)]
                out["lora_unet_" + module.replace(".", "_") + dst] = v
                break
        else:
            out[k] = v
    return out


def unet_patches(sd: dict[str, torch.Tensor], model, source: str) -> dict:
    """ComfyUI patch dict ``{model weight key: adapter}`` for the UNet part of a LoRA state dict.

    ValueError naming ``source`` and the match count when no key fits this model's UNet.
    """
    if is_peft(sd):
        sd = rename_peft(sd)
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    patches = comfy.lora.load_lora(sd, key_map, log_missing=False)
    patches = {k: v for k, v in patches.items() if k.startswith("diffusion_model.")}
    if not patches:
        n_keys = len([k for k in sd if not k.endswith(".alpha")])
        raise ValueError(
            f"{source}: 0 of its {n_keys} tensors match this model's UNet ({type(model.model).__name__}, "
            f"{model.model.model_config.__class__.__name__}): it is a LoRA for another architecture (or a text-encoder-"
            "only LoRA); pick a LoRA trained for this checkpoint's family"
        )
    return patches


def _identity(a):
    return a


def layer_deltas(patches: dict, model, strength: float, source: str = "LoRA") -> dict[str, LayerDelta]:
    """``{module path: LayerDelta}`` for one style at ``strength`` (module path without ``.weight``).

    ValueError naming ``source`` when the LoRA's layer shapes do not fit the model (same key names,
    other architecture size).
    """
    state = model.model.state_dict()
    out: dict[str, LayerDelta] = {}
    bad = [
        (k, _shape_of(a), tuple(state[k].shape))
        for k, a in patches.items()
        if k in state and _shape_of(a) is not None and not _fits(_shape_of(a), tuple(state[k].shape))
    ]
    if bad:
        k, got, want = bad[0]
        raise ValueError(
            f"{source}: {len(bad)} of its {len(patches)} matching layers have shapes that do not fit this model "
            f"(e.g. {k}: LoRA gives {list(got)}, model has {list(want)}): it is a LoRA for another architecture; "
            "pick one trained for this checkpoint's family"
        )
    for key, adapter in patches.items():
        if key.endswith(".weight"):
            module, part = key[: -len(".weight")], "weight"
        elif key.endswith(".bias"):
            module, part = key[: -len(".bias")], "bias"
        else:
            continue
        base = state.get(key)
        if base is None:
            continue
        d = out.setdefault(module, LayerDelta())
        low_rank = _low_rank(adapter)
        if part == "weight" and low_rank is not None:
            up, down, alpha = low_rank
            rank = down.shape[0]
            d.down, d.up = down.float(), up.float()
            d.scale = float(strength) * ((alpha / rank) if alpha is not None else 1.0)
            continue
        full = _full_delta(adapter, key, base, strength)
        if part == "weight":
            d.weight = full
        else:
            d.bias = full
    return {k: v for k, v in out.items() if v.down is not None or v.weight is not None or v.bias is not None}


def _shape_of(adapter) -> tuple | None:
    """(out, in*k*k) implied by a plain LoRA's factors, else None (checked later by calculate_weight)."""
    lr = _low_rank(adapter)
    if lr is None:
        return None
    up, down, _alpha = lr
    return (int(up.shape[0]), int(down.flatten(1).shape[1]))


def _fits(lora_shape: tuple, weight_shape: tuple) -> bool:
    out_dim = weight_shape[0]
    in_numel = 1
    for s in weight_shape[1:]:
        in_numel *= s
    return lora_shape == (out_dim, in_numel)


def _low_rank(adapter):
    """(up, down, alpha) for a plain LoRA without mid/DoRA/reshape, else None."""
    weights = getattr(adapter, "weights", None)
    if getattr(adapter, "name", None) != "lora" or weights is None:
        return None
    up, down, alpha, mid, dora, reshape = (list(weights) + [None] * 6)[:6]
    if mid is not None or dora is not None or reshape is not None:
        return None
    return up, down, alpha


def _full_delta(adapter, key: str, base: torch.Tensor, strength: float) -> torch.Tensor:
    w = base.detach().to(torch.float32)
    if isinstance(adapter, tuple):
        kind, payload = adapter[0], adapter[1]
        if kind == "diff":
            return payload[0].to(torch.float32).reshape(w.shape) * strength
        raise ValueError(f"LoRA patch type {kind!r} on {key} cannot be applied per style")
    merged = adapter.calculate_weight(w.clone(), key, strength, 1.0, None, _identity, torch.float32, w)
    return (merged - w).to(torch.float32)
