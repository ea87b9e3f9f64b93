"""Q/K injection as attn1 replaces, chained to the replaces other packs registered (paper Sec. 3.2)."""

from __future__ import annotations

import comfy.ldm.modules.attention as attention
import torch

from ...core.rows import Group
from ...core.schedule import blend_qk_
from .state import PatchState


def group_view(t: torch.Tensor, group: Group) -> torch.Tensor:
    """Rows ``[start, start + g*(m+1)*b)`` of ``t`` as ``[g, m+1, b, ...]``: per group, index 0 is the content
    chunk and 1..m the chunks it feeds."""
    start, g, m, b = group
    return t[start : start + g * (m + 1) * b].view(g, m + 1, b, *t.shape[1:])


def attend(q, k, v, extra_options: dict, previous=None):
    """An attention replace's own attention: the replace registered before ours (chained), else ComfyUI's."""
    if previous is not None:
        return previous(q, k, v, extra_options)
    return attention.optimized_attention(
        q,
        k,
        v,
        extra_options["n_heads"],
        attn_precision=extra_options.get("attn_precision"),
        transformer_options=extra_options,
    )


def layer_key(extra_options: dict) -> tuple[int, int]:
    """``(block id, transformer index)`` of the attention layer a replace is called for."""
    return int(extra_options["block"][1]), int(extra_options.get("block_index", 0))


def _from_content_cache(call, q, k, key):
    """Record a content row's Q/K for the per-source content cache, and blend in the stored ones."""
    for start, b, sink in call.qk_record:
        sink.setdefault("qk", {})[key] = (q[start : start + b].clone(), k[start : start + b].clone())
    if call.qk_stored:
        q, k = q.contiguous(), k.contiguous()
        for start, m, b, layers in call.qk_stored:
            for t, src in zip((q, k), layers[key]):
                blend_qk_(t[start : start + m * b].view(m, b, *t.shape[1:]), src.to(t.device), call.qk_ratio)
    return q, k


def _inject(call, q, k, key):
    """The style rows' Q/K blended with their content rows' (in this call, or from the feature cache)."""
    r = call.qk_ratio
    q_src = k_src = None
    if call.qk_cached is not None:
        q_c, k_c = call.qk_cached[key]
        q_src, k_src = q_c.to(device=q.device, dtype=q.dtype), k_c.to(device=k.device, dtype=k.dtype)
    contiguous = q.is_contiguous() and k.is_contiguous()
    if q_src is None and call.qk_group is not None and contiguous:
        # q and k are the projections ComfyUI just computed for this replace: blended in place, every branch's rows
        # from its own content row in one strided view
        for t in (q, k):
            view = group_view(t, call.qk_group)
            blend_qk_(view[:, 1:], view[:, :1], r)
        return q, k
    if q_src is not None and call.qk_span is not None and contiguous:
        start, m, b = call.qk_span
        for t, src in ((q, q_src), (k, k_src)):
            blend_qk_(t[start : start + m * b].view(m, b, *t.shape[1:]), src, r)
        return q, k
    out = []  # gather the injected rows, blend them, scatter them back
    for t, src in ((q, q_src), (k, k_src)):
        if src is not None:
            src = src.index_select(0, call.qk_batch_index.to(t.device))
        rows = t.index_select(0, call.qk_rows)
        blend_qk_(rows, t.index_select(0, call.qk_src) if src is None else src, r)
        out.append(t.index_copy(0, call.qk_rows, rows))
    return tuple(out)


def make_qk_replace(state: PatchState, previous=None):
    """An attn1 replace: blend the style rows' Q/K with the content rows' (paper Sec. 3.2), V untouched.

    ``previous`` is the replace another pack registered for the same block; it is called instead of plain attention
    so both stay active.
    """

    def diffstyler_qk_replace(q, k, v, extra_options):
        call = state.active_call()
        if call is not None:
            if call.qk_record or call.qk_stored:
                q, k = _from_content_cache(call, q, k, layer_key(extra_options))
            if call.qk_rows is not None:
                q, k = _inject(call, q, k, layer_key(extra_options))
        return attend(q, k, v, extra_options, previous)

    diffstyler_qk_replace.diffstyler_previous = previous
    diffstyler_qk_replace.diffstyler_owner = state
    return diffstyler_qk_replace


def replace_block(patched, kind: str, name: str, bid: int, make) -> list[tuple]:
    """Set ``make(previous)`` as the ``kind`` ("attn1"/"attn2") replace of block ``(name, bid)`` and of every
    ``(name, bid, index)`` slot already set (ComfyUI looks those up first), chaining the replace each slot had.
    Returns the slots that had one."""
    table = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get(kind, {})
    keys = [(name, bid)] + [k for k in table if len(k) == 3 and k[:2] == (name, bid)]
    previous = {key: table.get(key) for key in keys}
    for key in keys:
        patched.set_model_patch_replace(make(previous[key]), kind, *key)
    return [key for key in keys if previous[key] is not None]


def overridden_replaces(state: PatchState, model_options: dict) -> list[tuple[str, tuple, str]]:
    """The attention slots this Injector patched where ComfyUI will no longer reach its replace.

    ComfyUI keeps one replace per slot (``(block, id, transformer index)`` before ``(block, id)``): a node that sets
    its own after the Injector silently turns DiffStyler's off there, unless it chains to ours. Returns ``(kind,
    slot, name of the replace now in force)`` for each such slot.
    """
    table = model_options.get("transformer_options", {}).get("patches_replace", {})
    out = []
    for kind, slot in state.replace_slots:
        kind_table = table.get(kind, {})
        fn = kind_table.get(slot, kind_table.get(slot[:2]))
        f, ours = fn, False
        while f is not None and not ours:
            ours = getattr(f, "diffstyler_owner", None) is state
            f = getattr(f, "diffstyler_previous", None)
        if not ours:
            out.append((kind, slot, "none" if fn is None else getattr(fn, "__qualname__", type(fn).__name__)))
    return out
