"""Test fixtures on the pack's harness (``nodes/harness``): it finds ComfyUI, loads the pack as a package, builds the
tiny models and runs graphs.

ComfyUI is found at ``$COMFYUI_PATH``, else the ComfyUI whose ``custom_nodes/`` holds this pack,
else ``~/ComfyUI``. Core tests (tests/core) need no ComfyUI. Everything else runs against the real
ComfyUI; under CI (``CI=true``) a missing ComfyUI is a failure, never a skip.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

import pytest

PACK_ROOT = Path(__file__).resolve().parents[1]
SUPPORT = Path(__file__).resolve().parent / "support"

# the pack as package comfyui_diffstyler, through its harness (the pack root never goes on sys.path)
runpy.run_path(str(PACK_ROOT / "nodes" / "harness" / "host.py"))["load_pack"]()
if str(SUPPORT) not in sys.path:  # tests import the support modules by name
    sys.path.insert(0, str(SUPPORT))

from comfyui_diffstyler.nodes.harness import host  # noqa: E402 - the pack is a package from here on

PACK_NAME = host.PACK_NAME
COMFYUI = host.find_comfyui()
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_comfyui() -> Path:
    if COMFYUI is None:
        if IN_CI:
            pytest.fail(host.NOT_FOUND, pytrace=False)
        pytest.skip(host.NOT_FOUND)
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
    from comfyui_diffstyler.nodes.harness import demo

    return demo.tiny_models(comfy_home)


@pytest.fixture
def run_graph(comfy_home):
    """Run an API-format prompt through ComfyUI's PromptExecutor; returns a GraphRun."""
    from comfyui_diffstyler.nodes.harness.executor import make_executor, run_prompt

    executor = make_executor()

    def _run(prompt: dict, expect_success: bool = True):
        return run_prompt(executor, prompt, expect_success=expect_success)

    _run.executor = executor
    return _run


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    """``main.py --cpu`` on a free loopback port with this pack (and the tiny-model pack) in custom_nodes/."""
    comfy_root = require_comfyui()
    from comfyui_diffstyler.nodes.harness import server as cs

    server = cs.start(comfy_root, tmp_path_factory.mktemp("server_base"))
    yield server
    server.stop()
