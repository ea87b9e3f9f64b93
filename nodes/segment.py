"""FastSAM nodes (design Sec. 3): a model loader and prompt-driven masks for the styles.

Weights live in ``models/fastsam`` (.pt/.safetensors), CLIP folders for text prompts in
``models/diffstyler_clip/<name>/``. Both folders are registered with ComfyUI when this module is imported.
ultralytics is optional: without it these nodes still register and fail at run time with an install hint.
"""

from __future__ import annotations

import logging
import os

import folder_paths

from ._api import io, ui
from .adapters import fastsam as fastsam_adapter
from .adapters import fastsam_clip, fastsam_model
from .core import fastsam_prompts

logger = logging.getLogger(__name__)

FASTSAM = io.Custom("DIFFSTYLER_FASTSAM")
CATEGORY = "DiffStyler/segment"


def register_model_folders() -> None:
    """Register ``models/fastsam`` (with its weight extensions) and ``models/diffstyler_clip``.

    The default folder is added to what is there: folders that extra_model_paths.yaml gave under the same key
    (ComfyUI reads it before custom nodes load) come first and the default stays searched. The extension set is
    replaced, never mutated: folders may share ComfyUI's ``supported_pt_extensions``.
    """
    for name in (fastsam_model.FOLDER, fastsam_clip.CLIP_FOLDER):
        folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, name))  # no-op if listed
    paths, exts = folder_paths.folder_names_and_paths[fastsam_model.FOLDER]
    wanted = set(exts or ()) | set(fastsam_model.EXTENSIONS)
    if set(exts or ()) != wanted:
        folder_paths.folder_names_and_paths[fastsam_model.FOLDER] = (paths, wanted)
        folder_paths.filename_list_cache.pop(fastsam_model.FOLDER, None)


register_model_folders()


class DiffStylerFastSAMLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffStylerFastSAMLoader",
            display_name="FastSAM Model Loader (DiffStyler)",
            category=CATEGORY,
            description=(
                "Loads FastSAM weights (FastSAM-s.pt or FastSAM-x.pt) from ComfyUI/models/fastsam, offline. Needs the "
                "optional ultralytics package (AGPL-3.0). .pt files are pickles: only put files you trust there."
            ),
            inputs=[
                io.Combo.Input(
                    "model_name",
                    options=folder_paths.get_filename_list(fastsam_model.FOLDER),
                    tooltip="A weights file in ComfyUI/models/fastsam (.pt, or a .safetensors state dict).",
                ),
            ],
            outputs=[
                FASTSAM.Output(
                    "fastsam",
                    display_name="fastsam",
                    tooltip="The loaded FastSAM; it stays on the CPU and moves to the GPU only while segmenting.",
                ),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, model_name: str):
        path = folder_paths.get_full_path(fastsam_model.FOLDER, model_name) if isinstance(model_name, str) else None
        return (model_name, os.path.getmtime(path)) if path and os.path.isfile(path) else model_name

    @classmethod
    def execute(cls, model_name: str) -> io.NodeOutput:
        return io.NodeOutput(fastsam_model.load_model(model_name))


