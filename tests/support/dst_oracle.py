"""A plain, unbatched implementation of the released DiffStyler pipeline (design Sec. 5), for the fidelity tests.

Written for clarity, not speed, and sharing no code with the pack: one ``ModelPatcher`` clone per branch with
that branch's LoRA merged by ComfyUI's own LoRA loader (the keys of the Q/K-injected self-attention layers left
out, which is what the released pipeline's bypass amounts to), a Python loop over the fine inversion grid and the
sampling steps in the VP parameterisation diffusers' DDIM uses (``z_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps``),
each branch evaluated on its own ``[content, uncond, cond]`` batch, the features injected by a forward hook on
the ResBlock and an attn1 replace of ComfyUI's, hard masks, fusion of the noise predictions, CFG once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812

# where the released pipeline injects (design Sec. 1, step 3); SDXL: the pack's documented block map
BLOCKS = {"sd1": ("output_blocks", 4, range(4, 12)), "sdxl": ("output_blocks", 1, range(1, 6))}


@dataclass
class OracleStyle:
    lora: dict | None  # LoRA state dict (any format ComfyUI's loader reads) or None
    strength: float
    cond: list  # CONDITIONING
    mask: torch.Tensor  # MASK [1,H,W]
    model: object = None  # a MODEL holding the style instead of a LoRA: that branch runs this model as it is


def family(model) -> str:
    return "sdxl" if len(model.model.diffusion_model.output_blocks) == 9 else "sd1"


def alphas(model) -> torch.Tensor:
    """alphas_cumprod[t] for t = 0..999, from ComfyUI's discrete sigma table (float64)."""
    sig = model.get_model_object("model_sampling").sigmas.detach().double().cpu()
    return 1.0 / (1.0 + sig * sig)


def sampling_timesteps(model, steps: int) -> list[int]:
    """The ddim_uniform timesteps, noisiest first (ComfyUI: sigmas at t = 1, 1 + 1000 // steps, ...)."""
    import comfy.samplers

    ms = model.get_model_object("model_sampling")
    table = ms.sigmas.detach().float().cpu()
    sig = comfy.samplers.calculate_sigmas(ms, "ddim_uniform", steps).cpu()[:-1]
    return [int(torch.argmin((table - s).abs())) for s in sig.tolist()]


def injected_attn1_prefixes(model) -> list[str]:
    _name, _res, qk = BLOCKS[family(model)]
    dm = model.model.diffusion_model
    out = []
    for bid in qk:
        for li, layer in enumerate(dm.output_blocks[bid]):
            for ti, tb in enumerate(getattr(layer, "transformer_blocks", [])):
                if getattr(tb, "attn1", None) is not None:
                    out.append(f"diffusion_model.output_blocks.{bid}.{li}.transformer_blocks.{ti}.attn1.")
    return out


def branch_model(model, lora: dict | None, strength: float, bypass_injected: bool = True):
    """A clone of ``model`` with ``lora`` merged by ComfyUI's own loader, minus the injected attn1 layers' keys."""
    import comfy.lora

    clone = model.clone()
    if lora is None or strength == 0:
        return clone
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    patches = comfy.lora.load_lora(lora, key_map, log_missing=False)
    skip = tuple(injected_attn1_prefixes(model)) if bypass_injected else ()
    kept = {k: v for k, v in patches.items() if not (isinstance(k, str) and k.startswith(skip))}
    clone.add_patches(kept, strength)
    return clone


def unet_raw(clone, z: torch.Tensor, t: int, conds: list[list], transformer_options: dict) -> torch.Tensor:
    """The UNet's own output (eps or v) for the VP latents ``z`` ``[N,C,h,w]`` at timestep ``t``, row i with the
    CONDITIONING ``conds[i]``; ComfyUI loads the clone (its weight patches applied) first."""
    import comfy.model_management

    comfy.model_management.load_models_gpu([clone])
    base = clone.model
    dev = comfy.model_management.get_torch_device()
    context = torch.cat([c[0][0] for c in conds]).to(dev)
    kwargs = {}
    if family(clone) == "sdxl":
        kwargs["y"] = torch.cat(
            [base.encode_adm(pooled_output=c[0][1]["pooled_output"], width=64, height=64) for c in conds]
        ).to(dev)
    opts = dict(clone.model_options.get("transformer_options", {}))
    opts.update(transformer_options)
    ts = torch.full((z.shape[0],), float(t), device=dev)
    with torch.no_grad():
        return base.diffusion_model(z.to(dev), ts, context=context, transformer_options=opts, **kwargs).float().cpu()


def to_eps(raw: torch.Tensor, z: torch.Tensor, a: float, v_prediction: bool) -> torch.Tensor:
    if not v_prediction:
        return raw
    return math.sqrt(a) * raw + math.sqrt(1.0 - a) * z


