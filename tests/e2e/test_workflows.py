"""Shipped example workflows and the headless runner (issue #6).

Every file in workflows/ is checked against the live node specs (links, socket types, one widget value per
frontend widget), converted to an API prompt with the harness (nodes/harness/workflow.py) and run end to end through
ComfyUI's PromptExecutor on the tiny models. The runner (scripts/diffstyler_run.py) runs in a subprocess as
the README tells users to run it (demo mode), with options, and with bad input.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dst_core
import fastsam_fixtures as ff
import numpy as np
import photo_fixtures as pf
import pytest
import safetensors.torch
import scipy.ndimage
from comfyui_diffstyler.nodes.harness import workflow as wt
from dst_fixtures import infos, one_torch_thread, yolo_config  # noqa: F401 - fixtures
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
RUNNER = ROOT / "scripts" / "diffstyler_run.py"
SHIPPED = {
    "diffstyler_one_style.json": 1,
    "diffstyler_two_styles.json": 2,
    "diffstyler_train_and_stylize.json": 1,
    "diffstyler_global_style.json": 1,
    "diffstyler_two_styles_in_time.json": 2,
}
GLOBAL = "diffstyler_global_style.json"  # no mask: the whole picture
QUICK = "diffstyler_one_style.json"  # the workflow the quick tier (-m "not slow") runs headless
PLACEHOLDERS = ("v1-5-pruned-emaonly.safetensors", "my_style.safetensors", "FastSAM-s.pt")
FASTSAM = "wf_fastsam_dense.pt"
LORAS = ("wf_style_1.safetensors", "wf_style_2.safetensors")
CONTENT = (101, 133)  # height, width (odd: VAE Encode crops to 96x128); FastSAM letterboxes it to imgsz 128
IMGSZ = 128


def _load(name: str) -> dict:
    return json.loads((ROOT / "workflows" / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def assets(tiny, comfy_home):
    """Random LoRAs, a FastSAM that detects (see fastsam_fixtures), a content and a style picture."""
    for i, name in enumerate(LORAS):
        safetensors.torch.save_file(
            dst_core.random_lora(tiny.model, seed=60 + i), str(comfy_home.models / "loras" / name)
        )
    ff.save_fastsam(comfy_home.models / "fastsam" / FASTSAM, seed=0, class_bias=2.0)
    Image.fromarray(pf.photo(*CONTENT, seed=3)).save(comfy_home.input / "wf_content.png")
    Image.fromarray(ff.scene(64, 64, seed=4)).save(comfy_home.input / "wf_style.png")
    return comfy_home


def tiny_workflow(name: str, infos: dict, steps: int = 4) -> dict:
    """The shipped workflow on the tiny models and test pictures, with few steps and prompts inside the picture."""
    wf = wt.use_tiny_models(_load(name), infos, "diffstyler_tiny_sd15.safetensors", list(LORAS), FASTSAM)
    trainers = wt.nodes_of_type(wf, "DiffStylerTrainStyleLoRA")
    style_images = {wt.upstream(wf, t, "image")[0]["id"] for t in trainers}
    for n in wt.nodes_of_type(wf, "LoadImage"):
        wt.set_widget(infos, n, "image", "wf_style.png" if n["id"] in style_images else "wf_content.png")
    for t in trainers:
        for key, value in (("steps", 2), ("resolution", 64), ("rank", 4)):
            wt.set_widget(infos, t, key, value)
    for n in wt.nodes_of_type(wf, "DiffStylerInvert"):
        wt.set_widget(infos, n, "steps", steps)
        wt.set_widget(infos, n, "inversion_grid", "sampling")  # the sampler's own steps: fast on the tiny model
    h, w = CONTENT
    for i, n in enumerate(wt.nodes_of_type(wf, "DiffStylerFastSAMMask")):
        wt.set_widget(infos, n, "imgsz", IMGSZ)
        wt.set_widget(infos, n, "points", json.dumps([{"x": w // 3 + 40 * i, "y": h // 2, "label": 1}]))
    return wf


# ------------------------------------------------------------------ the files


def test_the_workflows_are_shipped():
    names = {p.name for p in (ROOT / "workflows").glob("*.json")}
    assert set(SHIPPED) <= names, f"missing: {set(SHIPPED) - names}"


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_workflow_file_is_sound(name, infos):
    wf = _load(name)
    assert wt.check_workflow(wf, infos) == []
    notes = [n for n in wf["nodes"] if n["type"] in wt.NOTE_TYPES]
    assert len(notes) >= 3, "each step is explained by a Note"
    for n in wf["nodes"]:
        if n["type"] not in wt.NOTE_TYPES:
            assert n["properties"].get("Node name for S&R") == n["type"]
    styles = wt.style_chain(wf)
    assert len(styles) == SHIPPED[name]
    for style in styles:
        if name == GLOBAL:
            assert wt.upstream(wf, style, "mask") is None and not wt.nodes_of_type(wf, "DiffStylerFastSAMMask")
        else:
            mask = wt.upstream(wf, style, "mask")[0]
            assert mask["type"] == "DiffStylerFastSAMMask" and wt.get_widget(infos, mask, "mode") == "points"
        assert wt.upstream(wf, style, "conditioning")[0]["type"] == "CLIPTextEncode"
    ckpts = wt.nodes_of_type(wf, "CheckpointLoaderSimple")
    assert [wt.get_widget(infos, c, "ckpt_name") for c in ckpts] == [PLACEHOLDERS[0]]
    assert {wt.get_widget(infos, f, "model_name") for f in wt.nodes_of_type(wf, "DiffStylerFastSAMLoader")} == (
        set() if name == GLOBAL else {PLACEHOLDERS[2]}
    )
    assert_pastes_the_original_outside(wf, infos)
    prompt = wt.ui_to_api(wf, infos)
    assert not {v["class_type"] for v in prompt.values()} & set(wt.NOTE_TYPES)


def assert_pastes_the_original_outside(wf: dict, infos: dict) -> None:
    """Save Image <- Image Composite Masked (destination: the content picture, source: VAE Decode of the sampler)
    <- Region Mask (DiffStyler) of the sampler's styles, keep_original on (issue #18)."""
    (save,) = wt.nodes_of_type(wf, "SaveImage")
    comp = wt.upstream(wf, save, "images")[0]
    assert comp["type"] == "ImageCompositeMasked" and wt.get_widget(infos, comp, "resize_source") is False
    dec = wt.upstream(wf, comp, "source")[0]
    assert dec["type"] == "VAEDecode" and wt.upstream(wf, dec, "samples")[0]["type"] == "DiffStylerMaskedFusionSampler"
    (enc,) = wt.nodes_of_type(wf, "VAEEncode")
    content = wt.upstream(wf, enc, "pixels")[0]
    assert wt.upstream(wf, comp, "destination")[0] is content
    region = wt.upstream(wf, comp, "mask")[0]
    assert region["type"] == "DiffStylerRegionMask"
    assert [wt.upstream(wf, comp, k) for k in ("x", "y")] == [(region, 1), (region, 2)]
    assert wt.upstream(wf, region, "image")[0] is content
    assert wt.upstream(wf, region, "vae") == wt.upstream(wf, dec, "vae")
    sampler = wt.upstream(wf, dec, "samples")[0]
    assert wt.upstream(wf, region, "styles") == wt.upstream(wf, sampler, "styles")
    assert wt.get_widget(infos, sampler, "background") == "exact"
    assert wt.get_widget(infos, region, "keep_original") is True and wt.get_widget(infos, region, "feather") > 0


