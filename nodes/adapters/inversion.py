"""DDIM inversion through ComfyUI's own guider/sampler machinery (paper Sec. 3.1, design Sec. 5).

The content latent is inverted with eta 0, cfg 1 and the empty prompt on a fine grid of timesteps (released:
t = 1, 2, ..., up to the first sampling timestep of the ``ddim_uniform`` schedule sampling uses); the latents at
the sampling timesteps are kept (the trajectory). The model is called through ``CFGGuider`` so model management,
wrappers and conds work as in core sampling.
"""

from __future__ import annotations

import logging

import comfy.model_management
import comfy.samplers
import comfy.utils
import torch
from tqdm.auto import trange

from ..core.inversion import FeatureCache, InversionFingerprint, InversionResult, digest_sigmas, sigma_slice
from ..core.schedule import GRIDS, ddim_step, inversion_grid
from . import feature_cache
from .fingerprint import model_fingerprint

logger = logging.getLogger(__name__)

SCHEDULER = "ddim_uniform"


def sampling_sigmas(model, steps: int) -> torch.Tensor:
    """The descending ``ddim_uniform`` sigmas (``[steps+1]``, last 0) ComfyUI's "ddim" sampling uses."""
    ms = model.get_model_object("model_sampling")
    return comfy.samplers.calculate_sigmas(ms, SCHEDULER, steps).cpu().to(torch.float32)


def make_fingerprint(model, steps: int, latent_shape, sigmas: torch.Tensor) -> InversionFingerprint:
    return InversionFingerprint(
        model=model_fingerprint(model),
        steps=int(steps),
        latent_shape=tuple(int(s) for s in latent_shape),
        sigmas_digest=digest_sigmas(sigmas),
    )


@torch.no_grad()
def sample_ddim_inverse(
    model,
    x,
    sigmas,
    extra_args=None,
    callback=None,
    disable=None,
    trajectory=None,
    recorder=None,
    keep=None,
    v_prediction=False,
    step_of=None,
):
    """k-diffusion style sampler function walking the *ascending* inversion grid (design Sec. 5).

    ``sigmas[0]`` is the clean latent's level (alphas_cumprod[0]); ``x`` arrives as the clean VP latent ``z_0`` and
    is moved to k-diffusion scaling (``x = z / sqrt(alpha)``). Each step ``sigma_prev -> sigma`` evaluates the UNet
    on the current latent as it is (the UNet input is ``x_prev / sqrt(1 + sigma_prev^2)``) with the timestep of
    ``sigma``, and moves to ``sigma`` with that eps: ``x = x_prev + eps * (sigma - sigma_prev)``. For v-prediction,
    eps comes from v at the current latent's own level (as diffusers' DDIMInverseScheduler does). The latents at
    the grid indices in ``keep`` are appended to ``trajectory``.
    """
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    values = sigmas.tolist()
    keep = set(keep or ())
    step_of = step_of or {}
    x = x * (1.0 + values[0] ** 2) ** 0.5
    if trajectory is not None and 0 in keep:
        trajectory.append(x.detach().clone())
    for i in trange(len(sigmas) - 1, disable=disable):
        comfy.model_management.throw_exception_if_processing_interrupted()
        sp, sn = values[i], values[i + 1]
        if recorder is not None:
            recorder.step = step_of.get(i + 1)  # the sampling step whose timestep this evaluation uses, if any
        scale = ((1.0 + sn * sn) / (1.0 + sp * sp)) ** 0.5
        x_in = x * scale  # ComfyUI divides by sqrt(1 + sn^2): the UNet sees x_prev / sqrt(1 + sp^2)
        denoised = model(x_in, sigmas[i + 1] * s_in, **extra_args)
        if v_prediction:  # v from ComfyUI's denoised, then eps at the current latent's level
            v = (x_in / (1.0 + sn * sn) - denoised) * (1.0 + sn * sn) ** 0.5 / sn
            a = 1.0 / (1.0 + sp * sp)
            eps = a**0.5 * v + (1.0 - a) ** 0.5 * (x * a**0.5)
        else:
            eps = (x_in - denoised) / sn
        x = ddim_step(x, eps, sp, sn)
        if trajectory is not None and (i + 1) in keep:
            trajectory.append(x.detach().clone())
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sp, "sigma_hat": sp, "denoised": denoised})
    return x


