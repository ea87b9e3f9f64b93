"""FastSAM through ultralytics, and the CLIP scorer for text prompts: the one module that imports ultralytics.

ultralytics (AGPL-3.0) is optional. It is imported lazily, inside the functions below, after
``YOLO_OFFLINE=True`` and ``YOLO_AUTOINSTALL=False`` are set, so the nodes register without it and fail
at run time with an install hint. Weights are only ever loaded from the absolute path of an existing file
in a registered model folder: never a bare name, which ultralytics would try to download.

FastSAM (Zhao et al., arXiv 2306.12156) = all-instance segmentation with YOLOv8-seg (here) followed by
prompt-guided selection (``nodes/core/prompts.py``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import comfy.model_management
import comfy.utils
import folder_paths
import numpy as np
import torch

from ..core import prompts

logger = logging.getLogger(__name__)

FOLDER = "fastsam"
CLIP_FOLDER = "diffstyler_clip"
EXTENSIONS = (".pt", ".pth", ".safetensors")
INSTALL_HINT = (
    "FastSAM needs the optional package 'ultralytics' (AGPL-3.0): run 'pip install ultralytics' in ComfyUI's "
    "Python environment and restart ComfyUI"
)
# YOLOv8-seg widths of the first conv -> model scale (FastSAM-s is yolov8s-seg, FastSAM-x is yolov8x-seg)
_SCALE_BY_WIDTH = {16: "n", 32: "s", 48: "m", 64: "l", 80: "x"}
_CACHE_SIZE = 2
CLIP_BATCH = 32


# ---------------------------------------------------------------------------------------------- ultralytics


def import_ultralytics():
    """Import ultralytics offline (no downloads, no pip installs) or raise ImportError with the install hint."""
    os.environ["YOLO_OFFLINE"] = "True"
    os.environ["YOLO_AUTOINSTALL"] = "False"
    try:
        import ultralytics
        from ultralytics.models.fastsam import FastSAMPredictor
        from ultralytics.nn import tasks
        from ultralytics.utils import callbacks
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT} ({e})") from e
    return ultralytics, FastSAMPredictor, tasks, callbacks


@dataclass
class FastSAMModel:
    """The ``DIFFSTYLER_FASTSAM`` value: a loaded FastSAM, kept on the CPU between runs.

    ``predictor`` is an ultralytics ``FastSAMPredictor`` holding the fused network (its ``model``).
    """

    name: str
    path: str
    scale: str
    predictor: object
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def network(self) -> torch.nn.Module:
        """The fused torch module inside the predictor's ``AutoBackend`` (which may not register it as a child)."""
        backend = self.predictor.model
        inner = getattr(backend, "model", None)
        return inner if isinstance(inner, torch.nn.Module) else backend

    def device(self) -> torch.device:
        return next(self.network().parameters()).device

    def weight_bytes(self) -> int:
        return int(sum(p.numel() * p.element_size() for p in self.network().parameters()))


_MODELS: dict[tuple[str, int, int], FastSAMModel] = {}


