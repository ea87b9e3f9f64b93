"""A plain, unbatched DiffStyler on Flux.1 (design Sec. 6), for the Flux fidelity tests.

Written for clarity, not speed, and sharing no code with the pack (only ``schedule.in_window``, a pure function, is
restated here): one ``ModelPatcher`` clone per branch with that branch's LoRA merged by ComfyUI's own loader
(``comfy.sd.load_lora_for_models``), the q and k output rows of the Q/K-injected blocks' fused ``img_attn.qkv`` /
``linear1`` zeroed in the LoRA's ``up`` factors first (what the bypass amounts to); a Python loop of Euler steps
``x_next = x + v*(s_next - s)`` over the inversion's sigmas; every branch runs each of its rows in its own model
call (batch 1): the content row (the inverted latent at that sigma, the empty prompt at guidance 1.0), then the cond
row (and the uncond row at cfg > 1). The injection is PyTorch forward hooks on ComfyUI's Flux modules: the
feature block (pre-hook: its input; hook: the content row's image-token update ``out - in`` recorded, the style
rows' image tokens set to ``in + update``) and the Q/K blocks' ``QKNorm`` (image-token q and k blended
``r*content + (1-r)*style``, ``r = min(1, 2t/1000)``, ``t = 1000*sigma``). Masks: latent grid, then the token grid;
later styles win; the v predictions fused, CFG after fusion.

Each Sec. 6 rule is a field of :class:`Rules`, so a test can break exactly one and show the pack is far from it.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812

CONTENT_GUIDANCE = 1.0  # design Sec. 6: the content rows (and the inversion) run at Flux-dev guidance 1.0
DEFAULT_GUIDANCE = 3.5  # what ComfyUI's Flux embeds for a conditioning without a "guidance" entry
UP_SUFFIXES = (".lora_up.weight", ".lora_B.weight")


@dataclass
class FluxStyle:
    lora: dict | None  # LoRA state dict in a format ComfyUI's loader reads, or None (a prompt-only style)
    strength: float
    cond: list  # CONDITIONING (its guidance embedded, e.g. 3.5)
    mask: torch.Tensor  # MASK [1,H,W] at image size (8x the latent)


@dataclass(frozen=True)
class Rules:
    """Design Sec. 6 as the pack's defaults compute it; set one field to break one rule."""

    image_tokens_only: bool = True  # False: the text tokens' update and q/k are injected too
    lora_bypassed: bool = True  # False: the LoRA stays in the injected blocks' q and k rows
    adaptive_blend: bool = True  # False: r = 1 (plain replace)
    token_grid: bool = True  # False: masks fused on the latent grid only
    content_guidance_one: bool = True  # False: the content rows at the branch prompt's own guidance
    v_untouched: bool = True  # False: the image tokens' V blended like Q and K


# ---------------------------------------------------------------------------------------------- blocks, windows