def test_two_styles_is_the_deer_and_grass_demo(infos):
    wf = _load("diffstyler_two_styles.json")
    texts = []
    loras = []
    for style in wt.style_chain(wf):
        texts.append(wt.get_widget(infos, wt.upstream(wf, style, "conditioning")[0], "text"))
        loras.append(wt.get_widget(infos, style, "lora_name"))
    assert texts[-1] == "painting of <sss>, deer", "the deer is the last style so that it wins overlaps"
    assert "grass" in texts[0] and len(set(loras)) == 2 and PLACEHOLDERS[1] in loras


def test_two_styles_in_time_hand_one_region_over(infos):
    """One FastSAM region, style 1 for the first 40 % of the sampling, style 2 after (issue 21)."""
    wf = _load("diffstyler_two_styles_in_time.json")
    first, second = wt.style_chain(wf)
    assert wt.upstream(wf, first, "mask") == wt.upstream(wf, second, "mask")
    assert [wt.get_widget(infos, first, k) for k in ("start_percent", "end_percent")] == [0.0, 0.4]
    assert [wt.get_widget(infos, second, k) for k in ("start_percent", "end_percent")] == [0.4, 1.0]
    assert wt.get_widget(infos, first, "lora_name") != wt.get_widget(infos, second, "lora_name")


