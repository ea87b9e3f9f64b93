"""Packaging rules that need no ComfyUI: deps in sync, no torch, no comfy import at pack import time."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]


def _names(reqs):
    return [re.split(r"[<>=!~ ;\[]", r.strip(), maxsplit=1)[0].lower() for r in reqs]


def test_requirements_equal_project_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = [ln.strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()]
    reqs = [ln for ln in lines if ln and not ln.startswith("#")]
    assert sorted(reqs) == sorted(project["dependencies"])
    assert "torch" not in _names(reqs) and "torchvision" not in _names(reqs)
    assert {"ultralytics", "safetensors", "numpy", "pillow"} <= set(_names(reqs))


def test_comfy_metadata():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    comfy = data["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] and "Icon" in comfy
    assert comfy["requires-comfyui"].startswith(">=0.8.0")


def test_tested_range_stated_alike():
    """pyproject's requires-comfyui, the README and the hosts .ci/run tests agree; the LICENSE is pyproject's."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    low, high = re.fullmatch(r">=([\d.]+),<=([\d.]+)", data["tool"]["comfy"]["requires-comfyui"]).groups()
    readme = (ROOT / "README.md").read_text()
    assert f"tested on **v{low} .. v{high}**" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert f'stage "$COMFY8" v{low} ' in ci and f'stage "$COMFY33" v{high} ' in ci
    assert data["project"]["license"] == {"text": "MIT"}
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")


def test_pack_import_needs_no_comfy():
    assert "comfyui_diffstyler" in sys.modules
    pack = sys.modules["comfyui_diffstyler"]
    assert pack.WEB_DIRECTORY == "./js"
    import inspect

    assert inspect.iscoroutinefunction(pack.comfy_entrypoint)
    for path in [ROOT / "__init__.py", *sorted((ROOT / "nodes" / "core").glob("*.py")), ROOT / "nodes" / "__init__.py"]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                mods = [node.module or ""]
            else:
                continue
            for m in mods:
                assert m.split(".")[0] not in ("comfy", "comfy_api", "folder_paths", "nodes", "execution"), (path, m)


def test_no_v1_mappings_and_single_api_import():
    for path in (ROOT / "nodes").rglob("*.py"):
        text = path.read_text()
        # the harness registers nodes into ComfyUI's registry as main.py does; no module defines the V1 mapping
        assert "NODE_CLASS_MAPPINGS" not in text or "harness" in path.relative_to(ROOT).parts, path
        assert not re.search(r"^NODE_CLASS_MAPPINGS\s*=", text, re.M), path
        if path.name != "_api.py":
            assert "comfy_api" not in text, f"{path} imports comfy_api directly: use nodes/_api.py"


@pytest.mark.parametrize(
    "package, module",
    [("ultralytics", "nodes/adapters/fastsam_model.py"), ("transformers", "nodes/adapters/fastsam_clip.py")],
)
def test_optional_package_imported_in_one_module(package, module):
    """Among the modules ComfyUI loads (the harness, which builds tiny test models, is not one of them)."""
    users = [
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "nodes").rglob("*.py")
        if "harness" not in p.relative_to(ROOT).parts
        and re.search(rf"^\s*(import {package}|from {package})", p.read_text(), re.M)
    ]
    assert users == [module], users
