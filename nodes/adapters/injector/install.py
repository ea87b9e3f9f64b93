"""Installing the Injector on a ``ModelPatcher.clone()`` through ComfyUI's extension points (design Sec. 2).

Object patches (class-swapped views, ``layers``), attn1 replaces chained to any another pack registered
(``attention``) and keyed wrappers (``wrapper``); the model family (``arch``) says where. Object patches stay on the
model after sampling, so every patch does nothing unless a DiffStyler run is active (``PatchState.run``).
"""

from __future__ import annotations

import logging

import comfy.patcher_extension
import torch

from ...core.lora import LayerDelta, combine, zero_rows
from .. import dynamic_vram
from . import arch
from .layers import RowLoRAMixin, install_view
from .state import WRAPPER_KEY, InjectorSettings, PatchState
from .wrapper import make_apply_model_wrapper, make_calc_cond_batch_wrapper

logger = logging.getLogger(__name__)

ATTACHMENT = "diffstyler"
STYLE_MODELS_KEY = "diffstyler_style_models"


def install(
    model,
    styles_deltas: list[dict[str, LayerDelta]],
    style_ids: tuple[str, ...],
    settings: InjectorSettings,
    what: str = "Cross-LoRA Attention Injector",
):
    """Patch a clone of ``model``; returns (patched clone, PatchState)."""
    family = arch.family_for(model)
    patched = dynamic_vram.static_clone(model, what)
    state = PatchState(family, len(styles_deltas), style_ids, settings)
    state.lora_styles = {s for s, deltas in enumerate(styles_deltas) if deltas}
    state.style_deltas = list(styles_deltas)
    family.check_blocks(settings)
    modules = dict(patched.model.named_modules())
    injected_attn = family.injected_attention_paths(patched, settings)

    per_module: dict[str, dict[int, LayerDelta]] = {}
    for s, deltas in enumerate(styles_deltas):
        for path, d in deltas.items():
            m = modules.get(path)
            if m is None or not isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                logger.warning("DiffStyler: LoRA target %s is not a Linear/Conv2d layer of this model; skipped", path)
                continue
            if isinstance(d, list):  # a Flux LoRA's deltas on slices of a fused Linear: one delta per style
                d = combine(d, m.weight.shape[0])
            per_module.setdefault(path, {})[s] = d
            state.deltas_bytes += d.nbytes()
    for path, deltas in per_module.items():
        in_injected = any(path == a or path.startswith(a + ".") for a in injected_attn)
        rows = family.bypass_rows(patched, path) if in_injected else None
        bypassed = None
        if rows is not None:  # only these output rows bypass the LoRA there (a fused projection's q and k)
            bypassed = {s: d for s, d in ((s, zero_rows(d, *rows)) for s, d in deltas.items()) if d is not None}
        install_view(
            patched,
            state,
            path,
            RowLoRAMixin,
            _ds_deltas=deltas,
            _ds_in_injected_attention=in_injected,
            _ds_bypassed=bypassed,
            _ds_context_proj=path.endswith((".attn2.to_k", ".attn2.to_v")),
        )
    logger.info(
        "DiffStyler: per-row LoRA on %d layers for %d style(s) (%.1f MB of factors)",
        len(per_module),
        len(styles_deltas),
        state.deltas_bytes / 2**20,
    )

    family.install_injection(patched, state)  # after the LoRA views: its residual view may wrap one

    patched.add_wrapper_with_key(
        comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY, make_apply_model_wrapper(state)
    )
    patched.add_wrapper_with_key(
        comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, WRAPPER_KEY, make_calc_cond_batch_wrapper(state)
    )
    patched.set_attachments(ATTACHMENT, state)
    return patched, state


def check_style_model(base, style_model, name: str) -> None:
    """Refuse a MODEL style of another architecture, latent format or noise schedule than ``base``, and one that
    shares its weights object with ``base`` (ComfyUI keeps one copy of those weights loaded, patched for one MODEL
    at a time, so the two could not run side by side)."""
    if style_model.model is base.model:
        raise ValueError(
            f"styles: {name} is held by a MODEL that shares its weights with the Injector's MODEL (the same Load "
            "Checkpoint output, e.g. with a LoRA merged by the core LoRA loader): ComfyUI keeps one copy of those "
            "weights, so they cannot run as a second UNet. Load the checkpoint again with a second Load Checkpoint "
            "node for the style (and merge its LoRAs there), or give the LoRA to a Style LoRA Loader"
        )
    try:
        ours = arch.family_for(style_model)
    except ValueError as e:
        raise ValueError(f"styles: {name}: {e}") from None
    theirs = arch.family_for(base)
    problems = []
    if ours != theirs or type(style_model.model) is not type(base.model):
        problems.append(
            f"it is a {type(style_model.model).__name__} ({ours.name}) but the Injector's MODEL is a "
            f"{type(base.model).__name__} ({theirs.name})"
        )
    lf_a, lf_b = type(style_model.model.latent_format).__name__, type(base.model.latent_format).__name__
    if lf_a != lf_b:
        problems.append(f"its latent format is {lf_a}, the Injector's MODEL's {lf_b}")
    ms_a, ms_b = style_model.get_model_object("model_sampling"), base.get_model_object("model_sampling")
    # ComfyUI makes the model-sampling class per model (``model_base.model_sampling``): compare what it derives from
    same_schedule = [c.__qualname__ for c in type(ms_a).__mro__[1:]] == [c.__qualname__ for c in type(ms_b).__mro__[1:]]
    if same_schedule and hasattr(ms_a, "sigmas") and hasattr(ms_b, "sigmas"):
        sa, sb = ms_a.sigmas.detach().float().cpu(), ms_b.sigmas.detach().float().cpu()
        same_schedule = sa.shape == sb.shape and torch.allclose(sa, sb, rtol=1e-5)
    if not same_schedule:
        problems.append("its noise schedule (model sampling: prediction type or sigmas) differs")
    if problems:
        raise ValueError(
            f"styles: {name} is held by a MODEL that cannot share the Injector's sampling: {'; '.join(problems)}. "
            "Connect a MODEL of the same architecture (a checkpoint fine-tuned from the same base model)"
        )


def install_style_models(patched, state: PatchState, models: dict[int, object]) -> None:
    """Patch a clone of each MODEL style's model for the content injection (no LoRA layers) and hand the clones to
    ComfyUI as additional models of ``patched``, so its loader loads them with the base UNet (a second UNet in
    memory). ``state.style_models`` maps style index -> the PatchState of that clone."""
    clones = []
    for i, m in models.items():
        clone, sub = install(m, [{}], (state.style_ids[i],), state.settings, what=f"style {i + 1} (a MODEL style)")
        sub.model_style_of = i
        state.style_models[i] = sub
        clones.append(clone)
    patched.set_additional_models(STYLE_MODELS_KEY, clones)
    logger.info("DiffStyler: %d MODEL style(s) run in an extra UNet call each per step", len(clones))


def style_model_patchers(model) -> dict[int, object]:
    """Style index -> the loaded ModelPatcher of that MODEL style (what ComfyUI loaded with ``model``)."""
    out = {}
    for m in model.get_additional_models_with_key(STYLE_MODELS_KEY):
        sub = state_of(m)
        if sub is not None and sub.model_style_of is not None:
            out[sub.model_style_of] = m
    return out


def state_of(model) -> PatchState | None:
    return model.get_attachment(ATTACHMENT)