def test_train_workflow_feeds_the_trained_lora(infos):
    wf = _load("diffstyler_train_and_stylize.json")
    (style,) = wt.style_chain(wf)
    src = wt.upstream(wf, style, "lora")
    assert src is not None and src[0]["type"] == "DiffStylerTrainStyleLoRA" and src[1] == 0
    assert wt.get_widget(infos, style, "lora_name") == "None"


def test_readme_explains_placeholders_and_runner():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for text in (*PLACEHOLDERS, "scripts/diffstyler_run.py", "--workflow workflows/diffstyler_two_styles.json"):
        assert text in readme, f"README does not mention {text}"


# ------------------------------------------------------------------ the converter


def test_converter_follows_the_frontend_widget_rules(infos):
    wf = {"last_node_id": 0, "last_link_id": 0, "nodes": [], "links": [], "version": 0.4}
    img = wt.add_node(wf, infos, "LoadImage", (0, 0), ["pic.png", "image"])
    ks = wt.add_node(wf, infos, "KSampler", (0, 0), [7, "fixed", 12, 6.5, "euler", "normal", 0.75])
    vae = wt.add_node(wf, infos, "DiffStylerTestTinyVAE", (0, 0), [3, "randomize"])
    enc = wt.add_node(wf, infos, "VAEEncode", (0, 0))
    train = wt.add_node(wf, infos, "DiffStylerTrainStyleLoRA", (0, 0))
    wt.add_node(wf, infos, "Note", (0, 0), ["a note"])
    wt.connect(wf, img, 0, enc, "pixels")
    wt.connect(wf, vae, 0, enc, "vae")
    wt.connect(wf, enc, 0, ks, "latent_image")
    api = wt.ui_to_api(wf, infos)
    assert len(api) == 5, "the Note is skipped"
    assert api[str(img["id"])]["inputs"] == {"image": "pic.png"}, "the upload button is no input"
    assert api[str(ks["id"])]["inputs"] == {
        "seed": 7,
        "steps": 12,
        "cfg": 6.5,
        "sampler_name": "euler",
        "scheduler": "normal",
        "denoise": 0.75,
        "latent_image": [str(enc["id"]), 0],
    }, "control_after_generate follows the seed and is dropped"
    assert api[str(vae["id"])]["inputs"] == {"seed": 3}
    assert api[str(enc["id"])]["inputs"] == {"pixels": [str(img["id"]), 0], "vae": [str(vae["id"]), 0]}
    # the trainer's seed asks for no control widget; its optional save_name is a widget too
    widgets = [w.name for w in wt.frontend_widgets(infos["DiffStylerTrainStyleLoRA"])]
    assert widgets[-3:] == ["seed", "resolution", "save_name"]
    assert api[str(train["id"])]["inputs"]["prompt"] == "painting of <sss>"
    # a shorter widgets_values takes defaults (as the frontend does), a longer one is refused
    ks["widgets_values"] = [5, "fixed"]
    assert wt.ui_to_api(wf, infos)[str(ks["id"])]["inputs"]["steps"] == 20
    ks["widgets_values"] = [1, "fixed", 12, 6.5, "euler", "normal", 0.75, "extra"]
    with pytest.raises(ValueError, match="8 widget values but the node has 7 widgets"):
        wt.ui_to_api(wf, infos)
    ks["widgets_values"] = [1, "fixed", 12, 6.5, "euler", "normal", 0.75]
    ks["mode"] = wt.MODE_MUTED
    assert str(ks["id"]) not in wt.ui_to_api(wf, infos)
    ks["mode"] = wt.MODE_BYPASS
    with pytest.raises(ValueError, match="bypassed"):
        wt.ui_to_api(wf, infos)
    ks["mode"] = 0
    wf["nodes"].append(dict(ks, id=99, type="NoSuchNode"))
    with pytest.raises(ValueError, match="NoSuchNode"):
        wt.ui_to_api(wf, infos)


