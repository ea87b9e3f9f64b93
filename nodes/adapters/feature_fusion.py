"""Feature-fusion mode (experimental): every style shares one cond/uncond pair of UNet rows.

Instead of one cond/uncond pair per style fused by mask at the noise level (paper Sec. 3.3), each
style's LoRA delta is applied only on its region's tokens (its mask resized to each layer's grid), and
each token's cross-attention uses its region's prompt and that style's LoRA on the key/value
projections. For one style with a full mask this equals noise fusion; for k styles it costs 2 rows
per step instead of 2k.
"""

from __future__ import annotations

import math

import comfy.ldm.modules.attention as attention
import torch
import torch.nn.functional as F  # noqa: N812

from ..core.lora import linear_delta
from ..core.masks import resize_mask_to_tokens
from .injector.attention import attend


def grid_for_tokens(n_tokens: int, h: int, w: int) -> tuple[int, int] | None:
    """The (h', w') token grid of a layer with ``n_tokens`` tokens for a latent of ``h x w`` (None if none fits)."""
    gh, gw = h, w
    while gh * gw > n_tokens and (gh > 1 or gw > 1):
        gh, gw = math.ceil(gh / 2), math.ceil(gw / 2)
    return (gh, gw) if gh * gw == n_tokens else None


def token_weights(call, n_tokens: int, device, dtype) -> list[torch.Tensor] | None:
    """Per-style (and last: background) weights ``[R, n_tokens, 1]`` for the fused rows, cached per grid."""
    cache = call.fused_token_cache
    key = (n_tokens, device, dtype)
    if key not in cache:
        h, w = call.fused_latent_hw
        grid = grid_for_tokens(n_tokens, h, w)
        if grid is None:
            cache[key] = None
        else:
            idx = call.fused_batch_index.to(device)
            cache[key] = [
                None
                if m is None
                else resize_mask_to_tokens(m.to(device=device, dtype=dtype), *grid).index_select(0, idx)
                for m in call.fused_weights
            ]
    return cache[key]


def spatial_weights(call, hw: tuple[int, int], device, dtype) -> list[torch.Tensor]:
    """Per-style weights ``[R,1,H,W]`` for the fused rows at a conv layer's resolution."""
    cache = call.fused_token_cache
    key = ("conv", hw, device, dtype)
    if key not in cache:
        idx = call.fused_batch_index.to(device)
        out = []
        for m in call.fused_weights:
            if m is None:
                out.append(None)
                continue
            m = m.to(device=device, dtype=dtype)
            if tuple(m.shape[-2:]) != tuple(hw):
                m = F.interpolate(m, size=hw, mode="bilinear", align_corners=False)
            out.append(m.index_select(0, idx))
        cache[key] = out
    return cache[key]


def _stacked_factors(module, deltas: dict, styles: tuple, device, dtype):
    """``(down [R, in], up [out, R], ranks)``: the styles' low-rank factors side by side (scales folded into up).

    None when a style's delta is not a plain low-rank pair (full-weight or bias deltas take the loop).
    Cached on the patched layer's class per (styles, device, dtype).
    """
    cache = type(module)._ds_cache
    key = ("fused_stack", styles, device, dtype)
    if key not in cache:
        ds = [deltas[s] for s in styles]
        if any(d.weight is not None or d.bias is not None or d.down is None for d in ds):
            cache[key] = None
        else:
            down = torch.cat([d.down.flatten(1) for d in ds]).to(device, dtype)
            up = torch.cat([d.up.flatten(1) * d.scale for d in ds], dim=1).to(device, dtype)
            cache[key] = (down, up, tuple(int(d.down.shape[0]) for d in ds))
    return cache[key]


def fused_lora_add(module, x: torch.Tensor, out: torch.Tensor, call, deltas: dict, cast) -> torch.Tensor:
    """``out`` (the layer's own fresh output) plus the token-masked sum of every style's LoRA delta on the fused
    rows; ``out`` unchanged where the layer is not spatial.

    Linear layers with plain low-rank deltas take two matmuls whatever k is:
    ``sum_s w_s * (x D_s^T) U_s^T = ((x [D_1..D_k]^T) * [w_1..w_k]) [U_1..U_k]^T`` (each ``w_s`` repeated over
    its rank); when every row of the call is fused (no content row) the second one adds into ``out`` in place.
    Conv layers and full-weight deltas loop over the styles.
    """
    rows = call.fused_rows
    every_row = rows.numel() == x.shape[0]
    xr = x if every_row else x.index_select(0, rows)
    if isinstance(module, torch.nn.Linear) and xr.ndim == 3:
        stacked = _stacked_linear(module, xr, call, deltas)
        if stacked is not None:
            h, up = stacked  # h: [rows * tokens, sum of ranks]
            if every_row and out.is_contiguous() and out.dtype == h.dtype:
                out.view(-1, out.shape[-1]).addmm_(h, up.t())
                return out
            return _add_rows(out, F.linear(h, up).view(*xr.shape[:-1], -1), rows, every_row)
    delta = _fused_delta(module, xr, x, call, deltas, cast)
    return out if delta is None else _add_rows(out, delta, rows, every_row)


