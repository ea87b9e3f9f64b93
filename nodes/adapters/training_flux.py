"""Style-LoRA training on a Flux.1 MODEL (issue #26 item 9; design Sec. 6): the family check, the LoRA targets and
the flow-matching loss. The training loop, the functional LoRA and the saving are the UNet's (``training.py``).

- Family: read from the MODEL, as everywhere in the pack: ``comfy.model_base.Flux`` with ``unet_config["image_model"]
  == "flux"`` (dev with its guidance embedding, schnell without). Flux.2, Chroma and other DiTs are refused by name;
  every UNet (SD1.x, SD2.x, SDXL) trains as before.
- Targets: ``attention`` = the double blocks' image-stream attention projections ``img_attn.qkv`` (fused q, k, v)
  and ``img_attn.proj``; ``all_linear`` = every Linear of the double and single blocks. Whole fused tensors, saved
  with kohya names (``lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight``), which ComfyUI's key map sends to
  ``diffusion_model.double_blocks.0.img_attn.qkv.weight`` on every tested host.
- Loss: ``x_s = s*noise + (1-s)*x0``, target ``v = noise - x0``, ``s`` drawn uniformly from the model sampling's own
  sigma table (``ModelSamplingFlux``: ``t`` uniform on ``1/10000 .. 1`` through the MODEL's shift, a Model Sampling
  Flux patch included). Guidance is what the conditioning carries (ComfyUI's Flux default 3.5 when it carries none;
  ignored by schnell).
- RoPE: ComfyUI's Flux attention rotates q and k with comfy_kitchen's ``apply_rope``, a custom op without a backward.
  :func:`differentiable_rope` switches to plain torch for the training run: ComfyUI's own ``in_training`` flag where
  the host has it (what its TrainLoraNode sets), else the Flux attention's ``apply_rope`` for the run's duration.
- In-place residuals: the blocks add their updates in place after a LayerNorm read the tensor;
  :func:`saved_activations_copied` gives autograd its own copy of what it saves (the loss's gradient, tested against
  diffusers' twin).
"""

from __future__ import annotations

import contextlib

import comfy.model_management
import comfy.model_sampling
import torch
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

from ..core import training as core
from .injector.flux import flux_kind

FAMILIES = "SD1.x, SD2.x and SDXL UNets and Flux.1 (dev, schnell)"


def model_family(base) -> str:
    """``"flux"`` for a Flux.1 BaseModel, ``"unet"`` for a UNet one; ValueError naming any other family."""
    unet_config = getattr(getattr(base, "model_config", None), "unet_config", None) or {}
    image_model = unet_config.get("image_model")
    if flux_kind(base) == "flux":
        return "flux"
    if image_model is None and isinstance(getattr(base, "diffusion_model", None), UNetModel):
        return "unet"
    name = type(base).__name__
    raise ValueError(
        f"model: Train Style LoRA trains {FAMILIES}; this MODEL is {name} (image_model {image_model!r}, diffusion "
        f"model {type(getattr(base, 'diffusion_model', None)).__name__}): Flux.2, Chroma, SD3 and other DiTs are "
        "not supported. Load a Flux.1 dev/schnell or an SD1.x/SD2.x/SDXL checkpoint"
    )


def find_targets(base, targets: str) -> list[core.LoraTarget]:
    """The Linear layers of a Flux.1 diffusion model that get a LoRA for ``targets`` (see :mod:`core.training`)."""
    found = []
    for path, module in base.diffusion_model.named_modules():
        weight = getattr(module, "weight", None)
        if (
            isinstance(module, torch.nn.Linear)
            and isinstance(weight, torch.Tensor)
            and core.is_flux_target(path, targets)
        ):
            found.append(core.LoraTarget(f"diffusion_model.{path}.weight", tuple(int(s) for s in weight.shape)))
    if not found:
        raise ValueError(
            f"targets: this Flux model ({type(base.diffusion_model).__name__}) has no {targets!r} layers "
            "(double_blocks.N.img_attn.qkv / proj): it is not a Flux.1 transformer"
        )
    return found


def check_conditioning(conditioning: list) -> None:
    """ValueError naming ``conditioning`` unless every entry carries Flux's pooled CLIP-L output."""
    for i, entry in enumerate(conditioning or []):
        extra = entry[1] if isinstance(entry, (list, tuple)) and len(entry) > 1 else {}
        if not isinstance(extra, dict) or extra.get("pooled_output") is None:
            raise ValueError(
                f"conditioning: entry {i} has no pooled_output, which Flux.1 needs (its CLIP-L vector): encode the "
                "prompt with the Flux CLIP (DualCLIPLoader, type flux: t5xxl + clip_l) and CLIP Text Encode (Flux)"
            )