def check_name(name: str, input_name: str = "model_name") -> None:
    """Refuse names that try to leave the model folder (absolute paths, ``..``)."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{input_name}: expected a file name in models/{FOLDER}, got {name!r}")
    parts = name.replace("\\", "/").split("/")
    if os.path.isabs(name) or name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":"):
        raise ValueError(
            f"{input_name}: {name!r} leaves the model folder; give a file name relative to models/{FOLDER} "
            f"(for example FastSAM-s.pt)"
        )


def resolve_model_path(name: str) -> str:
    """The absolute path of ``name`` in the ``fastsam`` model folder(s), or FileNotFoundError naming the folders."""
    check_name(name)
    path = folder_paths.get_full_path(FOLDER, name)
    if path is None or not os.path.isfile(path):
        folders = (
            ", ".join(folder_paths.get_folder_paths(FOLDER)) if FOLDER in folder_paths.folder_names_and_paths else ""
        )
        raise FileNotFoundError(
            f"model_name: FastSAM weights {name!r} not found in the '{FOLDER}' model folder ({folders}); put "
            f"FastSAM-s.pt or FastSAM-x.pt there and refresh the node"
        )
    return os.path.abspath(path)


def file_key(path: str) -> tuple[str, int, int]:
    st = os.stat(path)
    return os.path.realpath(path), st.st_mtime_ns, st.st_size


def _segmentation_module(path: str, name: str):
    """Load the torch module (CPU, fp32, eval) from a .pt/.pth checkpoint or a .safetensors state dict."""
    _, _, tasks, _ = import_ultralytics()
    try:
        if path.lower().endswith(".safetensors"):
            module, scale = _module_from_safetensors(path, tasks)
        else:
            loader = getattr(tasks, "load_checkpoint", None) or tasks.attempt_load_one_weight
            module = loader(path)[0]
            scale = str(getattr(module, "yaml", {}).get("scale", "") or "?")
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - any loader failure means "not a model": re-raised with the file named
        raise ValueError(
            f"model_name: {name!r} ({path}) is not a FastSAM/YOLOv8-seg model ({type(e).__name__}: {e}); use "
            f"FastSAM-s.pt or FastSAM-x.pt from the FastSAM release"
        ) from e
    if not isinstance(module, tasks.SegmentationModel):
        raise ValueError(
            f"model_name: {name!r} ({path}) is a {type(module).__name__}, not a segmentation model; FastSAM needs "
            f"FastSAM-s.pt or FastSAM-x.pt (YOLOv8-seg)"
        )
    return module.float().eval(), scale


def _module_from_safetensors(path: str, tasks):
    """Build YOLOv8-seg from the packaged yaml and load a safetensors state dict into it (no pickle involved)."""
    import safetensors.torch

    sd = safetensors.torch.load_file(path, device="cpu")
    first = sd.get("model.0.conv.weight")
    cls_keys = sorted(k for k in sd if ".cv3." in k and k.endswith(".2.bias"))
    if first is None or not cls_keys or int(first.shape[0]) not in _SCALE_BY_WIDTH:
        raise ValueError("the state dict does not have YOLOv8-seg keys (model.0.conv.weight, model.22.cv3.*)")
    scale = _SCALE_BY_WIDTH[int(first.shape[0])]
    module = tasks.SegmentationModel(f"yolov8{scale}-seg.yaml", nc=int(sd[cls_keys[0]].shape[0]), verbose=False)
    module.load_state_dict(sd, strict=True)
    return module, scale


def load_model(name: str) -> FastSAMModel:
    """Load (or reuse) FastSAM weights from ``models/fastsam`` on the CPU. Cached by path, mtime and size."""
    path = resolve_model_path(name)
    key = file_key(path)
    cached = _MODELS.get(key)
    if cached is not None:
        return cached
    _, predictor_cls, _, callbacks = import_ultralytics()
    module, scale = _segmentation_module(path, name)
    overrides = {
        "task": "segment",
        "mode": "predict",
        "imgsz": 1024,
        "conf": 0.4,
        "iou": 0.9,
        "retina_masks": True,  # masks at the input image's resolution
        "verbose": False,
        "save": False,
        "device": "cpu",
        "batch": 1,
        "rect": True,
    }
    predictor = predictor_cls(overrides=overrides, _callbacks=callbacks.get_default_callbacks())
    predictor.callbacks = callbacks.get_default_callbacks()  # drop ultralytics' usage-analytics callback
    threads = torch.get_num_threads()
    try:
        predictor.setup_model(model=module, verbose=False)  # fuses a copy of the module; ours can go
    finally:
        torch.set_num_threads(threads)  # ultralytics' select_device lowers torch's CPU threads process-wide
    handle = FastSAMModel(name=name, path=path, scale=scale, predictor=predictor)
    while len(_MODELS) >= _CACHE_SIZE:
        _MODELS.pop(next(iter(_MODELS)))
    _MODELS[key] = handle
    logger.info("DiffStyler: loaded FastSAM %s (yolov8%s-seg) from %s", name, scale, path)
    return handle


def _place(model: FastSAMModel, device: torch.device) -> None:
    """Move the network and tell the predictor (it moves each input to ``predictor.device``)."""
    predictor = model.predictor
    predictor.model.to(device)  # AutoBackend.to moves the wrapped network and updates its device
    network = model.network()
    if next(network.parameters()).device.type != device.type:
        network.to(device)
    predictor.device = device
    predictor.args.device = str(device)


def _drop_outputs(predictor) -> None:
    """The predictor keeps the last batch and its Results (device tensors): let them go."""
    for name in ("results", "batch", "plotted_img"):
        if hasattr(predictor, name):
            setattr(predictor, name, None)


def detect(model: FastSAMModel, image: torch.Tensor, imgsz: int, conf: float, iou: float) -> torch.Tensor:
    """FastSAM "everything": image ``[H,W,3]`` float 0..1 RGB -> detections ``[N,H,W]`` bool on the CPU.

    Call inside :func:`on_compute_device`.
    """
    h, w = image.shape[:2]
    predictor = model.predictor
    predictor.args.imgsz = int(imgsz)
    predictor.args.conf = float(conf)
    predictor.args.iou = float(iou)
    bgr = np.ascontiguousarray(prompts.to_uint8(image)[..., ::-1])  # ultralytics reads numpy arrays as BGR
    results = predictor(source=bgr, stream=False)
    masks = results[0].masks if results else None
    if masks is None:
        return torch.zeros((0, h, w), dtype=torch.bool)
    data = masks.data
    if tuple(data.shape[-2:]) != (h, w):
        data = torch.nn.functional.interpolate(data[None].float(), size=(h, w), mode="nearest")[0]
    return (data > 0.5).cpu()


# ---------------------------------------------------------------------------------------------- CLIP


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
    for base in bases:
        path = os.path.join(base, name)
        real_base = os.path.realpath(base)
        if os.path.isfile(os.path.join(path, "config.json")) and os.path.realpath(path).startswith(real_base + os.sep):
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

    image ``[H,W,3]`` float 0..1, masks ``[N,H,W]`` bool. Call inside :func:`on_compute_device`.
    """
    device = next(clip.model.parameters()).device
    if masks.shape[0] == 0:
        return torch.zeros((len(texts), 0))
    tok = clip.processor(text=list(texts), padding=True, truncation=True, return_tensors="pt")
    tfeat = _features(clip.model.get_text_features(**{k: v.to(device) for k, v in tok.items()}))
    crops = [prompts.to_uint8(c) for c in prompts.masked_crops(image, masks)]
    feats = []
    for start in range(0, len(crops), CLIP_BATCH):
        pix = clip.processor(images=crops[start : start + CLIP_BATCH], return_tensors="pt")["pixel_values"]
        feats.append(_features(clip.model.get_image_features(pixel_values=pix.to(device))))
    ifeat = torch.cat(feats)
    tfeat = torch.nn.functional.normalize(tfeat.float(), dim=-1)
    ifeat = torch.nn.functional.normalize(ifeat.float(), dim=-1)
    return (tfeat @ ifeat.T).cpu()


