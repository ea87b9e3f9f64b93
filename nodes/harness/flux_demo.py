"""Stand-ins for Flux.1's model files: what the runner's demo mode and the tests load in place of them (#26 item 7).

The Flux workflows load ``flux1-dev.safetensors`` (UNETLoader), ``t5xxl_fp16.safetensors`` + ``clip_l.safetensors``
(DualCLIPLoader, type flux) and ``ae.safetensors`` (VAELoader). None of them exist here; the stand-ins keep every
shape the Flux graph sees:

* the diffusion model: the tiny Flux-dev of :mod:`.tiny_flux` (:data:`DEMO_SPEC`), as a file the core UNETLoader
  reads where this ComfyUI's detection derives the heads from the width (:func:`loader_reads_tiny`, v0.33.0), else
  built in-process by the node ``DiffStylerTestTinyFlux`` (v0.8.0's loader fixes 24 heads, so it needs hidden 3072);
* the text encoders: ``DiffStylerTestTinyFluxCLIP``, a ComfyUI ``CLIP`` whose 64-wide tiny CLIP-L encodes the prompt
  and two seeded projections widen it to Flux's conditioning (context ``[B, 256, 4096]`` as T5-XXL pads it,
  ``pooled_output [B, 768]``), so FluxGuidance and the pack's nodes get what real encoders give;
* the VAE: ``DiffStylerTestTinyFluxVAE``, an AutoencoderKL with 32 channels and Flux's 16-channel latent (8x down);
* style LoRAs: :func:`random_lora`, kohya-layout files on the attention projections (whole fused tensors, as
  tests/comfy/test_flux_lora_formats.py writes kohya files).

Nothing here imports ComfyUI at module import time.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

from . import tiny, tiny_flux

UNET_NODE = "DiffStylerTestTinyFlux"
CLIP_NODE = "DiffStylerTestTinyFluxCLIP"
VAE_NODE = "DiffStylerTestTinyFluxVAE"
DEMO_SPEC = tiny_flux.TinyFlux(hidden=128, depth=2, depth_single=2, guidance=True, seed=0)
DEMO_UNET = "diffstyler_demo_tiny_flux.safetensors"
TEXT_TOKENS = 256  # Flux's T5-XXL pads every prompt to 256 tokens
LORA_TARGETS = ("img_attn.qkv", "img_attn.proj", "txt_attn.qkv", "txt_attn.proj", "linear1", "linear2")
TINY_FLUX_VAE_CONFIG = {
    "params": {
        "embed_dim": 16,
        "ddconfig": dict(tiny.TINY_VAE_CONFIG["params"]["ddconfig"], z_channels=16),
    }
}


def loader_reads_tiny(spec: tiny_flux.TinyFlux = DEMO_SPEC) -> bool:
    """True where this ComfyUI's detection gives the tiny file ``hidden / 128`` heads (so UNETLoader loads it)."""
    import comfy.model_detection
    import torch

    shapes = {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in _state_dict(spec).items()}
    found = comfy.model_detection.detect_unet_config(shapes, "")
    return found.get("num_heads") == spec.hidden // tiny_flux.HEAD_DIM


@functools.cache
def _state_dict(spec: tiny_flux.TinyFlux) -> dict:
    return tiny_flux.state_dict(spec)


def save_unet(path: Path, spec: tiny_flux.TinyFlux = DEMO_SPEC) -> str:
    """The tiny Flux as a ComfyUI-format diffusion model file (what ``flux1-dev.safetensors`` holds, tiny)."""
    import safetensors.torch

    safetensors.torch.save_file(_state_dict(spec), str(path))
    return str(path)


def random_lora(spec: tiny_flux.TinyFlux = DEMO_SPEC, rank: int = 4, seed: int = 0, scale: float = 0.5) -> dict:
    """A kohya-layout Flux LoRA (``lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight``, ``.lora_up.weight``,
    ``.alpha``) with seeded factors on every attention projection of ``spec`` (whole fused qkv / linear1 tensors)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, w in sorted(_state_dict(spec).items()):
        module = key[: -len(".weight")]
        if not key.endswith(".weight") or not module.endswith(LORA_TARGETS) or w.ndim != 2:
            continue
        out_dim, in_dim = w.shape
        stem = "lora_unet_" + module.replace(".", "_")
        out[stem + ".lora_down.weight"] = torch.randn(rank, in_dim, generator=g) * scale / math.sqrt(in_dim)
        out[stem + ".lora_up.weight"] = torch.randn(out_dim, rank, generator=g) * scale / math.sqrt(rank)
        out[stem + ".alpha"] = torch.tensor(float(rank))
    return out


def save_lora(path: Path, seed: int, spec: tiny_flux.TinyFlux = DEMO_SPEC) -> str:
    import safetensors.torch

    safetensors.torch.save_file(random_lora(spec, seed=seed), str(path))
    return str(path)


# ---------------------------------------------------------------------------------------------- the stand-ins


@functools.cache
def _text_model_class():
    """A ``SD1ClipModel`` (tiny CLIP-L, 64 wide) whose output is widened to Flux's conditioning shapes."""
    import comfy.ops
    import comfy.sd1_clip
    import torch

    class TinyFluxTextModel(comfy.sd1_clip.SD1ClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}, **kwargs):  # noqa: B006 - ComfyUI's signature
            super().__init__(
                device=device, dtype=dtype, model_options=model_options, clip_model=tiny.TinyClip, **kwargs
            )
            ops = comfy.ops.manual_cast
            self.to_context = ops.Linear(tiny.CONTEXT_DIM, tiny_flux.T5_WIDTH, device=device, dtype=dtype)
            self.to_pooled = ops.Linear(tiny.CONTEXT_DIM, tiny_flux.POOLED_WIDTH, device=device, dtype=dtype)

        def encode_token_weights(self, token_weight_pairs):
            out = super().encode_token_weights(token_weight_pairs)
            cond, pooled = out[0].float(), out[1].float()
            context = self.to_context(cond)
            if context.shape[1] < TEXT_TOKENS:  # T5 pads with its pad token: here the last token, repeated
                pad = context[:, -1:].expand(-1, TEXT_TOKENS - context.shape[1], -1)
                context = torch.cat([context, pad], dim=1)
            return (context, self.to_pooled(pooled), *out[2:])

    return TinyFluxTextModel


