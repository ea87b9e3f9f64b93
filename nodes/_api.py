"""The one place the pack imports ComfyUI's node API (V3, ``comfy_api.latest``)."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io, ui

__all__ = ["ComfyExtension", "io", "ui"]
