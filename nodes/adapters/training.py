"""Style-LoRA training on a ComfyUI MODEL (paper Sec. 3, "Style LoRA"), through ComfyUI's model management.

How the LoRA is applied while training: the input MODEL is never changed. A ``clone()`` of the
ModelPatcher is loaded with ``comfy.model_management.load_models_gpu`` (so merged LoRAs and object
patches of the input are in place, and the weights sit on the compute device), and every forward pass
runs ``BaseModel.apply_model`` under ``torch.func.functional_call`` with a parameter dict in which each
target weight ``W`` is replaced by ``W + (alpha/rank) * up @ down``. functional_call swaps the tensors
for the duration of one call and puts the originals back even when the call raises, so an interrupt
can leave nothing behind, and no weight function, hook or requires_grad flag is ever set on the shared
modules (their ``.grad`` stays untouched: every frozen tensor is passed detached).

ComfyUI builds models inside ``torch.inference_mode()``, and inference tensors cannot be saved for
backward. The frozen weights and buffers are therefore passed as fresh ordinary tensors on the same
storage (no copy; they are never written), and the prompt/latent tensors are cloned. The model is
loaded in the caller's mode (inference mode inside ComfyUI), as every other node loads it, so the
weights model management moves are the same tensors sampling gets; only the training itself runs
outside inference mode.

The loss (:func:`diffusion_loss`) is the paper's noise-prediction MSE in the model's own output space
(epsilon for EPS models, v for v-prediction), computed from ``apply_model``'s denoised output; see
``core.training.output_space_mse`` for why that equals the raw-output loss exactly. A Flux.1 MODEL trains in the
same loop with its own targets and the flow-matching loss (``training_flux.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import comfy.model_management
import comfy.sampler_helpers
import comfy.samplers
import comfy.utils
import torch
from tqdm.auto import tqdm

from ..core import training as core
from . import dynamic_vram, training_flux
from .training_inputs import TrainingInputs, prepare_inputs

logger = logging.getLogger(__name__)

# Training keeps every activation for backward and no good estimate exists for that; like core's
# TrainLoraNode, ask model management to free everything else on the compute device.
TRAIN_MEMORY_REQUIRED = 1e20


LoraTarget = core.LoraTarget  # one layer that gets a LoRA: ``diffusion_model.<path>.weight`` and its shape


@dataclass
class StyleLora:
    """Trainable LoRA factors keyed by UNet weight key.

    ``factors[key] = (down, up)``: ``down`` ``[rank, in]`` (``[rank, in, 1, 1]`` for a 1x1 conv), ``up``
    ``[out, rank]`` (``[out, rank, 1, 1]``); the weight delta is ``(alpha / rank) * up @ down``.
    """

    rank: int
    alpha: float
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def parameters(self) -> list[torch.Tensor]:
        return [t for pair in self.factors.values() for t in pair]

    def state_dict(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """The kohya-style LORA_MODEL dict: ``lora_unet_<path>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``.

        ``comfy.lora.model_lora_keys_unet`` maps every ``lora_unet_<path>`` back to its UNet weight, so the core
        LoraLoader, LoraModelLoader and this pack's Style LoRA Loader all read it.
        """
        sd: dict[str, torch.Tensor] = {}
        for key in sorted(self.factors):
            down, up = self.factors[key]
            prefix = core.kohya_prefix(key)
            sd[f"{prefix}.lora_down.weight"] = down.detach().to("cpu", dtype).contiguous()
            sd[f"{prefix}.lora_up.weight"] = up.detach().to("cpu", dtype).contiguous()
            sd[f"{prefix}.alpha"] = torch.tensor(float(self.alpha), dtype=torch.float32)
        return sd


@dataclass
class TrainResult:
    lora: StyleLora
    losses: list[float]
    config: core.TrainingConfig
    targets: list[LoraTarget] = field(default_factory=list)
    family: str = "unet"  # "unet" or "flux" (training_flux.model_family)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.lora.state_dict()


def _check_latent(base, latent: torch.Tensor) -> None:
    channels = int(base.latent_format.latent_channels)
    if latent.ndim != 4 or latent.shape[1] != channels:
        raise ValueError(
            f"vae: the style latent has shape {list(latent.shape)} but this model expects {channels} channels: "
            "connect the VAE that belongs to this checkpoint"
        )


def _plain(t: torch.Tensor) -> torch.Tensor:
    """A fresh ordinary tensor on ``t``'s storage (no copy) that never requires grad.

    ComfyUI builds models inside ``torch.inference_mode()``; their tensors (and CUDA tensors that model management
    later swapped in through ``param.data``) carry no version counter, so autograd cannot save them for backward.
    A new tensor set onto the same storage has one. Tensor types that refuse ``set_`` are cloned instead.
    """
    t = t.detach()
    with torch.inference_mode(False):
        try:
            return torch.empty(0, dtype=t.dtype, device=t.device).set_(
                t.untyped_storage(), t.storage_offset(), t.size(), t.stride()
            )
        except (RuntimeError, TypeError, NotImplementedError):
            return t.clone()


def _model_conds(base, conditioning: list, latent: torch.Tensor, device, seed: int) -> dict:
    """The ``apply_model`` keyword tensors (``c_crossattn``, ``y``, ...) for ``latent``, via the model's extra_conds."""
    if not conditioning:
        raise ValueError("prompt: encoding the prompt gave an empty CONDITIONING")
    conds = comfy.sampler_helpers.convert_cond(conditioning[:1])
    conds = comfy.samplers.encode_model_conds(
        base.extra_conds, conds, latent, device, "positive", latent_image=latent, seed=seed
    )
    out = {}
    for name, cond in conds[0]["model_conds"].items():
        value = cond.process_cond(batch_size=latent.shape[0], area=None, device=device).concat([])
        out[name] = value.to(device).clone() if isinstance(value, torch.Tensor) else value
    return out


