"""ModelPatcher patches for DiffStyler: per-row LoRA, ResBlock feature and Q/K injection.

Everything is installed on a ``ModelPatcher.clone()`` through ComfyUI's extension points (design
Sec. 2): object patches (class-swapped shallow copies that keep parameter names), attn1 replace
patches (chained to any that another pack registered) and a keyed APPLY_MODEL wrapper. Object
patches stay on the model after sampling, so every patch does nothing unless a DiffStyler run is
active (``PatchState.run``), and then only on the rows it owns for the current UNet call.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import comfy.ldm.modules.attention as attention
import comfy.patcher_extension
import torch
import torch.nn.functional as F  # noqa: N812

from ..core.lora import LayerDelta, conv2d_delta, linear_delta
from ..core.schedule import blend_qk_, find_sigma_index, in_window, qk_blend_ratio
from . import dynamic_vram, style_cache

logger = logging.getLogger(__name__)

WRAPPER_KEY = "diffstyler"
ATTACHMENT = "diffstyler"


@dataclass(frozen=True)
class BlockMap:
    """Where features are injected for one UNet family (design Sec. 1, step 3)."""

    family: str
    resblock: str  # module path of the ResBlock whose residual is injected
    qk_blocks: tuple[int, ...]  # decoder (output) block ids whose self-attention Q/K are injected


SD1_MAP = BlockMap("sd1", "diffusion_model.output_blocks.4.0", tuple(range(4, 12)))
SDXL_MAP = BlockMap("sdxl", "diffusion_model.output_blocks.1.0", tuple(range(1, 6)))


def block_map_for(model) -> BlockMap:
    """The block map of ``model``'s UNet (SD1.x/SD2.x share one; SDXL has its own); ValueError otherwise."""
    dm = getattr(model.model, "diffusion_model", None)
    cfg = getattr(model.model.model_config, "unet_config", {})
    n_out = len(getattr(dm, "output_blocks", []))
    mult = len(cfg.get("channel_mult", []))
    if n_out == 12 and mult == 4:
        return SD1_MAP
    if n_out == 9 and mult == 3:
        return SDXL_MAP
    raise ValueError(
        f"model: DiffStyler supports SD1.x, SD2.x and SDXL UNets; this one ({type(model.model).__name__}, "
        f"{n_out} decoder blocks) is not one of them: load an SD1.x, SD2.x or SDXL checkpoint"
    )


@dataclass
class CallPlan:
    """Row roles of the UNet call in progress (rows = batch rows after the content rows were added)."""

    lora_rows: dict[int, torch.Tensor]  # style index -> row indices that get that style's LoRA
    lora_ranges: dict = field(default_factory=dict)  # style -> (start, stop) when its rows are contiguous
    # hashable summary of the LoRA rows when every style's rows are contiguous and no row is fused:
    # (lora_in_injected_attention, ((style, start, stop), ...), block); block = (start, rows per style, styles)
    # when the styles own equal adjacent blocks, else None; layers build their plan for it once
    lora_layout: tuple | None = None
    res_rows: torch.Tensor | None = None  # rows whose ResBlock residual is replaced ...
    res_src: torch.Tensor | None = None  # ... by these (content) rows
    qk_rows: torch.Tensor | None = None
    qk_src: torch.Tensor | None = None
    # (start, groups, m, b) when the injected rows form ``groups`` equal, adjacent groups starting at ``start``, each
    # one content chunk of ``b`` rows followed by the ``m`` chunks it feeds: injection in place on one strided view,
    # one kernel per tensor whatever the number of branches
    res_group: tuple[int, int, int, int] | None = None
    qk_group: tuple[int, int, int, int] | None = None
    qk_ratio: float = 1.0
    lora_in_injected_attention: bool = True
    res_cached: torch.Tensor | None = None  # the content residual [B, ...] from the feature cache (instead of res_src)
    qk_cached: dict | None = None  # (block, transformer index) -> (q, k) [B, ...] from the feature cache
    res_batch_index: torch.Tensor | None = None  # feature cache: for each injected row, its batch item in the cache
    qk_batch_index: torch.Tensor | None = None
    # feature cache only: (start, chunks, b) when the injected rows are one run [start, start + chunks*b) whose row
    # start + j*b + i takes batch item i of the cache: injection in place on views
    res_span: tuple[int, int, int] | None = None
    qk_span: tuple[int, int, int] | None = None
    fused_rows: torch.Tensor | None = None  # feature-fusion mode: rows shared by every style
    fused_batch_index: torch.Tensor | None = None
    fused_uncond: list | None = None
    fused_role_index: torch.Tensor | None = None  # per fused row: 0 cond, 1 uncond
    fused_weights: list | None = None  # per style, then background: [B,1,h,w]
    fused_contexts: list | None = None  # per style, then background: (cond context, uncond context)
    fused_latent_hw: tuple | None = None
    fused_token_cache: dict = field(default_factory=dict)  # the run's cache for this call's fused row layout
    # per-source content cache (style_cache): (start, m, b, features) per run of m chunks of b rows fed by a source
    # whose features come from the store (res: the residual [b, ...]; qk: (block, transformer index) -> (q, k))
    res_stored: list = field(default_factory=list)
    qk_stored: list = field(default_factory=list)
    # (start, b, sink) per content chunk whose features are recorded: rows [start, start + b) into sink (a dict)
    res_record: list = field(default_factory=list)
    qk_record: list = field(default_factory=list)


