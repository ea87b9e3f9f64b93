"""The headless runner's changes to the workflow: the options put into it (pictures, models, prompts, masks, step
ranges, cfg, steps), demo mode's regions, and the paste-back onto the original picture."""

from __future__ import annotations

from pathlib import Path

import diffstyler_demo as demo_mod
from runner_checks import MASK_OPTIONS, RunError, check_step_ranges, scaled_prompt, shrunk_size

# Flux's other model files: taken from the workflow as saved, checked before the run
FLUX_FILES = (("DualCLIPLoader", ("clip_name1", "clip_name2"), "text_encoders"), ("VAELoader", ("vae_name",), "vae"))


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


def set_text(wt, infos, wf, target, input_name: str, text: str, what: str) -> None:
    encoder = wt.text_encoder(wf, target, input_name)  # through FluxGuidance in the Flux workflows
    if encoder is None:
        raise RunError(f"{what}: node {target['id']}'s {input_name} does not come from a CLIP Text Encode node")
    wt.set_widget(infos, encoder, "text", text)


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

    loaders = [(n, "ckpt_name", "checkpoints") for n in wt.nodes_of_type(wf, "CheckpointLoaderSimple")]
    loaders += [(n, "unet_name", "diffusion_models") for n in wt.nodes_of_type(wf, "UNETLoader")]
    for ckpt, widget, folder in loaders:
        wanted = args.checkpoint or wt.get_widget(infos, ckpt, widget)
        listed = folder_paths.get_filename_list(folder)
        if not args.checkpoint and wanted not in listed:
            if len(listed) != 1:
                problems.append(
                    f"--checkpoint: the workflow's {wanted} is not in models/{folder}; pass "
                    f"--checkpoint (found: {', '.join(listed)})"
                )
                continue
            wanted = listed[0]
            notes.append(f"checkpoint: {wanted} (the only one in models/{folder})")
        wt.set_widget(infos, ckpt, widget, resolve(folder, wanted, "--checkpoint"))
    for node_type, widgets, folder in FLUX_FILES:  # the workflow's names, as saved
        for n in wt.nodes_of_type(wf, node_type):
            for widget in widgets:
                resolve(folder, wt.get_widget(infos, n, widget), f"{node_type} {widget} (models/{folder})")
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
        wf.update(wt.use_tiny_models(wf, infos, demo["checkpoint"], demo["loras"], demo["fastsam"], unet=demo["unet"]))
    picture = set_pictures(wt, infos, wf, args, input_dir, demo, notes)
    if not demo:
        set_models(wt, infos, wf, args, folder_paths, notes)
    set_masks(wt, infos, wf, args, picture, demo, notes, input_dir)
    set_step_ranges(wt, infos, wf, args)
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


def set_step_ranges(wt, infos, wf: dict, args) -> None:
    """--start/--end of style n into its Style LoRA Loader's start_percent/end_percent, checked with the workflow's
    own value where only one bound is given."""
    if not (args.start or args.end):
        return
    chain = wt.style_chain(wf)
    inputs = ("start_percent", "end_percent")
    check_step_ranges(args, [tuple(wt.get_widget(infos, style, name) for name in inputs) for style in chain])
    for name, values in zip(inputs, (args.start, args.end)):
        for style, value in zip(chain, values):
            wt.set_widget(infos, style, name, float(value))
