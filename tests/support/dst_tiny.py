"""The tiny models the tests build as ``dst_tiny.*``: every name is the harness's ``nodes/harness/tiny.py``
(``_patcher`` is its ``as_patcher``). Reading any attribute needs ComfyUI set up, as the tiny models do."""

from __future__ import annotations

from comfyui_diffstyler.nodes.harness import tiny

_RENAMED = {"_patcher": "as_patcher"}


def __getattr__(name: str):
    return getattr(tiny, _RENAMED.get(name, name))
