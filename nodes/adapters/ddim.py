"""The DiffStyler DDIM sampler (SAMPLER): DDIM with eta 0 that honours a DiffStyler guider's exact start, exact
background and last step (design Sec. 5); plain DDIM for any other guider."""

from __future__ import annotations

import comfy.model_management
import comfy.samplers
import torch
from tqdm.auto import trange

from ..core.schedule import ddim_step


@torch.no_grad()
def sample_diffstyler_ddim(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DDIM (eta 0) that honours a DiffStyler guider's exact start and background; plain DDIM otherwise."""
    extra_args = {} if extra_args is None else extra_args
    guider = getattr(model, "inner_model", None)
    hooks = guider if hasattr(guider, "diffstyler_post_step") else None
    if hooks is not None:
        x = hooks.diffstyler_initial_latent(x)
    s_in = x.new_ones([x.shape[0]])
    values = sigmas.tolist()  # the step arithmetic and the background lookup in Python: no device sync per step
    last = len(sigmas) - 2
    for i in trange(len(sigmas) - 1, disable=disable):
        comfy.model_management.throw_exception_if_processing_interrupted()
        sigma, sigma_next = values[i], values[i + 1]
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        eps = (x - denoised) / sigma
        final = hooks is not None and i == last and sigma_next == 0.0
        x = ddim_step(x, eps, sigma, hooks.diffstyler_final_sigma() if final else sigma_next)
        if hooks is not None:
            x = hooks.diffstyler_post_step(x, sigma_next)
        if final:
            x = hooks.diffstyler_final(x, hooks.diffstyler_final_sigma())
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
    return x


def ddim_sampler() -> comfy.samplers.KSAMPLER:
    return comfy.samplers.KSAMPLER(sample_diffstyler_ddim)