# ---------------------------------------------------------------------------------------------- orchestration


def estimate_memory(model: FastSAMModel, request: prompts.MaskRequest, height: int, width: int, clip=None) -> int:
    """Rough bytes FastSAM needs on the compute device: weights, activations at imgsz, up to 300 full-size masks."""
    activations = request.imgsz * request.imgsz * 3 * 4 * 64
    masks = 300 * height * width * 4
    return model.weight_bytes() + activations + masks + (clip.weight_bytes() if clip is not None else 0)


@contextlib.contextmanager
def on_compute_device(model: FastSAMModel, clip: ClipScorer | None = None, memory_required: int = 0) -> Iterator:
    """Hold FastSAM (and CLIP) on ComfyUI's compute device for the duration, then put them back on the CPU.

    ComfyUI's model management frees room first (unloading other models if needed).
    """
    device = comfy.model_management.get_torch_device()
    cpu = torch.device("cpu")
    with model.lock:
        if device.type != "cpu":
            comfy.model_management.free_memory(memory_required, device)
        try:
            _place(model, device)
            if clip is not None:
                clip.model.to(device)
            yield device
        finally:
            _drop_outputs(model.predictor)
            _place(model, cpu)
            if clip is not None:
                clip.model.to(cpu)
            if device.type != "cpu":
                comfy.model_management.soft_empty_cache()


def segment(
    model: FastSAMModel,
    images: torch.Tensor,
    request: prompts.MaskRequest,
    clip: ClipScorer | None = None,
    on_image: Callable[[int, int, prompts.Selection], None] | None = None,
) -> torch.Tensor:
    """FastSAM + prompt-guided selection over a batch: images ``[B,H,W,3]`` RGB 0..1 -> MASK ``[B,H,W]`` float 0..1.

    Checks ComfyUI's interrupt before each image and advances a progress bar per image. An image with no
    detection (or no matching detection) gets an empty mask and a logged warning.
    """
    b, h, w, _ = images.shape
    if request.mode == "text" and clip is None:
        raise ValueError("clip_folder: mode 'text' needs a CLIP folder")
    out = torch.zeros((b, h, w), dtype=torch.float32)
    pbar = comfy.utils.ProgressBar(b)
    memory = estimate_memory(model, request, h, w, clip)
    with on_compute_device(model, clip if request.mode == "text" else None, memory):
        for i in range(b):
            comfy.model_management.throw_exception_if_processing_interrupted()
            dets = detect(model, images[i], request.imgsz, request.conf, request.iou)
            scores = text_scores(clip, images[i], dets, request.texts) if request.mode == "text" else None
            sel = prompts.select_mask(dets, request, scores)
            if sel.note:
                logger.warning(
                    "DiffStyler FastSAM Mask: image %d of %d: %s (%d detection(s), mode %s, conf %.2f): empty mask",
                    i,
                    b,
                    sel.note,
                    dets.shape[0],
                    request.mode,
                    request.conf,
                )
            out[i] = sel.mask.float()
            if on_image is not None:
                on_image(i, int(dets.shape[0]), sel)
            pbar.update(1)
    return out