SHARED_SOURCE = -1  # the content row without any LoRA (the base branch's, or every branch's when shared)


@dataclass
class RunPlan:
    """What a DiffStyler guider activates for one sampling run (design Sec. 5).

    A *branch* is a style (its index) or the base model (``len(styles)``); each branch that receives content
    features reads them from a content row, its *source*: the content latent evaluated with that branch's own LoRA
    (``source = style index``, the released pipeline) or without any LoRA (``SHARED_SOURCE``: the base branch, and
    every branch under the shared-content-row option).
    """

    roles: list[tuple[int, bool]]  # cond index -> (branch index, is_uncond); branch -1 = no LoRA, no injection
    branch_source: dict[int, int]  # injected branch -> its content row's source (style index or SHARED_SOURCE)
    branch_windows: dict[int, tuple[float, float]]  # injected branch -> (ResBlock end, Q/K end) as step fractions
    lora_branch_to_style: dict[int, int]  # branch -> style index whose deltas apply
    sample_sigmas: torch.Tensor
    content_latent_at: object  # callable(step index in sample_sigmas) -> the content row's input, model space
    content_conditioning: dict  # name -> ComfyUI CONDRegular for the content rows
    qk_blend: str
    lora_in_injected_attention: bool
    model_sampling: object
    feature_cache: object = None
    fused_branch: int | None = None
    fused_weights: list | None = None
    fused_contexts: list | None = None
    latent_hw: tuple | None = None
    fused_kv_cache: dict = field(default_factory=dict)  # feature fusion: region prompts' K/V per layer
    timesteps: list | None = None  # model timestep of each sample sigma (computed once per run: no sync per call)
    index_cache: dict = field(default_factory=dict)  # row lists -> index tensors on the device, reused every step
    fused_token_caches: dict = field(default_factory=dict)  # fused row layout -> masks per grid, region K/V per row
    # the guider's handler for calc_cond_batch calls while the run is active: (executor, model, conds, x, t, options)
    cond_batch_handler: object = None
    source_cache: object = None  # style_cache.RunCache: per-source content features kept on the inversion

    def timestep_at(self, step: int) -> float:
        if self.timesteps is None:
            sig = self.sample_sigmas
            pos = sig > 0
            ts = torch.zeros(sig.shape, dtype=torch.float64)
            if bool(pos.any()):
                device = self.model_sampling.sigmas.device if hasattr(self.model_sampling, "sigmas") else sig.device
                ts[pos] = self.model_sampling.timestep(sig[pos].to(device)).double().cpu()
            self.timesteps = ts.tolist()
        return self.timesteps[step]

    def index(self, rows: list[int], device) -> torch.Tensor:
        key = (tuple(rows), device)
        if key not in self.index_cache:
            self.index_cache[key] = torch.tensor(rows, dtype=torch.long, device=device)
        return self.index_cache[key]


class PatchState:
    """Shared by every patch one Injector installed; ``run``/``call`` are set only while sampling."""

    def __init__(self, block_map: BlockMap, n_styles: int, style_ids: tuple[str, ...], settings: dict):
        self.block_map = block_map
        self.n_styles = n_styles
        self.style_ids = style_ids
        self.settings = dict(settings)
        self.styles: list | None = None  # the Style objects, for samplers whose styles input is not connected
        self.lora_styles: set[int] = set(range(n_styles))  # styles with LoRA layers patched (others: plain model)
        self.run: RunPlan | None = None
        self._calls = threading.local()  # ComfyUI may run apply_model in threads (one per device): a call each
        self.deltas_bytes = 0
        self.replace_slots: list[tuple[str, tuple]] = []  # ("attn1"/"attn2", (block, id, transformer index))
        self.style_models: dict[int, PatchState] = {}  # MODEL styles: style index -> the state of its patched clone
        self.model_style_of: int | None = None  # on a MODEL style's clone: the style index it holds
        self.style_deltas: list[dict] = []  # per style: module path -> LayerDelta (what its LoRA adds)
        self.lora_digests: dict[int, str] = {}  # style -> digest of its deltas (style_cache.lora_digest)
        self.wrapped_patches: dict = {}  # module path -> another node's object patch that our view wraps

    @property
    def call(self) -> CallPlan | None:
        """The plan of the ``apply_model`` call running in this thread (None outside one)."""
        return getattr(self._calls, "plan", None)

    @call.setter
    def call(self, plan: CallPlan | None) -> None:
        self._calls.plan = plan

    def on_model_patcher_clone(self):
        return self  # clones of the patched MODEL share the patches, so they share the state


