#!/usr/bin/env python3
"""Run a DiffStyler example workflow headless: ComfyUI's own executor, in this process, no browser.

    python scripts/diffstyler_run.py --workflow workflows/diffstyler_two_styles.json --image photo.png \\
        --output out.png [--checkpoint sd15.safetensors] [--lora deer.safetensors --lora grass.safetensors] \\
        [--points '[{"x": 250, "y": 300}]' --mask-everything] [--prompt "..." --prompt "..."] [--steps 50]

The workflow is a UI workflow from workflows/ (or any one saved with the frontend's Save). Its content image,
checkpoint, LoRAs, mask prompts, prompts, steps and cfg are replaced by the options given; everything else runs
as saved. Per-style options (--lora, --prompt and the mask options --points/--boxes/--text/--mask-everything)
are taken in order: the first of each kind goes to style 1 (the first Style LoRA Loader of the chain).
Coordinates are pixels of the --image file.

With no checkpoint (no --checkpoint and none in ComfyUI/models/checkpoints) it runs in demo mode: a tiny
random-weight SD1.5-topology model, tiny VAE, random LoRAs and a random FastSAM are written to a temporary
folder (nothing is downloaded), so the picture is noise-like but the whole pipeline runs. Exit status: 0 on
success, 2 for bad options or an invalid workflow, 1 when the run fails.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import diffstyler_demo as demo_mod  # scripts/ is on sys.path when this file runs

REPO = Path(__file__).resolve().parents[1]
SUPPORT = REPO / "tests" / "support"
PACK_NAME = "comfyui_diffstyler"
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


class RunError(Exception):
    """A problem to report in one line; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


# ------------------------------------------------------------------ options


MASK_FLAGS = (
    ("--points", "JSON", 'style mask from points, e.g. \'[{"x": 120, "y": 80, "label": 1}]\' (label 0: negative)'),
    ("--boxes", "JSON", "style mask from boxes, e.g. '[[10, 20, 200, 180]]'"),
    ("--text", "TEXT", "style mask from a description (needs --clip-folder)"),
)
OPTIONS = (  # (flags, argparse keywords)
    (("--workflow",), {"required": True, "help": "UI workflow JSON, or a shipped name such as two_styles"}),
    (("--image",), {"required": True, "type": Path, "help": "content image (PNG/JPEG)"}),
    (("--output",), {"required": True, "type": Path, "help": "where to write the result PNG"}),
    (("--style-image",), {"type": Path, "help": "style picture for a workflow with Train Style LoRA"}),
    (
        ("--comfyui",),
        {"type": Path, "help": "ComfyUI folder (default: $COMFYUI_PATH, the one holding this pack, ~/ComfyUI)"},
    ),
    (("--gpu",), {"action": "store_true", "help": "use the GPU (default: CPU)"}),
    (("--checkpoint",), {"help": "checkpoint file name in models/checkpoints, or a path"}),
    (
        ("--lora",),
        {
            "action": "append",
            "default": [],
            "help": "style LoRA (name in models/loras or a path; 'none' for a prompt-only style), once per style",
        },
    ),
    (("--fastsam",), {"help": "FastSAM weights (name in models/fastsam or a path)"}),
    (("--clip-folder",), {"help": "CLIP folder in models/diffstyler_clip for --text masks"}),
    (("--prompt",), {"action": "append", "default": [], "help": "style prompt, once per style"}),
    (("--base-prompt",), {"help": "base prompt (background branch)"}),
    (("--negative",), {"help": "negative prompt"}),
    (("--steps",), {"type": int, "help": f"DDIM steps, inversion and sampling (demo mode: {demo_mod.STEPS})"}),
    (
        ("--inversion-grid",),
        {
            "choices": ["fine", "fine/2", "fine/5", "fine/10", "sampling"],
            "help": "timesteps the DDIM inversion walks (default: the workflow's, fine = the released pipeline, about "
            "1000 UNet rows; demo mode: sampling, the sampler's own steps)",
        },
    ),
    (("--cfg",), {"type": float, "help": "classifier-free guidance scale"}),
    (("--imgsz",), {"type": int, "help": "FastSAM inference size (multiple of 32)"}),
    (
        ("--max-size",),
        {
            "type": int,
            "help": f"shrink the content image to this long side first (demo mode: "
            f"{demo_mod.MAX_SIZE}); sides become multiples of 8",
        },
    ),
    (
        ("--feather",),
        {"type": int, "help": "seam width in pixels around the restyled region (Region Mask; default: the workflow's)"},
    ),
    (
        ("--keep-original",),
        {
            "choices": ("auto", "on", "off"),
            "default": "auto",
            "help": "original pixels outside the restyled region: on, off, or auto (on for background exact, off for "
            "model)",
        },
    ),
    (("--train-steps",), {"type": int, "help": f"Train Style LoRA steps (demo mode: {demo_mod.TRAIN['steps']})"}),
    (("--train-resolution",), {"type": int, "help": "Train Style LoRA resolution"}),
    (("--seed",), {"type": int, "help": "Train Style LoRA seed"}),
    (("-v", "--verbose"), {"action": "store_true", "help": "show ComfyUI's log"}),
)


