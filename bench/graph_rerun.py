"""bench/run.py's graph re-run: DDIM Inversion through ComfyUI's executor twice, the second time with only a
sampler-side input changed, so ComfyUI serves the inversion from its cache."""

from __future__ import annotations

import time

import common


def rerun_cost(model, latent, cond, steps, grid="sampling"):
    """Seconds a second graph run spends when only the sampler-side inputs change (inversion from cache)."""
    from comfyui_diffstyler.nodes._api import ComfyExtension, io
    from comfyui_diffstyler.nodes.harness import host

    class BenchInputs(io.ComfyNode):
        @classmethod
        def define_schema(cls):
            return io.Schema(
                node_id="DiffStylerBenchInputs",
                category="DiffStyler/bench",
                inputs=[],
                outputs=[io.Model.Output(), io.Latent.Output(), io.Conditioning.Output()],
            )

        @classmethod
        def execute(cls):
            return io.NodeOutput(model, {"samples": latent}, cond)

    class Ext(ComfyExtension):
        async def get_node_list(self):
            return [BenchInputs]

    host.load_nodes({"diffstyler_bench": Ext()})  # core nodes (PreviewAny), the pack's, the bench's input node
    ex = common.make_executor()

    def graph(cfg_marker):
        return {
            "1": {"class_type": "DiffStylerBenchInputs", "inputs": {}},
            "2": {
                "class_type": "DiffStylerInvert",
                "inputs": {
                    "model": ["1", 0],
                    "latent": ["1", 1],
                    "steps": steps,
                    "conditioning": ["1", 2],
                    "inversion_grid": grid,
                },
            },
            "3": {"class_type": "DiffStylerInversionSigmas", "inputs": {"inversion": ["2", 0]}},
            "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}},
            "5": {"class_type": "PrimitiveFloat", "inputs": {"value": cfg_marker}},
        }

    times = []
    for i, marker in enumerate((1.0, 2.0)):
        p = graph(marker)
        t = time.perf_counter()
        ex.execute(p, f"bench-{i}", {}, ["4", "5"])
        times.append(time.perf_counter() - t)
    return times
