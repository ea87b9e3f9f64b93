"""The shipped workflows and the FastSAM point/box editor in a real browser, on every tested frontend (#6, #20).

Frontends: the one the tested ComfyUI serves by default (v0.8.0: 1.35.9, the pin in ComfyUI's requirements.txt)
and each pin in requirements-frontends.txt (1.48.7, 1.58.x). Those are wheels from the package index; they
conflict with ComfyUI's own pin, so each goes into its own folder (``pip install --no-deps --target``, under
``.frontends/`` or ``$DIFFSTYLER_FRONTENDS_DIR``; installed here when missing) and is served with
``main.py --front-end-root <its static folder>``.

Per frontend, a ``main.py --cpu`` server gets the tiny checkpoint, random LoRAs, a random FastSAM that detects
(tests/support/fastsam_fixtures.py) and a content picture. tests/e2e/browser/run.mjs drives Debian's headless
Chromium through playwright-core (``npm ci``; never a downloaded browser) in the classic renderer and in
Nodes 2.0 (``Comfy.VueNodes.Enabled``): it loads every shipped workflow with ``app.loadGraphData``, checks the
template browser lists them (classic), drives the FastSAM Mask editor with the mouse and keyboard, queues the
one-style workflow and waits for the output and the mask preview. These tests assert on the JSON it writes;
screenshots stay in test-artifacts/browser/ (``<frontend>_<renderer>*.png``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import dst_core
import fastsam_fixtures as ff
import pytest
import safetensors.torch
from comfyui_diffstyler.nodes.harness import server as cs
from comfyui_diffstyler.nodes.harness import workflow as wt
from conftest import require_comfyui
from PIL import Image

pytestmark = [pytest.mark.browser, pytest.mark.server, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "e2e" / "browser" / "run.mjs"
ARTIFACTS = ROOT / "test-artifacts"
SHOTS = ARTIFACTS / "browser"
CHROMIUM = Path(os.environ.get("DIFFSTYLER_CHROMIUM", "/usr/bin/chromium"))
FRONTEND_PINS = ROOT / "requirements-frontends.txt"
FRONTENDS_DIR = Path(os.environ.get("DIFFSTYLER_FRONTENDS_DIR", ROOT / ".frontends"))
RENDERERS = ("classic", "vue")
WORKFLOWS = tuple(sorted(p.stem for p in (ROOT / "workflows").glob("*.json")))
PACK_MODULE = "comfyui-diffstyler"  # the folder name under custom_nodes/ (nodes/harness/server.py)
CHECKPOINT = "diffstyler_tiny_sd15.safetensors"
LORAS = ("browser_style_1.safetensors", "browser_style_2.safetensors")
FASTSAM = "browser_fastsam.pt"
CONTENT = (192, 256)  # height, width
# image pixels: a positive point on the red rectangle of ff.scene, a negative one on the yellow one, a box
# dragged corner to corner (pixel centres), and a right-click on the negative point that removes it
CLICKS = [{"x": 70, "y": 62, "negative": False}, {"x": 190, "y": 40, "negative": True}]
BOX = [30, 100, 150, 170]
REMOVE = {"x": 190, "y": 40}
TYPED = '[{"x": 12, "y": 150, "label": 1}, {"x": 70, "y": 62, "label": 0}]'  # typed into the points text box
POSITIVE = {"x": 70, "y": 62, "label": 1}
NEGATIVE = {"x": 190, "y": 40, "label": 0}
OURS = re.compile(r"/extensions/comfyui-diffstyler/|diffstyler", re.I)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _require(what: str, ok: bool, hint: str) -> None:
    if ok:
        return
    msg = f"{what} is needed for the browser test: {hint}"
    if _in_ci():
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


def pinned_frontends() -> list[str]:
    """Versions pinned in requirements-frontends.txt (``comfyui-frontend-package==X``), in file order."""
    pins = []
    for line in FRONTEND_PINS.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            m = re.fullmatch(r"comfyui-frontend-package==([0-9][0-9A-Za-z.]*)", line)
            assert m, f"{FRONTEND_PINS.name}: expected 'comfyui-frontend-package==X.Y.Z', got {line!r}"
            pins.append(m.group(1))
    return pins


def default_frontend(comfy_root: Path) -> str:
    """The frontend version the ComfyUI at comfy_root pins (and so serves without --front-end-root)."""
    text = (comfy_root / "requirements.txt").read_text(encoding="utf-8")
    m = re.search(r"^comfyui-frontend-package==(\S+)", text, re.M)
    assert m, f"{comfy_root / 'requirements.txt'} pins no comfyui-frontend-package"
    return m.group(1)


@dataclass(frozen=True)
class Frontend:
    label: str  # the version, as in the screenshots' names
    static: Path | None  # --front-end-root, or None for ComfyUI's default frontend


def install_frontend(version: str) -> Path:
    """The static folder of comfyui-frontend-package==version in its own folder; pip-installs it when missing."""
    target = FRONTENDS_DIR / version
    static = target / "comfyui_frontend_package" / "static"
    if not (static / "index.html").is_file() or not list(target.glob(f"comfyui_frontend_package-{version}.dist-info")):
        shutil.rmtree(target, ignore_errors=True)
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps"]
        cmd += ["--target", str(target), f"comfyui-frontend-package=={version}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        _require(
            f"comfyui-frontend-package=={version}",
            proc.returncode == 0 and (static / "index.html").is_file(),
            f"`{' '.join(cmd)}` failed:\n{proc.stderr[-2000:]}",
        )
    return static


@pytest.fixture(scope="session", autouse=True)
def yolo_config(tmp_path_factory):
    """Session scope, so that a server this module starts inherits it: ultralytics' settings file stays out of ~."""
    mp = pytest.MonkeyPatch()
    mp.setenv("YOLO_CONFIG_DIR", str(tmp_path_factory.mktemp("yolo_config_browser")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def node_bin() -> str:
    node = shutil.which("node")
    _require("node", node is not None, "install Node.js 20")
    _require(
        "chromium", CHROMIUM.is_file(), "apt-get install chromium (Debian's package; never npx playwright install)"
    )
    _require("playwright-core", (ROOT / "node_modules" / "playwright-core").is_dir(), "run `npm ci` in the repo root")
    return node


def _frontend_params() -> list[str]:
    return ["default", *pinned_frontends()]


@pytest.fixture(scope="module", params=_frontend_params())
def frontend(request) -> Frontend:
    comfy_root = require_comfyui()
    if request.param == "default":
        return Frontend(default_frontend(comfy_root), None)
    return Frontend(request.param, install_frontend(request.param))


def _prepare_base(base: Path, tiny) -> None:
    """The tiny models and the pictures the workflows use, in a server's base directory."""
    for d in ("models/checkpoints", "models/loras", "models/fastsam", "input"):
        (base / d).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tiny.checkpoint_path, base / "models" / "checkpoints" / CHECKPOINT)
    for i, name in enumerate(LORAS):
        lora = dst_core.random_lora(tiny.model, seed=80 + i)
        safetensors.torch.save_file(lora, str(base / "models" / "loras" / name))
    ff.save_fastsam(base / "models" / "fastsam" / FASTSAM, seed=0, class_bias=2.0)
    Image.fromarray(ff.scene(*CONTENT, seed=0)).save(base / "input" / "content.png")
    Image.fromarray(ff.scene(64, 64, seed=1)).save(base / "input" / "style.png")
    # the model files the shipped workflows name (placeholders), as a user has them: newer frontends (v0.33's) flag
    # a node whose file is not on the server as soon as the workflow loads
    copies = {
        "CheckpointLoaderSimple": (base / "models" / "checkpoints" / CHECKPOINT, base / "models" / "checkpoints"),
        "DiffStylerStyleLoRA": (base / "models" / "loras" / LORAS[0], base / "models" / "loras"),
        "DiffStylerFastSAMLoader": (base / "models" / "fastsam" / FASTSAM, base / "models" / "fastsam"),
    }
    for name in WORKFLOWS:
        for n in json.loads((ROOT / "workflows" / f"{name}.json").read_text(encoding="utf-8"))["nodes"]:
            value = (n.get("widgets_values") or [""])[0]
            if n["type"] in copies and Path(str(value)).suffix and copies[n["type"]][0].is_file():
                src, folder = copies[n["type"]]
                if not (folder / value).exists():
                    shutil.copyfile(src, folder / value)
    # the pictures the shipped workflows name (the users' own; a missing one is a 404 in the console)
    for name in WORKFLOWS:
        wf = json.loads((ROOT / "workflows" / f"{name}.json").read_text(encoding="utf-8"))
        for n in wt.nodes_of_type(wf, "LoadImage"):
            picture = base / "input" / n["widgets_values"][0]
            if not picture.is_file():
                Image.fromarray(ff.scene(96, 128, seed=2)).save(picture)


@pytest.fixture(scope="module")
def served(request, frontend, tiny, tmp_path_factory):
    """A server on `frontend` with the tiny models and pictures, and its /object_info."""
    if frontend.static is None:
        server = request.getfixturevalue("comfy_server")
        _prepare_base(server.base, tiny)
        yield server, server.get("/object_info")
        return
    base = tmp_path_factory.mktemp(f"server_fe{frontend.label}")
    _prepare_base(base, tiny)
    extra = ("--front-end-root", str(frontend.static))
    server = cs.start(require_comfyui(), base, extra_args=extra)
    try:
        yield server, server.get("/object_info")
    finally:
        server.stop()


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
        wt.set_widget(infos, n, "boxes", "")
    return wf


@pytest.fixture(scope="module")
def browser_run(node_bin, frontend, served, tmp_path_factory):
    server, infos = served
    work = tmp_path_factory.mktemp(f"browser_fe{frontend.label}")
    queued = work / "queue.json"
    queued.write_text(json.dumps(queue_workflow(infos)), encoding="utf-8")
    jobs = {
        "renderers": list(RENDERERS),
        "load": [{"name": n, "path": str(ROOT / "workflows" / f"{n}.json")} for n in WORKFLOWS],
        "templates": {"module": PACK_MODULE, "names": list(WORKFLOWS)},
        "queue": {"path": str(queued), "click": CLICKS, "box": BOX, "remove": REMOVE, "typed": TYPED},
    }
    (work / "jobs.json").write_text(json.dumps(jobs), encoding="utf-8")
    SHOTS.mkdir(parents=True, exist_ok=True)
    for old in SHOTS.glob(f"{frontend.label}_*.png"):
        old.unlink()
    out = work / "result.json"
    cmd = [node_bin, str(SCRIPT), "--url", server.url, "--jobs", str(work / "jobs.json"), "--out", str(out)]
    cmd += ["--screenshots", str(SHOTS), "--label", frontend.label, "--user-data-dir", str(work / "profile")]
    cmd += ["--chromium", str(CHROMIUM)]
    # Chromium keeps crash reports and caches under XDG folders: a temporary home for them, not ~/.config
    env = dict(os.environ, XDG_CONFIG_HOME=str(work / "xdg_config"), XDG_CACHE_HOME=str(work / "xdg_cache"))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.is_file(), f"run.mjs wrote no result (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    result = json.loads(out.read_text(encoding="utf-8"))
    (SHOTS / f"{frontend.label}_result.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    assert "error" not in result, f"{frontend.label}: {result['error']}\n" + server.log.read_text()[-3000:]
    print(f"\nbrowser steps on {frontend.label} (ms): {[(s['name'], s['ms']) for s in result['steps']]}")
    return result, infos, server, frontend


def test_the_frontend_under_test_is_served(browser_run):
    result, _, _, frontend = browser_run
    for renderer in RENDERERS:
        got = result["renderers"][renderer]
        assert got["frontendVersion"] == frontend.label, (renderer, got)
        assert got["vueNodes"] is (renderer == "vue"), f"{frontend.label} {renderer}: Comfy.VueNodes.Enabled"
        assert got["alwaysRepeatWarnings"] is True, "LiteGraph.alwaysRepeatWarnings was not set"


def _missing_file_widgets(infos: dict, node: dict) -> list[str]:
    """Combo widgets of a node whose value is not among the server's options (a model file it lacks)."""
    info = infos.get(node["type"])
    if info is None:
        return []
    values = node.get("widgets_values") or []
    missing = []
    for widget, value in zip(wt.frontend_widgets(info), values if isinstance(values, list) else []):
        spec = {**info["input"].get("required", {}), **info["input"].get("optional", {})}.get(widget.name)
        options = spec[0] if spec and isinstance(spec[0], list) else (spec[1] or {}).get("options") if spec else None
        if isinstance(options, list) and isinstance(value, str) and value not in options:
            missing.append(f"{widget.name}={value}")
    return missing


@pytest.mark.parametrize("renderer", RENDERERS)
def test_workflows_load_without_missing_nodes(browser_run, renderer):
    result, infos, _, frontend = browser_run
    for name in WORKFLOWS:
        loaded = result["renderers"][renderer]["workflows"][name]
        wf = json.loads((ROOT / "workflows" / f"{name}.json").read_text(encoding="utf-8"))
        where = f"{frontend.label} {renderer} {name}"
        assert loaded["missing"] == [], f"{where}: node types unknown to the frontend: {loaded['missing']}"
        assert not any("missing" in d.lower() for d in loaded["dialogs"]), loaded["dialogs"]
        # node ids are numbers up to 1.4x and strings in 1.58
        assert sorted((str(n["id"]), n["type"]) for n in loaded["nodes"]) == sorted(
            (str(n["id"]), n["type"]) for n in wf["nodes"]
        )
        # newer frontends flag loaders whose file the server lacks (the shipped workflows name the users' files)
        by_id = {str(n["id"]): n for n in wf["nodes"]}
        flagged = {str(n["id"]): _missing_file_widgets(infos, by_id[str(n["id"])]) for n in loaded["nodes"]}
        wrongly = {i: by_id[i]["type"] for i, n in zip(flagged, loaded["nodes"]) if n["hasErrors"] and not flagged[i]}
        assert not wrongly, f"{where}: nodes flagged although the server has their files: {wrongly}"
        # the frontend kept every widget value where the file put it (1.58 omits widgets_values of nodes
        # without widgets), and gave optional inputs the file predates their defaults ...
        for n in wf["nodes"]:
            kept = loaded["widgets"][str(n["id"])]
            saved = n.get("widgets_values") or []
            if n["type"] in infos and len(saved) < len(wt.frontend_widgets(infos[n["type"]])):
                saved = wt.widget_values(n, infos[n["type"]])
            assert (kept or []) == saved, f"{where} node {n['id']} ({n['type']})"
        # ... and its API prompt is exactly what the headless converter makes of the file
        strip = lambda p: {str(k): (v["class_type"], v["inputs"]) for k, v in p.items()}  # noqa: E731
        assert strip(loaded["prompt"]) == strip(wt.ui_to_api(wf, infos)), where


def test_template_browser_lists_the_shipped_workflows(browser_run):
    result, _, _, frontend = browser_run
    templates = result["renderers"][RENDERERS[0]]["templates"]
    assert sorted(templates["served"].get(PACK_MODULE, [])) == sorted(WORKFLOWS), templates["served"]
    assert sorted(templates["shown"]) == sorted(WORKFLOWS), (
        f"{frontend.label}: the template browser (category {templates['picked']!r}) shows {templates['shown']}:\n"
        + templates["text"]
    )


# Console errors that are no fault of the pack: each is a gap between this test's setup (a fresh user folder,
# no internet) or the server (ComfyUI v0.8.0 and its comfyui-workflow-templates) and a frontend made for a
# newer server. "Failed to load resource" messages are matched on the resource's URL, others on their text.
# Anything else in the console fails the test.
KNOWN_FAILED_RESOURCES = (
    (r"^https?://(?!127\.0\.0\.1[:/])", "an outside host (release notes, model sizes): the test has no internet"),
    (r"/user\.css$|/api/userdata/(user\.css|comfy\.templates\.json)$", "a fresh user folder has no such file"),
    (r"/api/userdata\?dir=(workflows|subgraphs)&", "a fresh user folder has no such folder"),
    (r"/favicon\.ico$", "ComfyUI serves no favicon.ico"),
    (r"/api/jobs\?status=", "frontends >= 1.4x ask v0.8.0's jobs API for statuses it does not know (400)"),
    (r"/templates/index_logo\.json$", "v0.8.0's comfyui-workflow-templates predates index_logo.json"),
)
KNOWN_MESSAGES = (
    (r"^\[Jobs API\] (Error fetching jobs: JobsApiError: )?Failed to fetch jobs: 400", "the jobs API gap above"),
    (r"^ComfyApp graph accessed before initialization$", "frontend 1.48.7 logs this at every start-up"),
)


def unexplained_console_errors(console: list[dict]) -> list[dict]:
    """Console errors not in KNOWN_FAILED_RESOURCES / KNOWN_MESSAGES."""
    left = []
    for m in console:
        if m["type"] not in ("error", "assert"):
            continue
        if m["text"].startswith("Failed to load resource"):
            known = any(re.search(pattern, m["url"]) for pattern, _ in KNOWN_FAILED_RESOURCES)
        else:
            known = any(re.search(pattern, m["text"]) for pattern, _ in KNOWN_MESSAGES)
        if not known:
            left.append(m)
    return left


def test_no_console_errors_and_no_deprecations_from_the_pack(browser_run):
    result, _, _, frontend = browser_run
    errors = unexplained_console_errors(result["console"])
    errors += [{"pageError": e["message"], "stack": e["stack"][:600]} for e in result["pageErrors"]]
    errors += [r for r in result["failedRequests"] if OURS.search(r["url"])]
    assert not errors, f"{frontend.label}: console errors:\n" + json.dumps(errors, indent=1)[:6000]
    ours = [d for d in result["deprecations"] if "/extensions/comfyui-diffstyler/" in d["stack"]]
    assert not ours, f"{frontend.label}: deprecated frontend API used by the pack:\n" + json.dumps(ours, indent=1)
    ours = [m for m in result["console"] if OURS.search(m["text"] + m["url"])]
    assert not ours, json.dumps(ours, indent=1)


def _points(text: str) -> list[dict]:
    return json.loads(text) if text.strip() else []


@pytest.mark.parametrize("renderer", RENDERERS)
def test_the_editor_edits_the_prompts(browser_run, renderer):
    result, _, _, frontend = browser_run
    run = result["renderers"][renderer]["run"]
    where = f"{frontend.label} {renderer}"
    before = run["before"]
    assert before["hasEditor"] and before["points"] == "" and before["mode"] == "everything", before
    assert before["upstreamUrl"] and "content.png" in before["upstreamUrl"], "the connected LoadImage's file"
    assert before["sources"]["base"] == before["upstreamUrl"] and before["sources"]["baseState"] == "loaded"
    assert before["rect"]["imageWidth"] == CONTENT[1] and before["rect"]["imageHeight"] == CONTENT[0]
    steps = {a["action"]: a for a in run["actions"]}
    assert [a["action"] for a in run["actions"]] == [
        *("click", "shift-click", "drag", "right-click", "undo", "redo", "typed", "typed back")
    ]
    for a in run["actions"][:4]:
        assert "diffstyler-fastsam-canvas" in a["hit"], f"{where}: the mouse reached {a['hit']}, not the editor"
    assert _points(steps["click"]["points"]) == [POSITIVE] and steps["click"]["mode"] == "points", where
    assert _points(steps["shift-click"]["points"]) == [POSITIVE, NEGATIVE], where
    (box,) = json.loads(steps["drag"]["boxes"])
    assert all(abs(got - want) <= 1 for got, want in zip(box, BOX)), (where, box, BOX)
    assert steps["drag"]["mode"] == "boxes", "a box selects mode boxes"
    assert _points(steps["right-click"]["points"]) == [POSITIVE], f"{where}: right-click removes the point"
    assert json.loads(steps["right-click"]["boxes"]) == [box]
    assert _points(steps["undo"]["points"]) == [POSITIVE, NEGATIVE], f"{where}: Ctrl+Z brings the point back"
    assert json.loads(steps["undo"]["boxes"]) == [box] and steps["undo"]["hasEditor"]
    assert _points(steps["redo"]["points"]) == [POSITIVE], f"{where}: Ctrl+Y removes it again"
    assert steps["typed"]["points"] == TYPED and steps["typed"]["prompts"]["points"] == json.loads(TYPED), where
    assert _points(steps["typed back"]["points"]) == [POSITIVE] and steps["typed back"]["prompts"]["errors"] == []
    for a in run["actions"]:
        # the editor draws what the text says, and the text boxes on the node show the same text
        assert a["prompts"]["points"] == _points(a["points"]) and a["prompts"]["errors"] == [], (where, a["prompts"])
        assert a["shown"] == {"points": a["points"], "boxes": a["boxes"]}, (where, a["action"], a["shown"])


@pytest.mark.parametrize("renderer", RENDERERS)
def test_queued_run_shows_mask_and_output(browser_run, renderer):
    result, _, server, frontend = browser_run
    run = result["renderers"][renderer]["run"]
    where = f"{frontend.label} {renderer}"
    status = run["history"]["status"]
    assert status["status_str"] == "success", json.dumps(status, indent=1)
    prompt = run["history"]["prompt"][2]
    (mask_id,) = [k for k, v in prompt.items() if v["class_type"] == "DiffStylerFastSAMMask"]
    inputs = prompt[mask_id]["inputs"]
    assert json.loads(inputs["points"]) == [POSITIVE], f"{where}: the queued prompt carries the edited points"
    assert json.loads(inputs["boxes"]) == json.loads(run["actions"][-1]["boxes"]) and inputs["mode"] == "boxes"
    after = run["after"]
    assert after["lastRun"]["sourceUrl"] and after["lastRun"]["previewUrl"], where
    assert after["nodeImages"] == 0, "the run is shown once, in the editor, not again as the node's image preview"
    assert "diffstyler_preview" in after["nodeOutputKeys"], after["nodeOutputKeys"]
    assert after["sources"]["overlayState"] == "loaded" and after["sources"]["baseState"] == "loaded"
    assert after["rect"]["imageWidth"] == CONTENT[1] and after["rect"]["imageHeight"] == CONTENT[0]
    assert run["canvasSpread"] > 5, "the editor canvas shows a picture"
    shown = run["saveImages"]
    assert shown and shown[0]["width"] == CONTENT[1] and shown[0]["height"] == CONTENT[0], (where, shown)
    outputs = run["history"]["outputs"]
    saved = [img for ui in outputs.values() for img in ui.get("images", []) if img.get("type") == "output"]
    assert saved and (server.base / "output" / saved[0]["subfolder"] / saved[0]["filename"]).is_file()
    with Image.open(run["screenshot"]) as im:
        assert im.width > 250 and im.height > 400, (where, im.size)