def _tagged(kind: str):
    return lambda value: (kind, value)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="diffstyler_run.py",
        description=__doc__.split("\n\n")[0],
        epilog="Per-style options repeat: the n-th --lora/--prompt/mask option goes to style n.",
    )
    for flags, kwargs in OPTIONS:
        p.add_argument(*flags, **kwargs)
    for flag, metavar, text in MASK_FLAGS:
        p.add_argument(flag, dest="masks", action="append", type=_tagged(flag[2:]), metavar=metavar, help=text)
    p.add_argument(
        "--mask-everything",
        dest="masks",
        action="append_const",
        const=("everything", ""),
        help="style mask: every object FastSAM finds",
    )
    args = p.parse_args(argv)
    args.masks = args.masks or []
    return args


def find_comfyui(explicit: Path | None) -> Path:
    """--comfyui, else $COMFYUI_PATH, else the ComfyUI holding this pack, else ~/ComfyUI (as the tests do)."""
    candidates = [explicit] if explicit else []
    if not explicit and os.environ.get("COMFYUI_PATH"):
        candidates.append(Path(os.environ["COMFYUI_PATH"]))
    if not explicit and REPO.parent.name == "custom_nodes":
        candidates.append(REPO.parent.parent)
    if not explicit:
        candidates.append(Path.home() / "ComfyUI")
    for c in candidates:
        c = c.expanduser()
        if (c / "main.py").is_file() and (c / "comfy" / "model_management.py").is_file():
            return c.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise RunError(f"ComfyUI not found (tried {tried}): pass --comfyui PATH or set COMFYUI_PATH")


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


# ------------------------------------------------------------------ ComfyUI in this process


def import_comfyui(root: Path, gpu: bool, work: Path, verbose: bool):
    """Import ComfyUI the way tests/support/comfy_setup.py does; folders go to ``work``."""
    root_s = str(root)
    if root_s in sys.path:
        sys.path.remove(root_s)
    sys.path.insert(0, root_s)
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = not gpu
    comfy.cli_args.args.disable_all_custom_nodes = True
    import folder_paths  # no torch yet: named files are checked before the slow imports (load_nodes)
    import utils.extra_config

    extra = root / "extra_model_paths.yaml"
    if extra.is_file():
        utils.extra_config.load_extra_path_config(str(extra))
    for name in ("input", "output", "temp"):
        (work / name).mkdir(parents=True, exist_ok=True)
    folder_paths.set_input_directory(str(work / "input"))
    folder_paths.set_output_directory(str(work / "output"))
    folder_paths.set_temp_directory(str(work / "temp"))
    return folder_paths