def test_check_workflow_finds_broken_files(infos):
    wf = _load("diffstyler_one_style.json")
    sampler = wt.nodes_of_type(wf, "DiffStylerMaskedFusionSampler")[0]
    sampler["widgets_values"] = [10.5]
    wt.disconnect(wf, next(i["link"] for i in sampler["inputs"] if i["name"] == "inversion"))
    wt.set_widget(infos, wt.nodes_of_type(wf, "DiffStylerCrossLoRAInjector")[0], "qk_blend", "sideways")
    injector = wt.nodes_of_type(wf, "DiffStylerCrossLoRAInjector")[0]
    model_link = next(link for link in wf["links"] if link[3] == injector["id"] and link[5] == "MODEL")
    model_link[5] = "IMAGE"
    problems = "\n".join(wt.check_workflow(wf, infos))
    assert "1 widget values for 3 widgets (cfg, background, masks)" in problems
    assert "required input inversion (DIFFSTYLER_INVERSION) is not connected" in problems
    assert "qk_blend = 'sideways'" in problems
    assert f"link {model_link[0]}: type IMAGE but node" in problems


# ------------------------------------------------------------------ end to end, headless


@pytest.mark.parametrize(
    "name", [n if n == QUICK else pytest.param(n, marks=pytest.mark.slow) for n in sorted(SHIPPED)]
)
def test_workflow_runs_headless(name, infos, assets, run_graph):
    wf = tiny_workflow(name, infos)
    assert wt.check_workflow(wf, infos) == []
    prompt = wt.ui_to_api(wf, infos)
    result = run_graph(prompt)
    (save,) = wt.nodes_of_type(wf, "SaveImage")
    files = result.ui[str(save["id"])]["images"]
    assert len(files) == 1
    out = assets.output / files[0].get("subfolder", "") / files[0]["filename"]
    with Image.open(out) as im:
        assert im.size == (CONTENT[1], CONTENT[0]), "the picture's original size, not VAE Encode's crop"
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.std() > 1.0, "a picture, not a flat fill"
    masks = []
    for mask_node in wt.nodes_of_type(wf, "DiffStylerFastSAMMask"):
        mask = result.outputs(str(mask_node["id"]))[0][0]
        assert tuple(mask.shape) == (1, *CONTENT) and float(mask.min()) >= 0 and float(mask.max()) <= 1
        masks.append(mask[0].numpy())
    if not masks:  # a global style: the whole picture is restyled, nothing of the original is kept
        assert name == GLOBAL
        diff = np.abs(pixels.astype(int) - pf.photo(*CONTENT, seed=3).astype(int)).max(axis=-1)
        assert (diff > 0).mean() > 0.9, "the whole picture is restyled"
        return
    # outside the styled region grown by the feather width: the content picture, bit for bit
    region, _ = pf.region_like_sampler(masks, *CONTENT)
    (region_node,) = wt.nodes_of_type(wf, "DiffStylerRegionMask")
    feather = wt.get_widget(infos, region_node, "feather")
    outside = scipy.ndimage.distance_transform_edt(~region) >= feather
    assert outside.mean() > 0.2
    np.testing.assert_array_equal(pixels[outside], pf.photo(*CONTENT, seed=3)[outside])
    assert (pixels[region] != pf.photo(*CONTENT, seed=3)[region]).any(), "the region is restyled"
    for trainer in wt.nodes_of_type(wf, "DiffStylerTrainStyleLoRA"):
        lora = result.outputs(str(trainer["id"]))[0][0]
        assert lora and all(k.startswith("lora_unet_") for k in lora)
        (loss,) = [t for t, _ in wt.downstream(wf, trainer, 1)]
        assert result.ui[str(loss["id"])]["images"], "the loss curve is previewed"


# ------------------------------------------------------------------ the runner


