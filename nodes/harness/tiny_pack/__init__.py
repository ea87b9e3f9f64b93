"""A ComfyUI node pack with the tiny-model nodes (``DiffStylerTestTinyVAE``) for ``main.py`` servers under test.

:func:`comfyui_diffstyler.nodes.harness.server.start` links this folder into ``custom_nodes/``. ComfyUI loads the
DiffStyler pack there under a module name of its own, so this pack imports the harness by loading the pack root as
package ``comfyui_diffstyler`` first (``host.load_pack``; the pack root never goes on sys.path).
"""

from __future__ import annotations

import runpy
from pathlib import Path

_HOST = Path(__file__).resolve().parents[1] / "host.py"


async def comfy_entrypoint():
    runpy.run_path(str(_HOST))["load_pack"]()
    from comfyui_diffstyler.nodes.harness import demo

    return demo.tiny_nodes_extension()