def load_package(name: str, init: Path):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def register(extension, relative_module: str) -> None:
    """Register a V3 extension's nodes as ``nodes.load_custom_node`` does."""
    import nodes

    for node_cls in asyncio.run(extension.get_node_list()):
        schema = node_cls.GET_SCHEMA()
        nodes.NODE_CLASS_MAPPINGS[schema.node_id] = node_cls
        node_cls.RELATIVE_PYTHON_MODULE = relative_module
        if schema.display_name is not None:
            nodes.NODE_DISPLAY_NAME_MAPPINGS[schema.node_id] = schema.display_name


def load_nodes(demo: bool, verbose: bool) -> None:
    import comfy.model_management  # noqa: F401 - after args.cpu (import_comfyui)

    import nodes

    root = logging.getLogger()
    level = root.level
    if not verbose:  # core extras that miss optional packages (torchaudio, ...) log tracebacks: not our business
        root.setLevel(logging.ERROR)
    try:
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    finally:
        root.setLevel(level)
    pack = load_package(PACK_NAME, REPO / "__init__.py")
    register(asyncio.run(pack.comfy_entrypoint()), "custom_nodes." + PACK_NAME)
    if demo:
        test_pack = load_package("dst_test_pack", demo_mod.test_pack_init())
        register(asyncio.run(test_pack.comfy_entrypoint()), "custom_nodes.dst_test_pack")


def model_name(folder_paths, folder: str, value: str, what: str) -> str:
    """A name ComfyUI lists in ``folder``: a listed name as is, a file path registers its directory."""
    path = Path(value).expanduser()
    if path.is_file():
        folder_paths.add_model_folder_path(folder, str(path.parent.resolve()), is_default=True)
        return path.name
    if value in folder_paths.get_filename_list(folder):
        return value
    where = ", ".join(folder_paths.get_folder_paths(folder)) or f"models/{folder}"
    raise RunError(f"{what}: {value} is neither a file nor in {where}")


# ------------------------------------------------------------------ substitution


