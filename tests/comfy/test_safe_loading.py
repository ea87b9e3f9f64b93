"""Safe loading (issue #8): no code from model files, no file outside its model folder, no network.

* LoRAs (Style LoRA Loader) and checkpoints load through safetensors or ``torch.load(weights_only=True)``: a ``.pt``
  LoRA or ``.ckpt`` checkpoint whose pickle would run code (a ``__reduce__`` payload that writes a marker file) is
  refused with a clear error, and the marker never appears.
* FastSAM ``.pt`` files are pickles that ultralytics loads with ``weights_only=False``: they load only from the
  registered ``models/fastsam`` folder(s), by a relative name. Names with ``..``, absolute paths (and Windows-style
  variants) are refused by every loader before any file is opened (Style LoRA Loader ``lora_name``, FastSAM loader
  ``model_name``, FastSAM Mask ``clip_folder``, Train Style LoRA ``save_name``), and ComfyUI's own validation refuses
  them in a graph. A symlink *inside* a model folder is followed (as ComfyUI does for every model folder), CLIP
  folders included.
* The whole module runs with outgoing connections and DNS lookups refused and recorded; a two-style graph, a
  FastSAM graph and a short training must not attempt any.
"""

from __future__ import annotations

import os
import sys

import fastsam_fixtures as ff
import numpy as np
import pytest
import reliability_tools as rt
import torch
from comfyui_diffstyler.nodes.harness import graphs
from PIL import Image

ESCAPES = ("../{name}", "sub/../../{name}", "..\\{name}", "{abs}")


@pytest.fixture(scope="module", autouse=True)
def guard(tmp_path_factory):
    """Network refused and recorded for the whole module; ultralytics' settings file in a temp folder."""
    mp = pytest.MonkeyPatch()
    if "ultralytics" not in sys.modules:
        mp.setenv("YOLO_CONFIG_DIR", str(tmp_path_factory.mktemp("yolo_config")))
    net = rt.NetworkGuard().install()
    with rt.torch_threads(1):
        yield net
    net.uninstall()
    mp.undo()


