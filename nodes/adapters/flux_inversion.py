"""Flow-matching inversion of a Flux MODEL through ComfyUI's own guider/sampler machinery (design Sec. 6).

The content latent is inverted by Euler on the flipped schedule (:mod:`..core.flow`) with the empty prompt,
guidance 1.0 and cfg 1, on the sampler's own sigmas or a finer grid, and the latents at the sampling sigmas are
kept (the trajectory). The model runs through ``CFGGuider`` as in core sampling (model management, wrappers and
conds as there), with progress and ComfyUI's interrupt as for the DDIM inversion. The velocity is read from the
diffusion model's own output (a keyed wrapper on a clone): ComfyUI's sampler sees ``denoised = x - sigma*v``,
which loses ``v`` at sigma 0, where the inversion's first step evaluates the clean latent.
"""

from __future__ import annotations

import logging

import comfy.model_management
import comfy.model_sampling
import comfy.patcher_extension
import comfy.samplers
import comfy.utils
import torch
from tqdm.auto import trange

from ..core import flow
from ..core.inversion import InversionResult
from .inversion import make_fingerprint, validate_latent, walk_inverse

logger = logging.getLogger(__name__)

SCHEDULER = "simple"
WRAPPER_KEY = "diffstyler_flow_inversion"
INVERSION_GUIDANCE = 1.0  # design Sec. 6: the content is inverted without guidance (Flux-dev's embedded 1.0)


def check_flow_model(model) -> None:
    """ValueError naming the model's sampling when ``model`` is not a flow-matching (velocity) model."""
    ms = model.get_model_object("model_sampling")
    if not isinstance(ms, comfy.model_sampling.CONST):
        raise ValueError(
            f"model: flow-matching inversion needs a flow model (Flux.1 dev or schnell); this one samples with "
            f"{type(ms).__name__} ({type(model.model).__name__}): use DDIM inversion for SD1.x/SD2.x/SDXL"
        )


def sampling_sigmas(model, steps: int, scheduler: str = SCHEDULER) -> torch.Tensor:
    """The descending sigmas (``[steps+1]``, last 0) ComfyUI's ``scheduler`` gives this MODEL's sampling (with the
    ``ModelSamplingFlux`` shift the MODEL has)."""
    if scheduler not in comfy.samplers.SCHEDULER_NAMES:
        raise ValueError(f"scheduler: expected one of {list(comfy.samplers.SCHEDULER_NAMES)}, got {scheduler!r}")
    ms = model.get_model_object("model_sampling")
    return comfy.samplers.calculate_sigmas(ms, scheduler, steps).cpu().to(torch.float32)


def inversion_conditioning(conditioning: list) -> list:
    """``conditioning`` with guidance 1.0 on every entry (ComfyUI's Flux-dev otherwise embeds 3.5)."""
    return [[c[0], {**c[1], "guidance": INVERSION_GUIDANCE}] for c in conditioning]


class VelocityProbe:
    """Collects the diffusion model's raw outputs (the velocity) of the calls made while it is armed."""

    def __init__(self):
        self.outputs: list[torch.Tensor] = []

    def wrapper(self, executor, *args, **kwargs):
        out = executor(*args, **kwargs)
        self.outputs.append(out)
        return out

    def take(self, shape) -> torch.Tensor:
        outs, self.outputs = self.outputs, []
        v = outs[0] if len(outs) == 1 else torch.cat(outs) if outs else None
        if v is None or tuple(v.shape) != tuple(shape):
            got = "no call" if v is None else f"{len(outs)} call(s) giving {list(v.shape)}"
            raise RuntimeError(
                f"flow inversion: expected one velocity of shape {list(shape)} per step, got {got}: the inversion "
                "conditioning must be one plain entry (no areas, masks or hooks)"
            )
        return v