def save_image(src: Path, dst: Path, max_size: int | None, what: str) -> tuple[float, tuple[int, int]]:
    """Copy ``src`` as PNG, shrunk to ``max_size`` (long side, multiples of 8); returns (scale, original size)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(src) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
    except (OSError, ValueError) as e:
        raise RunError(f"{what}: cannot read {src} as an image: {e}") from e
    w, h = im.size
    scale = 1.0
    if (w, h) != shrunk_size(w, h, max_size):
        nw, nh = shrunk_size(w, h, max_size)
        im = im.resize((nw, nh), Image.Resampling.LANCZOS)
        scale = nw / w
    im.save(dst)
    return scale, (w, h)


def shrunk_size(w: int, h: int, max_size: int | None) -> tuple[int, int]:
    """The size save_image gives a ``w x h`` picture: long side ``max_size``, sides multiples of 8."""
    if not max_size or max(w, h) <= max_size:
        return w, h
    scale = max_size / max(w, h)
    return max(MIN_SIDE, round(w * scale / 8) * 8), max(MIN_SIDE, round(h * scale / 8) * 8)


def scaled_prompt(kind: str, text: str, scale: float, size: tuple[int, int], where: str) -> str:
    """Check point/box JSON against the original image size and rescale it to the shrunk image."""
    load_package(PACK_NAME, REPO / "__init__.py")  # its core modules need no ComfyUI
    from comfyui_diffstyler.nodes.core import fastsam_prompts as prompts

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


def set_text(wt, infos, wf, target, input_name: str, text: str, what: str) -> None:
    up = wt.upstream(wf, target, input_name)
    if up is None or up[0]["type"] != "CLIPTextEncode":
        raise RunError(f"{what}: node {target['id']}'s {input_name} does not come from a CLIP Text Encode node")
    wt.set_widget(infos, up[0], "text", text)


def set_pictures(wt, infos, wf: dict, args, input_dir: Path, demo: dict | None, notes: list) -> tuple:
    """Content picture (and style picture, training settings); returns (scale, original size) of the content."""
    trainers = wt.nodes_of_type(wf, "DiffStylerTrainStyleLoRA")
    style_ids = {up[0]["id"] for t in trainers if (up := wt.upstream(wf, t, "image"))}
    loaders = wt.nodes_of_type(wf, "LoadImage")
    if not [n for n in loaders if n["id"] not in style_ids]:
        raise RunError("--workflow: no Load Image node for the content image")
    max_size = args.max_size or (demo_mod.MAX_SIZE if demo else None)
    scale, size = save_image(args.image, input_dir / "content.png", max_size, "--image")
    for n in loaders:
        wt.set_widget(infos, n, "image", "style.png" if n["id"] in style_ids else "content.png")
    if trainers:
        style_src = args.style_image
        if style_src is None and demo is None:
            raise RunError("--style-image: this workflow trains a style LoRA: pass the style picture")
        if style_src is None:
            style_src = args.image
            notes.append("no --style-image: the demo trains on the content image")
        save_image(style_src, input_dir / "style.png", 512, "--style-image")
        values = {"steps": args.train_steps, "resolution": args.train_resolution, "seed": args.seed}
        for name, demo_value in demo_mod.TRAIN.items():
            if values[name] is None and demo:
                values[name] = demo_value
        for t in trainers:
            for name, value in values.items():
                if value is not None:
                    wt.set_widget(infos, t, name, value)
    return scale, size


def set_models(wt, infos, wf: dict, args, folder_paths, notes: list) -> None:
    """Checkpoint, FastSAM and style LoRAs of a real run: the options, else the workflow's names. Every name that
    is not found is reported in one message."""
    problems: list[str] = []

    def resolve(folder: str, value: str, what: str) -> str:
        try:
            return model_name(folder_paths, folder, value, what)
        except RunError as e:
            problems.append(str(e))
            return value

    for ckpt in wt.nodes_of_type(wf, "CheckpointLoaderSimple"):
        wanted = args.checkpoint or wt.get_widget(infos, ckpt, "ckpt_name")
        listed = folder_paths.get_filename_list("checkpoints")
        if not args.checkpoint and wanted not in listed:
            if len(listed) != 1:
                problems.append(
                    f"--checkpoint: the workflow's {wanted} is not in models/checkpoints; pass "
                    f"--checkpoint (found: {', '.join(listed)})"
                )
                continue
            wanted = listed[0]
            notes.append(f"checkpoint: {wanted} (the only one in models/checkpoints)")
        wt.set_widget(infos, ckpt, "ckpt_name", resolve("checkpoints", wanted, "--checkpoint"))
    for loader in wt.nodes_of_type(wf, "DiffStylerFastSAMLoader"):
        wanted = args.fastsam or wt.get_widget(infos, loader, "model_name")
        what = "--fastsam (FastSAM-s.pt from the FastSAM project, in ComfyUI/models/fastsam)"
        wt.set_widget(infos, loader, "model_name", resolve("fastsam", wanted, what))
    for i, style in enumerate(wt.style_chain(wf)):
        if wt.upstream(wf, style, "lora") is not None:
            continue
        wanted = args.lora[i] if i < len(args.lora) else wt.get_widget(infos, style, "lora_name")
        if wanted.lower() != "none":
            wanted = resolve("loras", wanted, f"--lora for style {i + 1}")
        wt.set_widget(infos, style, "lora_name", "None" if wanted.lower() == "none" else wanted)
    if problems:
        raise RunError(f"{len(problems)} model(s) not found:\n  " + "\n  ".join(problems))


def demo_region(path: Path, index: int, count: int) -> None:
    """A mask picture (red channel) for style ``index`` of ``count`` in demo mode: an ellipse in its own part of the
    content picture at ``path``'s size, so every style has a region of its own and background around it."""
    from PIL import Image, ImageDraw

    with Image.open(path) as im:
        width, height = im.size
    mask = Image.new("RGB", (width, height))
    cx, rx = (index + 0.5) * width / count, 0.4 * width / count
    ImageDraw.Draw(mask).ellipse((cx - rx, 0.2 * height, cx + rx, 0.8 * height), fill=(255, 255, 255))
    mask.save(path.with_name(f"demo_region_{index + 1}.png"))