def invert(model, content_vae: torch.Tensor, steps: int, empty: list, stride: int = 1) -> dict[int, torch.Tensor]:
    """Released DDIM inversion: z_0 = content at alphas_cumprod[0], then t = 1, 2, ... up to the first sampling
    timestep, each step evaluating the UNet on the current latent with the next timestep. Returns {t: z_t}."""
    a = alphas(model)
    v = model.model.model_type.name == "V_PREDICTION"
    ts = sampling_timesteps(model, steps)
    grid = sorted(set(ts) | set(range(1, ts[0] + 1, stride))) if stride else sorted(ts)
    z = model.model.process_latent_in(content_vae.clone().float())
    clone = model.clone()
    keep = {}
    prev = 0
    for t in grid:
        eps = to_eps(unet_raw(clone, z, t, [empty], {}), z, float(a[prev]), v)
        x0 = (z - math.sqrt(1 - a[prev]) * eps) / math.sqrt(a[prev])
        z = math.sqrt(a[t]) * x0 + math.sqrt(1 - a[t]) * eps
        if t in ts:
            keep[t] = z.clone()
        prev = t
    return keep


def hard_mask(mask: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Bilinear to the latent grid, then every value above 0 is in (``[1,1,h,w]`` bool)."""
    m = mask.float().reshape(1, 1, *mask.shape[-2:])
    return F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False) > 0


class Injection:
    """Forward hook on the injected ResBlock and attn1 replaces on one branch clone: rows ``[content, uncond,
    cond]`` (one each), the uncond and cond rows take the content row's residual / blended Q and K."""

    def __init__(self, clone):
        self.res_on = False
        self.qk_on = False
        self.ratio = 1.0
        fam = family(clone)
        _n, res_id, qk = BLOCKS[fam]
        self.block = clone.model.diffusion_model.output_blocks[res_id][0]
        for bid in qk:
            clone.set_model_attn1_replace(self.attn1, "output", bid)

    def __enter__(self):
        self.handle = self.block.register_forward_hook(self.hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()

    def hook(self, module, args, out):
        if not self.res_on:
            return out
        x = args[0]
        skip = module.skip_connection(x)
        h = out - skip
        return skip + torch.cat([h[:1], h[:1].expand(out.shape[0] - 1, *h.shape[1:])])

    def attn1(self, q, k, v, extra_options):
        import comfy.ldm.modules.attention as attention

        if self.qk_on:
            r = self.ratio
            q = torch.cat([q[:1], r * q[:1] + (1 - r) * q[1:]])
            k = torch.cat([k[:1], r * k[:1] + (1 - r) * k[1:]])
        return attention.optimized_attention(q, k, v, extra_options["n_heads"])


def diffstyler(
    model,
    content_vae: torch.Tensor,
    steps: int,
    styles: list[OracleStyle],
    positive: list,
    negative: list,
    empty: list,
    cfg: float,
    background: str = "model",
    res_end: float = 0.6,
    qk_end: float = 0.5,
    inverted: dict | None = None,
) -> torch.Tensor:
    """The released pipeline's final latent (VAE space ``[1,C,h,w]``); ``background='exact'`` keeps the inverted
    latent outside the union of the masks (the pack's default, our addition) instead of a base branch."""
    a = alphas(model)
    v = model.model.model_type.name == "V_PREDICTION"
    ts = sampling_timesteps(model, steps)
    src = inverted if inverted is not None else invert(model, content_vae, steps, empty)
    _b, _c, h, w = content_vae.shape
    masks = [hard_mask(s.mask, h, w) for s in styles]
    union = torch.zeros(1, 1, h, w, dtype=torch.bool)
    for m in masks:
        union |= m
    res_n, qk_n = math.floor(res_end * steps + 0.5), math.floor(qk_end * steps + 0.5)
    branches = [
        (s.model.clone() if s.model is not None else branch_model(model, s.lora, s.strength), s.cond, False)
        for s in styles
    ]
    if background == "model":
        branches.insert(0, (branch_model(model, None, 0.0), positive, True))
    injections = [Injection(clone) for clone, _c, _base in branches]
    z = src[ts[0]].clone()
    for i, t in enumerate(ts):
        t_next = ts[i + 1] if i + 1 < len(ts) else 0  # the last step ends at alphas_cumprod[0]
        preds = []
        for (clone, cond, is_base), inj in zip(branches, injections):
            inj.res_on = is_base or i < res_n
            inj.qk_on = is_base or i < qk_n
            inj.ratio = min(1.0, 2.0 * t / 1000.0)
            rows = torch.cat([src[t], z, z])
            with inj:
                raw = unet_raw(clone, rows, t, [empty, negative, cond], {})
            eps = to_eps(raw, rows, float(a[t]), v)
            preds.append((eps[1:2], eps[2:3]))
        if background == "model":
            (fu, fc), style_preds = preds[0], preds[1:]
        else:
            fu = fc = torch.zeros_like(z)
            style_preds = preds
        for m, (pu, pc) in zip(masks, style_preds):  # later masks overwrite earlier ones
            fu, fc = torch.where(m, pu, fu), torch.where(m, pc, fc)
        eps = fu + cfg * (fc - fu)
        x0 = (z - math.sqrt(1 - a[t]) * eps) / math.sqrt(a[t])
        z = math.sqrt(a[t_next]) * x0 + math.sqrt(1 - a[t_next]) * eps
        if background == "exact" and t_next in src:
            z = torch.where(union, z, src[t_next])
    out = model.model.process_latent_out(z.float())
    if background == "exact":
        out = torch.where(union, out, content_vae.float())
    return out
