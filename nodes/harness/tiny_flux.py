"""A tiny Flux.1 with seeded random weights, built from ComfyUI's own classes (issue #26, item 7).

Flux.1's layout at a small width: head dim 128, RoPE axes [16, 56, 56], 16 latent channels in 2x2 patches,
T5-XXL/CLIP-L widths for the text (4096) and pooled (768) inputs, a guidance embedding (dev) or none (schnell).

- :func:`save_file` writes a ComfyUI-format (BFL key names) ``.safetensors`` that the core UNETLoader
  (``comfy.sd.load_diffusion_model``) reads on hosts whose detection derives the head count from the width
  (``num_heads = hidden / 128``, v0.33.0). Older hosts (v0.8.0) fix 24 heads, so their loader needs hidden 3072.
- :func:`build_model` builds the same family in-process through ``comfy.supported_models.Flux(unet_config)``
  (FluxSchnell without guidance), as the loader does after detection: a ModelPatcher on every host.
- :func:`conditioning` is a CONDITIONING built directly (random T5-width context, pooled output, guidance).
- :func:`diffusers_twin` holds the same weights in diffusers' ``FluxTransformer2DModel`` (keys mapped with
  ``comfy.utils.flux_to_diffusers``, fused ``qkv`` / ``linear1`` split); :func:`twin_velocity` runs it on a
  ComfyUI-layout latent (packed latents and ids as diffusers' pipeline makes them).

ComfyUI is imported inside the functions only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

HEAD_DIM = 128
AXES_DIM = [16, 56, 56]
T5_WIDTH = 4096  # Flux.1's context_in_dim (T5-XXL)
POOLED_WIDTH = 768  # Flux.1's vec_in_dim (CLIP-L pooled output)
NORM_SCALE = ("query_norm.", "key_norm.")  # RMSNorm scales: BFL files name them ".scale"
EMBEDDERS = ("time_in.in_layer.weight", "guidance_in.in_layer.weight")  # read Flux's sinusoidal embedding (256)
SMOOTH_RAD = 20.0  # the embedders' columns are damped by exp(-omega / SMOOTH_RAD), omega in radians per unit sigma


@dataclass(frozen=True)
class TinyFlux:
    """A tiny Flux.1: ``hidden`` a multiple of 128 (one head per 128), ``depth`` double and ``depth_single``
    single-stream blocks; ``guidance`` True for dev (guidance embedding), False for schnell."""

    hidden: int = 128
    depth: int = 1
    depth_single: int = 1
    guidance: bool = True
    context_dim: int = T5_WIDTH
    pooled_dim: int = POOLED_WIDTH
    seed: int = 0

    def unet_config(self) -> dict:
        """The ``unet_config`` ComfyUI's detection gives a Flux.1 file of this shape (with ``num_heads`` derived
        from the width, as v0.33.0 detects it)."""
        if self.hidden % HEAD_DIM:
            raise ValueError(f"hidden: expected a multiple of {HEAD_DIM} (Flux.1's head dim), got {self.hidden}")
        return {
            "image_model": "flux",
            "axes_dim": list(AXES_DIM),
            "num_heads": self.hidden // HEAD_DIM,
            "mlp_ratio": 4.0,
            "theta": 10000,
            "out_channels": 16,
            "qkv_bias": True,
            "txt_ids_dims": [],
            "in_channels": 16,
            "hidden_size": self.hidden,
            "context_in_dim": self.context_dim,
            "patch_size": 2,
            "vec_in_dim": self.pooled_dim,
            "depth": self.depth,
            "depth_single_blocks": self.depth_single,
            "guidance_embed": self.guidance,
            "yak_mlp": False,
            "txt_norm": False,
        }


def _model_config(spec: TinyFlux):
    """ComfyUI's model config for ``spec`` (``supported_models.Flux`` / ``FluxSchnell``), fp32 as the loader sets it."""
    import comfy.model_detection

    config = comfy.model_detection.model_config_from_unet_config(spec.unet_config(), None)
    if config is None or config.unet_config.get("image_model") != "flux":
        raise RuntimeError(f"this ComfyUI has no Flux.1 model config for {spec}")
    config.set_inference_dtype(torch.float32, None)
    return config