def _add_rows(out, delta, rows, every_row: bool):
    if every_row and out.dtype == delta.dtype:
        return out.add_(delta)
    return out.index_add(0, rows, delta.to(out.dtype))


def _stacked_linear(module, xr, call, deltas: dict):
    """``(x [D_1..D_k]^T * w, [U_1..U_k])`` for a Linear whose deltas are plain low-rank pairs, else None (the first
    flattened to ``[rows * tokens, sum of ranks]``)."""
    weights = token_weights(call, xr.shape[1], xr.device, xr.dtype)
    if weights is None:
        return None
    styles = tuple(s for s in deltas if weights[s] is not None)
    if not styles:
        return None
    stack = _stacked_factors(module, deltas, styles, xr.device, xr.dtype)
    if stack is None:
        return None
    down, up, ranks = stack
    key = ("rank_weights", xr.shape[1], xr.device, xr.dtype, styles, ranks)
    cache = call.fused_token_cache
    if key not in cache:
        cache[key] = torch.cat([weights[s].expand(-1, -1, r) for s, r in zip(styles, ranks)], dim=-1).flatten(0, 1)
    return F.linear(xr.reshape(-1, xr.shape[-1]), down).mul_(cache[key]), up


def _fused_delta(module, xr, x, call, deltas: dict, cast) -> torch.Tensor | None:
    """The per-style loop (conv layers, full-weight or bias deltas): the masked sum of the deltas, or None."""
    if isinstance(module, torch.nn.Conv2d):
        from ..core.lora import conv2d_delta

        total = None
        for s, d in deltas.items():
            dd = conv2d_delta(xr, cast(s, d, x), module.stride, module.padding, module.dilation, module.groups)
            w = spatial_weights(call, tuple(dd.shape[-2:]), dd.device, dd.dtype)[s]
            if w is None:
                continue
            total = dd * w if total is None else total + dd * w
        return total
    if xr.ndim != 3:
        return None
    weights = token_weights(call, xr.shape[1], xr.device, xr.dtype)
    if weights is None:
        return None
    styles = tuple(s for s in deltas if weights[s] is not None)
    total = None
    for s in styles:
        dd = linear_delta(xr, cast(s, deltas[s], x)) * weights[s]
        total = dd if total is None else total + dd
    return total


def _project(module, ctx: torch.Tensor, delta, dtype) -> torch.Tensor:
    """``module(ctx)`` plus a style's LoRA ``delta``, in ``dtype``.

    The layer's own forward without the per-row LoRA (ComfyUI's op: lowvram casts, weights patched at run
    time such as a LoRA the core loader added, quantized weights) rather than its ``weight`` attribute,
    which under lowvram may sit on another device and lack those patches.
    """
    ctx = ctx.to(dtype)
    base = getattr(module, "_ds_base_forward", module)  # a per-row LoRA view: its forward without the rows
    out = base(ctx)
    if delta is not None:
        out = out + linear_delta(ctx, delta.to(ctx.device, ctx.dtype)).to(out.dtype)
    return out


def _stack_kv(ks: list, vs: list):
    """``ks``/``vs`` (per region, per role ``[L, C]``) as ``[R, 2, L, C]`` tensors; None when the lengths differ."""
    if len({t.shape[0] for pair in ks for t in pair}) != 1:
        return None
    return torch.stack([torch.stack(pair) for pair in ks]), torch.stack([torch.stack(pair) for pair in vs])


