"""The Injector's keyed wrappers: APPLY_MODEL (content rows and the call's row plan) and CALC_COND_BATCH.

While a run is active, every branch inside its injection windows gets a content row (its source: the content latent
with that branch's LoRA, or without LoRA) placed just before that branch's rows; the layout comes from
``nodes/core/rows.py``, this module turns it into index tensors (``CallPlan``), runs the call and drops the content
rows again (rows come back in the caller's order).
"""

from __future__ import annotations

import torch

from ...core.rows import RowLayout, plan_rows
from ...core.schedule import find_sigma_index, in_window, qk_blend_ratio
from .. import style_cache
from .state import CallPlan, PatchState, RunPlan


def _windows_open(run: RunPlan, roles: list, step: int) -> tuple[list[bool], list[bool]]:
    """Per chunk: is its branch's ResBlock / Q/K window open at ``step``."""
    steps = int(run.sample_sigmas.shape[0]) - 1
    res_on, qk_on = [], []
    for branch, _u in roles:
        win = run.branch_windows.get(branch) if step >= 0 else None
        res_on.append(win is not None and in_window(step, win[0], steps))
        qk_on.append(win is not None and in_window(step, win[1], steps))
    return res_on, qk_on


def _store_lookups(run, state, roles, injected, res_on, qk_on, x, transformer_options, step):
    """Per-source content cache: (source -> stored (residual, Q/K) at this step, source -> key to record)."""
    store = run.source_cache
    stored: dict[int, tuple] = {}
    keys: dict[int, tuple] = {}
    need: dict[int, list[bool]] = {}
    for j in injected:
        n = need.setdefault(run.branch_source[roles[j][0]], [False, False])
        n[0], n[1] = n[0] or res_on[j], n[1] or qk_on[j]
    refs = style_cache.call_refs(transformer_options, state)
    for src, (n_res, n_qk) in need.items():
        key = store.key(src, x, refs)
        got = store.cache.lookup(key, step, n_res, n_qk)
        if got is not None:
            stored[src] = got
        else:
            keys[src] = key
    return stored, keys


def _call_plan(run: RunPlan, layout: RowLayout, device, cached: dict, stored: dict, sinks: dict, step: int):
    """The layout as index tensors on ``device``, with the features it reads from the caches."""
    index = run.index
    plan = CallPlan(lora_rows={}, lora_in_injected_attention=run.lora_in_injected_attention)
    for name, inj in (("res", layout.res), ("qk", layout.qk)):
        if inj.from_cache:
            setattr(plan, f"{name}_rows", index(inj.rows, device))
            setattr(plan, f"{name}_cached", cached[name].to(device) if name == "res" else cached[name])
            setattr(plan, f"{name}_batch_index", index(inj.batch_index, device))
            setattr(plan, f"{name}_span", inj.span)
            continue
        part = 0 if name == "res" else 1
        getattr(plan, f"{name}_stored").extend((r.start, r.chunks, r.b, stored[r.source][part]) for r in inj.stored)
        getattr(plan, f"{name}_record").extend((r.start, r.b, sinks[r.source]) for r in inj.record)
        if inj.rows:
            setattr(plan, f"{name}_rows", index(inj.rows, device))
            setattr(plan, f"{name}_src", index(inj.src, device))
            setattr(plan, f"{name}_group", inj.group)
    if plan.qk_rows is not None or plan.qk_stored:
        plan.qk_ratio = qk_blend_ratio(run.timestep_at(step), run.qk_blend)
    plan.lora_layout = layout.lora_layout
    plan.lora_ranges = layout.lora_ranges
    plan.lora_rows = {s: index(r, device) for s, r in layout.lora_rows.items()}
    if layout.fused_rows:
        plan.fused_rows = index(layout.fused_rows, device)
        plan.fused_batch_index = index(layout.fused_batch_index, device)
        plan.fused_uncond = layout.fused_uncond
        plan.fused_role_index = index([int(u) for u in layout.fused_uncond], device)
        plan.fused_weights = run.fused_weights
        plan.fused_contexts = run.fused_contexts
        plan.fused_latent_hw = run.latent_hw
        key = (tuple(layout.fused_batch_index), tuple(layout.fused_uncond))
        plan.fused_token_cache = run.fused_token_caches.setdefault(key, {})
    return plan


