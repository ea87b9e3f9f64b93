"""API-format graphs on the tiny models (the tests, the soak and the dynamic VRAM check run them) and their inputs.

* :func:`two_style_prompt` - the two-style DiffStyler graph (checkpoint -> DDIM Inversion -> two Style LoRA
  Loaders -> Injector -> Masked Feature Fusion Sampler -> VAE Decode -> Preview/Save Image); its pictures and LoRA
  files come from :func:`write_two_style_inputs`.
* :func:`hook_negative` - the two-style graph with its negative prompt from a hooked CLIP (CreateHookLora +
  SetClipHooks).
* :func:`core_ksampler_prompt` - a plain core KSampler graph.
* :func:`train_lora_prompt` - Train Style LoRA on a picture in the input folder.

Every graph decodes with the tiny VAE node (:mod:`.demo`). Nothing here imports ComfyUI at module import time.
"""

from __future__ import annotations

from .demo import TINY_VAE_NODE

LORA_NAMES = ("rel_style20.safetensors", "rel_style21.safetensors")
CONTENT_IMAGE = "rel_deer.png"
MASK_IMAGES = ("rel_left.png", "rel_right.png")
TINY_VAE = {"class_type": TINY_VAE_NODE, "inputs": {"seed": 0}}


def write_two_style_inputs(home, model, size: int = 64) -> None:
    """The content picture, a left/right mask pair and two random style LoRAs (seeds 20, 21) for ``model``."""
    import numpy as np
    import safetensors.torch
    from PIL import Image

    from .tiny import random_lora

    rng = np.random.default_rng(1)
    Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(home.input / CONTENT_IMAGE)
    left = np.zeros((size, size), np.uint8)
    left[:, : size // 2] = 255
    Image.fromarray(left).save(home.input / MASK_IMAGES[0])
    Image.fromarray(255 - left).save(home.input / MASK_IMAGES[1])
    for seed, name in zip((20, 21), LORA_NAMES):
        path = home.models / "loras" / name
        if not path.exists():
            safetensors.torch.save_file(random_lora(model, seed=seed), str(path))


def two_style_prompt(
    checkpoint: str,
    steps: int = 4,
    cfg: float = 10.5,
    strength2: float = 0.8,
    save: bool = False,
    grid: str = "sampling",
) -> dict:
    """The two-style graph (tests/comfy/test_core.py::test_graph_two_styles). Node "15" is the sampler.
    ``grid``: the inversion grid (the sampler's own steps by default, for speed; the node's default is fine)."""

    def enc(text):
        return {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["1", 1]}}

    def mask(name):
        return {"class_type": "LoadImageMask", "inputs": {"image": name, "channel": "red"}}

    out = (
        {"class_type": "SaveImage", "inputs": {"images": ["16", 0], "filename_prefix": "diffstyler_reliability"}}
        if save
        else {"class_type": "PreviewImage", "inputs": {"images": ["16", 0]}}
    )
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": dict(TINY_VAE),
        "3": {"class_type": "LoadImage", "inputs": {"image": CONTENT_IMAGE}},
        "4": {"class_type": "VAEEncode", "inputs": {"pixels": ["3", 0], "vae": ["2", 0]}},
        "5": {
            "class_type": "DiffStylerInvert",
            "inputs": {"model": ["1", 0], "latent": ["4", 0], "steps": steps, "clip": ["1", 1], "inversion_grid": grid},
        },
        "6": enc("painting of <sss>, deer"),
        "7": enc("sketch of <ttt>, grass"),
        "8": enc("a deer on grass"),
        "9": enc("ugly, blurry, black, low res, unrealistic"),
        "10": mask(MASK_IMAGES[0]),
        "11": mask(MASK_IMAGES[1]),
        "12": {
            "class_type": "DiffStylerStyleLoRA",
            "inputs": {"lora_name": LORA_NAMES[0], "strength": 1.0, "conditioning": ["6", 0], "mask": ["10", 0]},
        },
        "13": {
            "class_type": "DiffStylerStyleLoRA",
            "inputs": {
                "lora_name": LORA_NAMES[1],
                "strength": strength2,
                "conditioning": ["7", 0],
                "mask": ["11", 0],
                "styles": ["12", 0],
            },
        },
        "14": {
            "class_type": "DiffStylerCrossLoRAInjector",
            "inputs": {
                "model": ["1", 0],
                "styles": ["13", 0],
                "feature_injection_end": 0.6,
                "qk_injection_end": 0.5,
                "qk_blend": "adaptive",
                "lora_in_injected_attention": True,
            },
        },
        "15": {
            "class_type": "DiffStylerMaskedFusionSampler",
            "inputs": {
                "model": ["14", 0],
                "inversion": ["5", 0],
                "positive": ["8", 0],
                "negative": ["9", 0],
                "cfg": cfg,
                "background": "exact",
                "styles": ["13", 0],
            },
        },
        "16": {"class_type": "VAEDecode", "inputs": {"samples": ["15", 0], "vae": ["2", 0]}},
        "17": out,
    }


