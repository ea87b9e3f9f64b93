"""Reading style LoRAs: files from ``models/loras`` or a LORA_MODEL, mapped with ComfyUI's key maps.

``comfy.lora.load_lora`` with ``comfy.lora.model_lora_keys_unet`` understands kohya, diffusers'
attention-processor and LyCORIS (LoHa, LoKr, LoCon) files. Files whose keys are diffusers module paths
(PEFT ``...attn1.to_q.lora_A.weight``, diffusers' older ``...attn1.to_q.lora.down.weight``) are renamed to
kohya names first; a PEFT file's alpha, which diffusers keeps only in the safetensors header
(``lora_adapter_metadata``: ``lora_alpha``, ``alpha_pattern``, ``use_rslora``), becomes kohya ``.alpha``
tensors. DoRA is applied as the library that wrote the file defines it (:func:`dora_weight`). The result is
a per-layer :class:`LayerDelta` that is never merged. Tensors the pack cannot use are reported: a warning
for layers this UNet does not have, an error for tensors of layers it patches (never a half-applied LoRA).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading

import comfy.lora
import comfy.utils
import folder_paths
import torch

from ..core.lora import LayerDelta, dora_weight

logger = logging.getLogger(__name__)

PEFT_PREFIXES = ("base_model.model.unet.", "base_model.model.", "unet.")
# diffusers module-path key endings -> kohya endings (PEFT, diffusers before PEFT, diffusers' lora_linear_layer)
MODULE_PATH_SUFFIXES = (
    (".lora_A.weight", ".lora_down.weight"),
    (".lora_B.weight", ".lora_up.weight"),
    (".lora_B.bias", ".lora_up.bias"),  # PEFT lora_bias: recognised so that it is refused, not dropped
    (".lora.down.weight", ".lora_down.weight"),
    (".lora.up.weight", ".lora_up.weight"),
    (".lora_linear_layer.down.weight", ".lora_down.weight"),
    (".lora_linear_layer.up.weight", ".lora_up.weight"),
    (".lora_magnitude_vector.weight", ".dora_scale"),
    (".lora_magnitude_vector", ".dora_scale"),
    (".alpha", ".alpha"),
)
HEADER_KEY = "lora_adapter_metadata"
PEFT_DEFAULT_ALPHA = 8  # peft's LoraConfig default, what diffusers uses when the header names no lora_alpha
# where ComfyUI's adapters keep dora_scale in .weights (index, length of .weights), checked before use
DORA_INDEX = {"lora": (4, 6), "loha": (7, 8), "lokr": (8, 9)}


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
    """Read a LoRA file safely (safetensors, or torch weights-only for .pt/.ckpt).

    A diffusers/PEFT file's alpha lives only in its header (``lora_adapter_metadata``): it is turned into
    ``<module>.alpha`` tensors here, since ComfyUI's reader drops the header.
    """
    path = resolve_lora_path(name)
    try:
        sd, header = comfy.utils.load_torch_file(path, safe_load=True, return_metadata=True)
    except Exception as e:
        raise ValueError(
            f"lora_name: {name!r} could not be read as a LoRA file ({e}): re-download or re-save it"
        ) from e
    raw = (header or {}).get(HEADER_KEY)
    if raw:
        try:
            config = json.loads(raw)
        except ValueError as e:
            raise ValueError(
                f"lora_name: {name!r} has a '{HEADER_KEY}' header that is not JSON ({e}): re-save the LoRA with "
                "diffusers' save_lora_weights"
            ) from e
        sd = with_header_alphas(sd, config)
    return sd


def _unet_config(config: dict) -> dict:
    """The denoiser's LoraConfig from diffusers' header JSON (its keys are prefixed ``unet.``, or ``transformer.`` for
    a DiT such as Flux; a bare config is not)."""
    for prefix in ("unet.", "transformer."):
        if any(k.startswith(prefix) for k in config):
            return {k[len(prefix) :]: v for k, v in config.items() if k.startswith(prefix)}
    if any("." in k for k in config):
        return {}
    return config


def _pattern_value(patterns: dict, module: str, default):
    """peft's rank/alpha pattern lookup: the first pattern that matches the end of the module's dotted name."""
    for pattern, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def with_header_alphas(sd: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """``sd`` plus a kohya ``<key stem>.alpha`` for each PEFT UNet module, from diffusers' header config, so that
    ``alpha / rank`` is peft's scaling: ``lora_alpha / r`` (``alpha_pattern`` per module), or ``lora_alpha / sqrt(r)``
    with ``use_rslora``. Existing ``.alpha`` tensors win."""
    cfg = _unet_config(config)
    if not cfg:
        return sd
    out = dict(sd)
    lora_alpha = cfg.get("lora_alpha", PEFT_DEFAULT_ALPHA)
    for key, down in sd.items():
        if not key.endswith(".lora_A.weight") or key.startswith("text_encoder"):
            continue
        stem = key[: -len(".lora_A.weight")]
        module = stem
        for p in PEFT_PREFIXES:
            if module.startswith(p):
                module = module[len(p) :]
                break
        alpha = float(_pattern_value(cfg.get("alpha_pattern"), module, lora_alpha))
        rank = int(down.shape[0])
        if cfg.get("use_rslora"):
            alpha = alpha * math.sqrt(rank)  # kohya's alpha/rank == peft's alpha/sqrt(rank)
        out.setdefault(stem + ".alpha", torch.tensor(alpha))
    return out


def _kohya_name(key: str, key_map: dict | None = None) -> str | None:
    """The kohya name of a key written with a diffusers module path, else None (kohya, LyCORIS, text encoder...).

    With ``key_map`` (ComfyUI's LoRA key map of the model), a key whose own stem is in the map keeps its name (ComfyUI
    reads it as it is) and a key is renamed only to a kohya name the map knows.
    """
    if key.startswith("text_encoder"):
        return None
    if key.startswith(("lora_unet_", "lycoris_")):
        # diffusers' kohya conversion writes a DoRA magnitude as "lora_unet_<..>_attn1.to_q.lora_magnitude_vector"
        stem, sep, tail = key.rpartition(".")
        if sep and tail in ("dora_scale", "lora_magnitude_vector") and "." in stem:
            if key_map is None or stem.replace(".", "_") in key_map:
                return stem.replace(".", "_") + ".dora_scale"
        return None
    base = key
    for p in PEFT_PREFIXES:
        if base.startswith(p):
            base = base[len(p) :]
            break
    for src, dst in MODULE_PATH_SUFFIXES:
        if base.endswith(src):
            module, stem = base[: -len(src)], key[: -len(src)]
            if key_map is not None and stem in key_map:  # ComfyUI reads it; a magnitude only as ".dora_scale"
                return stem + dst if dst == ".dora_scale" and src != dst else None
            kohya = "lora_unet_" + module.replace(".", "_")
            if "." not in module or (key_map is not None and kohya not in key_map):
                return None
            return kohya + dst
    return None


def rename_peft(sd: dict[str, torch.Tensor], key_map: dict | None = None) -> dict[str, torch.Tensor]:
    """UNet keys written with diffusers module paths (PEFT ``lora_A``/``lora_B``, diffusers' older ``lora.down``/
    ``lora.up``, ``lora_magnitude_vector``, flattened to ``[out]``: peft's layout) -> kohya ``lora_unet_`` keys; every
    other key is kept as it is. ``key_map``: see :func:`_kohya_name`."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        name = _kohya_name(k, key_map)
        if k.endswith((".lora_magnitude_vector", ".lora_magnitude_vector.weight")):
            v = v.reshape(-1)  # peft keeps a conv's magnitude as [1, out, 1, 1]: [out] marks peft's DoRA
        out[name if name is not None else k] = v
    return out


def _describe(model) -> str:
    return f"{type(model.model).__name__}, {model.model.model_config.__class__.__name__}"


def unet_patches(sd: dict[str, torch.Tensor], model, source: str) -> dict:
    """ComfyUI patch dict ``{model weight key: adapter}`` for the UNet part of a LoRA state dict.

    ValueError naming ``source`` and the match count when no key fits this model's UNet, or when tensors of
    layers it patches are not understood (a half-applied LoRA). Logs a warning with the count and examples
    when some tensors point to layers this UNet does not have.
    """
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    original = {}
    for k in sd:
        name = _kohya_name(k, key_map)
        original[name if name is not None else k] = k
    sd = rename_peft(sd, key_map)
    patches = comfy.lora.load_lora(sd, key_map, log_missing=False)
    patches = {k: v for k, v in patches.items() if k.startswith("diffusion_model.")}
    if not patches:
        n_keys = len([k for k in sd if not k.endswith(".alpha")])
        raise ValueError(
            f"{source}: 0 of its {n_keys} tensors match this model's UNet ({_describe(model)}): it is a LoRA for "
            "another architecture (or a text-encoder-only LoRA); pick a LoRA trained for this checkpoint's family"
        )
    _report_unused(sd, key_map, patches, model, source, original)
    return patches


EXTRA_KEYS = (".alpha", ".dora_scale", ".diff", ".diff_b", ".w_norm", ".b_norm", ".set_weight")


def _report_unused(sd: dict, key_map: dict, patches: dict, model, source: str, original: dict) -> None:
    """Raise for tensors of patched layers that were not used; warn with the count for the rest."""

    def prefixes(k: str):
        return (k[:i] for i, c in enumerate(k) if c == ".")

    def patched(stem: str) -> bool:
        target = key_map.get(stem)
        return target is not None and (target in patches or target[: -len(".weight")] + ".bias" in patches)

    used: set[str] = set()
    for adapter in patches.values():
        used |= set(getattr(adapter, "loaded_keys", ()) or ())
    matched = {stem for k in sd for stem in prefixes(k) if patched(stem)}
    used.update(stem + suffix for stem in matched for suffix in EXTRA_KEYS if stem + suffix in sd)
    unused = [k for k in sd if k not in used]
    if not unused:
        return

    def stem_of(k: str) -> str:
        for stem in prefixes(k):
            if stem in key_map:
                return stem
        return k.split(".")[0] if k.startswith(("lora_unet_", "lycoris_", "lora_te")) else k.rsplit(".", 1)[0]

    flat = {m.replace(".", "_") for m in matched}
    not_understood = [
        k
        for k in unused
        if any(stem in matched for stem in prefixes(k))
        or (
            k.endswith((".dora_scale", ".lora_magnitude_vector"))
            and any(s.replace(".", "_") in flat for s in prefixes(k))
        )
    ]
    if not_understood:
        bad = [original.get(k, k) for k in not_understood[:3]]
        raise ValueError(
            f"{source}: {len(not_understood)} of its tensors for layers this model has cannot be applied "
            f"(e.g. {', '.join(bad)}): DiffStyler applies the LoRA/LoHa/LoKr factors, alphas and DoRA magnitudes of "
            "kohya, diffusers, PEFT and LyCORIS files (no PEFT lora_bias, no bias or norm training); applying the "
            "rest would run a half-applied LoRA. Re-save the LoRA without them (PEFT: lora_bias=False), or merge it "
            "into the checkpoint with the core LoraLoader and use a prompt-only style"
        )
    weights = [k for k in unused if not k.endswith(".alpha")]
    total = len([k for k in sd if not k.endswith(".alpha")])
    text_encoder = [k for k in weights if k.startswith(("lora_te", "text_encoder"))]
    other = [k for k in weights if k not in text_encoder]
    if not weights:
        return
    parts = []
    if other:
        examples = sorted({stem_of(k) for k in other})[:4]
        parts.append(
            f"{len(other)} for layers this UNet ({_describe(model)}) does not have, e.g. {', '.join(examples)}"
        )
    if text_encoder:
        parts.append(
            f"{len(text_encoder)} for the text encoder, which a DiffStyler style does not patch (to use them, apply "
            "the LoRA to the CLIP with the core LoraLoader at strength_model 0)"
        )
    # a text-encoder part is normal in kohya files (ComfyUI's LoraLoader applies it to the CLIP): info only
    logger.log(
        logging.WARNING if other else logging.INFO,
        "%s: %d of its %d tensors were not used (alphas not counted): %s%s",
        source,
        len(weights),
        total,
        "; ".join(parts),
        ". Check that the LoRA was trained for this checkpoint's family" if other else "",
    )


def _identity(a):
    return a


def layer_deltas(patches: dict, model, strength: float, source: str = "LoRA") -> dict[str, LayerDelta]:
    """``{module path: LayerDelta}`` for one style at ``strength`` (module path without ``.weight``).

    ValueError naming ``source`` when the LoRA's layer shapes do not fit the model (same key names,
    other architecture size).
    """
    sliced = [k for k in patches if not isinstance(k, str)]
    if sliced:
        raise ValueError(
            f"{source}: {len(sliced)} of its layers land on slices of fused weights (e.g. {sliced[0][0]}), which only "
            "the Flux LoRA reader (adapters.flux_lora) applies per style: this model family needs it"
        )
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
        full = _full_delta(adapter, key, base, strength, source)
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


class _ErrorRecords(logging.Handler):
    """Collects the errors ComfyUI logs (and swallows) while it computes a patched weight."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record):
        if record.thread == self.thread:  # not another thread's error (the server's, another prompt's)
            self.messages.append(record.getMessage())


def _calculate(adapter, key: str, w: torch.Tensor, strength: float, source: str) -> torch.Tensor:
    """``adapter.calculate_weight`` on a copy of ``w``; ValueError when ComfyUI logs an error instead of raising (it
    then returns the weight unpatched, which would be a half-applied LoRA)."""
    errors = _ErrorRecords()
    root = logging.getLogger()
    root.addHandler(errors)
    try:
        merged = adapter.calculate_weight(w.clone(), key, strength, 1.0, None, _identity, torch.float32, w)
    finally:
        root.removeHandler(errors)
    if errors.messages:
        raise ValueError(
            f"{source}: ComfyUI could not compute its {getattr(adapter, 'name', 'patch')} update of {key} "
            f"({errors.messages[0]}): the file's tensors for that layer do not fit this model; it is a LoRA for "
            "another architecture or a damaged file: pick one trained for this checkpoint's family or re-save it"
        )
    return merged


def _full_delta(adapter, key: str, base: torch.Tensor, strength: float, source: str = "LoRA") -> torch.Tensor:
    w = base.detach().to(torch.float32)
    if isinstance(adapter, tuple):
        kind, payload = adapter[0], adapter[1]
        if kind == "diff":
            return payload[0].to(torch.float32).reshape(w.shape) * strength
        raise ValueError(f"{source}: LoRA patch type {kind!r} on {key} cannot be applied per style")
    weights = getattr(adapter, "weights", None)
    name = getattr(adapter, "name", None)
    if name not in DORA_INDEX or weights is None:
        return _calculate(adapter, key, w, strength, source) - w
    index, length = DORA_INDEX[name]
    if len(weights) != length:
        raise ValueError(
            f"{source}: this ComfyUI's {name} patches hold {len(weights)} tensors, DiffStyler knows the {length} of "
            "ComfyUI v0.8.0: update DiffStyler or use the ComfyUI version it supports"
        )
    if weights[index] is None:
        return _calculate(adapter, key, w, strength, source) - w
    # DoRA: the plain update at strength 1 from ComfyUI's adapter without its magnitude, then the library's DoRA
    magnitude = weights[index]
    plain = type(adapter)(adapter.loaded_keys, tuple(None if i == index else t for i, t in enumerate(weights)))
    delta = _calculate(plain, key, w, 1.0, source) - w
    try:
        return dora_weight(w, delta, magnitude, strength) - w
    except ValueError as e:
        raise ValueError(
            f"{source}: {key}: {e}: the file's DoRA magnitudes do not fit this model; pick a LoRA trained for this "
            "checkpoint's family"
        ) from e
