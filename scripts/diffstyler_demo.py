"""Demo mode of scripts/diffstyler_run.py: tiny random-weight models, so a fresh install runs a whole workflow.

Nothing is downloaded: the models are built from ComfyUI's own classes and ultralytics' packaged yaml with
seeded random weights by the test-suite helpers in tests/support (dst_tiny, dst_core, fastsam_fixtures), and
the VAE comes from the test pack's ``DiffStylerTestTinyVAE`` node (the tiny checkpoint has none). The picture
such a run produces is noise-like; the point is that every node of the workflow runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

SUPPORT = Path(__file__).resolve().parents[1] / "tests" / "support"
CHECKPOINT = "diffstyler_demo_tiny_sd15.safetensors"
FASTSAM = "diffstyler_demo_fastsam.pt"
CLIP = "diffstyler_demo_clip"
MAX_SIZE = 256  # long side of the content picture
STEPS = 10  # DDIM steps
IMGSZ = 256  # FastSAM inference size
TRAIN = {"steps": 30, "resolution": 64}  # Train Style LoRA
BANNER = (
    "demo mode: random-weight tiny models, the picture is noise-like; pass --checkpoint (or put an SD1.5 "
    "checkpoint in ComfyUI/models/checkpoints) plus --lora and --fastsam for a real result"
)
FOLDERS = ("checkpoints", "loras", "fastsam", "diffstyler_clip")


def support_on_path() -> None:
    if str(SUPPORT) not in sys.path:
        sys.path.insert(0, str(SUPPORT))


def write_models(folder_paths, models: Path, n_styles: int, text_masks: bool) -> dict:
    """Tiny checkpoint, one random LoRA per style, a FastSAM that detects (and a tiny CLIP for text masks) in
    ``models``, registered first in ComfyUI's folders. Returns the names to put into the workflow."""
    support_on_path()
    import dst_core
    import dst_tiny  # registers the tiny model config with ComfyUI's checkpoint loader
    import fastsam_fixtures
    import safetensors.torch

    for kind in FOLDERS:
        (models / kind).mkdir(parents=True, exist_ok=True)
        folder_paths.add_model_folder_path(kind, str(models / kind), is_default=True)
    sd = dst_tiny.tiny_sd15_checkpoint_state_dict(seed=0)
    safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(models / "checkpoints" / CHECKPOINT))
    model, _clip = dst_tiny.load_checkpoint_state_dict(sd)
    loras = []
    for i in range(max(1, n_styles)):
        name = f"diffstyler_demo_style_{i + 1}.safetensors"
        safetensors.torch.save_file(dst_core.random_lora(model, seed=100 + i), str(models / "loras" / name))
        loras.append(name)
    # class_bias 2: the random head then detects (see tests/support/fastsam_fixtures.py)
    fastsam_fixtures.save_fastsam(models / "fastsam" / FASTSAM, seed=0, class_bias=2.0)
    clip = None
    if text_masks:
        tokenizer = Path(sys.modules["folder_paths"].__file__).parent / "comfy" / "sd1_tokenizer"
        fastsam_fixtures.save_tiny_clip(models / "diffstyler_clip" / CLIP, tokenizer)
        clip = CLIP
    for kind in FOLDERS:
        folder_paths.filename_list_cache.pop(kind, None)
    return {"checkpoint": CHECKPOINT, "loras": loras, "fastsam": FASTSAM, "clip": clip}


def test_pack_init() -> Path:
    """``__init__.py`` of the test pack that provides ``DiffStylerTestTinyVAE``."""
    return SUPPORT / "dst_test_pack" / "__init__.py"
