"""ModelPatcher patches for DiffStyler: per-row LoRA, ResBlock feature and Q/K injection.

Everything is installed on a ``ModelPatcher.clone()`` through ComfyUI's extension points (design
Sec. 2): object patches (class-swapped shallow copies that keep parameter names), attn1 replace
patches (chained to any that another pack registered) and a keyed APPLY_MODEL wrapper. Object
patches stay on the model after sampling, so every patch does nothing unless a DiffStyler run is
active (``PatchState.run``), and then only on the rows it owns for the current UNet call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import comfy.ldm.modules.attention as attention
import comfy.patcher_extension
import torch
import torch.nn.functional as F  # noqa: N812

from ..core.lora import LayerDelta, conv2d_delta, linear_delta
from ..core.schedule import blend_qk, find_sigma_index, in_window, qk_blend_ratio

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
    lora_block: tuple | None = None  # (start, rows per style, styles) when styles own equal adjacent blocks
    res_rows: torch.Tensor | None = None  # rows whose ResBlock residual is replaced ...
    res_src: torch.Tensor | None = None  # ... by these (content) rows
    qk_rows: torch.Tensor | None = None
    qk_src: torch.Tensor | None = None
    qk_ratio: float = 1.0
    lora_in_injected_attention: bool = True
    res_cached: torch.Tensor | None = None  # content residual rows from the feature cache (instead of res_src)
    qk_cached: dict | None = None  # (block, transformer index) -> (q, k) from the feature cache
    cached_batch_index: torch.Tensor | None = None  # for each injected row, its batch item in the cache
    fused_rows: torch.Tensor | None = None  # feature-fusion mode: rows shared by every style
    fused_batch_index: torch.Tensor | None = None
    fused_uncond: list | None = None
    fused_role_index: torch.Tensor | None = None  # per fused row: 0 cond, 1 uncond
    fused_weights: list | None = None  # per style, then background: [B,1,h,w]
    fused_contexts: list | None = None  # per style, then background: (cond context, uncond context)
    fused_latent_hw: tuple | None = None
    fused_token_cache: dict = field(default_factory=dict)


@dataclass
class RunPlan:
    """What a DiffStyler guider activates for one sampling run."""

    roles: list[tuple[int, bool]]  # cond index -> (branch index, is_uncond); branch -1 = no LoRA, no injection
    inject_branches: set[int]  # branches that receive content features
    lora_branch_to_style: dict[int, int]  # branch -> style index whose deltas apply
    sample_sigmas: torch.Tensor
    content_latent_at: object  # callable(sigma) -> model-space [B,C,h,w]
    content_conditioning: dict  # name -> ComfyUI CONDRegular for the content rows
    feature_end: float
    qk_end: float
    qk_blend: str
    lora_in_injected_attention: bool
    model_sampling: object
    feature_cache: object = None
    fused_branch: int | None = None
    fused_weights: list | None = None
    fused_contexts: list | None = None
    latent_hw: tuple | None = None
    fused_kv_cache: dict = field(default_factory=dict)  # feature fusion: region prompts' K/V per layer


class PatchState:
    """Shared by every patch one Injector installed; ``run``/``call`` are set only while sampling."""

    def __init__(self, block_map: BlockMap, n_styles: int, style_ids: tuple[str, ...], settings: dict):
        self.block_map = block_map
        self.n_styles = n_styles
        self.style_ids = style_ids
        self.settings = dict(settings)
        self.styles: list | None = None  # the Style objects, for samplers whose styles input is not connected
        self.run: RunPlan | None = None
        self.call: CallPlan | None = None
        self.deltas_bytes = 0
        self.replace_slots: list[tuple[str, tuple]] = []  # ("attn1"/"attn2", (block, id, transformer index))

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
    cls = type(f"DiffStyler{base.__name__}", (mixin, base), {"_ds_cache": {}, **class_attrs})
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
        if call is None or (not call.lora_rows and call.fused_rows is None):
            return out
        if self._ds_in_injected_attention and not call.lora_in_injected_attention:
            return out
        if call.fused_rows is not None and not self._ds_context_proj:
            from .feature_fusion import fused_lora_delta

            delta = fused_lora_delta(self, x, call, self._ds_deltas, self._ds_cast)
            if delta is not None:
                out = out.index_add(0, call.fused_rows, delta.to(out.dtype))
        if call.lora_block is not None and self._ds_stackable(call):
            return self._ds_stacked(x, out, call)
        for style, rows in call.lora_rows.items():
            d = self._ds_deltas.get(style)
            if d is None or rows.numel() == 0:
                continue
            d = self._ds_cast(style, d, x)
            rng = call.lora_ranges.get(style)
            if rng is not None:  # contiguous rows: a view, and an in-place add on the fresh output
                a, b = rng
                if not self._ds_addmm(x[a:b], out[a:b], d):
                    out[a:b] += self._ds_delta(x[a:b], d).to(out.dtype)
                continue
            xr = x.index_select(0, rows)
            out = out.index_add(0, rows, self._ds_delta(xr, d).to(out.dtype))
        return out

    def _ds_addmm(self, x, out, d: LayerDelta) -> bool:
        """``out += up(down(x))`` as one matmul and one fused multiply-add into ``out`` (a Linear's rows).

        False (nothing done) for conv layers, full-weight or bias deltas and mixed dtypes.
        """
        if (
            d.down is None
            or d.weight is not None
            or d.bias is not None
            or d.scale != 1.0
            or isinstance(self, torch.nn.Conv2d)
            or x.dtype != out.dtype
            or not out.is_contiguous()
        ):
            return False
        h = F.linear(x.reshape(-1, x.shape[-1]), d.down.flatten(1))
        out.view(-1, out.shape[-1]).addmm_(h, d.up.flatten(1).t())
        return True

    def _ds_delta(self, xr, d: LayerDelta):
        if isinstance(self, torch.nn.Conv2d):
            return conv2d_delta(xr, d, self.stride, self.padding, self.dilation, self.groups)
        return linear_delta(xr, d)

    def _ds_stackable(self, call) -> bool:
        styles = call.lora_block[2]
        ok = type(self).__dict__.get("_ds_stack_ok")
        if ok is None:
            ds = self._ds_deltas
            ranks = {ds[s].down.shape[0] for s in ds if ds[s].down is not None}
            ok = (
                not isinstance(self, torch.nn.Conv2d)
                and len(ranks) == 1
                and all(d.weight is None and d.bias is None and d.down is not None for d in ds.values())
            )
            type(self)._ds_stack_ok = ok
        return ok and all(s in self._ds_deltas for s in styles)

    def _ds_stacked(self, x, out, call):
        """Every style's low-rank delta in two batched matmuls (rows of style i form block i)."""
        start, per, styles = call.lora_block
        key = ("stack", styles, x.device, x.dtype)
        cache = type(self)._ds_cache
        if key not in cache:
            ds = [self._ds_deltas[s] for s in styles]
            down = torch.stack([d.down.flatten(1) for d in ds]).to(x.device, x.dtype)  # [k, r, in]
            up = torch.stack([d.up.flatten(1) * d.scale for d in ds]).to(x.device, x.dtype)  # [k, out, r]
            cache[key] = (down.transpose(1, 2).contiguous(), up.transpose(1, 2).contiguous())
        down_t, up_t = cache[key]
        k = len(styles)
        xs = x[start : start + k * per]
        lead = xs.shape[1:-1]
        h = torch.bmm(xs.reshape(k, -1, xs.shape[-1]), down_t)
        delta = torch.bmm(h, up_t).reshape(k * per, *lead, up_t.shape[-1])
        out[start : start + k * per] += delta.to(out.dtype)
        return out

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
        if call is None or call.res_rows is None:
            return super()._forward(x, emb)
        h = self._ds_residual(x, emb)
        if call.res_cached is not None:
            h = h.index_copy(0, call.res_rows, call.res_cached.to(device=h.device, dtype=h.dtype))
        else:
            h = h.index_copy(0, call.res_rows, h.index_select(0, call.res_src))
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
        if call is not None and call.qk_rows is not None:
            r = call.qk_ratio
            if call.qk_cached is not None:
                key = (int(extra_options["block"][1]), int(extra_options.get("block_index", 0)))
                q_c, k_c = call.qk_cached[key]
                idx = call.cached_batch_index.to(q.device)
                q_src = q_c.to(device=q.device, dtype=q.dtype).index_select(0, idx)
                k_src = k_c.to(device=k.device, dtype=k.dtype).index_select(0, idx)
            else:
                q_src, k_src = q.index_select(0, call.qk_src), k.index_select(0, call.qk_src)
            q = q.index_copy(0, call.qk_rows, blend_qk(q_src, q.index_select(0, call.qk_rows), r))
            k = k.index_copy(0, call.qk_rows, blend_qk(k_src, k.index_select(0, call.qk_rows), r))
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


def _index(rows: list[int], device) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long, device=device)


