"""Helpers for the DiffStyler core tests: LoRA files in several formats, plain DDIM, running a style job."""

from __future__ import annotations

import math

import torch


def attention_weight_keys(model, limit: int | None = None) -> list[str]:
    """UNet attention projection weight keys (to_q/to_k/to_v/to_out.0) of ``model``."""
    keys = [
        k
        for k in model.model.state_dict()
        if k.startswith("diffusion_model.")
        and k.endswith(".weight")
        and any(p in k for p in (".to_q.", ".to_k.", ".to_v.", ".to_out.0."))
    ]
    return keys[:limit] if limit else keys


def random_lora(model, rank: int = 4, seed: int = 0, fmt: str = "kohya", scale: float = 0.5) -> dict:
    """A LoRA state dict for every attention projection of ``model`` in ``fmt``: kohya, diffusers or peft."""
    import comfy.utils

    g = torch.Generator().manual_seed(seed)
    sd = model.model.state_dict()
    diffusers_map = {}
    if fmt in ("diffusers", "peft"):
        d = comfy.utils.unet_to_diffusers(model.model.model_config.unet_config)
        diffusers_map = {"diffusion_model." + v: k for k, v in d.items()}
    out = {}
    for key in attention_weight_keys(model):
        w = sd[key]
        out_dim, in_dim = w.shape[0], w.shape[1]
        down = torch.randn(rank, in_dim, generator=g) * scale / math.sqrt(in_dim)
        up = torch.randn(out_dim, rank, generator=g) * scale / math.sqrt(rank)
        if fmt == "kohya":
            base = "lora_unet_" + key[len("diffusion_model.") : -len(".weight")].replace(".", "_")
            out[base + ".lora_down.weight"] = down
            out[base + ".lora_up.weight"] = up
            out[base + ".alpha"] = torch.tensor(float(rank) / 2)
        else:
            dk = diffusers_map[key][: -len(".weight")]
            if fmt == "diffusers":
                base = "unet." + dk.replace(".to_", ".processor.to_")
                if base.endswith(".to_out.0"):
                    base = base[:-2]
                # diffusers attn-processor LoRA: "<...>.processor.to_q_lora.down.weight"
                out[base + "_lora.down.weight"] = down
                out[base + "_lora.up.weight"] = up
            else:  # peft
                out["base_model.model." + dk + ".lora_A.weight"] = down
                out["base_model.model." + dk + ".lora_B.weight"] = up
    return out


def plain_ddim(model, x_t_latent, steps, positive, negative, cfg, last: str = "released"):
    """Core DDIM sampling (ComfyUI's "ddim" sampler, no added noise) from an inverted latent on ddim_uniform.

    ``last='released'``: the last step goes to the model's smallest sigma (alphas_cumprod[0], as the released
    DiffStyler's diffusers DDIM with set_alpha_to_one false) and the result is that VP latent ``x * sqrt(alpha)``;
    ``last='zero'``: ComfyUI's own schedule down to sigma 0 (KSamplerAdvanced).
    """
    import comfy.sample
    import comfy.samplers

    ms = model.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(ms, "ddim_uniform", steps).cpu()
    smin = float(ms.sigma_min)
    if last == "released":
        sigmas[-1] = smin
    out = comfy.sample.sample_custom(
        model,
        torch.zeros_like(x_t_latent),
        cfg,
        comfy.samplers.sampler_object("ddim"),
        sigmas,
        positive,
        negative,
        x_t_latent,
        disable_pbar=True,
        seed=0,
    )
    if last == "released":
        out = out / math.sqrt(1.0 + smin * smin)
    return out
