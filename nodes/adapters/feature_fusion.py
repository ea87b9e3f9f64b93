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


def fused_lora_delta(module, x: torch.Tensor, call, deltas: dict, cast) -> torch.Tensor | None:
    """The token-masked sum of every style's LoRA delta on the fused rows, or None when not spatial."""
    rows = call.fused_rows
    xr = x.index_select(0, rows)
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
    total = None
    for s, d in deltas.items():
        if weights[s] is None:
            continue
        dd = linear_delta(xr, cast(s, d, x)) * weights[s]
        total = dd if total is None else total + dd
    return total


def _project(module, ctx: torch.Tensor, delta, cast_fn) -> torch.Tensor:
    w = module.weight
    out = F.linear(ctx.to(w.dtype), w, module.bias)
    if delta is not None:
        out = out + linear_delta(ctx.to(w.dtype), cast_fn(delta, ctx)).to(out.dtype)
    return out


def make_attn2_replace(state, attn2_modules: dict, previous=None):
    """attn2 replace: on fused rows, each token attends to its region's prompt through its style's LoRA."""

    def plain(q, k, v, extra_options):
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

    def diffstyler_region_attn2(q, k, v, extra_options):
        call = state.call if state.run is not None else None
        out = plain(q, k, v, extra_options)
        if call is None or call.fused_rows is None:
            return out
        block = extra_options.get("block")
        module = attn2_modules.get((block[0], int(block[1]), int(extra_options.get("block_index", 0))))
        if module is None:
            return out
        rows = call.fused_rows
        qr = q.index_select(0, rows)
        weights = token_weights(call, qr.shape[1], qr.device, qr.dtype)
        if weights is None:
            return out
        heads = extra_options["n_heads"]
        fused = torch.zeros_like(qr)
        to_k, to_v = module.to_k, module.to_v
        dk = getattr(type(to_k), "_ds_deltas", {}) if hasattr(type(to_k), "_ds_deltas") else {}
        dv = getattr(type(to_v), "_ds_deltas", {}) if hasattr(type(to_v), "_ds_deltas") else {}

        def cast(d, ref):
            return d.to(ref.device, module.to_k.weight.dtype)

        for region, ctx_by_role in enumerate(call.fused_contexts):  # styles..., background last
            if ctx_by_role is None:
                continue
            for uncond in (False, True):
                sel = [i for i, u in enumerate(call.fused_uncond) if u == uncond]
                if not sel:
                    continue
                ctx = ctx_by_role[1 if uncond else 0].to(qr.device)
                style = region if region < len(call.fused_contexts) - 1 else None
                kk = _project(to_k, ctx, dk.get(style) if style is not None else None, cast)
                vv = _project(to_v, ctx, dv.get(style) if style is not None else None, cast)
                idx = torch.tensor(sel, device=qr.device)
                qs = qr.index_select(0, idx)
                o = attention.optimized_attention(
                    qs,
                    kk.expand(qs.shape[0], -1, -1).to(qs.dtype),
                    vv.expand(qs.shape[0], -1, -1).to(qs.dtype),
                    heads,
                    attn_precision=extra_options.get("attn_precision"),
                )
                fused.index_add_(0, idx, o * weights[region].index_select(0, idx))
        return out.index_copy(0, rows, fused.to(out.dtype))

    return diffstyler_region_attn2


def attn2_module_map(model) -> dict:
    """(block name, block id, transformer index) -> the CrossAttention module ``attn2`` of that block."""
    dm = model.model.diffusion_model
    out = {}
    groups = [("input", dm.input_blocks), ("output", dm.output_blocks)]
    for name, blocks in groups:
        for bid, block in enumerate(blocks):
            for layer in block:
                for ti, tb in enumerate(getattr(layer, "transformer_blocks", [])):
                    if getattr(tb, "attn2", None) is not None:
                        out[(name, bid, ti)] = tb.attn2
    for layer in dm.middle_block:
        for ti, tb in enumerate(getattr(layer, "transformer_blocks", [])):
            if getattr(tb, "attn2", None) is not None:
                out[("middle", 0, ti)] = tb.attn2
    return out
