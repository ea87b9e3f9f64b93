"""The tiny real-architecture models: their configs and builders, from ComfyUI's own classes, seeded random weights.

Every model keeps the block ids of its family (SD1.5: 12 output blocks, attention from output block 3; SDXL: 9
output blocks) with 32 base channels and a 64-wide tiny CLIP. ComfyUI's layers skip initialisation, so the weights
are filled here (:func:`randomize_state_dict`). :func:`sd15_unet_config` is the one SD1.5 UNet config: the tiny
model of the tests and the runner's demo mode, and (``model_channels=320, context_dim=768, num_heads=8``) the
full-size SD1.5 UNet of the benches.

The model config classes (``TinySD15``, ``TinySD2V``, ``TinySDXL``) subclass ComfyUI's, so they are built on first
use (``tiny.TinySD15``); :func:`register_checkpoint_config` lists ``TinySD15`` in ``comfy.supported_models.models``
so that the core ``CheckpointLoaderSimple`` loads a tiny checkpoint file.
"""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

CONTEXT_DIM = 64

TINY_CLIP_CONFIG = {
    "architectures": ["CLIPTextModel"],
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 49407,
    "hidden_act": "quick_gelu",
    "hidden_size": CONTEXT_DIM,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 128,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 2,
    "num_hidden_layers": 2,
    "pad_token_id": 1,
    "projection_dim": CONTEXT_DIM,
    "torch_dtype": "float32",
    "vocab_size": 49408,
}


def sd15_unet_config(model_channels: int = 32, context_dim: int = CONTEXT_DIM, num_heads: int = 4) -> dict:
    """SD1.5's UNet config (every block and layer) at ``model_channels`` wide; the defaults are the tiny model."""
    return {
        "use_checkpoint": False,
        "image_size": 32,
        "out_channels": 4,
        "use_spatial_transformer": True,
        "legacy": False,
        "adm_in_channels": None,
        "in_channels": 4,
        "model_channels": model_channels,
        "num_res_blocks": [2, 2, 2, 2],
        "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
        "channel_mult": [1, 2, 4, 4],
        "transformer_depth_middle": 1,
        "use_linear_in_transformer": False,
        "context_dim": context_dim,
        "num_heads": num_heads,
        "num_head_channels": -1,
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        "use_temporal_resblock": False,
        "use_temporal_attention": False,
    }


SD15_UNET = sd15_unet_config()
SD2_UNET = dict(SD15_UNET, use_linear_in_transformer=True, num_heads=-1, num_head_channels=16)
SDXL_UNET = dict(
    SD15_UNET,
    num_classes="sequential",
    adm_in_channels=CONTEXT_DIM + 6 * 256,
    num_res_blocks=[2, 2, 2],
    transformer_depth=[0, 0, 1, 1, 1, 1],
    channel_mult=[1, 2, 4],
    use_linear_in_transformer=True,
    num_heads=-1,
    num_head_channels=16,
    transformer_depth_output=[0, 0, 0, 1, 1, 1, 1, 1, 1],
)

TINY_VAE_CONFIG = {
    "params": {
        "embed_dim": 4,
        "ddconfig": {
            "double_z": True,
            "z_channels": 4,
            "resolution": 64,
            "in_channels": 3,
            "out_ch": 3,
            "ch": 32,
            "ch_mult": [1, 1, 1, 1],
            "num_res_blocks": 1,
            "attn_resolutions": [],
            "dropout": 0.0,
        },
    }
}