# ---------------------------------------------------------------- class-swapped layers


def swapped_copy(module: torch.nn.Module, mixin: type, **class_attrs) -> torch.nn.Module:
    """A view of ``module`` whose class also derives from ``mixin`` and carries ``class_attrs``.

    The view shares the original's ``__dict__`` (parameters, buffers, children and ComfyUI's
    bookkeeping flags such as ``comfy_patched_weights``), so parameter names, weight patches (a LoRA
    merged by the core loader), lowvram casts and device moves act on both alike, whichever of the
    two is in the model tree. The per-patch data lives on a class made for this one view.
    """
    base = type(module)
    cls = type(f"DiffStyler{base.__name__}", (mixin, base), {"_ds_cache": {}, "_ds_plans": {}, **class_attrs})
    new = object.__new__(cls)
    new.__dict__ = module.__dict__
    return new


class RowLoRAMixin:
    """Adds each style's LoRA delta on that style's rows only (Linear or Conv2d)."""

    _ds_state: PatchState
    _ds_deltas: dict[int, LayerDelta]
    _ds_in_injected_attention: bool
    _ds_context_proj: bool = False

    def forward(self, x, *args, **kwargs):
        out = super().forward(x, *args, **kwargs)
        state = self._ds_state
        call = state.call if state.run is not None else None
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

    def _ds_plan(self, layout: tuple, x: torch.Tensor) -> tuple | None:
        """This layer's work for a call's row layout: ``(start, stop, k, down, up)`` per matmul pair, with the
        factors on ``x``'s device and dtype, scale folded, transposed for ``addmm_``/``baddbmm_`` (k = 0: one
        style; k > 0: k styles' equal adjacent blocks). Built once per layout; None sends the layer down the
        general path (conv layers, full-weight or bias deltas, styles of different ranks)."""
        plans = type(self)._ds_plans
        key = (layout, x.device, x.dtype)
        if key in plans:
            return plans[key]
        in_injected_attention, ranges, block = layout
        ds = self._ds_deltas
        plan = None
        if self._ds_in_injected_attention and not in_injected_attention:
            plan = ()
        elif not isinstance(self, torch.nn.Conv2d) and all(
            d.down is not None and d.weight is None and d.bias is None for d in ds.values()
        ):
            folded = {s: self._ds_cast(s, d, x) for s, d in ds.items()}
            ranks = {d.down.shape[0] for d in folded.values()}
            if block is not None and len(ranks) == 1 and all(s in ds for s in block[2]):
                a, per, styles = block
                stack_key = ("stack", styles, x.device, x.dtype)  # one stack per style set, whatever the layout
                cache = type(self)._ds_cache
                if stack_key not in cache:
                    cache[stack_key] = (
                        torch.stack([folded[s].down.flatten(1).t() for s in styles]),  # [k, in, r]
                        torch.stack([folded[s].up.flatten(1).t() for s in styles]),  # [k, r, out]
                    )
                plan = ((a, a + per * len(styles), len(styles), *cache[stack_key]),)
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

    def _ds_rows(self, x, out, call):
        """The general path: feature-fusion rows, rows that are not contiguous, conv and full-weight deltas."""
        if not call.lora_rows and call.fused_rows is None:
            return out
        if self._ds_in_injected_attention and not call.lora_in_injected_attention:
            return out
        if call.fused_rows is not None and not self._ds_context_proj:
            from .feature_fusion import fused_lora_add

            out = fused_lora_add(self, x, out, call, self._ds_deltas, self._ds_cast)
        for style, rows in call.lora_rows.items():
            d = self._ds_deltas.get(style)
            if d is None or rows.numel() == 0:
                continue
            d = self._ds_cast(style, d, x)
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

    def _ds_cast(self, style: int, d: LayerDelta, x: torch.Tensor) -> LayerDelta:
        cache = type(self)._ds_cache
        key = (style, x.device, x.dtype)
        if key not in cache:
            if len(cache) > 16:
                cache.clear()
            cache[key] = d.folded(x.device, x.dtype)
        return cache[key]