def _region_kv(state, module, key, call, regions, dk, dv, device, dtype):
    """K and V of every region's (cond, uncond) prompts through that region's style LoRA.

    Returns ``(ks, vs, stacked)``: per region and role ``[L, C]``, and their ``[R, 2, L, C]`` stack (None when
    the prompts differ in length: the caller loops over regions). They depend only on the prompts and the
    weights, so they are computed once per sampling run (cached on the run), not once per layer call.
    """
    cache = state.run.fused_kv_cache if state.run is not None else {}
    ckey = (key, tuple(regions), device, dtype)
    if ckey not in cache:
        n_regions = len(call.fused_contexts)
        ks, vs = [], []
        for region in regions:
            style = region if region < n_regions - 1 else None
            kr, vr = [], []
            for ctx in call.fused_contexts[region]:
                ctx = ctx[:1].to(device)
                kr.append(_project(module.to_k, ctx, dk.get(style) if style is not None else None, dtype)[0])
                vr.append(_project(module.to_v, ctx, dv.get(style) if style is not None else None, dtype)[0])
            ks.append(kr)
            vs.append(vr)
        cache[ckey] = (ks, vs, _stack_kv(ks, vs))
    return cache[ckey]


def make_attn2_replace(state, attn2_modules: dict, previous=None):
    """attn2 replace: on fused rows, each token attends to its region's prompt through its style's LoRA."""

    def plain(q, k, v, extra_options):
        return attend(q, k, v, extra_options, previous)

    def region_loop(call, qr, weights, regions, ks, vs, heads, extra_options):
        """One attention per (region, role): prompts of different lengths."""
        fused = torch.zeros_like(qr)
        for ri, region in enumerate(regions):
            for role, uncond in enumerate((False, True)):
                sel = [i for i, u in enumerate(call.fused_uncond) if u == uncond]
                if not sel:
                    continue
                idx = torch.tensor(sel, device=qr.device)
                qs = qr.index_select(0, idx)
                o = attention.optimized_attention(
                    qs,
                    ks[ri][role].expand(qs.shape[0], -1, -1),
                    vs[ri][role].expand(qs.shape[0], -1, -1),
                    heads,
                    attn_precision=extra_options.get("attn_precision"),
                )
                fused.index_add_(0, idx, o * weights[region].index_select(0, idx))
        return fused

    def diffstyler_region_attn2(q, k, v, extra_options):
        call = state.call if state.run is not None else None
        if call is None or call.fused_rows is None:
            return plain(q, k, v, extra_options)
        block = extra_options.get("block")
        key = (block[0], int(block[1]), int(extra_options.get("block_index", 0)))
        module = attn2_modules.get(key)
        if module is None:
            return plain(q, k, v, extra_options)
        rows = call.fused_rows
        every_row = rows.numel() == q.shape[0]  # no content row in this call: nothing else to attend
        qr = q if every_row else q.index_select(0, rows)
        weights = token_weights(call, qr.shape[1], qr.device, qr.dtype)
        if weights is None:
            return plain(q, k, v, extra_options)
        heads = extra_options["n_heads"]
        to_k, to_v = module.to_k, module.to_v
        dk = getattr(type(to_k), "_ds_deltas", {})
        dv = getattr(type(to_v), "_ds_deltas", {})
        regions = [r for r, ctx in enumerate(call.fused_contexts) if ctx is not None and weights[r] is not None]
        ks, vs, stacked = _region_kv(state, module, key, call, regions, dk, dv, qr.device, qr.dtype)
        if stacked is None:
            fused = region_loop(call, qr, weights, regions, ks, vs, heads, extra_options)
        else:
            # every (region, row) pair in one attention call: queries repeated per region, each row's keys and
            # values from its region's prompt and its role (cond/uncond)
            n, r = qr.shape[0], len(regions)
            cache = call.fused_token_cache  # per sampling run and row layout
            ckey = ("region_kv", key, tuple(regions), qr.device, qr.dtype)
            if ckey not in cache:
                kk, vv = stacked  # [R, 2, L, C]
                role = call.fused_role_index.to(qr.device)
                cache[ckey] = (
                    kk.index_select(1, role).flatten(0, 1),  # [R*n, L, C]: each row's role, per region
                    vv.index_select(1, role).flatten(0, 1),
                    torch.stack([weights[i] for i in regions]),  # [R, n, T, 1]
                )
            keys, values, w = cache[ckey]
            o = attention.optimized_attention(
                qr.repeat(r, 1, 1), keys, values, heads, attn_precision=extra_options.get("attn_precision")
            )
            fused = (o.view(r, n, *o.shape[1:]) * w).sum(dim=0)
        if every_row:
            return fused.to(q.dtype)
        out = plain(q, k, v, extra_options)
        return out.index_copy(0, rows, fused.to(out.dtype))

    diffstyler_region_attn2.diffstyler_previous = previous
    diffstyler_region_attn2.diffstyler_owner = state
    return diffstyler_region_attn2
