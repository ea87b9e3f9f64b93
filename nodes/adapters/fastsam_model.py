"""FastSAM through ultralytics: import it offline, load the weights safely, keep them cached, place and run them.

The one module that imports ultralytics (AGPL-3.0), an optional package. It is imported lazily, inside the
functions below, after ``YOLO_OFFLINE=True`` and ``YOLO_AUTOINSTALL=False`` are set, so the nodes register
without it and fail at run time with an install hint. Weights are only ever loaded from the absolute path of an
existing file in a registered model folder: never a bare name, which ultralytics would try to download.

FastSAM (Zhao et al., arXiv 2306.12156) = all-instance segmentation with YOLOv8-seg (here, :func:`detect`)
followed by prompt-guided selection (``nodes/core/fastsam_select.py``); ``nodes/adapters/fastsam.py`` runs both.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import comfy.model_management
import folder_paths
import numpy as np
import torch

from ..core.fastsam_geometry import detection_grid
from ..core.fastsam_images import to_uint8

logger = logging.getLogger(__name__)

FOLDER = "fastsam"
EXTENSIONS = (".pt", ".safetensors")  # ultralytics reads checkpoints named .pt only
INSTALL_HINT = (
    "FastSAM needs the optional package 'ultralytics' (AGPL-3.0): run 'pip install ultralytics' in ComfyUI's "
    "Python environment and restart ComfyUI"
)
# YOLOv8-seg widths of the first conv -> model scale (FastSAM-s is yolov8s-seg, FastSAM-x is yolov8x-seg)
_SCALE_BY_WIDTH = {16: "n", 32: "s", 48: "m", 64: "l", 80: "x"}
_CACHE_SIZE = 2


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
    """Load the torch module (CPU, fp32, eval) from a .pt checkpoint or a .safetensors state dict."""
    _, _, tasks, _ = import_ultralytics()
    try:
        if path.lower().endswith(".safetensors"):
            module, scale = _module_from_safetensors(path, tasks)
        else:
            module = _module_from_checkpoint(path, tasks)
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


_warned_unsafe = False


def safe_pickle_loading(tasks) -> bool:
    """Whether this ultralytics + torch can read a checkpoint with ``weights_only=True`` (an allow-list of classes)."""
    import inspect

    load = getattr(tasks, "torch_safe_load", None)
    safe = getattr(tasks, "_SafeLoad", None)
    try:
        has_flag = load is not None and "safe_only" in inspect.signature(load).parameters
    except (TypeError, ValueError):
        has_flag = False
    return bool(has_flag and safe is not None and getattr(safe, "SUPPORTED", False))


def _module_from_checkpoint(path: str, tasks) -> torch.nn.Module:
    """An ultralytics checkpoint -> its network, unpickled weights-only (no code in the file runs) when possible.

    ultralytics' ``torch_safe_load(path, safe_only=True)`` loads with ``weights_only=True`` and an allow-list of
    its own model classes; a file that references anything else is refused. Older ultralytics (or torch < 2.6)
    lack it: the file is then unpickled in full (only ever from the registered model folder) and a warning says
    to upgrade.
    """
    global _warned_unsafe
    if not safe_pickle_loading(tasks):
        if not _warned_unsafe:
            _warned_unsafe = True
            logger.warning(
                "DiffStyler: this ultralytics/torch cannot load .pt files weights-only, so %s is unpickled in full "
                "(code stored in it would run); upgrade ultralytics ('pip install -U ultralytics') and torch >= 2.6, "
                "or use a .safetensors copy of the weights",
                path,
            )
        loader = getattr(tasks, "load_checkpoint", None) or tasks.attempt_load_one_weight
        return loader(path)[0]
    from ultralytics.utils import DEFAULT_CFG_DICT

    ckpt, _ = tasks.torch_safe_load(path, safe_only=True)
    if not isinstance(ckpt, dict):
        raise TypeError(f"the file holds a {type(ckpt).__name__}, not an ultralytics checkpoint")
    module = ckpt.get("ema") or ckpt.get("model")
    if not isinstance(module, torch.nn.Module):
        raise TypeError("the checkpoint has no 'model' network")
    # what ultralytics' own load_checkpoint sets on a loaded network
    module.args = {**DEFAULT_CFG_DICT, **(ckpt.get("train_args") or {})}
    module.pt_path = path
    if not hasattr(module, "task"):
        module.task = "segment"
    if not hasattr(module, "stride"):
        module.stride = torch.tensor([32.0])
    for m in module.modules():
        if hasattr(m, "inplace"):
            m.inplace = True
    return module


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
        # masks at inference resolution: full-size masks for every detection cost detections x pixels
        # (~115 GB for 300 detections on an 8k photo); segment() upsamples only the selected one
        "retina_masks": False,
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


def place(model: FastSAMModel, device: torch.device) -> None:
    """Move the network and tell the predictor (it moves each input to ``predictor.device``)."""
    predictor = model.predictor
    predictor.model.to(device)  # AutoBackend.to moves the wrapped network and updates its device
    network = model.network()
    if next(network.parameters()).device.type != device.type:
        network.to(device)
    predictor.device = device
    predictor.args.device = str(device)


def drop_outputs(predictor) -> None:
    """The predictor keeps the last batch and its Results (device tensors): let them go."""
    for name in ("results", "batch", "plotted_img"):
        if hasattr(predictor, name):
            setattr(predictor, name, None)


@contextlib.contextmanager
def on_compute_device(model: FastSAMModel, clip=None, memory_required: int = 0) -> Iterator:
    """Hold FastSAM (and CLIP) on ComfyUI's compute device for the duration, then put them back on the CPU.

    ``clip`` is a :class:`.fastsam_clip.ClipScorer` for text prompts, or None. ComfyUI's model management
    frees room first (unloading other models if needed).
    """
    device = comfy.model_management.get_torch_device()
    cpu = torch.device("cpu")
    with model.lock:
        if device.type != "cpu":
            comfy.model_management.free_memory(memory_required, device)
        try:
            place(model, device)
            if clip is not None:
                clip.model.to(device)
            yield device
        finally:
            drop_outputs(model.predictor)
            place(model, cpu)
            if clip is not None:
                clip.model.to(cpu)
            if device.type != "cpu":
                comfy.model_management.soft_empty_cache()


def detect(model: FastSAMModel, image: torch.Tensor, imgsz: int, conf: float, iou: float) -> torch.Tensor:
    """FastSAM "everything": image ``[H,W,3]`` float 0..1 RGB -> detections ``[N,h,w]`` bool on the CPU.

    ``h x w`` is the image's size, or FastSAM's inference resolution when the image is larger (see
    :func:`.fastsam_geometry.detection_grid`); :func:`.fastsam.segment` maps prompts onto that grid. Call inside
    :func:`on_compute_device`.
    """
    h, w = image.shape[:2]
    predictor = model.predictor
    predictor.args.imgsz = int(imgsz)
    predictor.args.conf = float(conf)
    predictor.args.iou = float(iou)
    predictor.args.retina_masks = False
    bgr = np.ascontiguousarray(to_uint8(image)[..., ::-1])  # ultralytics reads numpy arrays as BGR
    results = predictor(source=bgr, stream=False)
    masks = results[0].masks if results else None
    if masks is None:
        return torch.zeros((0, h, w), dtype=torch.bool)
    data = masks.data
    del results, masks
    drop_outputs(predictor)
    return detection_grid(data, h, w)