def prediction_kind(model) -> bool:
    """True for v-prediction, False for eps; ValueError for other parameterizations (not SD1.x/SD2.x/SDXL)."""
    import comfy.model_sampling as cms

    ms = model.get_model_object("model_sampling")
    if isinstance(ms, cms.EDM) or not isinstance(ms, cms.EPS) or not hasattr(ms, "sigmas"):
        raise ValueError(
            f"model: DDIM inversion needs a discrete eps- or v-prediction model (SD1.x/SD2.x/SDXL); this one samples "
            f"with {type(ms).__name__}: load an SD1.x, SD2.x or SDXL checkpoint"
        )
    return isinstance(ms, cms.V_PREDICTION)


def grid_sigmas(model, sigmas: torch.Tensor, grid: str) -> tuple[torch.Tensor, list[int], dict[int, int]]:
    """The ascending inversion grid as sigmas, the grid index of each sampling sigma (descending order, the last
    entry, sigma 0, excluded) and grid index -> sampling step."""
    ms = model.get_model_object("model_sampling")
    table = ms.sigmas.detach().float().cpu()
    sampling_ts = []
    for s in sigmas[:-1].tolist():
        t = int(torch.argmin((table - s).abs()))
        if abs(float(table[t]) - s) > 1e-4 * s:
            raise ValueError(f"inversion: sigma {s:.6g} is not one of the model's discrete sigmas")
        sampling_ts.append(t)
    ts = inversion_grid(sampling_ts, grid)
    pos = {t: i for i, t in enumerate(ts)}
    return table[ts].to(torch.float32), [pos[t] for t in sampling_ts], {pos[t]: k for k, t in enumerate(sampling_ts)}


