"""FastSAM's text prompts: a local Hugging Face CLIP scores each detection's masked crop against each phrase.

transformers is optional: it is imported lazily in :func:`load_clip`, so the nodes register without it and only
text mode fails, with an install hint. Folders are read from ``models/diffstyler_clip/<name>/`` with
``local_files_only``: never a download.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import folder_paths
import torch

from ..core.fastsam_images import masked_crops, to_uint8
from .fastsam_model import check_name

logger = logging.getLogger(__name__)

CLIP_FOLDER = "diffstyler_clip"
CLIP_BATCH = 32


@dataclass
class ClipScorer:
    """A Hugging Face CLIP (vision + text) from ``models/diffstyler_clip/<folder>``, on the CPU between runs."""

    name: str
    path: str
    model: object
    processor: object

    def weight_bytes(self) -> int:
        return int(sum(p.numel() * p.element_size() for p in self.model.parameters()))


_CLIPS: dict[tuple[str, int], ClipScorer] = {}


def list_clip_folders() -> list[str]:
    """Sub-folders of the ``diffstyler_clip`` model folder(s) that hold a ``config.json``."""
    found: set[str] = set()
    if CLIP_FOLDER not in folder_paths.folder_names_and_paths:
        return []
    for base in folder_paths.get_folder_paths(CLIP_FOLDER):
        if not os.path.isdir(base):
            continue
        for entry in sorted(os.listdir(base)):
            if os.path.isfile(os.path.join(base, entry, "config.json")):
                found.add(entry)
    return sorted(found)


def resolve_clip_folder(name: str) -> str:
    if not name or name == "none":
        raise ValueError(
            f"clip_folder: mode 'text' needs a CLIP model: put a Hugging Face CLIP folder (config.json, weights, "
            f"tokenizer and preprocessor files) in models/{CLIP_FOLDER}/<name>/ and pick it in clip_folder"
        )
    check_name(name, "clip_folder")
    bases = folder_paths.get_folder_paths(CLIP_FOLDER) if CLIP_FOLDER in folder_paths.folder_names_and_paths else []
    for base in bases:  # a symlink in the folder is followed, as for every model folder (and as listed)
        path = os.path.join(base, name)
        if os.path.isfile(os.path.join(path, "config.json")):
            return os.path.abspath(path)
    raise FileNotFoundError(
        f"clip_folder: {name!r} with a config.json not found in the '{CLIP_FOLDER}' model folder ({', '.join(bases)})"
    )


def load_clip(name: str) -> ClipScorer:
    """Load (or reuse) ``CLIPModel`` + ``CLIPProcessor`` from a local folder; never downloads."""
    path = resolve_clip_folder(name)
    key = (os.path.realpath(path), os.stat(os.path.join(path, "config.json")).st_mtime_ns)
    if key in _CLIPS:
        return _CLIPS[key]
    try:
        from transformers import CLIPModel, CLIPProcessor
    except ImportError as e:
        raise ImportError(f"text mode needs the 'transformers' package (pip install transformers): {e}") from e
    try:
        model = CLIPModel.from_pretrained(path, local_files_only=True).float().eval()
        processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ValueError(
            f"clip_folder: {name!r} ({path}) is not a complete CLIP folder ({e}); it needs config.json, the model "
            f"weights, tokenizer files and preprocessor_config.json (save_pretrained of CLIPModel and CLIPProcessor)"
        ) from e
    scorer = ClipScorer(name=name, path=path, model=model, processor=processor)
    _CLIPS.clear()
    _CLIPS[key] = scorer
    logger.info("DiffStyler: loaded CLIP %s from %s", name, path)
    return scorer


def _features(out) -> torch.Tensor:
    """transformers 4 returns the projected features, transformers 5 an output whose pooler_output they are."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@torch.no_grad()
def text_scores(clip: ClipScorer, image: torch.Tensor, masks: torch.Tensor, texts: tuple[str, ...]) -> torch.Tensor:
    """Cosine similarity ``[T,N]`` of each phrase with each detection's masked crop (white background).

    image ``[H,W,3]`` float 0..1, masks ``[N,H,W]`` bool. Call inside :func:`.fastsam_model.on_compute_device`.
    """
    device = next(clip.model.parameters()).device
    if masks.shape[0] == 0:
        return torch.zeros((len(texts), 0))
    tok = clip.processor(text=list(texts), padding=True, truncation=True, return_tensors="pt")
    tfeat = _features(clip.model.get_text_features(**{k: v.to(device) for k, v in tok.items()}))
    crops = [to_uint8(c) for c in masked_crops(image, masks)]
    feats = []
    for start in range(0, len(crops), CLIP_BATCH):
        pix = clip.processor(images=crops[start : start + CLIP_BATCH], return_tensors="pt")["pixel_values"]
        feats.append(_features(clip.model.get_image_features(pixel_values=pix.to(device))))
    ifeat = torch.cat(feats)
    tfeat = torch.nn.functional.normalize(tfeat.float(), dim=-1)
    ifeat = torch.nn.functional.normalize(ifeat.float(), dim=-1)
    return (tfeat @ ifeat.T).cpu()


# ---------------------------------------------------------------------------------------------- orchestration