def set_masks(wt, infos, wf: dict, args, picture: tuple, demo: dict | None, notes: list, input_dir: Path) -> None:
    """Per style: its prompt and where it goes (points and boxes rescaled to the picture the run uses). In demo mode
    a style without a mask option gets a region of its own (the random FastSAM finds no real objects); its FastSAM
    Mask still runs, into a Preview Mask."""
    scale, size = picture
    chain = wt.style_chain(wf)
    banded = []
    demo_masks: dict[int, dict] = {}  # FastSAM Mask node id -> the demo region loader that stands in for it
    for i, style in enumerate(chain):
        where = f"style {i + 1}"
        if i < len(args.prompt):
            set_text(wt, infos, wf, style, "conditioning", args.prompt[i], f"--prompt for {where}")
        mask_src = wt.upstream(wf, style, "mask")
        fastsam = mask_src[0] if mask_src and mask_src[0]["type"] == "DiffStylerFastSAMMask" else None
        if fastsam is None:
            if i < len(args.masks):
                what = "has no mask (a global style)" if mask_src is None else "does not get its mask from FastSAM"
                raise RunError(f"mask option for {where}: that style {what}; give mask options to FastSAM styles only")
            continue
        if demo and i >= len(args.masks) and fastsam["id"] in demo_masks:  # styles sharing a mask keep sharing it
            wt.connect(wf, demo_masks[fastsam["id"]], 0, style, "mask")
            continue
        if args.imgsz or demo:
            wt.set_widget(infos, fastsam, "imgsz", args.imgsz or demo_mod.IMGSZ)
        if demo and i >= len(args.masks):
            demo_region(input_dir / "content.png", i, len(chain))
            loader = wt.add_node(wf, infos, "LoadImageMask", (fastsam["pos"][0], fastsam["pos"][1] - 140))
            wt.set_widget(infos, loader, "image", f"demo_region_{i + 1}.png")
            wt.set_widget(infos, loader, "channel", "red")
            wt.connect(wf, loader, 0, style, "mask")
            demo_masks[fastsam["id"]] = loader
            preview = wt.add_node(wf, infos, "MaskPreview", (fastsam["pos"][0] + 400, fastsam["pos"][1]))
            wt.connect(wf, fastsam, 0, preview, "mask")
            wt.set_widget(infos, fastsam, "mode", "everything")
            for name in ("points", "boxes", "text"):
                wt.set_widget(infos, fastsam, name, "")
            banded.append(str(i + 1))
            continue
        if i < len(args.masks):
            mode, text = args.masks[i]
        else:
            mode = wt.get_widget(infos, fastsam, "mode")
            text = wt.get_widget(infos, fastsam, mode) if mode in ("points", "boxes", "text") else ""
        if mode in ("points", "boxes"):
            try:
                text = scaled_prompt(mode, text, scale, size, f"{where} ({mode})")
            except RunError as e:
                raise RunError(f"{e} (pass {', '.join(MASK_OPTIONS)} for each style)") from e
        if mode == "text":
            clip = args.clip_folder or (demo or {}).get("clip")
            if not clip:
                raise RunError(f"--text for {where} needs --clip-folder (a CLIP folder in models/diffstyler_clip)")
            wt.set_widget(infos, fastsam, "clip_folder", clip)
        wt.set_widget(infos, fastsam, "mode", mode)
        for name in ("points", "boxes", "text"):  # the node checks unused prompts against the image too
            wt.set_widget(infos, fastsam, name, text if name == mode else "")
    if banded:
        notes.append(
            f"demo mode: the random FastSAM finds no real objects, so style {', '.join(banded)} "
            f"{'gets' if len(banded) == 1 else 'get'} an oval region of {'its' if len(banded) == 1 else 'their'} own "
            "(the FastSAM Mask nodes still run)"
        )