class DiffStylerFastSAMMask(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffStylerFastSAMMask",
            display_name="FastSAM Mask (DiffStyler)",
            category=CATEGORY,
            description=(
                "Segments every object with FastSAM, then keeps the ones the prompt asks for: everything, the objects "
                "under positive points (minus those under negative points), the best object for each box, or the "
                "object CLIP ranks best for each line of text. No detection gives an empty mask and a warning. "
                "Outputs the mask and a preview with the prompts drawn."
            ),
            inputs=[
                io.Image.Input("image", tooltip="Images [B,H,W,C] (RGB, RGBA or gray); every image is segmented."),
                FASTSAM.Input("fastsam", tooltip="From FastSAM Model Loader (DiffStyler)."),
                io.Combo.Input(
                    "mode",
                    options=list(fastsam_prompts.MODES),
                    default="everything",
                    tooltip="everything: all objects; points/boxes: objects under the prompts; text: CLIP ranking.",
                ),
                io.String.Input(
                    "points",
                    multiline=True,
                    default="",
                    tooltip=(
                        'Mode points: JSON list of {"x", "y", "label"} in image pixels, label 1 positive, 0 '
                        "negative (no label = positive), e.g. " + fastsam_prompts.POINTS_EXAMPLE
                    ),
                ),
                io.String.Input(
                    "boxes",
                    multiline=True,
                    default="",
                    tooltip=(
                        "Mode boxes: JSON list of [x0, y0, x1, y1] in image pixels, e.g. "
                        + fastsam_prompts.BOXES_EXAMPLE
                    ),
                ),
                io.String.Input(
                    "text",
                    multiline=True,
                    default="",
                    tooltip="Mode text: what to segment, e.g. 'a dog'; one phrase per line, each picks one object.",
                ),
                io.Int.Input(
                    "imgsz",
                    default=1024,
                    min=32,
                    max=4096,
                    step=32,
                    tooltip="FastSAM inference size (long side, multiple of 32). 1024 as in FastSAM; lower is faster.",
                ),
                io.Float.Input(
                    "conf",
                    default=0.4,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="Detection confidence threshold; lower finds more (and smaller) objects.",
                ),
                io.Float.Input(
                    "iou",
                    default=0.9,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="Non-maximum-suppression IoU; lower merges overlapping detections more aggressively.",
                ),
                io.Combo.Input(
                    "combine",
                    options=list(fastsam_prompts.COMBINES),
                    default="union",
                    tooltip="How selected objects become one mask: union of all, the largest, or the one at 'index'.",
                ),
                io.Int.Input(
                    "index",
                    default=0,
                    min=0,
                    max=1000,
                    tooltip="With combine 'index': which selected object, ordered by area, largest first (0-based).",
                ),
                io.Combo.Input(
                    "clip_folder",
                    options=["none", *fastsam_clip.list_clip_folders()],
                    default="none",
                    optional=True,
                    tooltip="Mode text: a Hugging Face CLIP folder in ComfyUI/models/diffstyler_clip (loaded offline).",
                ),
            ],
            outputs=[
                io.Mask.Output("mask", display_name="mask", tooltip="MASK [B,H,W] 0..1 at the input image size."),
                io.Image.Output(
                    "preview",
                    display_name="preview",
                    tooltip="The image with the mask tinted blue, boxes yellow, positive points green, negative red.",
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, points: str | None = None, boxes: str | None = None, imgsz: int | None = None):
        # Listing an input here skips ComfyUI's own range check for it, so imgsz is checked in full.
        try:
            if isinstance(points, str):
                fastsam_prompts.parse_points(points)
            if isinstance(boxes, str):
                fastsam_prompts.parse_boxes(boxes)
            if imgsz is not None:
                if not 32 <= int(imgsz) <= 4096:
                    return f"imgsz: expected 32..4096, got {imgsz}"
                fastsam_prompts.check_imgsz(imgsz)
        except ValueError as e:
            return str(e)
        return True

    @classmethod
    def execute(
        cls,
        image,
        fastsam,
        mode: str,
        points: str,
        boxes: str,
        text: str,
        imgsz: int,
        conf: float,
        iou: float,
        combine: str,
        index: int,
        clip_folder: str = "none",
    ) -> io.NodeOutput:
        request = fastsam_prompts.build_request(mode, points, boxes, text, combine, index, imgsz, conf, iou)
        out = fastsam_adapter.mask_and_preview(fastsam, image, request, clip_folder)
        # Not under "images" for one image: the frontend would draw it as the node's image preview below the
        # editor canvas, which already shows it. A batch keeps that preview too: the editor shows its first image.
        previews = ui.PreviewImage(out.preview, cls=cls).values
        refs = {"diffstyler_preview": previews, "diffstyler_source": ui.PreviewImage(out.rgb, cls=cls).values}
        if len(previews) > 1:
            refs["images"] = previews
        return io.NodeOutput(out.mask, out.preview, ui=refs)


NODES = [DiffStylerFastSAMLoader, DiffStylerFastSAMMask]
