"""The one place the pack imports ComfyUI's node API (V3).

ComfyUI marks ``comfy_api.latest`` unstable and asks node packs to import a versioned API. The pack takes
``comfy_api.v0_0_2`` where the host ships it (v0.8.0 and v0.33.0 both do: there it re-exports ``latest``'s
``ComfyExtension``, ``io`` and ``ui``) and falls back to ``comfy_api.latest`` on a host without it.
"""

from __future__ import annotations

import logging

VERSIONED_API = "comfy_api.v0_0_2"
FALLBACK_API = "comfy_api.latest"

try:
    from comfy_api.v0_0_2 import ComfyExtension, io, ui

    API_MODULE = VERSIONED_API
except ModuleNotFoundError as e:
    if e.name != VERSIONED_API:
        raise  # the versioned API exists but something it imports is broken: say so, do not hide it
    from comfy_api.latest import ComfyExtension, io, ui

    API_MODULE = FALLBACK_API

logging.getLogger(__name__).debug("DiffStyler: V3 node API from %s", API_MODULE)

__all__ = ["API_MODULE", "ComfyExtension", "io", "ui"]