def substitute(wt, infos, wf: dict, args, folder_paths, input_dir: Path, demo: dict | None) -> list[str]:
    """Apply the options to ``wf`` in place; returns notes to print."""
    notes: list[str] = []
    if demo:
        wf.update(wt.use_tiny_models(wf, infos, demo["checkpoint"], demo["loras"], demo["fastsam"]))
    picture = set_pictures(wt, infos, wf, args, input_dir, demo, notes)
    if not demo:
        set_models(wt, infos, wf, args, folder_paths, notes)
    set_masks(wt, infos, wf, args, picture, demo, notes, input_dir)
    for sampler in wt.nodes_of_type(wf, "DiffStylerMaskedFusionSampler") + wt.nodes_of_type(wf, "DiffStylerGuider"):
        if args.cfg is not None:
            wt.set_widget(infos, sampler, "cfg", args.cfg)
        if args.base_prompt is not None:
            set_text(wt, infos, wf, sampler, "positive", args.base_prompt, "--base-prompt")
        if args.negative is not None:
            set_text(wt, infos, wf, sampler, "negative", args.negative, "--negative")
    set_paste(wt, infos, wf, args, notes)
    steps = args.steps if args.steps is not None else (demo_mod.STEPS if demo else None)
    for inv in wt.nodes_of_type(wf, "DiffStylerInvert") if steps is not None else []:
        wt.set_widget(infos, inv, "steps", steps)
    grid = args.inversion_grid or ("sampling" if demo else None)
    for inv in wt.nodes_of_type(wf, "DiffStylerInvert") if grid is not None else []:
        wt.set_widget(infos, inv, "inversion_grid", grid)
    return notes


def set_paste(wt, infos, wf: dict, args, notes: list) -> None:
    """Original pixels outside the restyled region (Region Mask + Image Composite Masked): the workflow's, or added
    when it ends in Sampler -> VAE Decode -> Save Image; on for background exact, off for model (--keep-original)."""
    samplers = wt.nodes_of_type(wf, "DiffStylerMaskedFusionSampler") + wt.nodes_of_type(wf, "DiffStylerGuider")
    exact = all(wt.get_widget(infos, s, "background") == "exact" for s in samplers)
    keep = {"on": True, "off": False}.get(args.keep_original, exact)
    if not wt.nodes_of_type(wf, "DiffStylerRegionMask") and args.keep_original != "off":
        if wt.add_paste_back(wf, infos, keep_original=keep):
            notes.append("the workflow had no Region Mask: the result is pasted onto the original picture")
    for region in wt.nodes_of_type(wf, "DiffStylerRegionMask"):
        wt.set_widget(infos, region, "keep_original", keep)
        if args.feather is not None:
            wt.set_widget(infos, region, "feather", args.feather)
    if wt.nodes_of_type(wf, "DiffStylerRegionMask") and not keep:
        notes.append("background model: the whole decoded picture is kept (--keep-original on to paste the original)")


# ------------------------------------------------------------------ messages


class _OnlyUseful(logging.Filter):
    """Demo mode without -v: the pack's warnings and everyone's errors; not ComfyUI's notes about models and
    packages the demo does not use ("No VAE weights detected": the demo's VAE is a separate node)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or record.name.startswith(PACK_NAME)


def quiet_demo(work: Path, verbose: bool) -> None:
    """ultralytics keeps its settings file in the run's temporary folder and logs only errors; other loggers only
    errors (see _OnlyUseful)."""
    os.environ["YOLO_CONFIG_DIR"] = str(work / "ultralytics")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    if not verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_OnlyUseful())


class _SkippedStyles(logging.Handler):
    """Says on stdout, in the user's numbering, that the sampler skipped a style (its warning counts from 0)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.skipped: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "all-zero mask" in str(record.msg) and isinstance(record.args, tuple) and len(record.args) >= 2:
            index, name = record.args[0], record.args[1]
            number = str(int(index))  # the guider numbers styles from 1, as the user does
            if number not in self.skipped:
                self.skipped.append(number)
                say(
                    f"note: style {number} ({name}) is skipped: its mask is empty at the latent's size (1/8 of the "
                    "picture); give it a region (--points, --boxes, --text or --mask-everything)"
                )