def make_apply_model_wrapper(state: PatchState):
    """Keyed APPLY_MODEL wrapper: while a run is active, put the content rows first in every UNet call
    that holds a branch inside an injection window, set the call's row plan, and drop those rows again."""

    def diffstyler_apply_model(
        executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs
    ):
        run = state.run
        if run is None:
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        cond_or_uncond = list(transformer_options.get("cond_or_uncond", []))
        n_chunks = max(1, len(cond_or_uncond))
        b = x.shape[0] // n_chunks
        sigma = t[0]
        step = find_sigma_index(run.sample_sigmas, sigma)
        steps = int(run.sample_sigmas.shape[0]) - 1
        res_on = step >= 0 and in_window(step, run.feature_end, steps)
        qk_on = step >= 0 and in_window(step, run.qk_end, steps)
        roles = [run.roles[ci] if 0 <= ci < len(run.roles) else (-1, False) for ci in cond_or_uncond]
        inject_chunks = [j for j, (branch, _u) in enumerate(roles) if branch in run.inject_branches]
        cache = run.feature_cache
        res_cached = cache.res.get(step) if (cache is not None and res_on) else None
        qk_cached = cache.qk.get(step) if (cache is not None and qk_on) else None
        from_cache = (
            bool(inject_chunks)
            and (res_on or qk_on)
            and (not res_on or res_cached is not None)
            and (not qk_on or qk_cached is not None)
        )
        need_content = (res_on or qk_on) and bool(inject_chunks) and not from_cache
        offset = b if need_content else 0
        if need_content:
            if control is not None or c_concat is not None:
                raise ValueError(
                    "DiffStyler's content injection cannot run together with ControlNet or inpainting-model inputs "
                    "in the same UNet call: set feature_injection_end and qk_injection_end to 0 to use them"
                )
            x_src = run.content_latent_at(sigma).to(device=x.device, dtype=x.dtype)
            if x_src.shape[0] != b:
                raise ValueError(
                    f"inversion: the content latent batch ({x_src.shape[0]}) differs from the sampled one ({b})"
                )
            x = torch.cat([x_src, x])
            t = torch.cat([t[:b], t])
            c_crossattn, kwargs = _prepend_conditioning(run.content_conditioning, b, c_crossattn, kwargs)
        device = x.device
        lora_rows: dict[int, list[int]] = {}
        for j, (branch, _u) in enumerate(roles):
            style = run.lora_branch_to_style.get(branch)
            if style is not None:
                lora_rows.setdefault(style, []).extend(range(offset + j * b, offset + (j + 1) * b))
        fused_chunks = [
            j for j, (branch, _u) in enumerate(roles) if run.fused_branch is not None and branch == run.fused_branch
        ]
        inj_rows = [offset + j * b + i for j in inject_chunks for i in range(b)] if (need_content or from_cache) else []
        inj_src = [i for _j in inject_chunks for i in range(b)] if (need_content or from_cache) else []
        batch_index = _index(inj_src, device) if from_cache else None
        timestep = float(run.model_sampling.timestep(sigma.reshape(1)).reshape(-1)[0])
        ranges = {s: (r[0], r[-1] + 1) for s, r in lora_rows.items() if r and r == list(range(r[0], r[-1] + 1))}
        block = None
        if len(ranges) == len(lora_rows) and len(ranges) > 1:
            order = sorted(ranges, key=lambda s_: ranges[s_][0])
            per = ranges[order[0]][1] - ranges[order[0]][0]
            if all(ranges[s_][1] - ranges[s_][0] == per for s_ in order) and all(
                ranges[order[i]][0] == ranges[order[0]][0] + i * per for i in range(len(order))
            ):
                block = (ranges[order[0]][0], per, tuple(order))
        plan = CallPlan(
            lora_ranges=ranges,
            lora_block=block,
            lora_rows={s: _index(r, device) for s, r in lora_rows.items()},
            res_rows=_index(inj_rows, device) if ((need_content or from_cache) and res_on) else None,
            res_src=_index(inj_src, device) if (need_content and res_on) else None,
            qk_rows=_index(inj_rows, device) if ((need_content or from_cache) and qk_on) else None,
            qk_src=_index(inj_src, device) if (need_content and qk_on) else None,
            qk_ratio=qk_blend_ratio(timestep, run.qk_blend),
            lora_in_injected_attention=run.lora_in_injected_attention,
            res_cached=res_cached.to(device).index_select(0, batch_index) if (from_cache and res_on) else None,
            qk_cached=qk_cached if (from_cache and qk_on) else None,
            cached_batch_index=batch_index,
        )
        if fused_chunks:
            plan.fused_rows = _index([offset + j * b + i for j in fused_chunks for i in range(b)], device)
            plan.fused_batch_index = _index([i for _j in fused_chunks for i in range(b)], device)
            plan.fused_uncond = [roles[j][1] for j in fused_chunks for _i in range(b)]
            plan.fused_role_index = _index([int(u) for u in plan.fused_uncond], device)
            plan.fused_weights = run.fused_weights
            plan.fused_contexts = run.fused_contexts
            plan.fused_latent_hw = run.latent_hw
        state.call = plan
        try:
            out = executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        finally:
            state.call = None
        return out[offset:] if offset else out

    return diffstyler_apply_model


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