def hook_negative(prompt: dict, strength: float = 0.7) -> dict:
    """:func:`two_style_prompt`'s graph with its negative prompt (node "9") encoded by a CLIP that carries a hook
    LoRA (style 1's file, model strength ``strength``), as CreateHookLora + SetClipHooks make it; in place."""
    prompt["20"] = {
        "class_type": "CreateHookLora",
        "inputs": {"lora_name": LORA_NAMES[0], "strength_model": strength, "strength_clip": 0.0},
    }
    prompt["21"] = {
        "class_type": "SetClipHooks",
        "inputs": {"clip": ["1", 1], "apply_to_conds": True, "schedule_clip": False, "hooks": ["20", 0]},
    }
    prompt["9"]["inputs"]["clip"] = ["21", 0]
    return prompt


def core_ksampler_prompt(checkpoint: str, model_from=("1", 0), seed: int = 3, steps: int = 4, prefix="k") -> dict:
    """A plain core graph: checkpoint -> CLIP Text Encode x2 -> KSampler (euler) -> VAE Decode (tiny) -> Preview.

    Node ids carry ``prefix`` so the graph can be merged into another; ``model_from`` is the MODEL link.
    """
    p = prefix
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        f"{p}2": dict(TINY_VAE),
        f"{p}3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a deer on grass", "clip": ["1", 1]}},
        f"{p}4": {"class_type": "CLIPTextEncode", "inputs": {"text": "ugly, blurry", "clip": ["1", 1]}},
        f"{p}5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        f"{p}6": {
            "class_type": "KSampler",
            "inputs": {
                "model": list(model_from),
                "seed": seed,
                "steps": steps,
                "cfg": 6.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "positive": [f"{p}3", 0],
                "negative": [f"{p}4", 0],
                "latent_image": [f"{p}5", 0],
                "denoise": 1.0,
            },
        },
        f"{p}7": {"class_type": "VAEDecode", "inputs": {"samples": [f"{p}6", 0], "vae": [f"{p}2", 0]}},
        f"{p}8": {"class_type": "PreviewImage", "inputs": {"images": [f"{p}7", 0]}},
    }


def train_lora_prompt(
    checkpoint: str,
    image: str,
    save_name: str,
    steps: int = 2,
    rank: int = 4,
    prompt: str = "painting of <sss>",
    preview: bool = True,
    **settings,
) -> dict:
    """Checkpoint + tiny VAE + Load Image ``image`` -> Train Style LoRA (node "4"; LoRA out 0, loss curve out 1)
    saving ``save_name`` into models/loras; ``preview``: node "5" previews the loss curve. ``settings`` override
    the trainer's other inputs (learning_rate 1e-3, targets attention, seed 0, resolution 64)."""
    trainer = {
        "model": ["1", 0],
        "clip": ["1", 1],
        "vae": ["2", 0],
        "image": ["3", 0],
        "prompt": prompt,
        "steps": steps,
        "learning_rate": 1e-3,
        "rank": rank,
        "targets": "attention",
        "seed": 0,
        "resolution": 64,
        "save_name": save_name,
    }
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": dict(TINY_VAE),
        "3": {"class_type": "LoadImage", "inputs": {"image": image}},
        "4": {"class_type": "DiffStylerTrainStyleLoRA", "inputs": {**trainer, **settings}},
    }
    if preview:
        graph["5"] = {"class_type": "PreviewImage", "inputs": {"images": ["4", 1]}}
    return graph
