"""DDIM inversion through ComfyUI's own guider/sampler machinery (paper Sec. 3.1).

The content latent is inverted with eta 0 and cfg 1 on the flipped ``ddim_uniform`` schedule
that sampling will use; every intermediate latent is kept (the trajectory). The model is
called through ``CFGGuider`` so model management, wrappers and conds work as in core sampling.
"""

from __future__ import annotations

import hashlib
import logging

import comfy.model_management
import comfy.samplers
import comfy.utils
import torch
from tqdm.auto import trange

from ..core.inversion import FeatureCache, InversionFingerprint, InversionResult, digest_sigmas
from ..core.schedule import ddim_step

logger = logging.getLogger(__name__)

SCHEDULER = "ddim_uniform"


def sampling_sigmas(model, steps: int) -> torch.Tensor:
    """The descending ``ddim_uniform`` sigmas (``[steps+1]``, last 0) ComfyUI's "ddim" sampling uses."""
    ms = model.get_model_object("model_sampling")
    return comfy.samplers.calculate_sigmas(ms, SCHEDULER, steps).cpu().to(torch.float32)


def model_fingerprint(model) -> str:
    """Identify a MODEL (ModelPatcher) by its weights object, its weight patches and its sampling.

    A ``clone()`` with only object patches or wrappers (what the Injector adds) keeps the
    fingerprint; merging a LoRA or swapping the checkpoint changes it. The weights object is the
    patcher's ``clone_base_uuid`` where the host has one (ComfyUI keeps it through every clone,
    including the non-dynamic delegate ``CFGGuider.inner_set_conds`` swaps in for hooked
    conditionings, which loads the checkpoint again into another BaseModel), else the BaseModel.
    """
    base = model.model
    ms = model.get_model_object("model_sampling")
    first = next(base.diffusion_model.parameters(), None)
    probe = "" if first is None else f"{float(first.detach().flatten()[:64].float().sum()):.6e}"
    weights = getattr(model, "clone_base_uuid", None)
    text = "|".join(
        [
            str(weights) if weights is not None else f"{id(base):x}",
            str(getattr(model, "patches_uuid", "")),
            type(base).__name__,
            type(ms).__name__,
            f"{float(ms.sigma_max):.6g}",
            probe,
        ]
    )
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def make_fingerprint(model, steps: int, latent_shape, sigmas: torch.Tensor) -> InversionFingerprint:
    return InversionFingerprint(
        model=model_fingerprint(model),
        steps=int(steps),
        latent_shape=tuple(int(s) for s in latent_shape),
        sigmas_digest=digest_sigmas(sigmas),
    )


@torch.no_grad()
def sample_ddim_inverse(model, x, sigmas, extra_args=None, callback=None, disable=None, trajectory=None, recorder=None):
    """k-diffusion style sampler function walking an *ascending* sigma list (DDIM inversion).

    ``x`` starts at the clean latent (sigmas[0] = 0). The noise prediction for the step
    ``sigma -> sigma_next`` is evaluated at ``sigma_next`` (the target timestep), as in the
    standard DDIM inversion. Every latent, the first included, is appended to ``trajectory``.
    """
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    if trajectory is not None:
        trajectory.append(x.detach().clone())
    for i in trange(len(sigmas) - 1, disable=disable):
        comfy.model_management.throw_exception_if_processing_interrupted()
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        if recorder is not None:
            recorder.step = len(sigmas) - 2 - i  # the sampling step that evaluates at sigma_next
        denoised = model(x, sigma_next * s_in, **extra_args)
        eps = (x - denoised) / sigma_next
        x = ddim_step(x, eps, sigma, sigma_next)
        if trajectory is not None:
            trajectory.append(x.detach().clone())
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
    return x


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
    disable_pbar: bool = False,
    cache_dtype: str = "off",
    cache_feature_end: float = 0.6,
    cache_qk_end: float = 0.5,
) -> InversionResult:
    """DDIM-invert ``samples`` (VAE-space ``[B,C,h,w]``) with ``model`` over ``steps`` ddim_uniform steps.

    ``cache_dtype`` 'fp16'/'fp32' also records the content features the sampler injects during the
    first ``cache_feature_end`` (ResBlock) and ``cache_qk_end`` (Q/K) of the steps.
    """
    if steps < 1:
        raise ValueError(f"steps: expected at least 1 inversion step, got {steps}")
    validate_latent(model, samples)
    sigmas = sampling_sigmas(model, steps)
    ascending = sigmas.flip(0)

    trajectory: list[torch.Tensor] = []
    cache, recorder, run_model = None, None, model
    if cache_dtype != "off":
        from . import feature_cache

        if cache_dtype not in feature_cache.CACHE_DTYPES:
            raise ValueError(f"feature_cache: expected one of off, fp16, fp32, got {cache_dtype!r}")
        cache = FeatureCache(feature_cache.CACHE_DTYPES[cache_dtype], float(cache_feature_end), float(cache_qk_end))
        store = model.load_device if comfy.model_management.is_device_cuda(model.load_device) else "cpu"
        run_model, recorder = feature_cache.recording_clone(model, cache, int(sigmas.shape[0]) - 1, store)
    extra = {"trajectory": trajectory}
    if recorder is not None:
        extra["recorder"] = recorder
    sampler = comfy.samplers.KSAMPLER(sample_ddim_inverse, extra_options=extra)
    guider = comfy.samplers.CFGGuider(run_model)
    guider.set_conds(conditioning, conditioning)
    guider.set_cfg(1.0)

    pbar = comfy.utils.ProgressBar(steps)

    def callback(step, x0, x, total):
        pbar.update_absolute(step + 1, total)

    latent = samples.to(torch.float32)
    noise = torch.zeros_like(latent)
    guider.sample(noise, latent, sampler, ascending, callback=callback, disable_pbar=disable_pbar, seed=0)

    # descending sigma order, traj[i] at sigmas[i]; one device->CPU copy for the whole trajectory
    traj = torch.stack(trajectory[::-1]).to("cpu", torch.float32)
    fp = make_fingerprint(model, int(sigmas.shape[0]) - 1, samples.shape, sigmas)
    logger.info("DiffStyler: inverted %s latent over %d ddim_uniform steps", list(samples.shape), steps)
    if cache is not None:
        feature_cache.log_cache(cache, samples.shape)
    return InversionResult(
        sigmas=sigmas,
        trajectory=traj,
        content_latent=samples.detach().cpu().clone(),
        fingerprint=fp,
        conditioning=conditioning,
        feature_cache=cache,
    )


def latent_out(model, model_space: torch.Tensor) -> torch.Tensor:
    """Model-space latent -> the VAE-space LATENT samples ComfyUI passes between nodes."""
    return model.model.process_latent_out(model_space.clone())


def check_inversion(inv: InversionResult, model, sigmas: torch.Tensor, latent_shape) -> None:
    """Refuse to reuse ``inv`` with another model, schedule or latent shape (ValueError naming which)."""
    steps = int(sigmas.shape[-1]) - 1
    got = make_fingerprint(model, steps, latent_shape, sigmas)
    reason = inv.fingerprint.mismatch(got)
    if reason is not None:
        raise ValueError(f"inversion: {reason}")