def make_apply_model_wrapper(state: PatchState):
    """Keyed APPLY_MODEL wrapper (see the module docstring)."""

    def diffstyler_apply_model(
        executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs
    ):
        run = state.run
        if run is None:
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        if run.latent_hw is not None and tuple(x.shape[-2:]) != run.latent_hw:
            raise ValueError(
                f"DiffStyler: a UNet call on {tuple(x.shape[-2:])} latent pixels, not the content's {run.latent_hw}: "
                "a conditioning with an area (or a node that crops the latent) cannot be combined with the content "
                "injection; remove it and give the region as a style's mask"
            )
        cond_or_uncond = list(transformer_options.get("cond_or_uncond", []))
        b = x.shape[0] // max(1, len(cond_or_uncond))
        step = find_sigma_index(run.sample_sigmas, t[0])
        roles = [run.roles[ci] if 0 <= ci < len(run.roles) else (-1, False) for ci in cond_or_uncond] or [(-1, False)]
        res_on, qk_on = _windows_open(run, roles, step)
        injected = [j for j in range(len(roles)) if res_on[j] or qk_on[j]]
        cache = run.feature_cache
        cached = {}
        if injected and cache is not None:
            if any(res_on):
                cached["res"] = cache.res.get(step)
            if any(qk_on):
                cached["qk"] = cache.qk.get(step)
        from_cache = bool(injected) and cache is not None and all(v is not None for v in cached.values())
        stored, keys = {}, {}
        if injected and not from_cache and run.source_cache is not None:
            stored, keys = _store_lookups(run, state, roles, injected, res_on, qk_on, x, transformer_options, step)
        items = None
        if from_cache:
            items = {n: (v if n == "res" else next(iter(v.values()))[0]).shape[0] for n, v in cached.items()}
        layout = plan_rows(
            roles,
            b,
            res_on,
            qk_on,
            run.branch_source,
            run.lora_branch_to_style,
            stored=set(stored),
            record=list(keys),
            cached_items=items,
            fused_branch=run.fused_branch,
            lora_in_injected_attention=run.lora_in_injected_attention,
        )
        if (layout.n_content or stored) and (control is not None or c_concat is not None):
            raise ValueError(
                "DiffStyler's content injection cannot run together with ControlNet or inpainting-model inputs "
                "in the same UNet call: set feature_injection_end and qk_injection_end to 0 to use them"
            )
        if layout.n_content:
            x, t, c_crossattn, kwargs = _with_content_rows(run, layout, step, x, t, c_crossattn, kwargs)
        sinks = {src: {} for src in keys}
        state.call = _call_plan(run, layout, x.device, cached, stored, sinks, step)
        try:
            out = executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        finally:
            state.call = None
        store = run.source_cache
        for src, sink in sinks.items():  # only once the call completed: never a step's features in part
            feats = (sink.get("res"), sink.get("qk"))
            where = (store.in_use, tuple(x.shape[-2:]), store.expect(src, run), store.refused)
            store.cache.commit(keys[src], store.label(src), step, *feats, *where)
        if layout.keep_from is not None:
            return out[layout.keep_from :]
        if layout.back is not None:
            return out.index_select(0, run.index(layout.back, out.device))
        return out

    return diffstyler_apply_model


def _with_content_rows(run: RunPlan, layout: RowLayout, step: int, x, t, c_crossattn, kwargs: dict):
    """The call's inputs with the content rows (the inverted latent at this step, the content prompt) in the
    layout's order."""
    b = layout.b
    x_src = run.content_latent_at(step).to(device=x.device, dtype=x.dtype)
    if x_src.shape[0] != b:
        raise ValueError(f"inversion: the content latent batch ({x_src.shape[0]}) differs from the sampled one ({b})")
    n_rows = x.shape[0]
    x = torch.cat([x_src, x])
    t = torch.cat([t[:b], t])
    c_crossattn, kwargs = _prepend_conditioning(run.content_conditioning, c_crossattn, kwargs)
    idx = run.index(layout.take, x.device)
    x, t = x.index_select(0, idx), t.index_select(0, idx)
    if c_crossattn is not None:
        c_crossattn = c_crossattn.index_select(0, idx.to(c_crossattn.device))
    kwargs = {k: (v.index_select(0, idx.to(v.device)) if _batched(v, n_rows + b) else v) for k, v in kwargs.items()}
    return x, t, c_crossattn, kwargs


def _batched(v, rows: int) -> bool:
    return isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] == rows


def _prepend_conditioning(content: dict, c_crossattn, kwargs: dict):
    """Concatenate the content rows' conditioning in front of the call's (padding prompt lengths as core does)."""
    kwargs = dict(kwargs)
    for name, cond in content.items():
        if name == "c_crossattn":
            if c_crossattn is None:
                continue
            c_crossattn = cond.concat([type(cond)(c_crossattn)])
        elif name in kwargs and isinstance(kwargs[name], torch.Tensor):
            kwargs[name] = cond.concat([type(cond)(kwargs[name])])
    return c_crossattn, kwargs


def make_calc_cond_batch_wrapper(state: PatchState):
    """Keyed CALC_COND_BATCH wrapper: while a run is active its guider answers every ``calc_cond_batch`` call,
    its own and those that guidance hooks make (a post-CFG function such as PAG or SAG asking the model again)."""

    def diffstyler_calc_cond_batch(executor, model, conds, x_in, timestep, model_options):
        run = state.run
        handler = run.cond_batch_handler if run is not None else None
        if handler is None:
            return executor(model, conds, x_in, timestep, model_options)
        return handler(executor, model, conds, x_in, timestep, model_options)

    return diffstyler_calc_cond_batch