def tiny_text_encoder(seed: int = 0):
    """A ComfyUI ``CLIP`` giving Flux-shaped CONDITIONING: context ``[B, 256, 4096]``, pooled ``[B, 768]``."""
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models_base

    target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, _text_model_class())
    clip = comfy.sd.CLIP(target, parameters=0)
    model = clip.cond_stage_model
    model.load_state_dict(tiny.randomize_state_dict(dict(model.state_dict()), seed + 3))
    return clip


def tiny_vae(seed: int = 0):
    """An AutoencoderKL with 32 channels and Flux's 16-channel latent (8x downscale), seeded weights."""
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    ae = AutoencoderKL(**TINY_FLUX_VAE_CONFIG["params"])
    vae = comfy.sd.VAE(sd=tiny.randomize_state_dict(ae.state_dict(), seed + 7), config=TINY_FLUX_VAE_CONFIG)
    vae.latent_channels = 16  # the config path keeps SD's 4 (used by the tiled encode)
    return vae


def tiny_unet(seed: int = 0):
    """The demo's tiny Flux-dev as a MODEL built in-process (every host)."""
    return tiny_flux.build_model(dataclasses.replace(DEMO_SPEC, seed=seed))


def seeded_node(node_id: str, name: str, output, build, what: str):
    """A V3 stand-in node: a ``seed`` input and one output ``build(seed)``, built once per seed and cached."""
    from .._api import io

    cache: dict = {}

    class Node(io.ComfyNode):
        @classmethod
        def define_schema(cls):
            return io.Schema(
                node_id=node_id,
                display_name=f"{name} (DiffStyler tests)",
                category="DiffStyler/testing",
                description=f"{what}, seeded random weights: a stand-in for the demo run and the tests.",
                inputs=[io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip="Weight seed.")],
                outputs=[output.Output(tooltip=what)],
            )

        @classmethod
        def execute(cls, seed):
            if seed not in cache:
                cache[seed] = build(seed)
            return io.NodeOutput(cache[seed])

    Node.__name__ = node_id
    return Node


def node_classes() -> list:
    """The Flux stand-in nodes (seed input, one cached model per seed): UNET, CLIP and VAE."""
    from .._api import io

    return [
        seeded_node(UNET_NODE, "Tiny Flux", io.Model, tiny_unet, "A tiny Flux.1-dev (hidden 128, 2+2 blocks)"),
        seeded_node(CLIP_NODE, "Tiny Flux text encoders", io.Clip, tiny_text_encoder, "Flux-shaped text conditioning"),
        seeded_node(VAE_NODE, "Tiny Flux VAE", io.Vae, tiny_vae, "A tiny VAE with Flux's 16-channel latent"),
    ]


def write_models(folder_paths, models: Path, n_styles: int) -> dict:
    """The Flux demo's files in ``models``: the tiny Flux in ``diffusion_models`` where UNETLoader reads it (else
    None: the in-process node stands in) and one random Flux LoRA per style. Returns the names."""
    for kind in ("diffusion_models", "loras"):
        (models / kind).mkdir(parents=True, exist_ok=True)
        folder_paths.add_model_folder_path(kind, str(models / kind), is_default=True)
    unet = None
    if loader_reads_tiny():
        save_unet(models / "diffusion_models" / DEMO_UNET)
        unet = DEMO_UNET
    loras = []
    for i in range(max(1, n_styles)):
        name = f"diffstyler_demo_flux_style_{i + 1}.safetensors"
        save_lora(models / "loras" / name, seed=100 + i)
        loras.append(name)
    for kind in ("diffusion_models", "loras"):
        folder_paths.filename_list_cache.pop(kind, None)
    return {"unet": unet, "loras": loras}