def randomize_(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Seeded values for every floating tensor: fan-in scaled weights, small biases, RMSNorm scales near 1, the
    final layer at a tenth (a smooth random velocity). Keys in sorted order, so the values depend on the shapes only."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k in sorted(state):
        v = state[k]
        if not torch.is_floating_point(v):
            out[k] = v.clone()
        elif any(n in k for n in NORM_SCALE):
            out[k] = (1.0 + 0.1 * torch.randn(v.shape, generator=g)).to(v.dtype)
        elif v.ndim >= 2:
            t = torch.randn(v.shape, generator=g) / math.sqrt(max(1, math.prod(v.shape[1:])))
            out[k] = (t * (0.1 if "final_layer." in k else 1.0)).to(v.dtype)
        else:
            out[k] = (0.02 * torch.randn(v.shape, generator=g)).to(v.dtype)
    return out


def state_dict(spec: TinyFlux = TinyFlux()) -> dict[str, torch.Tensor]:
    """The tiny model's weights with BFL/ComfyUI file key names (``double_blocks.0.img_attn.qkv.weight``,
    ``...query_norm.scale``), no prefix: what ``flux1-dev.safetensors`` holds at this size."""
    model = _model_config(spec).get_model({})
    own = {
        _bfl_name(k[len("diffusion_model.") :]): v
        for k, v in model.state_dict().items()
        if k.startswith("diffusion_model.")
    }
    sd = smooth_in_sigma_(randomize_(own, spec.seed))  # the same values on every host
    return {k: v.contiguous() for k, v in sd.items()}


def smooth_in_sigma_(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Damp the timestep and guidance embedders' high-frequency inputs in place, the Frobenius norm kept.

    Flux embeds ``1000*sigma`` with sinusoids up to 1 rad per unit, so random weights make the velocity oscillate
    with a period of ~0.006 in sigma, which no trained model does and which would make every inversion grid
    measurement on the tiny model an aliasing artefact. Column ``i`` (cos and sin halves alike) of frequency
    ``omega_i = 1000 * 10000^(-i/128)`` is scaled by ``exp(-omega_i / SMOOTH_RAD)``.
    """
    for key in EMBEDDERS:
        w = sd.get(key)
        if w is None:
            continue
        half = w.shape[1] // 2
        omega = 1000.0 * torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / half)
        damp = torch.exp(-omega / SMOOTH_RAD).repeat(2).to(w.dtype)
        damped = w * damp
        sd[key] = damped * (w.norm() / damped.norm())
    return sd


def _bfl_name(key: str) -> str:
    if any(n in key for n in NORM_SCALE) and key.endswith(".weight"):
        return key[: -len(".weight")] + ".scale"  # hosts whose RMSNorm is comfy.ops' name it .weight in memory
    return key


def save_file(path, spec: TinyFlux = TinyFlux()) -> str:
    """Write the tiny model as a ComfyUI-format ``.safetensors`` diffusion model file; returns the path."""
    import safetensors.torch

    safetensors.torch.save_file(state_dict(spec), str(path))
    return str(path)


def load_file(path):
    """The MODEL (ModelPatcher) from ``path`` through the core UNETLoader's own function."""
    import comfy.sd

    return comfy.sd.load_diffusion_model(str(path))


def build_model(spec: TinyFlux = TinyFlux(), sd: dict[str, torch.Tensor] | None = None):
    """The tiny Flux as a ModelPatcher built in-process through ``comfy.supported_models.Flux(unet_config)``: what
    ``load_diffusion_model_state_dict`` does after detection (works on every host, whatever its detection fixes).
    ``sd``: BFL-format weights (default: :func:`state_dict` of ``spec``)."""
    import comfy.model_management
    import comfy.model_patcher

    config = _model_config(spec)
    sd = state_dict(spec) if sd is None else sd
    sd = config.process_unet_state_dict(dict(sd))
    model = config.get_model(sd, "")
    missing, unexpected = model.diffusion_model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"tiny Flux weights do not fit: missing {missing[:4]}, unexpected {unexpected[:4]}")
    return comfy.model_patcher.ModelPatcher(
        model,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )


def conditioning(
    spec: TinyFlux = TinyFlux(), tokens: int = 256, batch: int = 1, seed: int = 0, guidance: float | None = 3.5
) -> list:
    """A Flux CONDITIONING built directly: ``[[context [B,tokens,context_dim], {"pooled_output": [B,pooled_dim],
    "guidance": g}]]`` with seeded random tensors (no T5 needed); ``guidance`` None leaves the key out."""
    g = torch.Generator().manual_seed(seed)
    context = torch.randn(batch, tokens, spec.context_dim, generator=g)
    extra = {"pooled_output": torch.randn(batch, spec.pooled_dim, generator=g)}
    if guidance is not None:
        extra["guidance"] = float(guidance)
    return [[context, extra]]


def latent(height: int = 32, width: int = 32, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """A VAE-space Flux LATENT's samples ``[B,16,h,w]`` (h, w in latent cells: an image is 8x as large)."""
    return torch.randn(batch, 16, height, width, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------- diffusers twin


def twin_state_dict(model) -> dict[str, torch.Tensor]:
    """``model``'s (ModelPatcher or BaseModel) diffusion weights under diffusers' ``FluxTransformer2DModel`` names,
    with ComfyUI's own key map: fused ``qkv`` / ``linear1`` rows sliced, the final modulation's halves swapped."""
    import comfy.utils

    base = getattr(model, "model", model)
    state = base.state_dict()
    mapping = comfy.utils.flux_to_diffusers(base.model_config.unet_config, output_prefix="diffusion_model.")
    out = {}
    for name, target in mapping.items():
        if isinstance(target, str):
            if target in state:
                out[name] = state[target]
            continue
        key, where = target[0], target[1]
        if key not in state:
            continue
        t = state[key]
        if where is not None:
            dim, offset, size = where
            t = t.narrow(dim, offset, size)
        if len(target) > 2:
            t = target[2](t)
        out[name] = t
    return {k: v.detach().clone().float() for k, v in out.items()}


def diffusers_twin(model):
    """A diffusers ``FluxTransformer2DModel`` holding ``model``'s weights (every parameter filled, strictly)."""
    from diffusers import FluxTransformer2DModel

    base = getattr(model, "model", model)
    cfg = base.model_config.unet_config
    twin = FluxTransformer2DModel(
        patch_size=1,
        in_channels=cfg["in_channels"] * cfg["patch_size"] ** 2,
        num_layers=cfg["depth"],
        num_single_layers=cfg["depth_single_blocks"],
        attention_head_dim=cfg["hidden_size"] // cfg["num_heads"],
        num_attention_heads=cfg["num_heads"],
        joint_attention_dim=cfg["context_in_dim"],
        pooled_projection_dim=cfg["vec_in_dim"],
        guidance_embeds=bool(cfg["guidance_embed"]),
        axes_dims_rope=tuple(cfg["axes_dim"]),
    )
    sd = twin_state_dict(model)
    want = set(twin.state_dict())
    sd = {k: v for k, v in sd.items() if k in want}  # the key map also names controlnet / LyCORIS aliases
    twin.load_state_dict(sd, strict=True)
    return twin.eval()


def pack(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ComfyUI-layout latent ``[B,16,h,w]`` -> diffusers' packed latents ``[B,(h/2)(w/2),64]`` and img_ids
    ``[(h/2)(w/2),3]`` (0, row, column), as ``FluxPipeline._pack_latents`` / ``_prepare_latent_image_ids`` make them."""
    b, c, h, w = x.shape
    packed = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    return packed, ids.reshape(-1, 3)


def unpack(packed: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`pack`'s latent packing: ``[B,(h/2)(w/2),64]`` -> ``[B,16,h,w]``."""
    b, _, c4 = packed.shape
    c = c4 // 4
    return packed.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


@torch.no_grad()
def twin_velocity(twin, x: torch.Tensor, sigma, cond: list) -> torch.Tensor:
    """The twin's velocity for a ComfyUI-layout latent ``x`` ``[B,16,h,w]`` (model space) at ``sigma`` (float or
    ``[B]``) with a CONDITIONING ``cond`` (its first entry): ``[B,16,h,w]``, comparable with ComfyUI's raw output."""
    context, extra = cond[0][0], cond[0][1]
    b, _, h, w = x.shape
    packed, img_ids = pack(x.float())
    sigma = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1).expand(b)
    guidance = extra.get("guidance")
    out = twin(
        hidden_states=packed,
        encoder_hidden_states=context.float().expand(b, -1, -1),
        pooled_projections=extra["pooled_output"].float().expand(b, -1),
        timestep=sigma,
        img_ids=img_ids,
        txt_ids=torch.zeros(context.shape[1], 3),
        guidance=None if guidance is None or not twin.config.guidance_embeds else torch.full((b,), float(guidance)),
        return_dict=False,
    )[0]
    return unpack(out, h, w)


@torch.no_grad()
def comfy_velocity(model, x: torch.Tensor, sigma, cond: list) -> torch.Tensor:
    """ComfyUI's raw velocity (the diffusion model's own output) for the same inputs as :func:`twin_velocity`."""
    base = getattr(model, "model", model)
    context, extra = cond[0][0], cond[0][1]
    b = x.shape[0]
    sigma = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1).expand(b)
    timestep = base.model_sampling.timestep(sigma)
    guidance = extra.get("guidance")
    return base.diffusion_model(
        x.float(),
        timestep,
        context.float().expand(b, -1, -1),
        y=extra["pooled_output"].float().expand(b, -1),
        guidance=None if guidance is None else torch.full((b,), float(guidance)),
    ).float()
