"""In-process ComfyUI for the tests: the harness's set-up (``nodes/harness``) with the tests' log level and a
recording stub server. Imported only after ComfyUI was found (``tests/conftest.py``)."""

from __future__ import annotations

import logging
from pathlib import Path

from comfyui_diffstyler.nodes.harness import executor, host
from comfyui_diffstyler.nodes.harness.demo import CHECKPOINT_NAME, TinyModels, tiny_models  # noqa: F401 - re-exported
from comfyui_diffstyler.nodes.harness.executor import GraphRun, run_prompt  # noqa: F401 - re-exported
from comfyui_diffstyler.nodes.harness.host import ComfyHome  # noqa: F401 - re-exported


def setup(root: Path, base: Path) -> ComfyHome:
    """ComfyUI on the CPU with its folders under ``base`` and every node registered (once per process)."""
    home = host.setup(root, base)
    logging.getLogger().setLevel(logging.INFO)
    return home


def make_executor():
    """A ``PromptExecutor`` (classic cache) reporting to a new recording stub server."""
    return executor.make_executor()