def default_blocks(model) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Sec. 6 defaults: features in the last double block, Q/K in the single blocks with index >= N_single/2."""
    dm = model.model.diffusion_model
    n_double, n_single = len(dm.double_blocks), len(dm.single_blocks)
    return [("double", n_double - 1)], [("single", i) for i in range(n_single) if i >= n_single / 2]


def window_steps(end_fraction: float, steps: int) -> int:
    """Leading steps inside a window ending at ``end_fraction``, half up (as the pack's ``schedule.window_steps``)."""
    return int(math.floor(end_fraction * steps + 0.5))


# ---------------------------------------------------------------------------------------------- LoRA merge


def fused_qk_rows(model, qk_blocks) -> dict[str, int]:
    """``{weight key: rows}`` of the fused projections whose leading ``rows`` (q then k) the bypass cuts."""
    hidden = model.model.diffusion_model.hidden_size
    out = {}
    for kind, i in qk_blocks:
        key = f"diffusion_model.double_blocks.{i}.img_attn.qkv.weight" if kind == "double" else (
            f"diffusion_model.single_blocks.{i}.linear1.weight"
        )  # fmt: skip
        out[key] = 2 * hidden
    return out


def without_qk(model, lora: dict, qk_blocks) -> tuple[dict, int]:
    """``lora`` with the ``up`` rows that land on the q/k rows of the Q/K blocks' fused weights zeroed, found through
    ComfyUI's own key map (a whole fused tensor, kohya/BFL, or a slice of it, diffusers). Returns (LoRA, rows cut)."""
    import comfy.lora

    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    cut = fused_qk_rows(model, qk_blocks)
    out, n_cut = dict(lora), 0
    for name, up in lora.items():
        suffix = next((s for s in UP_SUFFIXES if name.endswith(s)), None)
        if suffix is None:
            continue
        target = key_map.get(name[: -len(suffix)])
        if target is None:
            continue
        key, offset = (target, 0) if isinstance(target, str) else (target[0], target[1][1])
        if key not in cut:
            continue
        lo, hi = 0, min(up.shape[0], cut[key] - offset)
        if hi > lo:
            up = up.clone()
            up[lo:hi] = 0
            out[name] = up
            n_cut += hi - lo
    return out, n_cut


def branch_model(model, lora: dict | None, strength: float, qk_blocks, bypass: bool = True):
    """A clone of ``model`` with ``lora`` merged by ``comfy.sd.load_lora_for_models`` (the Q/K rows cut first when
    ``bypass``). Raises when ComfyUI's loader leaves a key of the LoRA unused (it only logs that)."""
    import comfy.sd

    if lora is None or strength == 0:
        return model.clone()
    if bypass:
        lora, n_cut = without_qk(model, lora, qk_blocks)
        if qk_blocks and not n_cut:
            raise AssertionError("the LoRA has no factors on the Q/K blocks' fused q/k rows: nothing to bypass")
    with logged_warnings() as warnings:
        clone, _ = comfy.sd.load_lora_for_models(model, None, lora, strength, 0.0)
    unused = [w for w in warnings if "not loaded" in w.lower()]
    if unused or not clone.patches:
        raise AssertionError(f"ComfyUI's loader did not load the whole LoRA: {unused[:4]}")
    return clone


@contextlib.contextmanager
def logged_warnings():
    """The messages of the WARNING (and above) records logged inside the block."""
    import logging

    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler = Collect(logging.WARNING)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield messages
    finally:
        root.removeHandler(handler)


# ---------------------------------------------------------------------------------------------- masks


def latent_mask(mask: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Bilinear to the latent grid (``align_corners=False``), any value above 0 is in: bool ``[1,1,h,w]``."""
    m = mask.float().reshape(1, 1, *mask.shape[-2:])
    if m.shape[-2:] != (h, w):
        m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
    return m > 0


def token_mask(m: torch.Tensor, patch: int = 2) -> torch.Tensor:
    """A latent mask on the token grid: a ``patch x patch`` cell block is in when any of its cells is (bool, the
    latent's size)."""
    t = F.max_pool2d(m.float(), patch) > 0
    return t.repeat_interleave(patch, -2).repeat_interleave(patch, -1)


def style_masks(styles: list[FluxStyle], h: int, w: int, rules: Rules) -> list[torch.Tensor]:
    masks = [latent_mask(s.mask, h, w) for s in styles]
    return [token_mask(m) for m in masks] if rules.token_grid else masks


# ---------------------------------------------------------------------------------------------- the model call


def velocity(clone, x: torch.Tensor, sigma: float, cond: list, guidance="own") -> torch.Tensor:
    """The diffusion model's raw output (v) for the model-space latent ``x`` ``[1,16,h,w]`` at ``sigma`` with the
    CONDITIONING ``cond`` (its first entry), ``guidance`` "own": the conditioning's (ComfyUI's default 3.5 when
    absent); ComfyUI loads the clone (its weight patches applied) first."""
    import comfy.model_management

    comfy.model_management.load_models_gpu([clone])
    base = clone.model
    dev = comfy.model_management.get_torch_device()
    context, extra = cond[0][0], cond[0][1]
    g = extra.get("guidance", DEFAULT_GUIDANCE) if guidance == "own" else guidance
    sigma_t = torch.full((x.shape[0],), float(sigma), device=dev)
    with torch.no_grad():
        out = base.diffusion_model(
            x.to(dev).float(),
            base.model_sampling.timestep(sigma_t),
            context.to(dev).float(),
            y=extra["pooled_output"].to(dev).float(),
            guidance=None if g is None else torch.full((x.shape[0],), float(g), device=dev),
            transformer_options=dict(clone.model_options.get("transformer_options", {})),
        )
    return out.float().cpu()


# ---------------------------------------------------------------------------------------------- injection


class Injection:
    """Forward hooks on one branch's Flux modules. ``mode`` "record": the content row's image-token update of the
    feature blocks and its image-token q, k (and v) of the Q/K blocks are stored; "apply": a style row takes the
    stored update (``features``) and blends q, k with ratio ``r`` (``qk``); None: the hooks pass through."""

    def __init__(self, feature_blocks, qk_blocks, n_img: int, hidden: int, rules: Rules):
        self.feature_blocks, self.qk_blocks, self.rules = feature_blocks, qk_blocks, rules
        self.n_img, self.hidden = n_img, hidden
        self.mode, self.features, self.qk, self.r = None, False, False, 1.0
        self.store: dict = {}
        self.inputs: dict = {}

    def tokens(self, length: int, kind: str) -> slice:
        """The injected token positions of a sequence: the image tokens (last ``n_img`` in a single block)."""
        if not self.rules.image_tokens_only or kind == "double":
            return slice(0, length)
        return slice(length - self.n_img, length)

    @contextlib.contextmanager
    def hooks(self, clone):
        dm = clone.model.diffusion_model
        handles = []
        for kind, i in self.feature_blocks:
            block = (dm.double_blocks if kind == "double" else dm.single_blocks)[i]
            handles.append(block.register_forward_pre_hook(self._block_in(kind, i), with_kwargs=True))
            handles.append(block.register_forward_hook(self._block_out(kind, i), with_kwargs=True))
        for kind, i in self.qk_blocks:
            if kind == "double":
                attns = [("img", dm.double_blocks[i].img_attn)]
                if not self.rules.image_tokens_only:
                    attns.append(("txt", dm.double_blocks[i].txt_attn))
                for stream, attn in attns:
                    handles.append(attn.norm.register_forward_hook(self._qk(("double", i, stream))))
                    if not self.rules.v_untouched:
                        handles.append(attn.qkv.register_forward_hook(self._v(("double", i, stream))))
            else:
                handles.append(dm.single_blocks[i].norm.register_forward_hook(self._qk(("single", i, "all"))))
                if not self.rules.v_untouched:
                    handles.append(dm.single_blocks[i].linear1.register_forward_hook(self._v(("single", i, "all"))))
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def _block_in(self, kind, i):
        def pre(module, args, kwargs):
            if kind == "double":
                img = kwargs["img"] if "img" in kwargs else args[0]
                txt = kwargs["txt"] if "txt" in kwargs else args[1]
                self.inputs[(kind, i)] = (img.clone(), txt.clone())  # the block adds to its inputs in place
            else:
                x = kwargs["img"] if "img" in kwargs else args[0]
                self.inputs[(kind, i)] = x.clone()

        return pre

    def _block_out(self, kind, i):
        def post(module, args, kwargs, out):
            saved = self.inputs.pop((kind, i))
            if self.mode is None or (self.mode == "apply" and not self.features):
                return out
            if kind == "double":
                (img_in, txt_in), (img, txt) = saved, out
                if self.mode == "record":
                    self.store[(kind, i)] = (img - img_in, txt - txt_in)
                    return out
                d_img, d_txt = self.store[(kind, i)]
                return img_in + d_img, (txt_in + d_txt if not self.rules.image_tokens_only else txt)
            sel = self.tokens(out.shape[1], kind)
            if self.mode == "record":
                self.store[(kind, i)] = (out - saved)[:, sel].clone()
                return out
            new = out.clone()
            new[:, sel] = saved[:, sel] + self.store[(kind, i)]
            return new

        return post

    def _blend(self, key, parts):
        """Record or blend the injected tokens of each tensor in ``parts`` (``[B,heads,L,D]`` q/k or ``[B,L,*]``)."""
        if self.mode == "record":
            self.store[key] = [p.clone() for p in parts]
            return parts
        r = self.r
        return [r * c + (1.0 - r) * p for c, p in zip(self.store[key], parts)]

    def _qk(self, key):
        kind, _i, stream = key

        def hook(module, args, out):
            if self.mode is None or (self.mode == "apply" and not self.qk):
                return out
            q, k = out
            sel = self.tokens(q.shape[2], kind if stream != "all" else "single")
            parts = self._blend(("qk", *key), [q[:, :, sel], k[:, :, sel]])
            if self.mode == "record":
                return out
            q, k = q.clone(), k.clone()
            q[:, :, sel], k[:, :, sel] = parts
            return q, k

        return hook

    def _v(self, key):
        kind, _i, stream = key

        def hook(module, args, out):
            if self.mode is None or (self.mode == "apply" and not self.qk):
                return out
            h = self.hidden
            sel = self.tokens(out.shape[1], kind if stream != "all" else "single")
            (v,) = self._blend(("v", *key), [out[:, sel, 2 * h : 3 * h]])
            if self.mode == "record":
                return out
            out = out.clone()
            out[:, sel, 2 * h : 3 * h] = v
            return out

        return hook


# ---------------------------------------------------------------------------------------------- the pipeline


def diffstyler(
    model,
    sigmas: torch.Tensor,
    trajectory: torch.Tensor,
    content_vae: torch.Tensor,
    styles: list[FluxStyle],
    positive: list,
    negative: list,
    empty: list,
    cfg: float,
    background: str = "exact",
    feature_end: float = 0.6,
    qk_end: float = 0.5,
    blocks=None,
    rules: Rules = Rules(),
    trace: list | None = None,
) -> torch.Tensor:
    """DiffStyler on a Flux ``model``: the final latent (VAE space ``[1,16,h,w]``).

    ``sigmas`` ``[steps+1]`` descending to 0 and ``trajectory`` ``[steps+1,1,16,h,w]`` (model space, ``[i]`` at
    ``sigmas[i]``, ``[-1]`` the clean content) come from the inversion; ``content_vae`` is the content latent.
    ``background`` "exact": outside the union of the masks the latent is the trajectory's at the next sigma and the
    result the content; "model": a base branch (no LoRA, ``positive``, injected on every step) predicts there.
    ``blocks``: (feature blocks, Q/K blocks) as ``[("double"|"single", index)]``, default :func:`default_blocks`.
    ``trace``: when a list, every step's latent (model space) is appended to it.
    """
    feature_blocks, qk_blocks = default_blocks(model) if blocks is None else blocks
    sig = [float(s) for s in sigmas]
    steps = len(sig) - 1
    _b, _c, h, w = content_vae.shape
    masks = style_masks(styles, h, w, rules)
    union = torch.zeros(1, 1, h, w, dtype=torch.bool)
    for m in masks:
        union |= m
    n_img = (h // 2) * (w // 2)
    branches = [
        (branch_model(model, s.lora, s.strength, qk_blocks, bypass=rules.lora_bypassed), s.cond, False) for s in styles
    ]
    if background == "model":
        branches.insert(0, (model.clone(), positive, True))
    hidden = model.model.diffusion_model.hidden_size
    injections = [Injection(feature_blocks, qk_blocks, n_img, hidden, rules) for _ in branches]
    z = trajectory[0].clone().float()
    for i in range(steps):
        s, s_next = sig[i], sig[i + 1]
        preds = []
        for (clone, cond, is_base), inj in zip(branches, injections):
            inj.features = is_base or i < window_steps(feature_end, steps)
            inj.qk = is_base or i < window_steps(qk_end, steps)
            inj.r = min(1.0, 2.0 * (1000.0 * s) / 1000.0) if rules.adaptive_blend else 1.0
            own = cond[0][1].get("guidance", DEFAULT_GUIDANCE)
            content_guidance = CONTENT_GUIDANCE if rules.content_guidance_one else own
            with inj.hooks(clone):
                if inj.features or inj.qk:
                    inj.mode = "record"
                    velocity(clone, trajectory[i], s, empty, guidance=content_guidance)
                inj.mode = "apply"
                vc = velocity(clone, z, s, cond)
                vu = velocity(clone, z, s, negative) if cfg > 1.0 else None
                inj.mode = None
            preds.append((vu, vc))
        if background == "model":
            (fu, fc), style_preds = preds[0], preds[1:]
        else:
            fu, fc, style_preds = torch.zeros_like(z), torch.zeros_like(z), preds
        for m, (pu, pc) in zip(masks, style_preds):  # later styles win where masks overlap
            fc = torch.where(m, pc, fc)
            if cfg > 1.0:
                fu = torch.where(m, pu, fu)
        v = fu + cfg * (fc - fu) if cfg > 1.0 else fc
        z = z + v * (s_next - s)
        if background == "exact":
            z = torch.where(union, z, trajectory[i + 1].float())
        if trace is not None:
            trace.append(z.clone())
    out = model.model.process_latent_out(z)
    if background == "exact":
        out = torch.where(union, out, content_vae.float())
    return out


def plain_euler(model, sigmas: torch.Tensor, start: torch.Tensor, positive: list, negative: list, cfg: float):
    """Plain Euler sampling (no styles, no injection) from the model-space ``start`` at ``sigmas[0]``: VAE space."""
    clone = model.clone()
    sig = [float(s) for s in sigmas]
    z = start.clone().float()
    for s, s_next in zip(sig, sig[1:]):
        v = velocity(clone, z, s, positive)
        if cfg > 1.0:
            vu = velocity(clone, z, s, negative)
            v = vu + cfg * (v - vu)
        z = z + v * (s_next - s)
    return model.model.process_latent_out(z)
