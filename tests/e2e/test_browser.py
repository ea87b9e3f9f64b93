"""The shipped workflows and the FastSAM point/box editor in a real browser (issue #6).

A ``main.py --cpu`` server (the ``comfy_server`` fixture) gets the tiny checkpoint, random LoRAs, a random
FastSAM that detects (tests/support/fastsam_fixtures.py) and a content picture. tests/e2e/browser/run.mjs
drives Debian's headless Chromium through playwright-core (``npm ci``; never a downloaded browser): it loads
every shipped workflow with ``app.loadGraphData``, clicks the FastSAM Mask node's canvas with the mouse,
queues the one-style workflow and waits for the mask overlay and the output image. This test asserts on the
JSON it writes; the screenshot stays in test-artifacts/.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import dst_core
import fastsam_fixtures as ff
import pytest
import safetensors.torch
import workflow_tools as wt
from PIL import Image

pytestmark = [pytest.mark.browser, pytest.mark.server, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "e2e" / "browser" / "run.mjs"
ARTIFACTS = ROOT / "test-artifacts"
SCREENSHOT = ARTIFACTS / "fastsam_editor.png"
CHROMIUM = Path(os.environ.get("DIFFSTYLER_CHROMIUM", "/usr/bin/chromium"))
WORKFLOWS = ("diffstyler_one_style", "diffstyler_two_styles", "diffstyler_train_and_stylize")
CHECKPOINT = "diffstyler_tiny_sd15.safetensors"
LORAS = ("browser_style_1.safetensors", "browser_style_2.safetensors")
FASTSAM = "browser_fastsam.pt"
CONTENT = (192, 256)  # height, width
# image pixels to click: a positive point on the red rectangle of ff.scene, a negative one on the yellow one
CLICKS = [{"x": 70, "y": 62, "negative": False}, {"x": 190, "y": 40, "negative": True}]
OURS = ("diffstyler", "fastsam_editor")


@pytest.fixture(scope="session", autouse=True)
def yolo_config(tmp_path_factory):
    """Session scope, so that a server this module starts inherits it: ultralytics' settings file stays out of ~."""
    mp = pytest.MonkeyPatch()
    mp.setenv("YOLO_CONFIG_DIR", str(tmp_path_factory.mktemp("yolo_config_browser")))
    yield
    mp.undo()


def _require(what: str, ok: bool, hint: str) -> None:
    if ok:
        return
    msg = f"{what} is needed for the browser test: {hint}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="module")
def node_bin() -> str:
    node = shutil.which("node")
    _require("node", node is not None, "install Node.js 20")
    _require(
        "chromium", CHROMIUM.is_file(), "apt-get install chromium (Debian's package; never npx playwright install)"
    )
    _require("playwright-core", (ROOT / "node_modules" / "playwright-core").is_dir(), "run `npm ci` in the repo root")
    return node


@pytest.fixture(scope="module")
def served(comfy_server, tiny):
    """The server's base dir with the tiny models and pictures, and its /object_info."""
    base = comfy_server.base
    shutil.copyfile(tiny.checkpoint_path, base / "models" / "checkpoints" / CHECKPOINT)
    for i, name in enumerate(LORAS):
        lora = dst_core.random_lora(tiny.model, seed=80 + i)
        safetensors.torch.save_file(lora, str(base / "models" / "loras" / name))
    ff.save_fastsam(base / "models" / "fastsam" / FASTSAM, seed=0, class_bias=2.0)
    Image.fromarray(ff.scene(*CONTENT, seed=0)).save(base / "input" / "content.png")
    Image.fromarray(ff.scene(64, 64, seed=1)).save(base / "input" / "style.png")
    # the files the shipped workflows name (placeholders), as a user has them: newer frontends (v0.33's) flag a node
    # whose file is not on the server as soon as the workflow loads
    copies = {
        "CheckpointLoaderSimple": (base / "models" / "checkpoints" / CHECKPOINT, base / "models" / "checkpoints"),
        "DiffStylerStyleLoRA": (base / "models" / "loras" / LORAS[0], base / "models" / "loras"),
        "DiffStylerFastSAMLoader": (base / "models" / "fastsam" / FASTSAM, base / "models" / "fastsam"),
        "LoadImage": (base / "input" / "style.png", base / "input"),
    }
    for name in WORKFLOWS:
        for n in json.loads((ROOT / "workflows" / f"{name}.json").read_text(encoding="utf-8"))["nodes"]:
            value = (n.get("widgets_values") or [""])[0]
            if n["type"] in copies and Path(str(value)).suffix:  # a file name, not "None"
                src, folder = copies[n["type"]]
                if not (folder / value).exists():
                    shutil.copyfile(src, folder / value)
    return comfy_server, comfy_server.get("/object_info")