# ---------------------------------------------------------------------------- LoRA on the UNet


def find_targets(base, targets: str) -> list[LoraTarget]:
    """The UNet layers a LoRA goes on: ``"attention"`` (to_q/to_k/to_v/to_out.0 of attn1 and attn2) or
    ``"all_linear"`` (every Linear and 1x1 Conv2d); a Flux.1 model's: ``training_flux.find_targets``."""
    if targets not in core.TARGET_CHOICES:
        raise ValueError(f"targets: expected one of {list(core.TARGET_CHOICES)}, got {targets!r}")
    if training_flux.model_family(base) == "flux":
        return training_flux.find_targets(base, targets)
    found = []
    for path, module in base.diffusion_model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor):
            continue
        is_linear = isinstance(module, torch.nn.Linear)
        is_1x1 = isinstance(module, torch.nn.Conv2d) and tuple(module.kernel_size) == (1, 1) and module.groups == 1
        if targets == "attention":
            keep = is_linear and core.is_attention_projection(path)
        else:
            keep = is_linear or is_1x1
        if keep:
            found.append(LoraTarget(f"diffusion_model.{path}.weight", tuple(int(s) for s in weight.shape)))
    if not found:
        raise ValueError(
            f"targets: this model's UNet ({type(base.diffusion_model).__name__}) has no {targets!r} layers "
            "(attn1/attn2 to_q, to_k, to_v, to_out.0): pick targets='all_linear'"
        )
    return found


def init_lora(targets: list[LoraTarget], rank: int, alpha: float, generator: torch.Generator, device) -> StyleLora:
    """Fresh factors (down ~ N(0, (1/rank)^2), up zero) as float32 leaves that require grad, on ``device``."""
    factors = {}
    for t in targets:
        down, up = core.init_lora_factors(t.shape, rank, generator)
        factors[t.weight_key] = (down.to(device).requires_grad_(True), up.to(device).requires_grad_(True))
    return StyleLora(rank=int(rank), alpha=float(alpha), factors=factors)


class _ApplyModel(torch.nn.Module):
    """Holds the BaseModel as a child so ``functional_call`` can swap its tensors for one ``apply_model`` call."""

    def __init__(self, base):
        super().__init__()
        self.base = base

    def forward(self, x, sigma, conds):
        return self.base.apply_model(x, sigma, **conds)


class LoraDenoiser:
    """``denoised = apply_model(x, sigma)`` of the loaded model with ``lora``'s deltas on its target weights.

    Call inside ``torch.inference_mode(False)`` after ``load_models_gpu``: the frozen tensors are read
    once, here.
    """

    def __init__(self, base, lora: StyleLora | None = None):
        self.module = _ApplyModel(base)
        self.lora = lora
        self.frozen = {"base." + n: _plain(p) for n, p in base.named_parameters()}
        self.frozen.update({"base." + n: _plain(b) for n, b in base.named_buffers()})
        if lora is not None:
            missing = [k for k in lora.factors if "base." + k not in self.frozen]
            if missing:
                raise ValueError(f"lora: {len(missing)} target weights are not in this model, e.g. {missing[0]}")

    def params(self) -> dict[str, torch.Tensor]:
        """The tensors of one call: the frozen ones, each LoRA target weight ``W`` as ``W + scale * up @ down``."""
        if self.lora is None:
            return self.frozen
        params = dict(self.frozen)
        for key, (down, up) in self.lora.factors.items():
            w = self.frozen["base." + key]
            params["base." + key] = w + core.lora_delta(down, up, self.lora.scale, w.shape).to(w.dtype)
        return params

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, conds: dict, params: dict | None = None) -> torch.Tensor:
        params = self.params() if params is None else params
        return torch.func.functional_call(self.module, params, (x, sigma, conds), strict=False)


