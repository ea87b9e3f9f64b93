"""ComfyUI's own unit tests (``tests-unit``) still pass with this pack installed (issue #8).

What runs: the whole ``tests-unit`` suite (about 300 tests, under 15 s on a 2-core CPU), except the two
``frontend_manager_test`` tests that fetch a release list from api.github.com (they need the internet, which
neither CI nor this machine has; they fail the same way without the pack). ``tests-unit`` needs
``pytest-aiohttp``, ``pytest-asyncio`` and ``websocket-client`` (``tests-unit/requirements.txt``).

How: ComfyUI (about 17 MB of source) is copied into a temporary folder and the pack is symlinked into the copy's
``custom_nodes/comfyui-diffstyler``, so the staged ComfyUI (which other test sessions and servers may be using) is
never changed, and nothing needs restoring when a test fails. The suite then runs twice in a subprocess with
``cwd`` = the copy:

1. with the pack present in ``custom_nodes/`` (``tests-unit`` imports ComfyUI modules directly and loads no custom
   nodes by itself);
2. the same, plus a pytest plugin that, before any test runs, imports ComfyUI with the pack's harness
   (``nodes/harness/host.py``, as the tests, benches and runner do) and loads every custom node of the copy exactly
   as ``main.py`` does (``nodes.init_external_custom_nodes()``: our ``comfy_entrypoint`` runs and its nodes are
   registered, and our model folders are added to ``folder_paths``).

Both runs must pass, with the same tests passing, and the plugin must report that the pack's nodes were registered
(otherwise run 2 would prove nothing).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import IN_CI, PACK_ROOT, require_comfyui

PACK_DIR_NAME = "comfyui-diffstyler"
NEEDS_INTERNET = (
    "tests-unit/app_test/frontend_manager_test.py::test_init_frontend_invalid_version",
    "tests-unit/app_test/frontend_manager_test.py::test_init_frontend_invalid_provider",
)
TEST_DEPS = {"pytest_aiohttp": "pytest-aiohttp", "pytest_asyncio": "pytest-asyncio", "websocket": "websocket-client"}
EXPECTED_NODES = {
    "DiffStylerInvert",
    "DiffStylerStyleLoRA",
    "DiffStylerCrossLoRAInjector",
    "DiffStylerMaskedFusionSampler",
    "DiffStylerFastSAMLoader",
    "DiffStylerFastSAMMask",
}

PLUGIN = '''
"""Loads ComfyUI's custom nodes (this pack among them) the way main.py does, before tests-unit runs."""
import asyncio, json, os, runpy


def pytest_configure(config):
    # ComfyUI set up by the pack's harness (cwd is the ComfyUI copy; the pack is linked into its custom_nodes/):
    # --cpu when there is no GPU, utils.extra_config before nodes, custom nodes allowed
    harness = runpy.run_path(os.path.join("custom_nodes", "comfyui-diffstyler", "nodes", "harness", "host.py"))
    folder_paths = harness["import_comfy"](os.getcwd(), cpu=None, custom_nodes=True)
    import nodes

    asyncio.run(nodes.init_external_custom_nodes())
    report = {
        "custom_nodes_folders": folder_paths.get_folder_paths("custom_nodes"),
        "loaded_modules": sorted(nodes.LOADED_MODULE_DIRS),
        "nodes": sorted(k for k in nodes.NODE_CLASS_MAPPINGS if k.startswith("DiffStyler")),
        "fastsam_folder": "fastsam" in folder_paths.folder_names_and_paths,
    }
    with open(os.environ["DIFFSTYLER_PLUGIN_REPORT"], "w") as f:
        json.dump(report, f)
'''


def _missing_deps() -> list[str]:
    return [pkg for mod, pkg in TEST_DEPS.items() if importlib.util.find_spec(mod) is None]


def _copy_comfyui(src: Path, dst: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", ".pytest_cache", ".git", "user", "output", "temp")
    shutil.copytree(src, dst, ignore=ignore, symlinks=True)
    (dst / "custom_nodes").mkdir(exist_ok=True)
    os.symlink(PACK_ROOT, dst / "custom_nodes" / PACK_DIR_NAME, target_is_directory=True)
    return dst


def _run_suite(comfy: Path, junit: Path, env: dict, extra: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pytest", "tests-unit", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]
    for node_id in NEEDS_INTERNET:
        cmd += ["--deselect", node_id]
    return subprocess.run(cmd + extra, cwd=comfy, env=env, capture_output=True, text=True, timeout=600)


def _outcomes(junit: Path) -> dict[str, str]:
    out = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        out[name] = kinds[0] if kinds else "passed"
    return out


@pytest.mark.slow  # ComfyUI's own unit suite, twice, in subprocesses
def test_comfyui_unit_tests_pass_with_the_pack_installed(tmp_path):
    src = require_comfyui()
    if not (src / "tests-unit").is_dir():
        pytest.fail(f"{src} has no tests-unit folder: stage a full ComfyUI v0.8.0 checkout", pytrace=False)
    missing = _missing_deps()
    if missing:
        msg = f"tests-unit needs {', '.join(missing)}: pip install -r requirements-dev.txt"
        if IN_CI:
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    comfy = _copy_comfyui(src, tmp_path / "ComfyUI")
    assert (comfy / "custom_nodes" / PACK_DIR_NAME / "__init__.py").is_file()
    plugin_dir = tmp_path / "plugin"
    plugin_dir.mkdir()
    (plugin_dir / "diffstyler_loaded.py").write_text(textwrap.dedent(PLUGIN))
    report = tmp_path / "plugin_report.json"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COMFYUI_PATH")}
    env["YOLO_CONFIG_DIR"] = str(tmp_path / "yolo")  # ultralytics writes a settings file if it gets imported

    present = _run_suite(comfy, tmp_path / "present.xml", env, [])
    assert present.returncode == 0, "tests-unit failed with the pack in custom_nodes/:\n" + present.stdout[-6000:]

    loaded_env = {**env, "PYTHONPATH": str(plugin_dir), "DIFFSTYLER_PLUGIN_REPORT": str(report)}
    loaded = _run_suite(comfy, tmp_path / "loaded.xml", loaded_env, ["-p", "diffstyler_loaded"])
    assert loaded.returncode == 0, "tests-unit failed after loading the pack:\n" + loaded.stdout[-6000:]

    info = json.loads(report.read_text())
    assert info["custom_nodes_folders"] == [str(comfy / "custom_nodes")]
    assert PACK_DIR_NAME in info["loaded_modules"], info
    assert EXPECTED_NODES <= set(info["nodes"]), info
    assert info["fastsam_folder"]

    a, b = _outcomes(tmp_path / "present.xml"), _outcomes(tmp_path / "loaded.xml")
    assert len(a) > 250, f"only {len(a)} tests ran"
    assert a == b, {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}
    assert all(v in ("passed", "skipped") for v in a.values())
    print(
        f"\ntests-unit with the pack installed: {sum(v == 'passed' for v in a.values())} passed, "
        f"{sum(v == 'skipped' for v in a.values())} skipped, {len(NEEDS_INTERNET)} deselected (need the internet)"
    )
