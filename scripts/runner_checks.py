"""The headless runner's checks that need no ComfyUI, so that bad options fail in a second: numbers within the node
inputs' ranges, per-style counts, step ranges, pictures, named files; and the workflow file itself."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import diffstyler_demo as demo_mod

REPO = Path(__file__).resolve().parents[1]
MASK_OPTIONS = ("--points", "--boxes", "--text", "--mask-everything")
FATAL = ("is not connected", "unknown node type", "widget values")  # check_workflow problems that stop a run
MIN_SIDE = 8  # VAE Encode crops to multiples of 8: a side below 8 pixels leaves nothing to encode
DEMO_MIN_SIDE = 32  # the demo's tiny 32-channel models fail below (GroupNorm over a 1x1 map at their deepest level)
# Numbers the runner takes: (min, max, multiple of), the ranges of the node inputs they go to
# (tests/e2e/test_workflows.py keeps them equal to the node schemas).
RANGES = {
    "--steps": (1, 1000, 1),  # DDIM Inversion steps
    "--cfg": (0.0, 100.0, None),  # Masked Feature Fusion Sampler cfg
    "--imgsz": (32, 4096, 32),  # FastSAM Mask imgsz
    "--max-size": (MIN_SIDE, 16384, 1),
    "--train-steps": (1, 100000, 1),  # Train Style LoRA steps
    "--train-resolution": (64, 4096, 1),  # Train Style LoRA resolution
    "--seed": (0, 0xFFFFFFFFFFFFFFFF, 1),  # Train Style LoRA seed
    "--feather": (0, 256, 1),  # Region Mask feather
}
RANGE_FLAGS = ("--start", "--end")  # per style: the Style LoRA Loader's start_percent, end_percent


class RunError(Exception):
    """A problem to report in one line; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def load_workflow(arg: str) -> tuple[Path, dict]:
    path = Path(arg)
    if not path.is_file():
        found = [REPO / "workflows" / n for n in (arg, f"{arg}.json", f"diffstyler_{arg}.json")]
        found = [f for f in found if f.is_file()]
        if not found:
            shipped = ", ".join(sorted(p.name for p in (REPO / "workflows").glob("*.json")))
            raise RunError(f"--workflow: {arg} not found (shipped workflows: {shipped})")
        path = found[0]
    try:
        wf = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RunError(f"--workflow: cannot read {path} as JSON: {e}") from e
    if not isinstance(wf, dict) or not isinstance(wf.get("nodes"), list):
        raise RunError(
            f"--workflow: {path} is not a UI workflow (no 'nodes' list); save it with Save (or Export), "
            "not Export (API)"
        )
    return path, wf


def shrunk_size(w: int, h: int, max_size: int | None) -> tuple[int, int]:
    """The size save_image gives a ``w x h`` picture: long side ``max_size``, sides multiples of 8."""
    if not max_size or max(w, h) <= max_size:
        return w, h
    scale = max_size / max(w, h)
    return max(MIN_SIDE, round(w * scale / 8) * 8), max(MIN_SIDE, round(h * scale / 8) * 8)


def scaled_prompt(kind: str, text: str, scale: float, size: tuple[int, int], where: str) -> str:
    """Check point/box JSON against the original image size and rescale it to the shrunk image."""
    from comfyui_diffstyler.nodes.core import fastsam_prompts as prompts  # needs no ComfyUI

    w, h = round(size[0] * scale), round(size[1] * scale)
    try:
        if kind == "points":
            pts = prompts.parse_points(text)
            prompts.check_prompts_inside(prompts.MaskRequest(mode="points", points=pts), size[1], size[0])

            def pixel(v: int, n: int) -> int:  # a point is a pixel index: scale the pixel's centre
                return min(int((v + 0.5) * scale), n - 1)

            return json.dumps([{"x": pixel(p.x, w), "y": pixel(p.y, h), "label": int(p.positive)} for p in pts])
        boxes = prompts.parse_boxes(text)
        prompts.check_prompts_inside(prompts.MaskRequest(mode="boxes", boxes=boxes), size[1], size[0])
        out = []
        for b in boxes:
            x0, y0 = round(b.x0 * scale), round(b.y0 * scale)
            out.append([x0, y0, max(min(round(b.x1 * scale), w), x0 + 1), max(min(round(b.y1 * scale), h), y0 + 1)])
        return json.dumps(out)
    except ValueError as e:
        raise RunError(f"{where}: {e}") from e


def check_numbers(args) -> None:
    """Every number option within the range of the node input it goes to, before anything loads."""
    for flag, (low, high, multiple) in RANGES.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise RunError(f"{flag}: expected a number from {low} to {high}, got {value}")
        if not low <= value <= high:
            raise RunError(f"{flag}: expected {low} to {high}, got {value}")
        if multiple and multiple > 1 and value % multiple:
            raise RunError(
                f"{flag}: expected a multiple of {multiple}, got {value} (e.g. {value // multiple * multiple})"
            )