class InjectedResBlockMixin:
    """ResBlock whose style rows output ``skip(x_style) + h_content`` (Plug-and-Play features)."""

    _ds_state: PatchState

    def _forward(self, x, emb):
        state = self._ds_state
        call = state.call if state.run is not None else None
        if call is None or (call.res_rows is None and not call.res_stored and not call.res_record):
            return super()._forward(x, emb)
        h = self._ds_residual(x, emb)
        for start, b, sink in call.res_record:  # a content row's residual, for the per-source content cache
            sink["res"] = h[start : start + b].clone()
        if call.res_rows is None:
            pass
        elif call.res_cached is not None:  # feature cache: the content residual recorded at inversion
            src = call.res_cached.to(device=h.device, dtype=h.dtype)
            span = call.res_span
            if span is not None and h.is_contiguous():  # h is this call's own fresh tensor
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
        if self.updown:
            x = self.x_upd(x)
        return self.skip_connection(x) + h

    def _ds_residual(self, x, emb):
        """The residual branch ``h`` of ComfyUI's ResBlock._forward (everything but the skip)."""
        if self.updown:
            in_rest, in_conv = self.in_layers[:-1], self.in_layers[-1]
            h = in_conv(self.h_upd(in_rest(x)))
        else:
            h = self.in_layers(x)
        emb_out = None
        if not self.skip_t_emb:
            emb_out = self.emb_layers(emb).type(h.dtype)
            while len(emb_out.shape) < len(h.shape):
                emb_out = emb_out[..., None]
        if self.use_scale_shift_norm:
            out_norm, out_rest = self.out_layers[0], self.out_layers[1:]
            h = out_norm(h)
            if emb_out is not None:
                scale, shift = torch.chunk(emb_out, 2, dim=1)
                h = h * (1 + scale) + shift
            return out_rest(h)
        if emb_out is not None:
            if self.exchange_temb_dims:
                emb_out = emb_out.movedim(1, 2)
            h = h + emb_out
        return self.out_layers(h)


# ---------------------------------------------------------------- attn1 replace (Q/K injection)


def group_view(t: torch.Tensor, group: tuple[int, int, int, int]) -> torch.Tensor:
    """Rows ``[start, start + g*(m+1)*b)`` of ``t`` as ``[g, m+1, b, ...]``: per group, index 0 is the content
    chunk and 1..m the chunks it feeds (``CallPlan.res_group``/``qk_group``)."""
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


def make_qk_replace(state: PatchState, previous=None):
    """An attn1 replace: blend the style rows' Q/K with the content rows' (paper Sec. 3.2), V untouched.

    ``previous`` is the replace another pack registered for the same block; it is called instead of
    plain attention so both stay active.
    """

    def diffstyler_qk_replace(q, k, v, extra_options):
        call = state.call if state.run is not None else None
        if call is not None and (call.qk_record or call.qk_stored):
            key = (int(extra_options["block"][1]), int(extra_options.get("block_index", 0)))
            for start, b, sink in call.qk_record:  # a content row's Q/K, for the per-source content cache
                sink.setdefault("qk", {})[key] = (q[start : start + b].clone(), k[start : start + b].clone())
            if call.qk_stored:
                q, k = q.contiguous(), k.contiguous()
                for start, m, b, layers in call.qk_stored:  # from the per-source content cache
                    for t, src in zip((q, k), layers[key]):
                        blend_qk_(t[start : start + m * b].view(m, b, *t.shape[1:]), src.to(t.device), call.qk_ratio)
        if call is not None and call.qk_rows is not None:
            r = call.qk_ratio
            span = call.qk_span
            q_src = k_src = None
            if call.qk_cached is not None:
                key = (int(extra_options["block"][1]), int(extra_options.get("block_index", 0)))
                q_c, k_c = call.qk_cached[key]
                q_src, k_src = q_c.to(device=q.device, dtype=q.dtype), k_c.to(device=k.device, dtype=k.dtype)
            if q_src is None and call.qk_group is not None and q.is_contiguous() and k.is_contiguous():
                # q and k are the projections ComfyUI just computed for this replace: blended in place, every
                # branch's rows from its own content row in one strided view
                for t in (q, k):
                    view = group_view(t, call.qk_group)
                    blend_qk_(view[:, 1:], view[:, :1], r)
            elif q_src is not None and span is not None and q.is_contiguous() and k.is_contiguous():
                start, m, b = span
                for t, src in ((q, q_src), (k, k_src)):
                    blend_qk_(t[start : start + m * b].view(m, b, *t.shape[1:]), src, r)
            else:  # gather the injected rows, blend them, scatter them back
                out = []
                for t, src in ((q, q_src), (k, k_src)):
                    if src is not None:
                        src = src.index_select(0, call.qk_batch_index.to(t.device))
                    rows = t.index_select(0, call.qk_rows)
                    blend_qk_(rows, t.index_select(0, call.qk_src) if src is None else src, r)
                    out.append(t.index_copy(0, call.qk_rows, rows))
                q, k = out
        return attend(q, k, v, extra_options, previous)

    diffstyler_qk_replace.diffstyler_previous = previous
    diffstyler_qk_replace.diffstyler_owner = state
    return diffstyler_qk_replace