def validate_latent(model, samples: torch.Tensor, name: str = "latent") -> None:
    """Raise a ValueError naming ``name`` when the latent cannot be inverted with ``model``."""
    if not isinstance(samples, torch.Tensor) or samples.ndim != 4:
        shape = list(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__
        raise ValueError(f"{name}: expected a LATENT with samples [B,C,h,w], got {shape}: connect a VAE Encode output")
    if samples.shape[0] == 0:
        raise ValueError(f"{name}: the latent batch is empty (0 images): connect a VAE Encode of at least one image")
    channels = int(model.get_model_object("latent_format").latent_channels)
    if samples.shape[1] != channels:
        raise ValueError(
            f"{name}: the latent has {samples.shape[1]} channels but this model expects {channels}: "
            "encode the image with this model's VAE (SD1.x/SD2.x/SDXL latents have 4 channels)"
        )
    if not torch.isfinite(samples).all():
        raise ValueError(f"{name}: the latent contains NaN or infinite values: re-encode the image")


def invert(
    model,
    samples: torch.Tensor,
    steps: int,
    conditioning: list,
    disable_pbar: bool | None = None,
    cache_dtype: str = "off",
    cache_feature_end: float = 0.6,
    cache_qk_end: float = 0.5,
    grid: str = "fine",
) -> InversionResult:
    """DDIM-invert ``samples`` (VAE-space ``[B,C,h,w]``) with ``model`` for ``steps`` ddim_uniform sampling steps.

    The inversion walks ``grid`` (``fine``: every timestep t = 1, 2, ..., up to the first sampling timestep, the
    released pipeline; cheaper grids in ``GRIDS``) and keeps the latents at the sampling timesteps only.
    ``cache_dtype`` 'fp16'/'fp32' also records the content features the sampler injects during the
    first ``cache_feature_end`` (ResBlock) and ``cache_qk_end`` (Q/K) of the steps (the feature-cache option).
    """
    if steps < 1:
        raise ValueError(f"steps: expected at least 1 inversion step, got {steps}")
    if grid not in GRIDS:
        raise ValueError(f"inversion_grid: expected one of {list(GRIDS)}, got {grid!r}")
    validate_latent(model, samples)
    if disable_pbar is None:
        disable_pbar = not comfy.utils.PROGRESS_BAR_ENABLED
    v_prediction = prediction_kind(model)
    sigmas = sampling_sigmas(model, steps)
    ascending, keep, step_of = grid_sigmas(model, sigmas, grid)

    trajectory: list[torch.Tensor] = []
    cache, recorder, run_model = None, None, model
    if cache_dtype != "off":
        if cache_dtype not in feature_cache.CACHE_DTYPES:
            raise ValueError(f"feature_cache: expected one of off, fp16, fp32, got {cache_dtype!r}")
        cache = FeatureCache(feature_cache.CACHE_DTYPES[cache_dtype], float(cache_feature_end), float(cache_qk_end))
        store = model.load_device if comfy.model_management.is_device_cuda(model.load_device) else "cpu"
        run_model, recorder = feature_cache.recording_clone(model, cache, int(sigmas.shape[0]) - 1, store)
    extra = {"trajectory": trajectory, "keep": keep, "v_prediction": v_prediction, "step_of": step_of}
    if recorder is not None:
        extra["recorder"] = recorder
    sampler = comfy.samplers.KSAMPLER(sample_ddim_inverse, extra_options=extra)
    latent = samples.to(torch.float32)
    n_grid = walk_inverse(run_model, conditioning, sampler, ascending, latent, disable_pbar)

    # descending sigma order: traj[i] at sigmas[i] (the kept sampling timesteps), then the clean latent at sigma 0
    kept = trajectory[::-1]  # appended in ascending grid order
    clean = model.model.process_latent_in(latent.to(kept[0].device))
    traj = torch.stack([*kept, clean]).to("cpu", torch.float32)
    fp = make_fingerprint(model, int(sigmas.shape[0]) - 1, samples.shape, sigmas)
    logger.info(
        "DiffStyler: inverted %s latent for %d ddim_uniform steps on the %s grid (%d UNet rows per image)",
        list(samples.shape),
        steps,
        grid,
        n_grid,
    )
    if cache is not None:
        feature_cache.log_cache(cache, samples.shape)
    return InversionResult(
        sigmas=sigmas,
        trajectory=traj,
        content_latent=samples.detach().cpu().clone(),
        fingerprint=fp,
        conditioning=conditioning,
        feature_cache=cache,
        grid=grid,
        unet_rows=n_grid,
    )


def walk_inverse(
    model, conditioning, sampler, ascending: torch.Tensor, latent: torch.Tensor, disable_pbar: bool
) -> int:
    """Run an inversion ``sampler`` (a KSAMPLER walking the ascending grid) on ``model`` at cfg 1 with ``conditioning``
    through ComfyUI's own guider, so progress bar, previews and interrupt work as in sampling; returns the grid's
    steps (model rows per image). What the sampler keeps (the trajectory) it writes into its own extra options; the
    guider's returned sample is not used (a flow model's is divided by 1 - sigma_last, 0 at sigma 1)."""
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(conditioning, conditioning)
    guider.set_cfg(1.0)
    n_grid = int(ascending.shape[0]) - 1
    pbar = comfy.utils.ProgressBar(n_grid)

    def callback(step, x0, x, total):
        pbar.update_absolute(step + 1, total)

    guider.sample(
        torch.zeros_like(latent), latent, sampler, ascending, callback=callback, disable_pbar=disable_pbar, seed=0
    )
    return n_grid


def latent_out(model, model_space: torch.Tensor) -> torch.Tensor:
    """Model-space latent -> the VAE-space LATENT samples ComfyUI passes between nodes."""
    return model.model.process_latent_out(model_space.clone())


def check_inversion(inv: InversionResult, model, sigmas: torch.Tensor, latent_shape) -> tuple[int, int]:
    """Refuse to reuse ``inv`` with another model, schedule or latent shape (ValueError naming which). ``sigmas``
    may be any contiguous slice of the inversion's schedule (SplitSigmas: one run across two samplers); returns
    ``(first, last)``, the slice's indices in the inversion's sigmas."""
    try:
        first, last = sigma_slice(inv.sigmas, sigmas)
    except ValueError as e:  # say also how a whole other schedule differs
        reason = inv.fingerprint.mismatch(make_fingerprint(model, int(sigmas.shape[-1]) - 1, latent_shape, sigmas))
        raise ValueError(f"{e}" + (f"; {reason}" if reason else "")) from None
    full = inv.sigmas.to(sigmas.dtype)
    reason = inv.fingerprint.mismatch(make_fingerprint(model, int(full.shape[-1]) - 1, latent_shape, full))
    if reason is not None:
        raise ValueError(f"inversion: {reason}")
    return first, last
