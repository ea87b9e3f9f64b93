"""Layer views the Injector puts on a clone: per-row LoRA (Linear/Conv2d) and the injected ResBlock residual.

A view is a class-swapped shallow copy (``swapped_copy``) installed with ``add_object_patch``: it keeps parameter
names, so ComfyUI's weight patches (a LoRA merged by the core loader), lowvram casts and device moves act on it as
on the original. Every view does nothing unless a DiffStyler run is active, and then only on the rows it owns.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812

from ...core.lora import LayerDelta, conv2d_delta, linear_delta
from .. import feature_fusion
from .attention import group_view
from .state import CallPlan, PatchState


def swapped_copy(module: torch.nn.Module, mixin: type, **class_attrs) -> torch.nn.Module:
    """A view of ``module`` whose class also derives from ``mixin`` and carries ``class_attrs``.

    The view shares the original's ``__dict__`` (parameters, buffers, children and ComfyUI's bookkeeping flags
    such as ``comfy_patched_weights``), so parameter names, weight patches, lowvram casts and device moves act on
    both alike, whichever of the two is in the model tree. The per-patch data lives on a class made for this view.
    """
    base = type(module)
    cls = type(f"DiffStyler{base.__name__}", (mixin, base), {"_ds_cache": {}, "_ds_plans": {}, **class_attrs})
    new = object.__new__(cls)
    new.__dict__ = module.__dict__
    return new


def install_view(patched, state: PatchState, path: str, mixin: type, **attrs) -> None:
    """Put a ``mixin`` view of the module at ``path`` (or of the object patch already there) on ``patched``."""
    current = patched.get_model_object(path)
    if path in patched.object_patches and getattr(type(current), "_ds_state", None) is not state:
        state.wrapped_patches[path] = current  # another node's object patch: our view wraps it
    patched.add_object_patch(path, swapped_copy(current, mixin, _ds_state=state, **attrs))


class RowLoRAMixin:
    """Adds each style's LoRA delta on that style's rows only (Linear or Conv2d)."""

    _ds_state: PatchState
    _ds_deltas: dict[int, LayerDelta]
    _ds_in_injected_attention: bool
    _ds_context_proj: bool = False
    # where the LoRA is bypassed (``lora_in_injected_attention`` off) in an injected attention's projection: None, no
    # LoRA at all (the UNet's attn1 layers); else per style the delta without the bypassed q/k output rows (a Flux
    # block's fused qkv / linear1, whose v and mlp rows keep the LoRA)
    _ds_bypassed: dict[int, LayerDelta] | None = None

    def _ds_active(self, in_injected_attention: bool) -> tuple[bool, dict[int, LayerDelta] | None]:
        """(bypassed?, the per-style deltas that act in a call; None: none)."""
        if self._ds_in_injected_attention and not in_injected_attention:
            return True, self._ds_bypassed
        return False, self._ds_deltas

    def forward(self, x, *args, **kwargs):
        out = super().forward(x, *args, **kwargs)
        call = self._ds_state.active_call()
        if call is None:
            return out
        if call.lora_layout is not None and x.dtype == out.dtype and out.is_contiguous():
            plan = self._ds_plan(call.lora_layout, x)
            if plan is not None:  # the common case: matmuls straight into views of the fresh output
                for a, e, k, down, up in plan:
                    if k == 0:  # one style's rows [a, e): out += (x D^T) U^T
                        h = F.linear(x[a:e].reshape(-1, x.shape[-1]), down)
                        out[a:e].view(-1, out.shape[-1]).addmm_(h, up)
                    else:  # k styles' equal blocks of rows [a, e): one batched matmul pair
                        h = torch.bmm(x[a:e].reshape(k, -1, x.shape[-1]), down)
                        out[a:e].view(k, -1, out.shape[-1]).baddbmm_(h, up)
                return out
        return self._ds_rows(x, out, call)

    def _ds_base_forward(self, x, *args, **kwargs):
        """The layer's own forward without the per-row LoRA (ComfyUI's op: casts, weight patches)."""
        return super().forward(x, *args, **kwargs)

    def _ds_plan(self, layout, x: torch.Tensor) -> tuple | None:
        """This layer's work for a call's row layout (``rows.LoraLayout``): ``(start, stop, k, down, up)`` per matmul
        pair, with the factors on ``x``'s device and dtype, scale folded, transposed for ``addmm_``/``baddbmm_``
        (k = 0: one style; k > 0: k styles' equal adjacent blocks). Built once per layout; None sends the layer down
        the general path (conv layers, full-weight or bias deltas, styles of different ranks)."""
        plans = type(self)._ds_plans
        key = (layout, x.device, x.dtype)
        if key in plans:
            return plans[key]
        in_injected_attention, ranges, block = layout
        bypassed, ds = self._ds_active(in_injected_attention)
        plan = None
        if not ds:
            plan = ()
        elif not isinstance(self, torch.nn.Conv2d) and all(
            d.down is not None and d.weight is None and d.bias is None for d in ds.values()
        ):
            folded = {s: self._ds_cast(s, d, x, bypassed) for s, d in ds.items()}
            ranks = {d.down.shape[0] for d in folded.values()}
            if block is not None and len(ranks) == 1 and all(s in ds for s in block.styles):
                stack_key = ("stack", bypassed, block.styles, x.device, x.dtype)  # one stack per style set
                cache = type(self)._ds_cache
                if stack_key not in cache:
                    cache[stack_key] = (
                        torch.stack([folded[s].down.flatten(1).t() for s in block.styles]),  # [k, in, r]
                        torch.stack([folded[s].up.flatten(1).t() for s in block.styles]),  # [k, r, out]
                    )
                stop = block.start + block.per * len(block.styles)
                plan = ((block.start, stop, len(block.styles), *cache[stack_key]),)
            else:
                plan = tuple(
                    (a, e, 0, folded[s].down.flatten(1), folded[s].up.flatten(1).t())
                    for s, a, e in ranges
                    if s in folded
                )
        if len(plans) > 32:
            plans.clear()
        plans[key] = plan
        return plan

    def _ds_rows(self, x, out, call: CallPlan):
        """The general path: feature-fusion rows, rows that are not contiguous, conv and full-weight deltas."""
        if not call.lora_rows and call.fused_rows is None:
            return out
        bypassed, deltas = self._ds_active(call.lora_in_injected_attention)
        if not deltas:
            return out
        if call.fused_rows is not None and not self._ds_context_proj:
            out = feature_fusion.fused_lora_add(self, x, out, call, deltas, self._ds_cast)
        for style, rows in call.lora_rows.items():
            d = deltas.get(style)
            if d is None or rows.numel() == 0:
                continue
            d = self._ds_cast(style, d, x, bypassed)
            rng = call.lora_ranges.get(style)
            if rng is not None:  # contiguous rows: a view, and an in-place add on the fresh output
                a, b = rng
                out[a:b] += self._ds_delta(x[a:b], d).to(out.dtype)
                continue
            xr = x.index_select(0, rows)
            out = out.index_add(0, rows, self._ds_delta(xr, d).to(out.dtype))
        return out

    def _ds_delta(self, xr, d: LayerDelta):
        if isinstance(self, torch.nn.Conv2d):
            return conv2d_delta(xr, d, self.stride, self.padding, self.dilation, self.groups)
        return linear_delta(xr, d)

    def _ds_cast(self, style: int, d: LayerDelta, x: torch.Tensor, bypassed: bool = False) -> LayerDelta:
        cache = type(self)._ds_cache
        key = (style, bypassed, x.device, x.dtype)
        if key not in cache:
            if len(cache) > 16:
                cache.clear()
            cache[key] = d.folded(x.device, x.dtype)
        return cache[key]


class InjectedResidualMixin:
    """The last layer of the injected ResBlock's residual branch (``arch.UNetFamily.residual_path``): on the style
    rows its output ``h`` becomes their content row's, so the block gives ``skip(x_style) + h_content``
    (Plug-and-Play features); the content rows' ``h`` is recorded for the per-source content cache."""

    _ds_state: PatchState

    def forward(self, *args, **kwargs):
        h = super().forward(*args, **kwargs)
        call = self._ds_state.active_call()
        if call is None or (call.res_rows is None and not call.res_stored and not call.res_record):
            return h
        return inject_residual(call, h)


def inject_residual(call: CallPlan, h: torch.Tensor) -> torch.Tensor:
    """``h`` (the residual of every row of the call, a fresh tensor) with the injected rows' replaced."""
    for start, b, sink in call.res_record:  # a content row's residual, for the per-source content cache
        sink["res"] = h[start : start + b].clone()
    if call.res_rows is None:
        pass
    elif call.res_cached is not None:  # feature cache: the content residual recorded at inversion
        src = call.res_cached.to(device=h.device, dtype=h.dtype)
        span = call.res_span
        if span is not None and h.is_contiguous():
            start, m, b = span
            h[start : start + m * b].view(m, b, *h.shape[1:]).copy_(src)
        else:
            h = h.index_copy(0, call.res_rows, src.index_select(0, call.res_batch_index.to(h.device)))
    elif call.res_group is not None and h.is_contiguous():
        view = group_view(h, call.res_group)
        view[:, 1:].copy_(view[:, :1])
    else:
        h = h.index_copy(0, call.res_rows, h.index_select(0, call.res_src))
    if call.res_stored:
        h = h.contiguous()
        for start, m, b, src in call.res_stored:  # from the per-source content cache
            h[start : start + m * b].view(m, b, *h.shape[1:]).copy_(src.to(device=h.device, dtype=h.dtype))
    return h
