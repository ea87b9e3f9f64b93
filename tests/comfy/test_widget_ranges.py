"""Widget values out of range are refused by ComfyUI's own validation, before anything runs (issue #18 part 3).

ComfyUI skips its min/max/combo checks for every input a node's ``validate_inputs`` names (for all of them when it
takes ``**kwargs``), so the pack's ``validate_inputs`` keep only what ComfyUI cannot check (JSON, file names). Each
case below sends an API prompt, as the frontend or a script would, with one widget out of its range: the prompt must
fail validation with ComfyUI's error for that input, and no node may run. The same prompt with an in-range value
passes validation (so each case can fail both ways).
"""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pytest
from comfyui_diffstyler.nodes.harness import workflow as wt
from dst_fixtures import infos, one_torch_thread  # noqa: F401 - fixtures
from PIL import Image


@pytest.fixture(scope="module")
def picture(comfy_home):
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(comfy_home.input / "ranges.png")
    return "ranges.png"


def _graph(infos, tiny, picture, node_type: str, values: dict) -> tuple[dict, str]:
    """A small valid graph around ``node_type`` (its widgets set from ``values``); returns (API prompt, node id)."""
    wf = {"last_node_id": 0, "last_link_id": 0, "nodes": [], "links": [], "version": 0.4}

    def add(kind, widgets=None):
        return wt.add_node(wf, infos, kind, (0, 0), widgets)

    ckpt = add("CheckpointLoaderSimple", [tiny.checkpoint])
    vae = add("DiffStylerTestTinyVAE", [0, "fixed"])
    image = add("LoadImage", [picture, "image"])
    target = add(node_type)
    if node_type == "DiffStylerTrainStyleLoRA":
        wt.connect(wf, ckpt, 0, target, "model")
        wt.connect(wf, ckpt, 1, target, "clip")
        wt.connect(wf, vae, 0, target, "vae")
        wt.connect(wf, image, 0, target, "image")
        out = add("PreviewImage")
        wt.connect(wf, target, 1, out, "images")
    elif node_type == "DiffStylerInvert":
        enc = add("VAEEncode")
        wt.connect(wf, image, 0, enc, "pixels")
        wt.connect(wf, vae, 0, enc, "vae")
        wt.connect(wf, ckpt, 0, target, "model")
        wt.connect(wf, enc, 0, target, "latent")
        wt.connect(wf, ckpt, 1, target, "clip")
        out = add("SaveLatent")
        wt.connect(wf, target, 1, out, "samples")
    else:  # Style LoRA Loader into an Injector, whose MODEL goes nowhere but is an output of a KSampler graph
        text = add("CLIPTextEncode", ["painting of <sss>"])
        wt.connect(wf, ckpt, 1, text, "clip")
        mask = add("ImageToMask", ["red"])
        wt.connect(wf, image, 0, mask, "image")
        wt.connect(wf, text, 0, target, "conditioning")
        wt.connect(wf, mask, 0, target, "mask")
        region = add("DiffStylerRegionMask")
        wt.connect(wf, target, 0, region, "styles")
        wt.connect(wf, image, 0, region, "image")
        wt.connect(wf, vae, 0, region, "vae")
        out = add("MaskPreview")
        wt.connect(wf, region, 0, out, "mask")
    for name, value in values.items():
        wt.set_widget(infos, target, name, value)
    return wt.ui_to_api(wf, infos), str(target["id"])


def _validate(prompt: dict):
    import execution

    return asyncio.run(execution.validate_prompt(str(uuid.uuid4()), prompt, None))


