"""A fresh ``main.py --cpu`` loads the pack from custom_nodes/ and serves its nodes (issue: foundation)."""

from __future__ import annotations

from pathlib import Path

import pytest
from comfyui_diffstyler.nodes.harness.server import PACK_DIR_NAME

pytestmark = [pytest.mark.server, pytest.mark.slow]  # each module run starts main.py --cpu

CORE_NODES = {
    "DiffStylerInvert",
    "DiffStylerStyleLoRA",
    "DiffStylerStyleModel",
    "DiffStylerCrossLoRAInjector",
    "DiffStylerMaskedFusionSampler",
    "DiffStylerGuider",
    "DiffStylerDDIMSampler",
    "DiffStylerInversionSigmas",
    "DiffStylerRegionMask",
}


def _tooltips(info: dict):
    for section in ("required", "optional"):
        for name, spec in info["input"].get(section, {}).items():
            yield f"input {name}", (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}).get("tooltip")
    for i, tip in enumerate(info.get("output_tooltips", [])):
        yield f"output {i}", tip


def test_pack_loads_and_lists_nodes_with_tooltips(comfy_server):
    log = comfy_server.log.read_text()
    ours = [line for line in log.splitlines() if "custom_nodes/comfyui-diffstyler" in line]
    assert ours, "the pack was not seen by ComfyUI's custom node loader:\n" + log[-3000:]
    assert not any("IMPORT FAILED" in line or "Cannot import" in line for line in ours), "\n".join(ours)
    frames = [line for line in log.splitlines() if line.strip().startswith("File ") and "comfyui-diffstyler" in line]
    assert not frames, "a traceback passed through the pack:\n" + log[-3000:]
    info = comfy_server.get("/object_info")
    ours = {k: v for k, v in info.items() if k.startswith("DiffStyler") and not k.startswith("DiffStylerTest")}
    missing = CORE_NODES - set(ours)
    assert not missing, f"nodes missing from /object_info: {missing}"
    for node_id, spec in ours.items():
        assert spec["display_name"].endswith("(DiffStyler)"), node_id
        assert spec["category"].startswith("DiffStyler/"), node_id
        assert spec.get("description"), f"{node_id} has no description"
        for where, tip in _tooltips(spec):
            assert tip, f"{node_id}: {where} has no tooltip"
    ext = comfy_server.get("/extensions")
    assert any("fastsam_editor.js" in e for e in ext), ext


def test_templates_browser_lists_the_shipped_workflows(comfy_server):
    """ComfyUI serves a pack's workflows/ folder to the frontend's Templates browser (app/custom_node_manager.py)."""
    shipped = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "workflows").glob("*.json"))
    assert shipped
    templates = comfy_server.get("/workflow_templates")
    assert sorted(templates.get(PACK_DIR_NAME, [])) == shipped, templates
    for name in shipped:
        graph = comfy_server.get(f"/api/workflow_templates/{PACK_DIR_NAME}/{name}.json")  # parsed: served as JSON
        assert graph["nodes"], name


def test_extra_model_paths_add_to_the_default_fastsam_folder(tmp_path):
    """A ``fastsam:`` folder in extra_model_paths.yaml (read by ComfyUI before custom nodes load) adds to
    models/fastsam instead of replacing it: the loader lists the weights of both."""
    from comfyui_diffstyler.nodes.harness import server as cs
    from conftest import require_comfyui

    base = tmp_path / "base"
    (base / "models" / "fastsam").mkdir(parents=True)
    (base / "models" / "fastsam" / "in_default.pt").write_bytes(b"not loaded by a listing")
    extra = tmp_path / "drive" / "sam"
    extra.mkdir(parents=True)
    (extra / "in_extra.safetensors").write_bytes(b"not loaded by a listing")
    config = tmp_path / "extra_model_paths.yaml"
    config.write_text(f"other_drive:\n    base_path: {tmp_path / 'drive'}\n    fastsam: sam\n")
    args = ("--extra-model-paths-config", str(config))
    server = cs.start(require_comfyui(), base, extra_args=args)
    try:
        info = server.get("/object_info/DiffStylerFastSAMLoader")["DiffStylerFastSAMLoader"]
    finally:
        server.stop()
    options = info["input"]["required"]["model_name"]
    names = options[0] if isinstance(options[0], list) else options[1]["options"]
    assert {"in_default.pt", "in_extra.safetensors"} <= set(names), names