def report_skipped_styles() -> list[str]:
    """Attach _SkippedStyles to the sampler's logger; returns its list of skipped style numbers (filled live)."""
    handler = _SkippedStyles()
    logger = logging.getLogger(f"{PACK_NAME}.nodes.adapters.guider")
    logger.addHandler(handler)
    for root_handler in logging.getLogger().handlers:  # said once, on stdout, in the user's numbering
        root_handler.addFilter(lambda r: not (r.name == logger.name and "all-zero mask" in str(r.msg)))
    return handler.skipped


# ------------------------------------------------------------------ execution


class ConsoleServer:
    """What PromptExecutor needs of PromptServer; prints one line per node that runs."""

    def __init__(self, prompt: dict):
        self.client_id = "diffstyler_run"  # the executor reports node by node only to a client
        self.last_node_id = None
        self.last_prompt_id = None
        self.prompt = prompt
        self.messages: list[tuple[str, dict]] = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))
        if event == "executing" and data.get("node") is not None:
            entry = self.prompt.get(str(data["node"]), {})
            say(f"  running {entry.get('_meta', {}).get('title', entry.get('class_type', data['node']))}")

    def queue_updated(self):
        pass


def execute(prompt: dict, workflow: dict) -> tuple[bool, dict, list]:
    import comfy.utils
    import comfy_host  # tests/support: the one module that knows how ComfyUI hosts differ
    import execution

    last = {}

    def progress(value, total, preview=None, prompt_id=None, node_id=None):
        step = max(1, total // 4)
        if total > 1 and (value == total or value % step == 0) and last.get(node_id) != value:
            last[node_id] = value
            say(f"    {value}/{total}")

    comfy.utils.set_progress_bar_global_hook(progress)
    comfy.utils.PROGRESS_BAR_ENABLED = logging.getLogger().level <= logging.INFO  # tqdm bars only with -v
    prompt_id = str(uuid.uuid4())
    valid = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
    if not valid[0]:
        details = []
        for node_id, err in (valid[3] or {}).items():
            for e in err.get("errors", []):
                details.append(f"node {node_id} ({err.get('class_type')}): {e.get('message')}: {e.get('details')}")
        raise RunError(f"the workflow does not validate: {valid[1].get('message')}\n  " + "\n  ".join(details))
    server = ConsoleServer(prompt)
    executor = comfy_host.make_executor(server)
    extra = {"client_id": server.client_id, "extra_pnginfo": {"workflow": workflow}}  # the PNG keeps the workflow
    executor.execute(prompt, prompt_id, extra, valid[2])
    return executor.success, executor.history_result.get("outputs", {}), server.messages


def failure_text(messages: list) -> str:
    for event, data in messages:
        if event == "execution_error":
            return f"node {data.get('node_id')} ({data.get('node_type')}): {data.get('exception_message', '').strip()}"
        if event == "execution_interrupted":
            return "interrupted"
    return "unknown error (run with -v for ComfyUI's log)"


def collect_images(outputs: dict, prompt: dict, folder_paths) -> list[Path]:
    files = []
    for node_id, ui in outputs.items():
        if prompt.get(node_id, {}).get("class_type") != "SaveImage":
            continue
        for ref in ui.get("images", []):
            base = folder_paths.get_directory_by_type(ref.get("type", "output"))
            files.append(Path(base) / ref.get("subfolder", "") / ref["filename"])
    return files


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


def check_options(wt, workflow: dict, args) -> None:
    """Checks that need no ComfyUI, so that bad options fail in a second: numbers, counts per style."""
    check_numbers(args)
    n = len(wt.style_chain(workflow))
    for label, values in (("--lora", args.lora), ("--prompt", args.prompt), ("mask option", args.masks)):
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


def missing_files(args, folder_paths, demo: bool) -> list[str]:
    """Every file option that names nothing: the pictures, and the models of a real run (names in the model folders
    or paths)."""
    missing = [
        f"{label}: {path} does not exist"
        for label, path in (("--image", args.image), ("--style-image", args.style_image))
        if path is not None and not path.is_file()
    ]
    if demo:
        return missing
    named = [("--checkpoint", "checkpoints", args.checkpoint, Path.is_file)]
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


def run(args) -> int:
    started = time.time()
    wf_path, workflow = load_workflow(args.workflow)
    if args.output.suffix.lower() != ".png":
        raise RunError(f"--output: {args.output} must end in .png")
    sys.path.insert(0, str(SUPPORT))
    import workflow_tools as wt

    check_options(wt, workflow, args)
    root = find_comfyui(args.comfyui)
    work = Path(tempfile.mkdtemp(prefix="diffstyler_run_"))
    try:
        folder_paths = import_comfyui(root, args.gpu, work, args.verbose)
        demo_mode = not args.checkpoint and not folder_paths.get_filename_list("checkpoints")
        missing = missing_files(args, folder_paths, demo_mode)
        if missing:
            raise RunError(f"{len(missing)} named file(s) not found:\n  " + "\n  ".join(missing))
        if demo_mode and args.lora:
            raise RunError(
                "--lora: demo mode runs a tiny random model that your LoRA files do not fit: pass --checkpoint"
            )
        check_pictures(args, demo_mode)
        if demo_mode:
            quiet_demo(work, args.verbose)
        skipped = report_skipped_styles()
        load_nodes(demo_mode, args.verbose)
        infos = wt.object_info()
        problems = [p for p in wt.check_workflow(workflow, infos) if any(f in p for f in FATAL)]
        if problems:
            raise RunError(
                f"--workflow: {wf_path.name} does not fit this ComfyUI and pack:\n  " + "\n  ".join(problems)
            )
        say(f"DiffStyler: {wf_path.name} on {'GPU' if args.gpu else 'CPU'}, ComfyUI at {root}")
        demo = None
        if demo_mode:
            say(demo_mod.BANNER)
            texts = any(m[0] == "text" for m in args.masks)
            demo = demo_mod.write_models(folder_paths, work / "models", len(wt.style_chain(workflow)), texts)
        for note in substitute(wt, infos, workflow, args, folder_paths, work / "input", demo):
            say(f"note: {note}")
        prompt = wt.ui_to_api(workflow, infos)
        ok, outputs, messages = execute(prompt, workflow)
        if not ok:
            raise RunError(f"the run failed at {failure_text(messages)}", code=1)
        images = collect_images(outputs, prompt, folder_paths)
        if not images:
            raise RunError("the workflow saved no image (does it end in a Save Image node?)", code=1)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        written = []
        for i, src in enumerate(images):
            dst = args.output if i == 0 else args.output.with_name(f"{args.output.stem}_{i}{args.output.suffix}")
            shutil.copyfile(src, dst)
            written.append(str(dst))
        tail = [f"style {', '.join(skipped)} skipped"] if skipped else []
        tail += ["demo mode"] if demo else []
        say(f"wrote {', '.join(written)} in {time.time() - started:.0f} s" + (f" ({'; '.join(tail)})" if tail else ""))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not args.verbose:  # the failing node's message is printed once, at the end, without ComfyUI's traceback
        for handler in logging.getLogger().handlers:
            handler.addFilter(lambda r: not str(r.msg).startswith(("!!! Exception during processing", "Traceback")))
    os.environ.setdefault("YOLO_OFFLINE", "True")
    os.environ.setdefault("YOLO_AUTOINSTALL", "False")
    try:
        return run(args)
    except RunError as e:
        sys.stderr.write(f"error: {e}\n")
        return e.code
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
