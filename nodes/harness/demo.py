"""The tiny models put into a ComfyUI: a checkpoint file, LoRA files, a FastSAM, a tiny CLIP, the Tiny VAE node.

* :func:`tiny_nodes_extension` - the V3 extension with ``DiffStylerTestTinyVAE`` (a 32-channel SD-style VAE with
  seeded weights: the tiny checkpoint has none, and the core VAE loader always builds the full-size one) and the
  Flux stand-ins of :mod:`.flux_demo` (tiny Flux, text encoders, VAE). In a ``main.py`` server it comes from the
  node pack ``nodes/harness/tiny_pack`` (:mod:`.server` links it).
* :func:`tiny_models` - the tiny checkpoint written to ``models/checkpoints`` and loaded, with a tiny VAE (the
  tests' ``tiny`` fixture, the soak).
* :func:`write_models` - everything the headless runner's demo mode puts into the workflow (a Flux workflow: the
  tiny Flux and Flux LoRAs, :func:`.flux_demo.write_models`).

Nothing here imports ComfyUI at module import time.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from . import tiny

TINY_PACK = "diffstyler_tiny_pack"  # the module name the tiny nodes are registered under
TINY_VAE_NODE = "DiffStylerTestTinyVAE"
CHECKPOINT_NAME = "diffstyler_tiny_sd15.safetensors"
DEMO_CHECKPOINT = "diffstyler_demo_tiny_sd15.safetensors"
DEMO_FASTSAM = "diffstyler_demo_fastsam.pt"
DEMO_CLIP = "diffstyler_demo_clip"
DEMO_FOLDERS = ("checkpoints", "loras", "fastsam", "diffstyler_clip")
_STATE: dict = {}


def tiny_nodes_extension():
    """A ``ComfyExtension`` with the Tiny VAE node; registers the tiny checkpoint config with ComfyUI too."""
    from .._api import ComfyExtension, io
    from . import flux_demo  # imports torch: not at module level (the runner checks its options first)

    tiny.register_checkpoint_config()
    vae = flux_demo.seeded_node(TINY_VAE_NODE, "Tiny VAE", io.Vae, tiny.tiny_vae, "A tiny SD-style VAE")

    class TinyNodes(ComfyExtension):
        async def get_node_list(self):
            return [vae, *flux_demo.node_classes()]

    return TinyNodes()


@dataclass
class TinyModels:
    model: object
    clip: object
    vae: object
    checkpoint: str
    checkpoint_path: Path


def tiny_models(home) -> TinyModels:
    """The tiny SD1.5 checkpoint in ``home.models/checkpoints`` (written once), loaded as MODEL and CLIP, and a
    tiny VAE (seed 0). Once per process."""
    if "tiny" in _STATE:
        return _STATE["tiny"]
    import comfy.utils

    path = home.models / "checkpoints" / CHECKPOINT_NAME
    if not path.exists():
        save_checkpoint(path, tiny.tiny_sd15_checkpoint_state_dict(seed=0))
    model, clip = tiny.load_checkpoint_state_dict(comfy.utils.load_torch_file(str(path)))
    tm = TinyModels(model=model, clip=clip, vae=tiny.tiny_vae(0), checkpoint=CHECKPOINT_NAME, checkpoint_path=path)
    _STATE["tiny"] = tm
    return tm


def save_checkpoint(path: Path, sd: dict) -> None:
    import safetensors.torch

    safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(path))


def write_models(folder_paths, models: Path, n_styles: int, text_masks: bool, flux: bool = False) -> dict:
    """The demo's tiny checkpoint (``flux``: the tiny Flux), one random LoRA per style, a FastSAM that detects (and
    a tiny CLIP for text masks) in ``models``, registered first in ComfyUI's folders. Returns the names to put into
    the workflow (``unet``: the tiny Flux file, None where the in-process node stands in for UNETLoader)."""
    import safetensors.torch

    from . import flux_demo, tiny_fastsam

    for kind in DEMO_FOLDERS:
        (models / kind).mkdir(parents=True, exist_ok=True)
        folder_paths.add_model_folder_path(kind, str(models / kind), is_default=True)
    names = {"unet": None}
    if flux:
        names = flux_demo.write_models(folder_paths, models, n_styles)
        loras = names["loras"]
    else:
        sd = tiny.tiny_sd15_checkpoint_state_dict(seed=0)
        save_checkpoint(models / "checkpoints" / DEMO_CHECKPOINT, sd)
        model, _clip = tiny.load_checkpoint_state_dict(sd)
        loras = []
        for i in range(max(1, n_styles)):
            name = f"diffstyler_demo_style_{i + 1}.safetensors"
            safetensors.torch.save_file(tiny.random_lora(model, seed=100 + i), str(models / "loras" / name))
            loras.append(name)
    tiny_fastsam.save_fastsam(models / "fastsam" / DEMO_FASTSAM, seed=0, class_bias=2.0)  # class_bias 2: it detects
    clip = None
    if text_masks:
        tokenizer = Path(sys.modules["folder_paths"].__file__).parent / "comfy" / "sd1_tokenizer"
        tiny_fastsam.save_tiny_clip(models / "diffstyler_clip" / DEMO_CLIP, tokenizer)
        clip = DEMO_CLIP
    for kind in DEMO_FOLDERS:
        folder_paths.filename_list_cache.pop(kind, None)
    checkpoint = None if flux else DEMO_CHECKPOINT
    return {"checkpoint": checkpoint, "loras": loras, "fastsam": DEMO_FASTSAM, "clip": clip, "unet": names["unet"]}