def attn1_module_paths(block_map: BlockMap, model) -> set[str]:
    """Module paths of the attn1 projections inside the injected decoder blocks."""
    out = set()
    for name, _m in model.model.named_modules():
        for i in block_map.qk_blocks:
            prefix = f"diffusion_model.output_blocks.{i}."
            if name.startswith(prefix) and ".attn1." in name:
                out.add(name)
    return out


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


def install(model, styles_deltas: list[dict[str, LayerDelta]], style_ids: tuple[str, ...], settings: dict):
    """Patch a clone of ``model``; returns (patched clone, PatchState)."""
    block_map = block_map_for(model)
    patched = model.clone()
    state = PatchState(block_map, len(styles_deltas), style_ids, settings)
    modules = dict(patched.model.named_modules())
    injected_attn = attn1_module_paths(block_map, patched)

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
        patched.add_object_patch(
            path,
            swapped_copy(
                current,
                RowLoRAMixin,
                _ds_state=state,
                _ds_deltas=deltas,
                _ds_in_injected_attention=path.rsplit(".", 1)[0] in injected_attn or path in injected_attn,
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
    patched.set_attachments(ATTACHMENT, state)
    return patched, state


def state_of(model) -> PatchState | None:
    return model.get_attachment(ATTACHMENT)