def output_scale(model_sampling, sigma: torch.Tensor, ndim: int) -> torch.Tensor:
    """``B(sigma)`` in ``denoised = A + B * output`` for this model sampling, ``[N,1,...]`` (core.output_space_mse)."""
    shape = (sigma.shape[0],) + (1,) * (ndim - 1)
    ones = torch.ones(shape, device=sigma.device, dtype=torch.float32)
    zeros = torch.zeros(shape, device=sigma.device, dtype=torch.float32)
    scale = model_sampling.calculate_denoised(sigma, ones, zeros) - model_sampling.calculate_denoised(
        sigma, zeros, zeros
    )
    return scale.reshape(shape)


def diffusion_loss(denoiser: LoraDenoiser, model_sampling, x0, noise, sigma, conds) -> torch.Tensor:
    """The paper's noise-prediction loss at ``sigma`` (``[N]``): noise ``x0`` (``[N,C,h,w]``, model space) with
    ``model_sampling.noise_scaling``, predict, and take the MSE in the model's own output space (epsilon for EPS
    models, v for v-prediction)."""
    x_t = model_sampling.noise_scaling(sigma, noise, x0)
    denoised = denoiser(x_t, sigma, conds)
    return core.output_space_mse(denoised, x0, output_scale(model_sampling, sigma, x0.ndim))


def _sigma_table(model_sampling) -> torch.Tensor:
    sigmas = getattr(model_sampling, "sigmas", None)
    if not isinstance(sigmas, torch.Tensor) or sigmas.numel() < 2:
        raise ValueError(
            f"model: its model sampling ({type(model_sampling).__name__}) has no discrete sigma table to train on"
        )
    return sigmas.detach().float().cpu().clone()


def _load(model):
    patcher = dynamic_vram.static_clone(model, "Train Style LoRA")  # functional_call needs the weights loaded
    comfy.model_management.load_models_gpu([patcher], memory_required=TRAIN_MEMORY_REQUIRED, force_full_load=True)
    return patcher


def _compute_dtype(base) -> torch.dtype:
    return base.manual_cast_dtype if getattr(base, "manual_cast_dtype", None) is not None else base.get_dtype()


# ---------------------------------------------------------------------------- training


