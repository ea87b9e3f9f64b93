"""comfyui-diffstyler: DiffStyler (arXiv 2403.18461) localized style transfer for ComfyUI.

ComfyUI imports this file from ``custom_nodes/``. Nothing here imports ``comfy`` at module
import time: the node classes are built inside :func:`comfy_entrypoint`, so the pure parts of
the pack (``nodes/core``) import anywhere.
"""

from __future__ import annotations

WEB_DIRECTORY = "./js"

__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]


async def comfy_entrypoint():
    """Return the pack's ``ComfyExtension`` (ComfyUI V3 node API)."""
    from .nodes.extension import DiffStylerExtension

    return DiffStylerExtension()
