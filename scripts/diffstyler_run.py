#!/usr/bin/env python3
"""Run a DiffStyler example workflow headless: ComfyUI's own executor, in this process, no browser.

    python scripts/diffstyler_run.py --workflow workflows/diffstyler_two_styles.json --image photo.png \\
        --output out.png [--checkpoint sd15.safetensors] [--lora deer.safetensors --lora grass.safetensors] \\
        [--points '[{"x": 250, "y": 300}]' --mask-everything] [--prompt "..." --prompt "..."] [--steps 50] \\
        [--start 0 --end 0.4 --start 0.4 --end 1]

The workflow is a UI workflow from workflows/ (or any one saved with the frontend's Save). Its content image,
checkpoint, LoRAs, mask prompts, prompts, steps and cfg are replaced by the options given; everything else runs
as saved. Per-style options (--lora, --prompt, the mask options --points/--boxes/--text/--mask-everything and the
step range --start/--end) are taken in order: the first of each kind goes to style 1 (the first Style LoRA Loader of
the chain). Coordinates are pixels of the --image file; --start/--end are fractions of the steps (0 = the first, 1 =
the last) with the Style LoRA Loader's rule (start_percent <= end_percent).

With no checkpoint (no --checkpoint and none in ComfyUI/models/checkpoints) it runs in demo mode: a tiny
random-weight SD1.5-topology model, tiny VAE, random LoRAs and a random FastSAM are written to a temporary
folder (nothing is downloaded), so the picture is noise-like but the whole pipeline runs. A Flux workflow (its
model from UNETLoader) runs in demo mode when models/diffusion_models is empty: a tiny Flux.1-dev, Flux-shaped text
encoders, a 16-channel VAE and random Flux LoRAs stand in. Exit status: 0 on success, 2 for bad options or an
invalid workflow, 1 when the run fails.
"""

from __future__ import annotations

import argparse
import logging
import os
import runpy
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# the pack as package comfyui_diffstyler, through its harness (the pack root never goes on sys.path)
runpy.run_path(str(REPO / "nodes" / "harness" / "host.py"))["load_pack"]()

import diffstyler_demo as demo_mod  # noqa: E402 - scripts/ is on sys.path when this file runs
import runner_exec  # noqa: E402
import runner_graph  # noqa: E402
from comfyui_diffstyler.nodes.harness import host  # noqa: E402
from comfyui_diffstyler.nodes.harness import workflow as wt  # noqa: E402
from comfyui_diffstyler.nodes.harness.demo import write_models  # noqa: E402
from runner_checks import (  # noqa: E402, F401 - RANGES: the limits tests/e2e/test_workflows.py compares
    FATAL,
    RANGES,
    RunError,
    check_options,
    check_pictures,
    load_workflow,
    missing_files,
    say,
)

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
    (
        ("--checkpoint",),
        {
            "help": "checkpoint file name in models/checkpoints, or a path (a Flux workflow: the diffusion model, "
            "in models/diffusion_models)"
        },
    ),
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
            "choices": ["auto", "fine", "fine/2", "fine/4", "fine/5", "fine/8", "fine/10", "sampling"],
            "help": "points the inversion walks (default: the workflow's; auto = the model family's default: SD fine, "
            "the released pipeline, about 1000 UNet rows; Flux sampling; SD also fine/2, fine/5, fine/10, Flux fine/2, "
            "fine/4, fine/8; demo mode: sampling, the sampler's own steps)",
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
    (
        ("--start",),
        {
            "type": float,
            "action": "append",
            "default": [],
            "help": "where a style starts, as a fraction of the steps (0 = the first step): its Style LoRA Loader's "
            "start_percent; once per style",
        },
    ),
    (
        ("--end",),
        {
            "type": float,
            "action": "append",
            "default": [],
            "help": "where a style ends (1 = the last step; equal to --start: it never runs): its end_percent; once "
            "per style",
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
        epilog="Per-style options repeat: the n-th --lora/--prompt/--start/--end/mask option goes to style n.",
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
    root = host.find_comfyui(explicit)
    if root is None:
        tried = ", ".join(str(c) for c in host.comfyui_candidates(explicit))
        raise RunError(f"ComfyUI not found (tried {tried}): pass --comfyui PATH or set COMFYUI_PATH")
    return root


def run(args) -> int:
    started = time.time()
    wf_path, workflow = load_workflow(args.workflow)
    if args.output.suffix.lower() != ".png":
        raise RunError(f"--output: {args.output} must end in .png")
    check_options(wt, workflow, args)
    root = find_comfyui(args.comfyui)
    work = Path(tempfile.mkdtemp(prefix="diffstyler_run_"))
    try:
        folder_paths = runner_exec.import_comfyui(root, args.gpu, work)
        flux = bool(wt.nodes_of_type(workflow, "UNETLoader"))
        models = "diffusion_models" if flux else "checkpoints"
        demo_mode = not args.checkpoint and not folder_paths.get_filename_list(models)
        missing = missing_files(args, folder_paths, demo_mode, models)
        if missing:
            raise RunError(f"{len(missing)} named file(s) not found:\n  " + "\n  ".join(missing))
        if demo_mode and args.lora:
            raise RunError(
                "--lora: demo mode runs a tiny random model that your LoRA files do not fit: pass --checkpoint"
            )
        check_pictures(args, demo_mode)
        if demo_mode:
            runner_exec.quiet_demo(work, args.verbose)
        skipped = runner_exec.report_skipped_styles()
        runner_exec.load_nodes(demo_mode, args.verbose)
        infos = wt.object_info()
        problems = [p for p in wt.check_workflow(workflow, infos) if any(f in p for f in FATAL)]
        if problems:
            raise RunError(
                f"--workflow: {wf_path.name} does not fit this ComfyUI and pack:\n  " + "\n  ".join(problems)
            )
        say(f"DiffStyler: {wf_path.name} on {'GPU' if args.gpu else 'CPU'}, ComfyUI at {root}")
        demo = None
        if demo_mode:
            say(demo_mod.FLUX_BANNER if flux else demo_mod.BANNER)
            texts = any(m[0] == "text" for m in args.masks)
            demo = write_models(folder_paths, work / "models", len(wt.style_chain(workflow)), texts, flux=flux)
        for note in runner_graph.substitute(wt, infos, workflow, args, folder_paths, work / "input", demo):
            say(f"note: {note}")
        prompt = wt.ui_to_api(workflow, infos)
        result = runner_exec.execute(prompt, workflow)
        if not result.success:
            raise RunError(f"the run failed at {result.failure_text()}", code=1)
        images = runner_exec.collect_images(result.ui, prompt, folder_paths)
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