def train(model, inputs: TrainingInputs, cfg: core.TrainingConfig, progress: bool = True) -> TrainResult:
    """Train a style LoRA on ``inputs`` with ``cfg``; the input ``model`` (ModelPatcher) is left unchanged.

    Each step takes one style latent (cycling through the batch), a timestep ``t ~ U{0..T-1}`` over the model's
    whole sigma table (Flux: ``ModelSamplingFlux``'s 10000 sigmas through the MODEL's shift) and Gaussian noise,
    both from a ``torch.Generator`` seeded with ``cfg.seed`` (the LoRA init draws from it first), so a seed gives
    bit-identical factors on CPU. AdamW (lr, weight decay 1e-2). Raises
    ``comfy.model_management.InterruptProcessingException`` at the next step after an interrupt.
    """
    losses: list[float] = []
    family = training_flux.model_family(model.model)  # refuses other families before anything is loaded
    pbar = comfy.utils.ProgressBar(cfg.steps)
    bar = tqdm(total=cfg.steps, desc="Style LoRA", disable=not (progress and comfy.utils.PROGRESS_BAR_ENABLED))
    # Load in the caller's mode (inference mode in ComfyUI), as every other node does; train outside it.
    patcher = _load(model)
    with torch.inference_mode(False), torch.enable_grad(), training_flux.differentiable_rope(family == "flux"):
        base = patcher.model
        device = patcher.load_device
        _check_latent(base, inputs.latent)
        loss_function = training_flux.loss_function(base, inputs.conditioning, diffusion_loss)
        ms = base.model_sampling
        sigma_table = _sigma_table(ms)
        targets = find_targets(base, cfg.targets)
        n_images = int(inputs.latent.shape[0])
        compute_dtype = _compute_dtype(base)
        logger.info(
            "DiffStyler: training a %s style LoRA on %d %s layers (rank %d, alpha %g) for %d steps at lr %g on %d "
            "image(s) %dx%d, %s %s",
            family,
            len(targets),
            cfg.targets,
            cfg.rank,
            cfg.lora_alpha,
            cfg.steps,
            cfg.learning_rate,
            n_images,
            inputs.size[1] or inputs.latent.shape[3] * 8,
            inputs.size[0] or inputs.latent.shape[2] * 8,
            device,
            compute_dtype,
        )
        generator = torch.Generator().manual_seed(int(cfg.seed))
        lora = init_lora(targets, cfg.rank, cfg.lora_alpha, generator, device)
        means = inputs.latent.detach().clone().float()
        stds = None if inputs.latent_std is None else inputs.latent_std.detach().clone().float()
        latents = base.process_latent_in(means.clone()).float().to(device)
        conds = _model_conds(base, inputs.conditioning, latents[:1], device, cfg.seed)
        denoiser = LoraDenoiser(base, lora)
        optimizer = torch.optim.AdamW(lora.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        scaler = torch.amp.GradScaler(device.type, enabled=(compute_dtype == torch.float16 and device.type == "cuda"))
        try:
            for step in range(cfg.steps):
                comfy.model_management.throw_exception_if_processing_interrupted()
                i = step % n_images
                if stds is None:
                    x0 = latents[i : i + 1]
                else:  # a fresh sample of the VAE posterior every step, times the VAE scaling factor
                    draw = torch.randn(means[i : i + 1].shape, generator=generator, dtype=torch.float32)
                    x0 = base.process_latent_in(means[i : i + 1] + stds[i : i + 1] * draw).float().to(device)
                t = core.sample_timestep_indices(generator, 1, int(sigma_table.shape[0]))
                noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(device)
                sigma = sigma_table[t].to(device)
                loss = loss_function(denoiser, ms, x0, noise, sigma, conds)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                value = float(loss.detach())
                losses.append(value)
                bar.set_postfix(loss=f"{value:.4f}", t=int(t))
                bar.update(1)
                done = step + 1
                preview = None
                if done % cfg.log_every == 0 or done == cfg.steps:
                    recent = losses[-cfg.log_every :]
                    logger.info(
                        "DiffStyler: style LoRA step %d/%d loss %.5f (mean of last %d: %.5f)",
                        done,
                        cfg.steps,
                        value,
                        len(recent),
                        sum(recent) / len(recent),
                    )
                    preview = ("PNG", core.draw_loss_curve(losses, 512, 288), 512)
                pbar.update_absolute(done, cfg.steps, preview)
        finally:
            bar.close()
        trained = StyleLora(
            rank=lora.rank,
            alpha=lora.alpha,
            factors={k: (d.detach().clone(), u.detach().clone()) for k, (d, u) in lora.factors.items()},
        )
    return TrainResult(lora=trained, losses=losses, config=cfg, targets=targets, family=family)


def train_style_lora(
    model, clip, vae, images, prompt: str, cfg: core.TrainingConfig, progress=True, conditioning=None
) -> TrainResult:
    """Encode ``images`` (IMAGE ``[B,H,W,C]`` 0..1) and ``prompt`` (or take ``conditioning``), then :func:`train`."""
    training_flux.model_family(model.model)
    inputs = prepare_inputs(clip, vae, images, prompt, cfg.resolution, conditioning)
    return train(model, inputs, cfg, progress=progress)


def fixed_timestep_loss(
    model, inputs: TrainingInputs, lora: StyleLora | None = None, count: int = 10, seed: int = 1234
) -> float:
    """The training loss averaged over ``count`` evenly spread timesteps with fixed noise (``seed``) and every
    style image: a noise-free measure of how well ``model`` (plus ``lora``, if given) fits the style."""
    total = 0.0
    patcher = _load(model)  # in the caller's mode, as in train()
    with torch.inference_mode(False), torch.no_grad():
        base = patcher.model
        device = patcher.load_device
        _check_latent(base, inputs.latent)
        loss_function = training_flux.loss_function(base, inputs.conditioning, diffusion_loss)
        ms = base.model_sampling
        sigma_table = _sigma_table(ms)
        t = core.fixed_timestep_indices(int(sigma_table.shape[0]), count)
        generator = torch.Generator().manual_seed(int(seed))
        latents = base.process_latent_in(inputs.latent.detach().clone()).float().to(device)
        batch = latents[:1].expand(count, -1, -1, -1)
        conds = _model_conds(base, inputs.conditioning, batch, device, seed)
        denoiser = LoraDenoiser(base, lora)
        sigma = sigma_table[t].to(device)
        for i in range(latents.shape[0]):
            x0 = latents[i : i + 1].expand(count, -1, -1, -1)
            noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(device)
            total += float(loss_function(denoiser, ms, x0, noise, sigma, conds))
    return total / latents.shape[0]