def queue_workflow(infos: dict) -> dict:
    """The one-style workflow on the tiny models, 4 steps, FastSAM at 256, prompts cleared for the clicks."""
    wf = json.loads((ROOT / "workflows" / "diffstyler_one_style.json").read_text(encoding="utf-8"))
    wf = wt.use_tiny_models(wf, infos, CHECKPOINT, list(LORAS), FASTSAM)
    for n in wt.nodes_of_type(wf, "LoadImage"):
        wt.set_widget(infos, n, "image", "content.png")
    for n in wt.nodes_of_type(wf, "DiffStylerInvert"):
        wt.set_widget(infos, n, "steps", 4)
        wt.set_widget(infos, n, "inversion_grid", "sampling")  # the sampler's own steps: fast on the tiny model
    for n in wt.nodes_of_type(wf, "DiffStylerFastSAMMask"):
        wt.set_widget(infos, n, "imgsz", 256)
        wt.set_widget(infos, n, "mode", "everything")
        wt.set_widget(infos, n, "points", "")
    return wf


@pytest.fixture(scope="module")
def browser_run(node_bin, served, tmp_path_factory):
    server, infos = served
    work = tmp_path_factory.mktemp("browser")
    queued = work / "queue.json"
    queued.write_text(json.dumps(queue_workflow(infos)), encoding="utf-8")
    jobs = {
        "load": [{"name": n, "path": str(ROOT / "workflows" / f"{n}.json")} for n in WORKFLOWS],
        "queue": {"path": str(queued), "click": CLICKS},
    }
    (work / "jobs.json").write_text(json.dumps(jobs), encoding="utf-8")
    ARTIFACTS.mkdir(exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)
    out = work / "result.json"
    cmd = [
        node_bin,
        str(SCRIPT),
        "--url",
        server.url,
        "--jobs",
        str(work / "jobs.json"),
        "--out",
        str(out),
        "--screenshot",
        str(SCREENSHOT),
        "--user-data-dir",
        str(work / "profile"),
        "--chromium",
        str(CHROMIUM),
    ]
    # Chromium keeps crash reports and caches under XDG folders: a temporary home for them, not ~/.config
    env = dict(os.environ, XDG_CONFIG_HOME=str(work / "xdg_config"), XDG_CACHE_HOME=str(work / "xdg_cache"))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.is_file(), f"run.mjs wrote no result (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    result = json.loads(out.read_text(encoding="utf-8"))
    (ARTIFACTS / "browser_result.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    assert "error" not in result, (
        f"{result['error']}\ndiagnostics: {result.get('diagnostics')}\n" + (server.log.read_text()[-3000:])
    )
    print(f"\nbrowser steps (ms): {[(s['name'], s['ms']) for s in result['steps']]}")
    return result, infos, server