def _runner(args: list[str], tmp_path: Path, timeout: float = 900, env: dict | None = None):
    import conftest

    env = env or dict(os.environ, YOLO_CONFIG_DIR=str(tmp_path / "yolo"))
    env["COMFYUI_PATH"] = str(conftest.COMFYUI)
    if "--inversion-grid" not in args and "--help" not in args:
        args = [*args, "--inversion-grid", "sampling"]  # the sampler's own steps: fast on the tiny models
    return subprocess.run(
        [sys.executable, str(RUNNER), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "photo.png"
    Image.fromarray(ff.scene(300, 400, seed=5)).save(path)
    return path


@pytest.mark.slow
def test_runner_readme_command_demo_mode(comfy_home, tmp_path, photo):
    """The README's command, as written, on a fresh setup (no checkpoint): demo mode end to end."""
    out = tmp_path / "out.png"
    wf = str(ROOT / "workflows" / "diffstyler_two_styles.json")
    proc = _runner(["--workflow", wf, "--image", str(photo), "--output", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "demo mode: random-weight tiny models, the picture is noise-like; pass --checkpoint" in proc.stdout
    with Image.open(out) as im:
        assert im.size == (256, 192), "demo mode shrinks the picture to 256 on the long side"
        saved = json.loads(im.info["workflow"])
        prompt = json.loads(im.info["prompt"])
    assert {n["type"] for n in saved["nodes"]} >= {"DiffStylerMaskedFusionSampler", "DiffStylerTestTinyVAE"}
    # demo mode prints only what is true and useful (issue #18)
    for noise in ("No VAE weights detected", "Overriding model.yaml", "Ultralytics Settings", "skipped"):
        assert noise not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    # every style has a region of its own, and the FastSAM Mask nodes still run (into a Preview Mask)
    by_id = prompt
    styles = [v for v in by_id.values() if v["class_type"] == "DiffStylerStyleLoRA"]
    assert len(styles) == 2
    masks = [by_id[s["inputs"]["mask"][0]]["inputs"]["image"] for s in styles]
    assert masks == ["demo_region_1.png", "demo_region_2.png"]
    assert sum(v["class_type"] == "MaskPreview" for v in by_id.values()) == 2
    assert "style 1, 2 get an oval region of their own" in proc.stdout


@pytest.mark.slow
def test_runner_runs_the_styles_in_time_and_global_workflows(comfy_home, tmp_path, photo):
    """Issue 21's workflows through the runner in demo mode: the two styles in time keep sharing one region, the
    global style has no mask (and a mask option for it is refused, naming why)."""
    out = tmp_path / "time.png"
    wf = str(ROOT / "workflows" / "diffstyler_two_styles_in_time.json")
    proc = _runner(["--workflow", wf, "--image", str(photo), "--output", str(out), "--steps", "4"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with Image.open(out) as im:
        prompt = json.loads(im.info["prompt"])
    styles = [v for v in prompt.values() if v["class_type"] == "DiffStylerStyleLoRA"]
    assert [(s["inputs"]["start_percent"], s["inputs"]["end_percent"]) for s in styles] in (
        [(0.0, 0.4), (0.4, 1.0)],
        [(0.4, 1.0), (0.0, 0.4)],
    )
    assert len({tuple(s["inputs"]["mask"]) for s in styles}) == 1, "one region, handed over in time"

    out = tmp_path / "global.png"
    wf = str(ROOT / "workflows" / "diffstyler_global_style.json")
    proc = _runner(["--workflow", wf, "--image", str(photo), "--output", str(out), "--steps", "4"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with Image.open(out) as im:
        prompt = json.loads(im.info["prompt"])
    (style,) = [v for v in prompt.values() if v["class_type"] == "DiffStylerStyleLoRA"]
    assert "mask" not in style["inputs"]
    proc = _runner(["--workflow", wf, "--image", str(photo), "--output", str(out), "--points", "[]"], tmp_path)
    assert proc.returncode == 2
    assert "mask option for style 1: that style has no mask (a global style)" in proc.stdout + proc.stderr


def _runner_module():
    import importlib.util

    sys.path.insert(0, str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location("diffstyler_run_under_test", RUNNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_runner_ranges_are_the_node_inputs_ranges(infos):
    """Every number the runner takes is range-checked with the limits of the node input it goes to."""
    runner = _runner_module()
    targets = {
        "--steps": ("DiffStylerInvert", "steps"),
        "--cfg": ("DiffStylerMaskedFusionSampler", "cfg"),
        "--imgsz": ("DiffStylerFastSAMMask", "imgsz"),
        "--train-steps": ("DiffStylerTrainStyleLoRA", "steps"),
        "--train-resolution": ("DiffStylerTrainStyleLoRA", "resolution"),
        "--seed": ("DiffStylerTrainStyleLoRA", "seed"),
        "--feather": ("DiffStylerRegionMask", "feather"),
    }
    assert set(targets) | {"--max-size"} == set(runner.RANGES)
    for flag, (node, name) in targets.items():
        spec = wt.input_spec(infos[node], name)[1]
        assert runner.RANGES[flag][:2] == (spec["min"], spec["max"]), flag


BAD_NUMBERS = [
    (["--steps", "0"], "--steps: expected 1 to 1000, got 0"),
    (["--steps", "100000"], "--steps: expected 1 to 1000, got 100000"),
    (["--cfg", "-5"], "--cfg: expected 0.0 to 100.0, got -5.0"),
    (["--cfg", "nan"], "--cfg: expected a number from 0.0 to 100.0, got nan"),
    (["--imgsz", "100"], "--imgsz: expected a multiple of 32, got 100 (e.g. 96)"),
    (["--max-size", "4"], "--max-size: expected 8 to 16384, got 4"),
    (["--train-steps", "0"], "--train-steps: expected 1 to 100000, got 0"),
    (["--train-resolution", "9000"], "--train-resolution: expected 64 to 4096, got 9000"),
    (["--seed", "-1"], "--seed: expected 0 to 18446744073709551615, got -1"),
    (["--feather", "999"], "--feather: expected 0 to 256, got 999"),
]


@pytest.mark.parametrize("extra, message", BAD_NUMBERS, ids=[" ".join(b[0]) for b in BAD_NUMBERS])
def test_runner_refuses_bad_numbers_before_anything_loads(tmp_path, photo, extra, message):
    out = tmp_path / "out.png"
    proc = _runner(["--workflow", "one_style", "--image", str(photo), "--output", str(out), *extra], tmp_path, 120)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {message}", proc.stderr
    assert proc.stdout == "", "refused before ComfyUI loads (it prints a line when it starts the workflow)"


@pytest.mark.parametrize("size", [(1, 1), (7, 7), (300, 7)])
def test_runner_refuses_pictures_below_the_vae_cell_at_once(tmp_path, size):
    path = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(path)
    out = tmp_path / "out.png"
    proc = _runner(["--workflow", "one_style", "--image", str(path), "--output", str(out)], tmp_path, 300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"--image: {path} is {size[0]}x{size[1]} pixels, smaller than the 8x8 the VAE encodes" in proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize("size, run", [((16, 16), (16, 16)), ((400, 20), (256, 16))])
def test_runner_refuses_pictures_too_small_for_the_demo_models_at_once(tmp_path, size, run):
    """8x8 is the VAE's cell; the demo's tiny 32-channel models need 32 px per side (a 16x16 picture fails inside
    their GroupNorm): demo mode says so, naming --image and the size it would run at."""
    path = tmp_path / "small.png"
    Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(path)
    proc = _runner(
        ["--workflow", "one_style", "--image", str(path), "--output", str(tmp_path / "o.png")], tmp_path, 300
    )
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout + proc.stderr
    expected = f"--image: {path} is {size[0]}x{size[1]} pixels, run at {run[0]}x{run[1]}: demo mode's tiny models need"
    assert expected in proc.stderr


def test_runner_reports_every_missing_file_in_one_message(tmp_path, photo):
    out = tmp_path / "out.png"
    args = ["--workflow", "two_styles", "--image", str(photo), "--output", str(out), "--style-image", "nope.png"]
    args += ["--checkpoint", "no_such_model.safetensors", "--fastsam", "no_fastsam.pt", "--lora", "none"]
    args += ["--lora", "no_style.safetensors", "--clip-folder", "no_clip"]
    proc = _runner(args, tmp_path, 300)
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0] == "error: 5 named file(s) not found:", proc.stderr
    body = "\n".join(lines[1:])
    for text in (
        "--style-image: nope.png does not exist",
        "--checkpoint: no_such_model.safetensors is neither a file nor in ",
        "--lora for style 2: no_style.safetensors is neither a file nor in ",
        "--fastsam: no_fastsam.pt is neither a file nor in ",
        "--clip-folder: no_clip is neither a file nor in ",
    ):
        assert text in body, proc.stderr
    assert "style 1" not in body, "'none' is a prompt-only style, not a file"


@pytest.mark.slow
def test_runner_reports_every_missing_workflow_model_in_one_message(tmp_path, photo, tiny):
    """A real run (a --checkpoint that exists) whose workflow names models that are not installed: all of them in
    one message (the FastSAM used to hide the LoRAs, one run each)."""
    args = ["--workflow", "two_styles", "--image", str(photo), "--output", str(tmp_path / "o.png")]
    proc = _runner([*args, "--checkpoint", str(tiny.checkpoint_path)], tmp_path, 600)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "error: 3 model(s) not found:" in proc.stderr, proc.stderr
    for name in ("--fastsam", "FastSAM-s.pt", "--lora for style 1: my_style_2.safetensors", "--lora for style 2: my_"):
        assert name in proc.stderr, proc.stderr


@pytest.mark.slow
def test_runner_says_a_skipped_style_on_stdout_and_keeps_no_settings_in_home(comfy_home, infos, tmp_path, photo):
    """Style 1's mask is all zero (a Solid Mask of 0): the run goes on with style 2 and says so on stdout, in the
    user's numbering. background = model: the runner keeps the whole decoded picture (--keep-original auto). The
    ultralytics settings file goes to the run's temporary folder, not the user's home."""
    wf = _load("diffstyler_two_styles.json")
    first = wt.style_chain(wf)[0]
    solid = wt.add_node(wf, infos, "SolidMask", (0, 0), [0.0, 256, 192])
    wt.connect(wf, solid, 0, first, "mask")
    wt.set_widget(infos, wt.nodes_of_type(wf, "DiffStylerMaskedFusionSampler")[0], "background", "model")
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(wf))
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("YOLO_")}
    env["HOME"] = str(home)
    out = tmp_path / "out.png"
    proc = _runner(["--workflow", str(path), "--image", str(photo), "--output", str(out)], tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "note: style 1 (diffstyler_demo_style_1.safetensors) is skipped: its mask is empty" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1].endswith("(style 1 skipped; demo mode)")
    assert "all-zero" not in proc.stderr and "style 0" not in proc.stdout + proc.stderr
    assert "background model: the whole decoded picture is kept" in proc.stdout
    with Image.open(out) as im:
        prompt = json.loads(im.info["prompt"])
    (region,) = [v for v in prompt.values() if v["class_type"] == "DiffStylerRegionMask"]
    assert region["inputs"]["keep_original"] is False
    assert not [p for p in home.rglob("*")], f"files written into the home folder: {list(home.rglob('*'))}"


@pytest.mark.slow
def test_runner_options_and_errors(comfy_home, tmp_path, photo):
    out = tmp_path / "one.png"
    base = ["--workflow", "one_style", "--image", str(photo), "--output", str(out)]
    opts = [
        "--points",
        '[{"x": 80, "y": 100, "label": 1}]',
        "--prompt",
        "painting of <sss>, a box",
        "--steps",
        "3",
        "--cfg",
        "5",
        "--max-size",
        "128",
        "--imgsz",
        "128",
    ]
    proc = _runner(base + opts, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with Image.open(out) as im:
        assert im.size == (128, 96)
        prompt = json.loads(im.info["prompt"])
    by_type = {v["class_type"]: v["inputs"] for v in prompt.values()}
    # pixel (80, 100) of the 400x300 photo is pixel (25, 32) of the 128x96 picture the run used
    assert by_type["DiffStylerFastSAMMask"]["points"] == '[{"x": 25, "y": 32, "label": 1}]'
    assert by_type["DiffStylerFastSAMMask"]["mode"] == "points"
    assert by_type["DiffStylerInvert"]["steps"] == 3 and by_type["DiffStylerMaskedFusionSampler"]["cfg"] == 5
    texts = {v["inputs"].get("text") for v in prompt.values() if v["class_type"] == "CLIPTextEncode"}
    assert "painting of <sss>, a box" in texts
    # errors: one line on stderr, non-zero status
    missing = _runner(
        ["--workflow", "one_style", "--image", str(tmp_path / "nope.png"), "--output", str(out)], tmp_path, timeout=120
    )
    assert missing.returncode == 2 and "--image" in missing.stderr and "does not exist" in missing.stderr
    outside = _runner(base + ["--points", '[{"x": 500, "y": 10}]'], tmp_path, timeout=300)
    assert outside.returncode == 2, outside.stdout + outside.stderr
    assert "style 1 (points)" in outside.stderr and "outside the 400x300 image" in outside.stderr
    too_many = _runner(base + ["--prompt", "a", "--prompt", "b"], tmp_path, timeout=300)
    assert too_many.returncode == 2 and "--prompt: given 2 times but the workflow has 1 style(s)" in too_many.stderr


# ------------------------------------------------------------------ the runner's step ranges (issue 25)

TIME_WF = str(ROOT / "workflows" / "diffstyler_two_styles_in_time.json")


def test_runner_step_range_flags_go_to_the_style_inputs_with_their_limits(infos):
    """--start/--end repeat per style and stand for the Style LoRA Loader's start_percent/end_percent (0 to 1)."""
    runner = _runner_module()
    args = runner.parse_args(["--workflow", "x", "--image", "x", "--output", "x", "--start", "0", "--start", ".5"])
    assert args.start == [0.0, 0.5] and args.end == []
    for name in ("start_percent", "end_percent"):
        spec = wt.input_spec(infos["DiffStylerStyleLoRA"], name)[1]
        assert (spec["min"], spec["max"]) == (0.0, 1.0), name


@pytest.mark.slow
def test_runner_runs_styles_in_time_with_ranges_from_the_command_line(comfy_home, tmp_path, photo):
    """The two-styles-in-time workflow with each style's range from --start/--end: the ranges reach the Style LoRA
    Loaders of the graph that ran (the prompt the result PNG keeps), in chain order."""
    out = tmp_path / "ranges.png"
    args = ["--workflow", TIME_WF, "--image", str(photo), "--output", str(out), "--steps", "4"]
    proc = _runner([*args, "--start", "0", "--end", "0.25", "--start", "0.25", "--end", "0.75"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with Image.open(out) as im:
        prompt = json.loads(im.info["prompt"])
        saved = json.loads(im.info["workflow"])
    first = wt.style_chain(saved)[0]["id"]
    styles = {k: v["inputs"] for k, v in prompt.items() if v["class_type"] == "DiffStylerStyleLoRA"}
    ranges = [
        (styles[k]["start_percent"], styles[k]["end_percent"]) for k in sorted(styles, key=lambda k: k != str(first))
    ]
    assert ranges == [(0.0, 0.25), (0.25, 0.75)]


BAD_RANGES = [
    (["--end", "1.5"], (0.0, 1.5)),
    (["--start", "-0.1"], (-0.1, 1.0)),
    (["--start", "nan"], (float("nan"), 1.0)),
    (["--start", "0.6", "--end", "0.4"], (0.6, 0.4)),
    (["--start", "0", "--start", "0.9", "--end", "1", "--end", "0.5"], (0.9, 0.5)),
]


@pytest.mark.parametrize("extra, pair", BAD_RANGES, ids=[" ".join(b[0]) for b in BAD_RANGES])
def test_runner_refuses_a_bad_step_range_naming_the_flag(comfy_home, tmp_path, photo, extra, pair):
    """The node's own check, its message with the flags for the inputs, before ComfyUI loads."""
    from comfyui_diffstyler.nodes.style import check_range

    style = 2 if extra.count("--start") == 2 else 1
    with pytest.raises(ValueError) as node_error:
        check_range([None] * (style - 1), *pair)
    message = str(node_error.value).replace("start_percent", "--start").replace("end_percent", "--end")
    proc = _runner(
        ["--workflow", TIME_WF, "--image", str(photo), "--output", str(tmp_path / "o.png"), *extra], tmp_path
    )
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {message}", proc.stderr
    assert proc.stdout == "", "refused before ComfyUI loads"


def test_runner_refuses_more_ranges_than_styles_and_a_range_against_the_workflows_own(tmp_path, photo):
    base = ["--workflow", TIME_WF, "--image", str(photo), "--output", str(tmp_path / "o.png")]
    proc = _runner([*base, "--end", "1", "--end", "1", "--end", "1"], tmp_path, 120)
    assert proc.returncode == 2 and "error: --end: given 3 times but the workflow has 2 style(s)" in proc.stderr
    # style 1 of the workflow ends at 0.4: a --start after that, alone, is refused once the workflow's value is known
    proc = _runner([*base, "--start", "0.5"], tmp_path, 600)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "error: --start: style 1 starts at 0.5 after it ends (0.4): set --start <= --end" in proc.stderr


def test_a_workflow_saved_before_optional_inputs_were_added_still_loads(infos):
    """Nodes gain optional inputs (the Injector's fusion ... qk_blocks): a workflow saved without them keeps loading,
    the frontend giving them their defaults, as the converter does."""
    wf = _load("diffstyler_one_style.json")
    injector = wt.nodes_of_type(wf, "DiffStylerCrossLoRAInjector")[0]
    injector["widgets_values"] = injector["widgets_values"][:4]  # only the required widgets
    assert wt.check_workflow(wf, infos) == []
    inputs = wt.ui_to_api(wf, infos)[str(injector["id"])]["inputs"]
    assert (inputs["fusion"], inputs["content_rows"], inputs["feature_blocks"], inputs["qk_blocks"]) == (
        "noise",
        "per style",
        "auto",
        "auto",
    )
    sampler = wt.nodes_of_type(wf, "DiffStylerMaskedFusionSampler")[0]
    sampler["widgets_values"] = sampler["widgets_values"][:1]  # background is required: still a problem
    assert any("widget values for 3 widgets" in p for p in wt.check_workflow(wf, infos))