def overridden_replaces(state: PatchState, model_options: dict) -> list[tuple[str, tuple, str]]:
    """The attention slots this Injector patched where ComfyUI will no longer reach its replace.

    ComfyUI keeps one replace per slot (``(block, id, transformer index)`` before ``(block, id)``): a node
    that sets its own after the Injector silently turns DiffStyler's off there, unless it chains to ours.
    Returns ``(kind, slot, name of the replace now in force)`` for each such slot.
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


# ---------------------------------------------------------------- APPLY_MODEL wrapper (content rows)


def inject_span(chunks: list[int], offset: int, b: int, cached: list) -> tuple[int, int, int] | None:
    """``CallPlan.inject_span`` (feature cache) for injected ``chunks`` (chunk j = rows ``offset + j*b ...``): None
    unless they are consecutive and every cached feature holds ``b`` batch items."""
    if not chunks or chunks != list(range(chunks[0], chunks[0] + len(chunks))):
        return None
    if any(t.shape[0] != b for t in cached):
        return None
    return offset + chunks[0] * b, len(chunks), b


def inject_group(pairs: dict[int, list[int]], b: int) -> tuple[int, int, int, int] | None:
    """``CallPlan.res_group``/``qk_group`` for ``pairs`` (content chunk position -> positions of the chunks it feeds,
    in chunks of ``b`` rows): ``(start, groups, m, b)`` when every content chunk is directly followed by its ``m``
    chunks and the groups are equal and adjacent, else None (the general gather/scatter path)."""
    if not pairs:
        return None
    srcs = sorted(pairs)
    m = len(pairs[srcs[0]])
    for i, c in enumerate(srcs):
        if pairs[c] != list(range(c + 1, c + 1 + m)) or c != srcs[0] + i * (m + 1):
            return None
    return srcs[0] * b, len(srcs), m, b


def make_apply_model_wrapper(state: PatchState):
    """Keyed APPLY_MODEL wrapper: while a run is active, give every branch inside its injection windows a content
    row (its own source: the content latent with that branch's LoRA, or without LoRA), placed just before that
    branch's rows, set the call's row plan, and drop those rows again (rows come back in the caller's order)."""

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
        n_chunks = max(1, len(cond_or_uncond))
        b = x.shape[0] // n_chunks
        step = find_sigma_index(run.sample_sigmas, t[0])
        steps = int(run.sample_sigmas.shape[0]) - 1
        roles = [run.roles[ci] if 0 <= ci < len(run.roles) else (-1, False) for ci in cond_or_uncond]
        if not roles:
            roles = [(-1, False)]
        # per chunk: is the ResBlock / Q/K window of its branch open at this step
        res_on, qk_on = [], []
        for branch, _u in roles:
            win = run.branch_windows.get(branch) if step >= 0 else None
            res_on.append(win is not None and in_window(step, win[0], steps))
            qk_on.append(win is not None and in_window(step, win[1], steps))
        injected = [j for j in range(len(roles)) if res_on[j] or qk_on[j]]
        cache = run.feature_cache
        cache_res = cache.res.get(step) if (cache is not None and any(res_on)) else None
        cache_qk = cache.qk.get(step) if (cache is not None and any(qk_on)) else None
        from_cache = (
            bool(injected)
            and cache is not None
            and (not any(res_on) or cache_res is not None)
            and (not any(qk_on) or cache_qk is not None)
        )
        device = x.device
        _index = run.index
        # per-source content cache: a source whose features at this step are stored runs no content row
        store = run.source_cache if (injected and not from_cache) else None
        stored: dict[int, tuple] = {}  # source -> (residual or None, Q/K layers or None) from the store
        keys: dict[int, tuple] = {}  # source -> its key, for the sources this call records
        if store is not None:
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
        # the call's layout: chunks grouped by branch (first-appearance order), each injected branch's content
        # chunk (one per source that runs one) just before the first chunk that reads it
        order: list[tuple[str, int]] = []  # ("src", source) or ("chunk", j)
        if injected and not from_cache and any(run.branch_source[roles[j][0]] not in stored for j in injected):
            by_branch: dict[int, list[int]] = {}
            for j, (branch, _u) in enumerate(roles):
                by_branch.setdefault(branch, []).append(j)
            placed = set(stored)
            for branch, js in by_branch.items():
                src = run.branch_source.get(branch)
                if src is not None and any(j in injected for j in js) and src not in placed:
                    placed.add(src)
                    order.append(("src", src))
                order += [("chunk", j) for j in js]
        else:
            order = [("chunk", j) for j in range(len(roles))]
        n_src = sum(1 for kind, _v in order if kind == "src")
        pos_of_chunk = {v: p for p, (kind, v) in enumerate(order) if kind == "chunk"}
        pos_of_src = {v: p for p, (kind, v) in enumerate(order) if kind == "src"}
        identity = n_src == 0 and all(pos_of_chunk[j] == j for j in range(len(roles)))
        if (n_src or stored) and (control is not None or c_concat is not None):
            raise ValueError(
                "DiffStyler's content injection cannot run together with ControlNet or inpainting-model inputs "
                "in the same UNet call: set feature_injection_end and qk_injection_end to 0 to use them"
            )
        if n_src:
            x_src = run.content_latent_at(step).to(device=x.device, dtype=x.dtype)
            if x_src.shape[0] != b:
                raise ValueError(
                    f"inversion: the content latent batch ({x_src.shape[0]}) differs from the sampled one ({b})"
                )
            n_rows = x.shape[0]
            x = torch.cat([x_src, x])
            t = torch.cat([t[:b], t])
            c_crossattn, kwargs = _prepend_conditioning(run.content_conditioning, b, c_crossattn, kwargs)
            # rows of the concatenation [content (b rows), the call's rows] in the layout's order
            take = []
            for kind, v in order:
                take += list(range(b)) if kind == "src" else list(range(b + v * b, b + (v + 1) * b))
            idx = _index(take, device)
            x, t = x.index_select(0, idx), t.index_select(0, idx)
            if c_crossattn is not None:
                c_crossattn = c_crossattn.index_select(0, idx.to(c_crossattn.device))
            kwargs = {
                k_: (v_.index_select(0, idx.to(v_.device)) if _batched(v_, n_rows + b) else v_)
                for k_, v_ in kwargs.items()
            }
        lora_rows: dict[int, list[int]] = {}
        for p, (kind, v) in enumerate(order):
            style = v if kind == "src" and v != SHARED_SOURCE else None
            if kind == "chunk":
                style = run.lora_branch_to_style.get(roles[v][0])
            if style is not None:
                lora_rows.setdefault(style, []).extend(range(p * b, (p + 1) * b))
        fused_chunks = [
            j for j, (branch, _u) in enumerate(roles) if run.fused_branch is not None and branch == run.fused_branch
        ]
        plan = CallPlan(lora_rows={}, lora_in_injected_attention=run.lora_in_injected_attention)
        if injected and from_cache:
            for kind_on, name, cached in ((res_on, "res", cache_res), (qk_on, "qk", cache_qk)):
                rows = [j for j in injected if kind_on[j]]
                if not rows:
                    continue
                setattr(plan, f"{name}_rows", _index([j * b + i for j in rows for i in range(b)], device))
                setattr(plan, f"{name}_cached", cached.to(device) if name == "res" else cached)
                setattr(plan, f"{name}_batch_index", _index([i for _j in rows for i in range(b)], device))
                first = cached if name == "res" else next(iter(cached.values()))[0]
                setattr(plan, f"{name}_span", inject_span(rows, 0, b, [first]))
        elif injected:
            for kind_on, name, part in ((res_on, "res", 0), (qk_on, "qk", 1)):
                pairs: dict[int, list[int]] = {}
                from_store: dict[int, list[int]] = {}
                for j in injected:
                    if kind_on[j]:
                        src = run.branch_source[roles[j][0]]
                        if src in stored:
                            from_store.setdefault(src, []).append(pos_of_chunk[j])
                        else:
                            pairs.setdefault(pos_of_src[src], []).append(pos_of_chunk[j])
                for src, chunks in from_store.items():  # runs of consecutive chunks: one in-place copy each
                    getattr(plan, f"{name}_stored").extend(
                        (run_[0] * b, len(run_), b, stored[src][part]) for run_ in _consecutive(sorted(chunks))
                    )
                if not pairs:
                    continue
                dst = [p * b + i for c in sorted(pairs) for p in pairs[c] for i in range(b)]
                src = [c * b + i for c in sorted(pairs) for _p in pairs[c] for i in range(b)]
                setattr(plan, f"{name}_rows", _index(dst, device))
                setattr(plan, f"{name}_src", _index(src, device))
                setattr(plan, f"{name}_group", inject_group({c: sorted(v) for c, v in pairs.items()}, b))
        if plan.qk_rows is not None or plan.qk_stored:
            plan.qk_ratio = qk_blend_ratio(run.timestep_at(step), run.qk_blend)
        sinks: dict[int, dict] = {}
        for src in keys:  # record what each content row this call runs gives the rows it feeds
            sinks[src] = {}
            for kind_on, name in ((res_on, "res"), (qk_on, "qk")):
                if any(kind_on[j] and run.branch_source[roles[j][0]] == src for j in injected):
                    getattr(plan, f"{name}_record").append((pos_of_src[src] * b, b, sinks[src]))
        ranges = {s: (r[0], r[-1] + 1) for s, r in lora_rows.items() if r and r == list(range(r[0], r[-1] + 1))}
        block = None
        if len(ranges) == len(lora_rows) and len(ranges) > 1:
            by_start = sorted(ranges, key=lambda s_: ranges[s_][0])
            per = ranges[by_start[0]][1] - ranges[by_start[0]][0]
            if all(ranges[s_][1] - ranges[s_][0] == per for s_ in by_start) and all(
                ranges[by_start[i]][0] == ranges[by_start[0]][0] + i * per for i in range(len(by_start))
            ):
                block = (ranges[by_start[0]][0], per, tuple(by_start))
        if len(ranges) == len(lora_rows) and not fused_chunks:
            spans = tuple(sorted(((s_, a_, e_) for s_, (a_, e_) in ranges.items()), key=lambda t_: t_[1]))
            plan.lora_layout = (run.lora_in_injected_attention, spans, block)
        plan.lora_ranges = ranges
        plan.lora_rows = {s: _index(r, device) for s, r in lora_rows.items()}
        if fused_chunks:
            fused_items = [i for _j in fused_chunks for i in range(b)]
            plan.fused_rows = _index([pos_of_chunk[j] * b + i for j in fused_chunks for i in range(b)], device)
            plan.fused_batch_index = _index(fused_items, device)
            plan.fused_uncond = [roles[j][1] for j in fused_chunks for _i in range(b)]
            plan.fused_role_index = _index([int(u) for u in plan.fused_uncond], device)
            plan.fused_weights = run.fused_weights
            plan.fused_contexts = run.fused_contexts
            plan.fused_latent_hw = run.latent_hw
            layout = (tuple(fused_items), tuple(plan.fused_uncond))
            plan.fused_token_cache = run.fused_token_caches.setdefault(layout, {})
        state.call = plan
        try:
            out = executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        finally:
            state.call = None
        for src, sink in sinks.items():  # only once the call completed: never a step's features in part
            feats = (sink.get("res"), sink.get("qk"))
            where = (store.in_use, tuple(x.shape[-2:]), store.expect(src, run), store.refused)
            store.cache.commit(keys[src], store.label(src), step, *feats, *where)
        if identity:
            return out
        back = [pos_of_chunk[j] * b + i for j in range(len(roles)) for i in range(b)]
        if back == list(range(n_src * b, (n_src + len(roles)) * b)):
            return out[n_src * b :]
        return out.index_select(0, _index(back, out.device))

    return diffstyler_apply_model


def _consecutive(values: list[int]) -> list[list[int]]:
    """``values`` (sorted) split into runs of consecutive integers."""
    runs: list[list[int]] = []
    for v in values:
        if runs and v == runs[-1][-1] + 1:
            runs[-1].append(v)
        else:
            runs.append([v])
    return runs


def _batched(v, rows: int) -> bool:
    return isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] == rows


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


def _prepend_conditioning(content: dict, b: int, c_crossattn, kwargs: dict):
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


# ---------------------------------------------------------------- installation


def attention_modules(model, attr: str) -> dict:
    """``(block name, block id, transformer index)`` -> the ``attr`` ("attn1"/"attn2") module of that transformer
    block: the slots ComfyUI looks attention replaces up by (the middle block is id 0)."""
    dm = model.model.diffusion_model
    out = {}
    for name, blocks in (("input", dm.input_blocks), ("middle", [dm.middle_block]), ("output", dm.output_blocks)):
        for bid, block in enumerate(blocks):
            for layer in block:
                for ti, tb in enumerate(getattr(layer, "transformer_blocks", [])):
                    if getattr(tb, attr, None) is not None:
                        out[(name, bid, ti)] = getattr(tb, attr)
    return out


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


def install(
    model,
    styles_deltas: list[dict[str, LayerDelta]],
    style_ids: tuple[str, ...],
    settings: dict,
    what: str = "Cross-LoRA Attention Injector",
):
    """Patch a clone of ``model``; returns (patched clone, PatchState)."""
    block_map = block_map_for(model)
    patched = dynamic_vram.static_clone(model, what)
    state = PatchState(block_map, len(styles_deltas), style_ids, settings)
    state.lora_styles = {s for s, deltas in enumerate(styles_deltas) if deltas}
    state.style_deltas = list(styles_deltas)
    modules = dict(patched.model.named_modules())
    injected_ids = {
        id(m)
        for (name, bid, _t), m in attention_modules(patched, "attn1").items()
        if name == "output" and bid in block_map.qk_blocks
    }
    injected_attn = [path for path, m in modules.items() if id(m) in injected_ids]

    per_module: dict[str, dict[int, LayerDelta]] = {}
    for s, deltas in enumerate(styles_deltas):
        for path, d in deltas.items():
            per_module.setdefault(path, {})[s] = d
            state.deltas_bytes += d.nbytes()
    for path, deltas in per_module.items():
        m = modules.get(path)
        if m is None or not isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            logger.warning("DiffStyler: LoRA target %s is not a Linear/Conv2d layer of this model; skipped", path)
            continue
        current = patched.get_model_object(path)
        if path in patched.object_patches:  # another node's object patch: our view wraps it
            state.wrapped_patches[path] = current
        patched.add_object_patch(
            path,
            swapped_copy(
                current,
                RowLoRAMixin,
                _ds_state=state,
                _ds_deltas=deltas,
                _ds_in_injected_attention=any(path.startswith(a + ".") for a in injected_attn),
                _ds_context_proj=path.endswith((".attn2.to_k", ".attn2.to_v")),
            ),
        )
    logger.info(
        "DiffStyler: per-row LoRA on %d layers for %d style(s) (%.1f MB of factors)",
        len(per_module),
        len(styles_deltas),
        state.deltas_bytes / 2**20,
    )

    res = patched.get_model_object(block_map.resblock)
    if block_map.resblock in patched.object_patches:
        state.wrapped_patches[block_map.resblock] = res
    patched.add_object_patch(block_map.resblock, swapped_copy(res, InjectedResBlockMixin, _ds_state=state))
    logger.info("DiffStyler: ResBlock feature injection at %s", block_map.resblock)

    state.replace_slots = [
        ("attn1", slot)
        for slot in sorted(attention_modules(patched, "attn1"))
        if slot[0] == "output" and slot[1] in block_map.qk_blocks
    ]
    for i in block_map.qk_blocks:
        for key in replace_block(patched, "attn1", "output", i, lambda previous: make_qk_replace(state, previous)):
            logger.info("DiffStyler: chained Q/K injection onto an existing attn1 replace at %s", key)
    logger.info("DiffStyler: Q/K injection on decoder blocks %s", list(block_map.qk_blocks))

    if settings.get("fusion") == "feature":
        from . import feature_fusion

        attn2 = attention_modules(patched, "attn2")
        state.replace_slots += [("attn2", slot) for slot in sorted(attn2)]
        for name, bid in sorted({(n, b) for n, b, _t in attn2}):
            replace_block(
                patched, "attn2", name, bid, lambda previous: feature_fusion.make_attn2_replace(state, attn2, previous)
            )
        logger.info("DiffStyler: feature-fusion cross-attention on %d transformer blocks", len(attn2))

    patched.add_wrapper_with_key(
        comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY, make_apply_model_wrapper(state)
    )
    patched.add_wrapper_with_key(
        comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, WRAPPER_KEY, make_calc_cond_batch_wrapper(state)
    )
    patched.set_attachments(ATTACHMENT, state)
    return patched, state


STYLE_MODELS_KEY = "diffstyler_style_models"


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
        ours = block_map_for(style_model)
    except ValueError as e:
        raise ValueError(f"styles: {name}: {e}") from None
    theirs = block_map_for(base)
    problems = []
    if ours != theirs or type(style_model.model) is not type(base.model):
        problems.append(
            f"it is a {type(style_model.model).__name__} ({ours.family}) but the Injector's MODEL is a "
            f"{type(base.model).__name__} ({theirs.family})"
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


def install_style_models(patched, state: PatchState, models: dict[int, object], settings: dict) -> None:
    """Patch a clone of each MODEL style's model for the content injection (no LoRA layers) and hand the clones to
    ComfyUI as additional models of ``patched``, so its loader loads them with the base UNet (a second UNet in
    memory). ``state.style_models`` maps style index -> the PatchState of that clone."""
    clones = []
    for i, m in models.items():
        clone, sub = install(m, [{}], (state.style_ids[i],), settings, what=f"style {i + 1} (a MODEL style)")
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