CASES = [  # node, input, bad value, ComfyUI's error type, a good value
    ("DiffStylerTrainStyleLoRA", "steps", 0, "value_smaller_than_min", 2),
    ("DiffStylerTrainStyleLoRA", "steps", 100001, "value_bigger_than_max", 100000),
    ("DiffStylerTrainStyleLoRA", "rank", 0, "value_smaller_than_min", 4),
    ("DiffStylerTrainStyleLoRA", "rank", 257, "value_bigger_than_max", 256),
    ("DiffStylerTrainStyleLoRA", "learning_rate", 0.0, "value_smaller_than_min", 1e-3),
    ("DiffStylerTrainStyleLoRA", "learning_rate", 5.0, "value_bigger_than_max", 1.0),
    ("DiffStylerTrainStyleLoRA", "resolution", 8, "value_smaller_than_min", 64),
    ("DiffStylerTrainStyleLoRA", "resolution", 8192, "value_bigger_than_max", 4096),
    ("DiffStylerTrainStyleLoRA", "targets", "everything", "value_not_in_list", "all_linear"),
    ("DiffStylerTrainStyleLoRA", "seed", -1, "value_smaller_than_min", 7),
    ("DiffStylerInvert", "steps", 0, "value_smaller_than_min", 1),
    ("DiffStylerInvert", "steps", 100000, "value_bigger_than_max", 1000),
    ("DiffStylerInvert", "feature_cache", "fp8", "value_not_in_list", "fp16"),
    ("DiffStylerStyleLoRA", "strength", 10.5, "value_bigger_than_max", 10.0),
    ("DiffStylerStyleLoRA", "strength", -11.0, "value_smaller_than_min", -10.0),
    ("DiffStylerStyleLoRA", "start_percent", -0.5, "value_smaller_than_min", 0.0),
    ("DiffStylerStyleLoRA", "end_percent", 1.5, "value_bigger_than_max", 1.0),
    ("DiffStylerRegionMask", "feather", -1, "value_smaller_than_min", 0),
    ("DiffStylerRegionMask", "feather", 1000, "value_bigger_than_max", 256),
]


@pytest.mark.parametrize("node_type, name, bad, error, good", CASES, ids=[f"{c[0][10:]}-{c[1]}-{c[2]}" for c in CASES])
def test_out_of_range_widget_is_refused_before_the_run(
    infos, tiny, picture, run_graph, node_type, name, bad, error, good
):
    graph_type = "DiffStylerStyleLoRA" if node_type == "DiffStylerRegionMask" else node_type
    prompt, node_id = _graph(infos, tiny, picture, graph_type, {} if node_type != graph_type else {name: bad})
    if node_type != graph_type:
        node_id = next(k for k, v in prompt.items() if v["class_type"] == node_type)
        prompt[node_id]["inputs"][name] = bad
    ok, _, _, node_errors = _validate(prompt)
    assert not ok, f"{node_type}.{name} = {bad!r} passed ComfyUI's validation"
    errors = node_errors[node_id]["errors"]
    assert [(e["type"], e["extra_info"]["input_name"]) for e in errors] == [(error, name)]
    result = run_graph(prompt, expect_success=False)
    assert not result.success and result.executed_nodes() == [], "nothing runs"
    prompt[node_id]["inputs"][name] = good
    assert _validate(prompt)[0], f"{node_type}.{name} = {good!r} should pass validation"


def test_pack_validate_inputs_name_only_what_comfyui_cannot_check(comfy_home):
    """No pack node takes **kwargs in validate_inputs or names a plain number or combo it does not check itself."""
    import inspect

    import nodes

    allowed = {  # input -> why the node checks it: ComfyUI does not
        "points": "JSON",
        "boxes": "JSON",
        "imgsz": "a multiple of 32 (and its range, re-checked because it is named)",
        "save_name": "a plain file name",
    }
    for node_id, cls in nodes.NODE_CLASS_MAPPINGS.items():
        if not node_id.startswith("DiffStyler") or "validate_inputs" not in vars(cls):
            continue
        spec = inspect.getfullargspec(cls.validate_inputs)
        assert spec.varkw is None, f"{node_id}.validate_inputs takes **{spec.varkw}: ComfyUI then checks no range"
        assert set(spec.args) - {"cls"} <= set(allowed), f"{node_id}.validate_inputs names {spec.args}"