class Payload:
    """Unpickling this runs ``exec``: it writes ``marker`` (what a malicious model file would do, harmlessly)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('code ran')",))


def write_payload(path, marker, key="lora_unet_x.lora_down.weight"):
    torch.save({key: Payload(marker), "state_dict_like": torch.zeros(2)}, str(path))
    return path


@pytest.fixture(scope="module")
def live_payload_check(tmp_path_factory):
    """Proves the payload runs when a file is loaded unsafely, so a missing marker below means something."""
    tmp = tmp_path_factory.mktemp("payload")
    path = write_payload(tmp / "probe.pt", tmp / "probe_marker")
    torch.load(str(path), weights_only=False)
    assert (tmp / "probe_marker").read_text() == "code ran"
    return True


# ---------------------------------------------------------------------------------------------- pickles


@pytest.fixture
def cleanup():
    """Files and links a test puts into the shared model folders, removed afterwards (later modules list them)."""
    paths = []
    yield paths
    for p in paths:
        if os.path.lexists(p):
            os.unlink(p)


def test_pickle_lora_does_not_run_code(comfy_home, pack, tiny, tmp_path, live_payload_check, cleanup):
    from comfyui_diffstyler.nodes.style import DiffStylerStyleLoRA

    import nodes

    cond = tiny.clip.encode_from_tokens_scheduled(tiny.clip.tokenize("x"))
    for name in ("rel_evil.pt", "rel_evil.ckpt"):
        marker = tmp_path / f"{name}.marker"
        cleanup.append(write_payload(comfy_home.models / "loras" / name, marker))
        with pytest.raises(
            ValueError,
            match=rf"(?s)lora_name: '{name}' could not be read as a LoRA file \(.*Weights "
            r"only load failed.*\): re-download or re-save it",
        ):
            DiffStylerStyleLoRA.execute(name, 1.0, cond, torch.ones(1, 64, 64))
        assert not marker.exists(), f"{name}: the pickle's code ran"
        with pytest.raises(Exception, match="Weights only load failed"):  # ComfyUI's own LoRA loader: weights-only
            nodes.LoraLoaderModelOnly().load_lora_model_only(tiny.model, name, 1.0)
        assert not marker.exists()


def test_pickle_checkpoint_does_not_run_code(comfy_home, pack, tmp_path, live_payload_check, cleanup):
    import nodes

    marker = tmp_path / "ckpt.marker"
    path = comfy_home.models / "checkpoints" / "rel_evil.ckpt"
    cleanup.append(write_payload(path, marker, key="model.diffusion_model.x"))
    with pytest.raises(Exception, match="Weights only load failed"):
        nodes.CheckpointLoaderSimple().load_checkpoint("rel_evil.ckpt")
    assert not marker.exists()


@pytest.fixture(scope="module")
def fastsam(comfy_home, pack):
    from comfyui_diffstyler.nodes.adapters import fastsam_model

    fastsam_model.import_ultralytics()
    return fastsam_model


def test_fastsam_pickle_outside_the_folder_is_never_opened(comfy_home, fastsam, tmp_path, live_payload_check, cleanup):
    from comfyui_diffstyler.nodes.segment import DiffStylerFastSAMLoader

    marker = tmp_path / "fastsam.marker"
    outside = write_payload(comfy_home.models / "rel_evil_fastsam.pt", marker, key="model")
    cleanup.append(outside)
    for pattern in ESCAPES:
        name = pattern.format(name=outside.name, abs=str(outside))
        with pytest.raises(
            ValueError,
            match=r"model_name: .* leaves the model folder; give a file name relative to "
            r"models/fastsam \(for example FastSAM-s\.pt\)",
        ):
            DiffStylerFastSAMLoader.execute(name)
    assert not marker.exists()


def test_fastsam_pickle_inside_the_folder_does_not_run_code(comfy_home, fastsam, tmp_path, live_payload_check, cleanup):
    from comfyui_diffstyler.nodes.segment import DiffStylerFastSAMLoader

    marker = tmp_path / "inside.marker"
    cleanup.append(write_payload(comfy_home.models / "fastsam" / "rel_evil_inside.pt", marker, key="model"))
    with pytest.raises(ValueError, match=r"model_name: 'rel_evil_inside\.pt' .*is not a FastSAM/YOLOv8-seg model") as e:
        DiffStylerFastSAMLoader.execute("rel_evil_inside.pt")
    assert "references types outside the supported Ultralytics checkpoint format" in str(e.value)
    assert not marker.exists(), "the pickle's code ran while loading a FastSAM file"


def test_fastsam_checkpoints_load_weights_only(comfy_home, fastsam, tmp_path, cleanup, monkeypatch):
    """A real ultralytics checkpoint loads through the weights-only path (torch.load never sees weights_only=False)."""
    import fastsam_fixtures as ff
    from comfyui_diffstyler.nodes.adapters import fastsam_model as fs

    _, _, tasks, _ = fs.import_ultralytics()
    assert fs.safe_pickle_loading(tasks), "this ultralytics/torch should offer torch_safe_load(safe_only=True)"
    path = comfy_home.models / "fastsam" / "rel_safe_check.pt"
    ff.save_fastsam(path, seed=3, class_bias=2.0)
    cleanup.append(path)
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    handle = fs.load_model("rel_safe_check.pt")
    assert calls and all(flag is True for flag in calls), calls
    assert handle.scale == "s"
    image = ff.scene_tensor()[0]
    with fs.on_compute_device(handle):
        assert fs.detect(handle, image, 128, 0.4, 0.9).shape[0] > 0


def test_fastsam_without_safe_loading_warns_and_still_loads(comfy_home, fastsam, cleanup, monkeypatch, caplog):
    """Old ultralytics (no safe_only): the documented fallback unpickles from the model folder and says so."""
    import fastsam_fixtures as ff
    from comfyui_diffstyler.nodes.adapters import fastsam_model as fs

    path = comfy_home.models / "fastsam" / "rel_old_ultralytics.pt"
    ff.save_fastsam(path, seed=4, class_bias=2.0)
    cleanup.append(path)
    monkeypatch.setattr(fs, "safe_pickle_loading", lambda tasks: False)
    monkeypatch.setattr(fs, "_warned_unsafe", False)
    with caplog.at_level("WARNING"):
        handle = fs.load_model("rel_old_ultralytics.pt")
    assert handle.scale == "s"
    assert any("cannot load .pt files weights-only" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------------- names and symlinks


def test_every_loader_refuses_names_that_leave_their_folder(comfy_home, pack, tiny, fastsam, tmp_path, cleanup):
    from comfyui_diffstyler.nodes.adapters import lora_save
    from comfyui_diffstyler.nodes.segment import DiffStylerFastSAMLoader, DiffStylerFastSAMMask
    from comfyui_diffstyler.nodes.style import DiffStylerStyleLoRA
    from comfyui_diffstyler.nodes.train import DiffStylerTrainStyleLoRA

    cond = tiny.clip.encode_from_tokens_scheduled(tiny.clip.tokenize("x"))
    target = comfy_home.models / "rel_outside.safetensors"
    import safetensors.torch

    safetensors.torch.save_file({"lora_unet_x.lora_down.weight": torch.zeros(1, 1)}, str(target))
    cleanup.append(target)
    for pattern in ESCAPES:
        name = pattern.format(name=target.name, abs=str(target))
        with pytest.raises(
            ValueError,
            match=r"lora_name: .* must be a file name inside models/loras \(no absolute "
            r"path or '\.\.'\)",
        ):
            DiffStylerStyleLoRA.execute(name, 1.0, cond, torch.ones(1, 64, 64))
        with pytest.raises(ValueError, match=r"model_name: .* leaves the model folder"):
            DiffStylerFastSAMLoader.execute(name.replace(".safetensors", ".pt"))
    image = ff.scene_tensor()
    for folder in ("../fastsam", "/tmp", "..\\loras"):
        with pytest.raises(ValueError, match=r"clip_folder: .* leaves the model folder"):
            DiffStylerFastSAMMask.execute(image, None, "text", "", "", "a dog", 64, 0.4, 0.9, "union", 0, folder)
    for bad in ("../x", str(tmp_path / "x"), "a/b", "..\\x", "C:x", ".hidden"):
        message = DiffStylerTrainStyleLoRA.validate_inputs(save_name=bad)
        assert isinstance(message, str) and message.startswith("save_name: ") and "plain file name" in message, bad
        with pytest.raises(ValueError, match=r"save_name: .* is not a plain file name"):
            lora_save.save_lora_file({"x": torch.zeros(1)}, bad)
    assert not (tmp_path / "x.safetensors").exists() and not (comfy_home.models / "x.safetensors").exists()


def test_graph_validation_refuses_escaping_names(comfy_home, tiny, run_graph):
    prompt = {
        "1": {"class_type": "DiffStylerFastSAMLoader", "inputs": {"model_name": "../rel_evil_fastsam.pt"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "x", "clip": ["3", 1]}},
        "3": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny.checkpoint}},
        "4": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}},
        "5": {
            "class_type": "DiffStylerStyleLoRA",
            "inputs": {
                "lora_name": "../rel_outside.safetensors",
                "strength": 1.0,
                "conditioning": ["2", 0],
                "mask": ["4", 0],
            },
        },
        "6": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
        "7": {"class_type": "PreviewAny", "inputs": {"source": ["5", 0]}},
    }
    run = run_graph(prompt, expect_success=False)
    assert not run.success and "node_errors" in run.error
    errors = run.error["node_errors"]
    assert set(errors) == {"1", "5"}, errors
    text = str(errors)
    assert "value_not_in_list" in text and "rel_evil_fastsam" in text and "rel_outside" in text


def test_symlinks_inside_model_folders(comfy_home, fastsam, tmp_path, cleanup):
    """FastSAM weights and CLIP folders, like ComfyUI's own model folders, follow a symlink placed in their folder
    (how models on another drive are kept); a linked CLIP folder is listed and the node loads what it lists."""
    from comfyui_diffstyler.nodes.adapters import fastsam_clip
    from comfyui_diffstyler.nodes.segment import DiffStylerFastSAMLoader

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    ff.save_fastsam(outside / "real.pt", seed=1, class_bias=None)
    link = comfy_home.models / "fastsam" / "rel_link.pt"
    os.symlink(outside / "real.pt", link)
    cleanup.append(link)
    handle = DiffStylerFastSAMLoader.execute("rel_link.pt").args[0]
    assert handle.path == str(link) and os.path.realpath(handle.path) == str(outside / "real.pt")
    clip_link = comfy_home.models / "diffstyler_clip" / "rel_clip_link"
    (outside / "clip").mkdir()
    (outside / "clip" / "config.json").write_text("{}")
    os.symlink(outside / "clip", clip_link, target_is_directory=True)
    cleanup.append(clip_link)
    assert "rel_clip_link" in fastsam_clip.list_clip_folders()
    resolved = fastsam_clip.resolve_clip_folder("rel_clip_link")
    assert resolved == str(clip_link) and os.path.realpath(resolved) == str(outside / "clip")
    with pytest.raises(ValueError, match="leaves the model folder"):
        fastsam_clip.resolve_clip_folder("rel_clip_link/../../elsewhere/clip")


# ---------------------------------------------------------------------------------------------- network


@pytest.mark.slow
def test_no_network_for_a_styles_graph_a_fastsam_graph_and_training(guard, comfy_home, tiny, fastsam, run_graph):
    with pytest.raises(OSError, match="network access attempted"):
        __import__("socket").create_connection(("example.com", 80), timeout=1)
    assert guard.attempts and "create_connection" in guard.attempts[0]
    guard.attempts.clear()

    rt.write_two_style_inputs(comfy_home, tiny.model)
    styled = run_graph(rt.two_style_prompt(tiny.checkpoint, steps=4, cfg=5.5))
    assert "15" in styled.executed_nodes()

    ff.save_fastsam(comfy_home.models / "fastsam" / "rel_net_quiet.pt", seed=1, class_bias=None)
    Image.fromarray(ff.scene()).save(comfy_home.input / "rel_scene.png")
    segmented = run_graph(
        {
            "1": {"class_type": "LoadImage", "inputs": {"image": "rel_scene.png"}},
            "2": {"class_type": "DiffStylerFastSAMLoader", "inputs": {"model_name": "rel_net_quiet.pt"}},
            "3": {
                "class_type": "DiffStylerFastSAMMask",
                "inputs": {
                    "image": ["1", 0],
                    "fastsam": ["2", 0],
                    "mode": "everything",
                    "points": "",
                    "boxes": "",
                    "text": "",
                    "imgsz": 128,
                    "conf": 0.4,
                    "iou": 0.9,
                    "combine": "union",
                    "index": 0,
                },
            },
            "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 1]}},
        }
    )
    assert "3" in segmented.executed_nodes()

    rng = np.random.default_rng(9)
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(comfy_home.input / "rel_style.png")
    trained = run_graph(graphs.train_lora_prompt(tiny.checkpoint, "rel_style.png", "rel_net_style", rank=2))
    assert "4" in trained.executed_nodes()
    assert (comfy_home.models / "loras" / "rel_net_style.safetensors").is_file()
    assert guard.attempts == [], guard.attempts