def check_model_sampling(model_sampling) -> None:
    """ValueError unless the model samples by flow matching (ComfyUI's CONST: ``denoised = x - s*v``)."""
    if not isinstance(model_sampling, comfy.model_sampling.CONST):
        raise ValueError(
            f"model: a Flux.1 MODEL samples by flow matching, but its model sampling is "
            f"{type(model_sampling).__name__}: remove the node that patched it (use Model Sampling Flux for the shift)"
        )


def loss_function(base, conditioning: list, unet_loss):
    """The training loss of ``base``'s family: :func:`flow_loss` for Flux.1 (its conditioning and model sampling
    checked first), else ``unet_loss`` (``training.diffusion_loss``)."""
    if model_family(base) != "flux":
        return unet_loss
    check_conditioning(conditioning)
    check_model_sampling(base.model_sampling)
    return flow_loss


def flow_loss(denoiser, model_sampling, x0, noise, sigma, conds) -> torch.Tensor:
    """The flow-matching loss at ``sigma`` (``[N]``, from the model sampling's table): ``x_s = s*noise + (1-s)*x0``
    (``x0``/``noise`` ``[N,16,h,w]``, model space), ``||v_pred - (noise - x0)||^2`` with ``v_pred`` read from
    ``apply_model``'s denoised output (same signature as ``training.diffusion_loss``; ``denoiser`` a
    ``training.LoraDenoiser``). The forward runs under :func:`saved_activations_copied`."""
    x_s = core.flow_noised(x0, noise, sigma)
    params = denoiser.params()
    with saved_activations_copied(params.values()):
        denoised = denoiser(x_s, sigma, conds, params)
    return core.flow_matching_mse(x_s, denoised, x0, noise, sigma)


@contextlib.contextmanager
def saved_activations_copied(weights):
    """Autograd keeps a private copy of every activation it saves for backward (weights: never copied).

    ComfyUI's Flux blocks add their residual updates in place (``img += ...`` after ``img_norm1(img)``, ``x += ...``
    after ``pre_norm(x)``), so the tensor a LayerNorm saved has changed by the time backward needs it and autograd
    refuses ("modified by an inplace operation"). A tensor that needs a gradient is copied when it is saved (the
    un-copied original is usually freed right after, so memory stays about the same); ``weights`` (the call's
    parameter tensors, LoRA-merged ones included) and tensors without a gradient are kept as they are, and the
    in-place check autograd skips under saved-tensor hooks is done here: a kept tensor changed since it was saved
    raises instead of giving a wrong gradient.
    """
    keep = {t.untyped_storage().data_ptr() for t in weights}

    def pack(t: torch.Tensor):
        if t.requires_grad and t.untyped_storage().data_ptr() not in keep:
            t = t.detach().clone()
        return t, t._version

    def unpack(packed) -> torch.Tensor:
        t, version = packed
        if t._version != version:
            raise RuntimeError(
                f"Train Style LoRA (Flux): a tensor {list(t.shape)} saved for backward was changed in place before "
                "backward: this host's Flux blocks write in place where the training does not expect it"
            )
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield


def _rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """``x`` ``[..., D]`` with each pair ``(x[2i], x[2i+1])`` multiplied by the 2x2 matrix ``freqs[..., i, :, :]``
    (Flux's ``pe`` ``[..., D/2, 2, 2]``): the rotation ComfyUI's Flux RoPE applies, in differentiable torch."""
    pairs = x.to(freqs.dtype).reshape(*x.shape[:-1], -1, 1, 2)
    return (freqs * pairs).sum(-1).reshape(x.shape).type_as(x)


def _apply_rope(xq: torch.Tensor, xk: torch.Tensor, freqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _rope(xq, freqs), _rope(xk, freqs)


@contextlib.contextmanager
def differentiable_rope(enabled: bool = True):
    """For the duration of a training run, Flux's RoPE in plain torch (so gradients flow through q and k); restored
    afterwards, also when the run raises. Hosts with ``comfy.model_management.in_training`` (v0.33.0) switch on
    it; older ones (v0.8.0) bind ``comfy.ldm.flux.math.apply_rope`` at import to comfy_kitchen's op."""
    if not enabled:
        yield
        return
    mm = comfy.model_management
    if hasattr(mm, "in_training"):
        before = mm.in_training
        mm.in_training = True
        try:
            yield
        finally:
            mm.in_training = before
        return
    import comfy.ldm.flux.math as flux_math

    original = flux_math.apply_rope
    flux_math.apply_rope = _apply_rope
    try:
        yield
    finally:
        flux_math.apply_rope = original
