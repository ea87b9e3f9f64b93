"""Test harness: finds ComfyUI, loads the pack as a package, builds tiny models, runs graphs.

ComfyUI is found at ``$COMFYUI_PATH``, else the ComfyUI whose ``custom_nodes/`` holds this pack,
else ``~/ComfyUI``. Core tests (tests/core) need no ComfyUI. Everything else runs against the real
ComfyUI; under CI (``CI=true``) a missing ComfyUI is a failure, never a skip.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

PACK_ROOT = Path(__file__).resolve().parents[1]
PACK_NAME = "comfyui_diffstyler"
SUPPORT = Path(__file__).resolve().parent / "support"


def find_comfyui() -> Path | None:
    """The ComfyUI checkout the tests run against, or None."""
    candidates = []
    if os.environ.get("COMFYUI_PATH"):
        candidates.append(Path(os.environ["COMFYUI_PATH"]).expanduser())
    if PACK_ROOT.parent.name == "custom_nodes":
        candidates.append(PACK_ROOT.parent.parent)
    candidates.append(Path.home() / "ComfyUI")
    for c in candidates:
        if (c / "main.py").is_file() and (c / "comfy" / "model_management.py").is_file():
            return c.resolve()
    return None


def load_pack():
    """Import the pack root as package ``comfyui_diffstyler`` (never put the pack root on sys.path)."""
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(
        PACK_NAME, PACK_ROOT / "__init__.py", submodule_search_locations=[str(PACK_ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module


load_pack()
if str(SUPPORT) not in sys.path:
    sys.path.insert(0, str(SUPPORT))

COMFYUI = find_comfyui()
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_comfyui() -> Path:
    if COMFYUI is None:
        msg = (
            "ComfyUI (tested: v0.8.0 .. v0.33.0) not found: set COMFYUI_PATH, install this pack into "
            "ComfyUI/custom_nodes, or stage it at ~/ComfyUI (see README)"
        )
        if IN_CI:
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    return COMFYUI


@pytest.fixture(scope="session")
def comfy_home(tmp_path_factory):
    """Import ComfyUI in-process (CPU), point its folders at a temp dir, register core + pack nodes."""
    root = require_comfyui()
    import comfy_setup

    return comfy_setup.setup(root, tmp_path_factory.mktemp("comfy_home"))


@pytest.fixture(scope="session")
def pack(comfy_home):
    return sys.modules[PACK_NAME]


@pytest.fixture(scope="session")
def tiny(comfy_home):
    """Tiny SD1.5-topology MODEL/CLIP (from a checkpoint file in models/checkpoints) and a tiny VAE."""
    import comfy_setup

    return comfy_setup.tiny_models(comfy_home)


@pytest.fixture
def run_graph(comfy_home):
    """Run an API-format prompt through ComfyUI's PromptExecutor; returns a GraphRun."""
    import comfy_setup

    executor = comfy_setup.make_executor()

    def _run(prompt: dict, expect_success: bool = True):
        return comfy_setup.run_prompt(executor, prompt, expect_success=expect_success)

    _run.executor = executor
    return _run


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    """``main.py --cpu`` on a free loopback port with this pack (and the test pack) in custom_nodes/."""
    comfy_root = require_comfyui()
    import comfy_server as cs

    server = cs.start(comfy_root, tmp_path_factory.mktemp("server_base"), PACK_ROOT, SUPPORT)
    yield server
    server.stop()
