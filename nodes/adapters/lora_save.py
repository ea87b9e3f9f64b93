"""Saving a trained style LoRA into ComfyUI's loras folder (safetensors, written atomically)."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile

import folder_paths
import safetensors.torch
import torch

from ..core import training as core

logger = logging.getLogger(__name__)


def lora_metadata(cfg: core.TrainingConfig, prompt: str, targets: list, family: str = "unet") -> dict[str, str]:
    """kohya's ``ss_*`` keys (Flux: ``ss_base_model_version`` ``flux1``, as kohya writes it) and the run's settings."""
    flux = {"ss_base_model_version": "flux1"} if family == "flux" else {}
    return {
        **flux,
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(cfg.rank),
        "ss_network_alpha": f"{cfg.lora_alpha:g}",
        "diffstyler_prompt": prompt,
        "diffstyler_steps": str(cfg.steps),
        "diffstyler_learning_rate": f"{cfg.learning_rate:g}",
        "diffstyler_targets": cfg.targets,
        "diffstyler_layers": str(len(targets)),
        "diffstyler_seed": str(cfg.seed),
        "diffstyler_resolution": str(cfg.resolution),
        "diffstyler_family": family,
    }


def save_lora_file(state_dict: dict[str, torch.Tensor], name: str, metadata: dict[str, str] | None = None) -> str:
    """Write ``state_dict`` to ``<first loras folder>/<name>.safetensors`` atomically; returns the path.

    The tensors go to a temporary file in the same folder first and are moved into place with
    ``os.replace``, so a crash never leaves a half-written LoRA (an existing file of that name is replaced).
    """
    stem = core.check_save_name(name)
    if not stem:
        raise ValueError("save_name: empty; leave it empty only when the LoRA should not be saved")
    folders = folder_paths.get_folder_paths("loras")
    if not folders:
        raise FileNotFoundError("models/loras: ComfyUI has no loras folder registered to save the LoRA into")
    folder = os.path.abspath(folders[0])
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, stem + ".safetensors")
    if os.path.dirname(os.path.abspath(path)) != folder:
        raise ValueError(f"save_name: {name!r} would be saved outside {folder}: give a plain file name")
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
        safetensors.torch.save_file(tensors, tmp, metadata=metadata)
        existed = os.path.exists(path)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    logger.info("DiffStyler: %s style LoRA %s (%d tensors)", "replaced" if existed else "saved", path, len(tensors))
    return path