@torch.no_grad()
def sample_flow_inverse(
    model, x, sigmas, extra_args=None, callback=None, disable=None, probe=None, keep=None, kept=None
):
    """k-diffusion style sampler function walking the *ascending* flow grid ``sigmas`` from the clean latent ``x``
    (``sigmas[0]``): Euler along ``+v`` with ``v`` evaluated on the current latent at each step's start
    (:func:`..core.flow.walk_grid`). The latents at the grid indices ``keep`` go into the dict ``kept``."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    bar = trange(len(sigmas) - 1, disable=disable)
    last = {}

    def predict(x_cur, sigma):
        comfy.model_management.throw_exception_if_processing_interrupted()
        last["denoised"] = model(x_cur, s_in * sigma, **extra_args)
        return probe.take(x_cur.shape).to(x_cur.dtype)

    def on_step(i, x_new, v):
        bar.update(1)
        if callback is not None:
            s = float(sigmas[i])
            callback({"x": x_new, "i": i, "sigma": s, "sigma_hat": s, "denoised": last["denoised"]})

    x, got = flow.walk_grid(predict, x, sigmas.cpu(), keep or (), on_step)
    bar.close()
    if kept is not None:
        kept.update({i: t.detach().clone() for i, t in got.items()})
    return x


def probed_clone(model):
    """A clone of ``model`` whose diffusion-model calls report their output to the returned probe."""
    probe = VelocityProbe()
    clone = model.clone()
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, probe.wrapper)
    return clone, probe


def invert(
    model,
    samples: torch.Tensor,
    steps: int,
    conditioning: list,
    grid: str = "sampling",
    scheduler: str = SCHEDULER,
    disable_pbar: bool | None = None,
) -> InversionResult:
    """Invert ``samples`` (VAE-space ``[B,16,h,w]``) with the flow ``model`` for ``steps`` sampling steps of
    ``scheduler`` on ``grid`` (a name in :data:`..core.flow.FLOW_GRIDS`), keeping the latents at the sampling sigmas.

    ``conditioning``: the content prompt (the empty prompt), run at guidance 1.0 and cfg 1. The result's
    ``trajectory[i]`` is the model-space latent at ``sigmas[i]``; ``trajectory[-1]`` the clean content latent.
    """
    if steps < 1:
        raise ValueError(f"steps: expected at least 1 inversion step, got {steps}")
    check_flow_model(model)
    flow.substeps(grid)  # ValueError naming the grids
    validate_latent(model, samples)
    if disable_pbar is None:
        disable_pbar = not comfy.utils.PROGRESS_BAR_ENABLED
    sigmas = sampling_sigmas(model, steps, scheduler)
    ascending, keep = flow.flow_grid(sigmas, grid)
    run_model, probe = probed_clone(model)
    kept: dict[int, torch.Tensor] = {}
    sampler = comfy.samplers.KSAMPLER(sample_flow_inverse, extra_options={"probe": probe, "keep": keep, "kept": kept})
    cond = inversion_conditioning(conditioning)
    n_grid = walk_inverse(run_model, cond, sampler, ascending, samples.to(torch.float32), disable_pbar)

    traj = torch.stack([kept[j] for j in keep]).to("cpu", torch.float32)  # descending: traj[i] at sigmas[i]
    fp = make_fingerprint(model, steps, samples.shape, sigmas)
    logger.info(
        "DiffStyler: flow-inverted %s latent for %d %s steps on the %s grid (%d model rows per image)",
        list(samples.shape),
        steps,
        scheduler,
        grid,
        n_grid,
    )
    return InversionResult(
        sigmas=sigmas,
        trajectory=traj,
        content_latent=samples.detach().cpu().clone(),
        fingerprint=fp,
        conditioning=cond,
        grid=grid,
        unet_rows=n_grid,
    )


def sample_euler(model, start: torch.Tensor, sigmas: torch.Tensor, conditioning: list, guidance: float | None = None):
    """Plain Euler sampling (ComfyUI's "euler" sampler, cfg 1) from the model-space latent ``start`` at ``sigmas[0]``;
    returns the VAE-space LATENT samples. ``guidance`` None keeps the conditioning's own. What a reconstruction
    check runs after :func:`invert` (with the empty prompt and guidance 1.0 it should give the content back)."""
    cond = conditioning if guidance is None else [[c[0], {**c[1], "guidance": float(guidance)}] for c in conditioning]
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(cond, cond)
    guider.set_cfg(1.0)
    # noise_scaling(s0, noise, latent) = s0*noise + (1-s0)*latent: both equal to ``start`` gives ``start`` exactly
    vae_space = model.model.process_latent_out(start.clone())
    return guider.sample(start.clone(), vae_space, comfy.samplers.ksampler("euler"), sigmas, disable_pbar=True, seed=0)