def check_step_ranges(args, workflow_ranges: list[tuple[float, float]] | None = None) -> None:
    """Every --start/--end (style n's n-th value) by the Style LoRA Loader's own rule (``check_step_range``: 0 to 1,
    start <= end). Before anything loads ``workflow_ranges`` is None and a style given one bound only is checked
    against the full range; after, against the workflow's own bound for that style."""
    from comfyui_diffstyler.nodes.core.step_range import check_step_range  # needs no torch

    for i in range(max(len(args.start), len(args.end))):
        start, end = workflow_ranges[i] if workflow_ranges and i < len(workflow_ranges) else (0.0, 1.0)
        start = args.start[i] if i < len(args.start) else start
        end = args.end[i] if i < len(args.end) else end
        try:
            check_step_range(i + 1, start, end, names=RANGE_FLAGS)
        except ValueError as e:
            raise RunError(str(e)) from e


def check_options(wt, workflow: dict, args) -> None:
    """Checks that need no ComfyUI, so that bad options fail in a second: numbers, counts per style."""
    check_numbers(args)
    check_step_ranges(args)
    n = len(wt.style_chain(workflow))
    per_style = (("--lora", args.lora), ("--prompt", args.prompt), ("mask option", args.masks))
    for label, values in (*per_style, ("--start", args.start), ("--end", args.end)):
        if len(values) > n:
            raise RunError(f"{label}: given {len(values)} times but the workflow has {n} style(s)")


def check_pictures(args, demo: bool) -> None:
    """The pictures can be read, the content picture is large enough for the VAE, points and boxes fit it."""
    from PIL import Image

    for label, path in (("--image", args.image), ("--style-image", args.style_image)):
        if path is None:
            continue
        try:
            with Image.open(path) as im:
                size = im.size
        except (OSError, ValueError) as e:
            raise RunError(f"{label}: cannot read {path} as an image: {e}") from e
        if min(size) < MIN_SIDE:
            raise RunError(
                f"{label}: {path} is {size[0]}x{size[1]} pixels, smaller than the {MIN_SIDE}x{MIN_SIDE} the VAE "
                f"encodes (it crops to multiples of {MIN_SIDE}): give a picture of at least {MIN_SIDE}x{MIN_SIDE}"
            )
        if label == "--image" and demo:
            run_size = shrunk_size(*size, args.max_size or demo_mod.MAX_SIZE)
            if min(run_size) < DEMO_MIN_SIDE:
                raise RunError(
                    f"--image: {path} is {size[0]}x{size[1]} pixels, run at {run_size[0]}x{run_size[1]}: demo mode's "
                    f"tiny models need at least {DEMO_MIN_SIDE} pixels per side; give a picture closer to square or "
                    "larger, or pass --checkpoint"
                )
        if label == "--image":
            for i, (kind, text) in enumerate(args.masks):
                if kind in ("points", "boxes"):
                    scaled_prompt(kind, text, 1.0, size, f"style {i + 1} ({kind})")


def _model_folders(folder_paths, kind: str) -> list[str]:
    """The folders ComfyUI will search for ``kind`` (the pack registers fastsam/diffstyler_clip when it loads)."""
    found = list(folder_paths.folder_names_and_paths.get(kind, ([], set()))[0])
    default = os.path.join(folder_paths.models_dir, kind)
    return found + ([default] if default not in found else [])


def missing_files(args, folder_paths, demo: bool, models: str = "checkpoints") -> list[str]:
    """Every file option that names nothing: the pictures, and the models of a real run (names in the model folders
    or paths; --checkpoint in ``models``: diffusion_models for a Flux workflow)."""
    missing = [
        f"{label}: {path} does not exist"
        for label, path in (("--image", args.image), ("--style-image", args.style_image))
        if path is not None and not path.is_file()
    ]
    if demo:
        return missing
    named = [("--checkpoint", models, args.checkpoint, Path.is_file)]
    named += [(f"--lora for style {i + 1}", "loras", v, Path.is_file) for i, v in enumerate(args.lora)]
    named += [("--fastsam", "fastsam", args.fastsam, Path.is_file)]
    named += [("--clip-folder", "diffstyler_clip", args.clip_folder, Path.is_dir)]
    for label, kind, value, exists in named:
        if value is None or (kind == "loras" and value.lower() == "none"):
            continue
        if exists(Path(value).expanduser()):
            continue
        folders = _model_folders(folder_paths, kind)
        if any(exists(Path(f) / value) for f in folders):
            continue
        missing.append(f"{label}: {value} is neither a file nor in {', '.join(folders)}")
    return missing