@functools.cache
def _model_classes() -> SimpleNamespace:
    """The tiny model config classes (built once, after ComfyUI is importable)."""
    import comfy.model_base
    import comfy.sd1_clip
    import comfy.supported_models
    import comfy.supported_models_base

    class TinyClip(comfy.sd1_clip.SDClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}):  # noqa: B006 - ComfyUI's signature
            super().__init__(
                device=device,
                dtype=dtype,
                model_options=model_options,
                textmodel_json_config=dict(TINY_CLIP_CONFIG),
                return_projected_pooled=False,
            )

    class TinySD1ClipModel(comfy.sd1_clip.SD1ClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}, **kwargs):  # noqa: B006
            super().__init__(device=device, dtype=dtype, model_options=model_options, clip_model=TinyClip, **kwargs)

    class TinySD15(comfy.supported_models.SD15):
        """SD1.5 topology, 32 channels, 64-wide context: what tests and the demo graph run on."""

        unet_config = {
            "context_dim": CONTEXT_DIM,
            "model_channels": 32,
            "use_linear_in_transformer": False,
            "adm_in_channels": None,
            "use_temporal_attention": False,
        }
        unet_extra_config = {"num_heads": 4, "num_head_channels": -1}

        def clip_target(self, state_dict={}):  # noqa: B006 - ComfyUI's signature
            return comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, TinySD1ClipModel)

    class TinySD2V(comfy.supported_models.SD20):
        unet_config = {
            "context_dim": CONTEXT_DIM,
            "model_channels": 32,
            "use_linear_in_transformer": True,
            "adm_in_channels": None,
            "use_temporal_attention": False,
        }
        unet_extra_config = {"num_heads": -1, "num_head_channels": 16}

        def __init__(self, unet_config, v_prediction=True):
            super().__init__(unet_config)
            self._v = v_prediction

        def model_type(self, state_dict, prefix=""):
            return comfy.model_base.ModelType.V_PREDICTION if self._v else comfy.model_base.ModelType.EPS

    class TinySDXL(comfy.supported_models.SDXL):
        unet_config = {
            "model_channels": 32,
            "use_linear_in_transformer": True,
            "transformer_depth": [0, 0, 1, 1, 1, 1],
            "context_dim": CONTEXT_DIM,
            "adm_in_channels": CONTEXT_DIM + 6 * 256,
            "use_temporal_attention": False,
        }

    return SimpleNamespace(
        TinyClip=TinyClip, TinySD1ClipModel=TinySD1ClipModel, TinySD15=TinySD15, TinySD2V=TinySD2V, TinySDXL=TinySDXL
    )