def test_workflows_load_without_missing_nodes(browser_run):
    result, infos, _ = browser_run
    for name in WORKFLOWS:
        loaded = result["workflows"][name]
        wf = json.loads((ROOT / "workflows" / f"{name}.json").read_text(encoding="utf-8"))
        assert loaded["missing"] == [], f"{name}: node types unknown to the frontend: {loaded['missing']}"
        assert not any("missing" in d.lower() for d in loaded["dialogs"]), loaded["dialogs"]
        # node ids as text: newer frontends (v0.33's 1.48) hand them out as strings, older ones as numbers
        assert sorted((str(n["id"]), n["type"]) for n in loaded["nodes"]) == sorted(
            (str(n["id"]), n["type"]) for n in wf["nodes"]
        )
        assert not [n for n in loaded["nodes"] if n["hasErrors"]]
        # the frontend kept every widget value where the file put it ...
        for n in wf["nodes"]:
            assert loaded["widgets"][str(n["id"])] == n["widgets_values"], f"{name} node {n['id']} ({n['type']})"
        # ... and its API prompt is exactly what the headless converter makes of the file
        strip = lambda p: {k: (v["class_type"], v["inputs"]) for k, v in p.items()}  # noqa: E731
        assert strip(loaded["prompt"]) == strip(wt.ui_to_api(wf, infos)), name


def test_no_errors_from_our_extension(browser_run):
    result, _, _ = browser_run
    ours = [m for m in result["console"] if any(k in (m["text"] + m["url"]).lower() for k in OURS)]
    ours += [e for e in result["pageErrors"] if any(k in (e["message"] + e["stack"]).lower() for k in OURS)]
    ours += [r for r in result["failedRequests"] if any(k in r["url"].lower() for k in OURS)]
    assert not ours, json.dumps(ours, indent=1)


def test_clicks_on_the_editor_add_points(browser_run):
    result, _, _ = browser_run
    run = result["run"]
    assert run["before"]["hasEditor"] and run["before"]["points"] == "" and run["before"]["mode"] == "everything"
    first, second = run["clicks"]
    assert json.loads(first["points"]) == [{"x": 70, "y": 62, "label": 1}]
    assert first["mode"] == "points", "a point switches the mode from everything to points"
    assert json.loads(second["points"]) == [{"x": 70, "y": 62, "label": 1}, {"x": 190, "y": 40, "label": 0}]


def test_queued_run_shows_mask_and_output(browser_run):
    result, _, server = browser_run
    run = result["run"]
    status = run["history"]["status"]
    assert status["status_str"] == "success", json.dumps(status, indent=1)
    prompt = run["history"]["prompt"][2]
    (mask_id,) = [k for k, v in prompt.items() if v["class_type"] == "DiffStylerFastSAMMask"]
    assert json.loads(prompt[mask_id]["inputs"]["points"]) == [
        {"x": 70, "y": 62, "label": 1},
        {"x": 190, "y": 40, "label": 0},
    ], "the queued prompt carries the clicked points"
    after = run["after"]
    assert after["lastRun"]["sourceUrl"] and after["lastRun"]["previewUrl"]
    assert after["nodeImages"] == 0, "the run is shown once, in the editor, not again as the node's image preview"
    assert "diffstyler_preview" in after["nodeOutputKeys"], after["nodeOutputKeys"]
    assert after["sources"]["overlayState"] == "loaded" and after["sources"]["baseState"] == "loaded"
    assert after["rect"]["imageWidth"] == CONTENT[1] and after["rect"]["imageHeight"] == CONTENT[0]
    assert run["canvasSpread"] > 5, "the editor canvas shows a picture"
    shown = run["saveImages"]
    assert shown and shown[0]["width"] == CONTENT[1] and shown[0]["height"] == CONTENT[0]
    outputs = run["history"]["outputs"]
    saved = [img for ui in outputs.values() for img in ui.get("images", []) if img.get("type") == "output"]
    assert saved and (server.base / "output" / saved[0]["subfolder"] / saved[0]["filename"]).is_file()
    with Image.open(SCREENSHOT) as im:
        assert im.width > 300 and im.height > 500
