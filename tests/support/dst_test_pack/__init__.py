"""Test-only ComfyUI node pack: puts the tiny test models into graphs.

Importing it registers the ``TinySD15`` model config (see ``dst_tiny``) so that
``CheckpointLoaderSimple`` loads the tiny checkpoint the tests write. It also offers
``DiffStylerTestTinyVAE`` (a 32-channel SD-style VAE with seeded weights), because the core
VAE loader always builds the full-size SD VAE.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_SUPPORT = os.path.dirname(_HERE)
if _SUPPORT not in sys.path:
    sys.path.insert(0, _SUPPORT)


async def comfy_entrypoint():
    import dst_tiny
    from comfy_api.latest import ComfyExtension, io

    _vae_cache: dict = {}

    class DiffStylerTestTinyVAE(io.ComfyNode):
        @classmethod
        def define_schema(cls):
            return io.Schema(
                node_id="DiffStylerTestTinyVAE",
                display_name="Tiny VAE (DiffStyler tests)",
                category="DiffStyler/testing",
                description="A tiny SD-style VAE with seeded random weights, for tests and the demo run.",
                inputs=[io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip="Weight seed.")],
                outputs=[io.Vae.Output(tooltip="The tiny VAE.")],
            )

        @classmethod
        def execute(cls, seed):
            if seed not in _vae_cache:
                _vae_cache[seed] = dst_tiny.tiny_vae(seed)
            return io.NodeOutput(_vae_cache[seed])

    class _Ext(ComfyExtension):
        async def get_node_list(self):
            return [DiffStylerTestTinyVAE]

    return _Ext()