def __getattr__(name: str):
    """``tiny.TinySD15`` and the other model config classes, built on first use."""
    if name.startswith("Tiny"):
        return getattr(_model_classes(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register_checkpoint_config() -> None:
    """List ``TinySD15`` first in ComfyUI's model configs, so that checkpoint loaders recognise a tiny checkpoint."""
    import comfy.supported_models

    cls = _model_classes().TinySD15
    if cls not in comfy.supported_models.models:
        comfy.supported_models.models.insert(0, cls)


ZERO_INIT_OUT = ("diffusion_model.out.2.",)


def randomize_state_dict(sd: dict, seed: int) -> dict:
    """Seeded random values for every floating tensor (fan-in scaled weights, unit norms)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = {}
    for k in sorted(sd):
        v = sd[k]
        if not torch.is_floating_point(v):
            out[k] = v.clone()
            continue
        if v.ndim >= 2:
            fan_in = max(1, math.prod(v.shape[1:]))
            t = torch.randn(v.shape, generator=g) / math.sqrt(fan_in)
            if "embedding" in k:
                t = torch.randn(v.shape, generator=g) * 0.02
        elif "norm" in k or "ln_" in k or k.endswith("layer_norm1.weight") or k.endswith("layer_norm2.weight"):
            t = (
                (torch.ones(v.shape) + 0.01 * torch.randn(v.shape, generator=g))
                if k.endswith("weight")
                else (0.01 * torch.randn(v.shape, generator=g))
            )
        else:
            t = 0.01 * torch.randn(v.shape, generator=g)
        if k.startswith(ZERO_INIT_OUT):
            # LDM zero-initialises the UNet's output conv; a small scale keeps the random model's
            # noise prediction as smooth in x as a trained model's (DDIM inversion relies on it).
            t = t * 0.1
        out[k] = t.to(v.dtype)
    return out


def tiny_sd15_checkpoint_state_dict(seed: int = 0) -> dict:
    """A full SD1.x-format checkpoint state dict (UNet + CLIP, no VAE) for the tiny model."""
    import comfy.sd

    config = _model_classes().TinySD15(dict(SD15_UNET))
    model = config.get_model({})
    unet = randomize_state_dict(model.state_dict(), seed)
    clip = comfy.sd.CLIP(config.clip_target(), no_init=False, parameters=0)
    clip_sd = randomize_state_dict(dict(clip.cond_stage_model.state_dict()), seed + 1)
    out = {"model." + k: v for k, v in unet.items() if k.startswith("diffusion_model.")}
    for k, v in clip_sd.items():
        if k.startswith("clip_l."):
            out["cond_stage_model." + k[len("clip_l.") :]] = v
    return out


def load_checkpoint_state_dict(sd: dict):
    """(MODEL, CLIP) from a checkpoint state dict through ComfyUI's own loader."""
    import comfy.sd

    register_checkpoint_config()
    model, clip, _vae, _ = comfy.sd.load_state_dict_guess_config(dict(sd), output_vae=False, output_clip=True)
    return model, clip


def tiny_vae(seed: int = 0):
    """An SD-style AutoencoderKL (4-channel latent, 8x downscale) with 32 channels and seeded weights."""
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    ae = AutoencoderKL(**TINY_VAE_CONFIG["params"])
    sd = randomize_state_dict(ae.state_dict(), seed + 7)
    return comfy.sd.VAE(sd=sd, config=TINY_VAE_CONFIG)


def as_patcher(model):
    """A ``ModelPatcher`` around a ``BaseModel`` on ComfyUI's devices."""
    import comfy.model_management
    import comfy.model_patcher

    return comfy.model_patcher.ModelPatcher(
        model,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )


def tiny_unet(kind: str, seed: int = 0):
    """A tiny MODEL of ``kind``: 'sd15', 'sd2' (eps), 'sd2v' (v-prediction) or 'sdxl'."""
    classes = _model_classes()
    if kind == "sd15":
        config = classes.TinySD15(dict(SD15_UNET))
    elif kind in ("sd2", "sd2v"):
        config = classes.TinySD2V(dict(SD2_UNET), v_prediction=(kind == "sd2v"))
    elif kind == "sdxl":
        config = classes.TinySDXL(dict(SDXL_UNET))
    else:
        raise ValueError(kind)
    model = config.get_model({})
    # the weights only: the model_sampling buffers (sigmas, log_sigmas) are the noise schedule, not weights
    sd = {
        k: v for k, v in randomize_state_dict(model.state_dict(), seed).items() if not k.startswith("model_sampling.")
    }
    model.load_state_dict(sd, strict=False)
    return as_patcher(model)


def sdxl_conditioning(seed: int = 0, batch: int = 1, tokens: int = 77) -> list:
    import torch

    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(batch, tokens, CONTEXT_DIM, generator=g)
    pooled = torch.randn(batch, CONTEXT_DIM, generator=g)
    return [[cond, {"pooled_output": pooled, "width": 64, "height": 64}]]


def plain_conditioning(seed: int = 0, batch: int = 1, tokens: int = 77, dim: int = CONTEXT_DIM) -> list:
    import torch

    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(batch, tokens, dim, generator=g), {}]]


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


def random_lora(
    model, rank: int = 4, seed: int = 0, fmt: str = "kohya", scale: float = 0.5, alpha: float | None = None
) -> dict:
    """A LoRA state dict for every attention projection of ``model`` in ``fmt``: kohya, diffusers or peft.
    ``alpha`` (kohya): the stored alpha, ``rank / 2`` when None."""
    import comfy.utils
    import torch

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
            out[base + ".alpha"] = torch.tensor(float(rank) / 2 if alpha is None else float(alpha))
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
