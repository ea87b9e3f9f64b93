"""Demo mode of scripts/diffstyler_run.py: tiny random-weight models, so a fresh install runs a whole workflow.

Nothing is downloaded: the pack's harness (``nodes/harness/demo.py``) builds the models from ComfyUI's own classes
and ultralytics' packaged yaml with seeded random weights, and the VAE comes from its ``DiffStylerTestTinyVAE``
node (the tiny checkpoint has none). A Flux workflow gets a tiny Flux.1-dev and stand-in text encoder and VAE
nodes instead (``nodes/harness/flux_demo.py``). The picture such a run produces is noise-like; the point is that
every node of the workflow runs. This module holds the settings such a run uses.
"""

from __future__ import annotations

MAX_SIZE = 256  # long side of the content picture
STEPS = 10  # DDIM steps
IMGSZ = 256  # FastSAM inference size
TRAIN = {"steps": 30, "resolution": 64}  # Train Style LoRA
BANNER = (
    "demo mode: random-weight tiny models, the picture is noise-like; pass --checkpoint (or put an SD1.5 "
    "checkpoint in ComfyUI/models/checkpoints) plus --lora and --fastsam for a real result"
)
FLUX_BANNER = (
    "demo mode: random-weight tiny models (a tiny Flux.1-dev, stand-ins for its text encoders and VAE), the picture "
    "is noise-like; put flux1-dev.safetensors in ComfyUI/models/diffusion_models (or pass --checkpoint), the text "
    "encoders and ae.safetensors where the workflow's first Note says, plus --lora and --fastsam for a real result"
)
