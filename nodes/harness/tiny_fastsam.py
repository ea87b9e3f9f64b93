"""Tiny FastSAM-side models and pictures: a random-weight FastSAM-s, a tiny random CLIP, a coloured test scene.

FastSAM-s is YOLOv8s-seg with one class. :func:`save_fastsam` builds it from the yaml that ships inside ultralytics
(nothing is downloaded) with seeded random weights and saves it with ultralytics' own ``Model.save`` format.

A random YOLOv8 head detects nothing: ultralytics initialises the class-logit biases to a small prior (about -7, -6
and -4 for the three strides) and, with PyTorch's default init, the backbone's activations shrink layer by layer, so
every class score is about sigmoid(bias), far below ``conf``. The "dense" model sets those biases (the last conv of
each ``cv3`` branch) to ``class_bias`` = +2: every anchor then scores 0.88 > the default ``conf`` 0.4, and NMS at
iou 0.9 leaves about two hundred overlapping boxes of many sizes (about 100 to 5800 pixels on a 96x64 picture) whose
masks fill their boxes. Those are the network's own outputs, decoded and post-processed by ultralytics as for real
weights, but they hardly depend on the picture: where the picture must matter, CLIP (text prompts) scores the crops.
``class_bias`` None keeps ultralytics' init: zero detections. ultralytics is reached through the pack's one module
that imports it (``adapters/fastsam_model.py``).
"""

from __future__ import annotations

import shutil
from pathlib import Path


def build_fastsam_s(seed: int = 0, class_bias: float | None = 2.0):
    """YOLOv8s-seg (FastSAM-s architecture), 1 class, seeded random weights; ``class_bias`` None keeps the init."""
    import torch

    from ..adapters.fastsam_model import import_ultralytics

    _, _, tasks, _ = import_ultralytics()
    torch.manual_seed(seed)
    net = tasks.SegmentationModel("yolov8s-seg.yaml", nc=1, verbose=False)
    if class_bias is not None:
        with torch.no_grad():
            for branch in net.model[-1].cv3:
                branch[-1].bias.fill_(class_bias)
    return net.eval()


def save_fastsam(path: Path, seed: int = 0, class_bias: float | None = 2.0):
    """Save a random FastSAM-s in ultralytics' checkpoint format (``Model.save``); returns the module."""
    from ..adapters.fastsam_model import import_ultralytics

    ultralytics = import_ultralytics()[0]
    net = build_fastsam_s(seed, class_bias)
    wrapper = ultralytics.YOLO("yolov8s-seg.yaml", task="segment")  # a Model around the packaged yaml, for save()
    wrapper.model = net
    wrapper.save(str(path))
    return net


def save_tiny_clip(folder: Path, tokenizer_src: Path, seed: int = 0) -> Path:
    """A tiny random CLIP (vision + text) saved with save_pretrained, with ComfyUI's CLIP BPE tokenizer files."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tok_dir = folder.parent / (folder.name + "_tokenizer_src")
    tok_dir.mkdir(exist_ok=True)
    for name in ("vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json"):
        if (tokenizer_src / name).is_file():
            shutil.copy(tokenizer_src / name, tok_dir / name)
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={
            "vocab_size": 49408,
            "hidden_size": 32,
            "intermediate_size": 48,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 48,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    CLIPModel(config).eval().save_pretrained(str(folder))
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(str(folder))
    shutil.rmtree(tok_dir)
    return folder


def scene(height: int = 64, width: int = 96, seed: int = 0):
    """A uint8 RGB test picture ``[H,W,3]``: three coloured rectangles on a dark background, with noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    img = np.empty((height, width, 3), np.float32)
    img[...] = (40, 60, 80)
    img[int(0.15 * height) : int(0.6 * height), int(0.1 * width) : int(0.5 * width)] = (220, 30, 30)
    img[int(0.5 * height) : int(0.95 * height), int(0.57 * width) : int(0.93 * width)] = (30, 200, 40)
    img[int(0.08 * height) : int(0.4 * height), int(0.62 * width) : int(0.88 * width)] = (240, 240, 20)
    img += rng.normal(0, 10, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def scene_tensor(batch: int = 1, height: int = 64, width: int = 96):
    """IMAGE ``[B,H,W,3]`` float 0..1, a different picture per batch item."""
    import torch

    return torch.stack([torch.from_numpy(scene(height, width, seed=i)).float() / 255.0 for i in range(batch)])
