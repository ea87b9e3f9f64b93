"""FastSAM nodes (issue #4) against the real ComfyUI with a random-weight FastSAM-s and a tiny random CLIP.

The whole module runs with the network blocked (connect, create_connection and DNS raise) and with
ultralytics' settings file in a temporary folder. How the random model is made to detect anything is
explained in tests/support/fastsam_fixtures.py.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import fastsam_fixtures as ff
import numpy as np
import pytest
import torch
from comfyui_diffstyler.nodes.harness import executor as comfy_host
from PIL import Image

DENSE = "ds_fastsam_dense.pt"
DENSE_ST = "ds_fastsam_dense.safetensors"
QUIET = "ds_fastsam_quiet.pt"
NOT_A_MODEL = "ds_not_a_model.pt"
STATE_DICT = "ds_state_dict.pt"
CLIP = "ds_tiny_clip"
IMGSZ = 128  # test pictures are 96x64; FastSAM letterboxes them to 128x96
REPO = Path(__file__).resolve().parents[2]
HOME = Path.home()
# Files a misbehaving loader/predictor would write (other engineers edit sources in this tree concurrently).
ARTIFACT_SUFFIXES = (".pt", ".pth", ".safetensors", ".png", ".jpg", ".jpeg", ".webp", ".npy", ".log", ".csv")


def _outside_state() -> dict:
    return {
        "comfy_models": ff.snapshot(HOME / "ComfyUI" / "models"),
        "repo_artifacts": {
            p for p in ff.snapshot(REPO) if p.lower().endswith(ARTIFACT_SUFFIXES) or p.startswith("runs")
        },
        "ultralytics_config": (HOME / ".config" / "Ultralytics").exists(),
        "hf_cache": ff.snapshot(HOME / ".cache" / "huggingface"),
    }


@pytest.fixture(scope="module", autouse=True)
def offline(tmp_path_factory):
    """Network blocked and ultralytics' settings in a temp dir for the whole module; records the outside state."""
    state = _outside_state()
    mp = pytest.MonkeyPatch()
    if "ultralytics" not in sys.modules:
        mp.setenv("YOLO_CONFIG_DIR", str(tmp_path_factory.mktemp("yolo_config")))
    ff.block_network(mp)
    yield state
    mp.undo()


@pytest.fixture(scope="module")
def fs(pack):
    """The module that loads, places and runs FastSAM (the one that imports ultralytics)."""
    from comfyui_diffstyler.nodes.adapters import fastsam_model

    return fastsam_model


@pytest.fixture(scope="module")
def seg(pack):
    from comfyui_diffstyler.nodes import segment

    return segment


@pytest.fixture(scope="module")
def models(comfy_home, fs):
    """Writes the test models into the temp ComfyUI's models/fastsam and models/diffstyler_clip."""
    folder = comfy_home.models / "fastsam"
    fs.import_ultralytics()
    from ultralytics.nn.tasks import load_checkpoint

    ff.save_fastsam(folder / DENSE, seed=0, class_bias=2.0)
    ff.save_fastsam(folder / QUIET, seed=1, class_bias=None)
    # the same (fp16-rounded) weights as the .pt, as a pickle-free state dict
    ff.save_fastsam_safetensors(folder / DENSE_ST, load_checkpoint(str(folder / DENSE))[0])
    (folder / NOT_A_MODEL).write_text("this is not a model\n")
    torch.save({"weight": torch.zeros(3)}, folder / STATE_DICT)
    (folder / "notes.txt").write_text("not listed\n")
    ff.save_tiny_clip(comfy_home.models / "diffstyler_clip" / CLIP, comfy_home.root / "comfy" / "sd1_tokenizer")
    return folder


@pytest.fixture(scope="module")
def dense(models, fs):
    return fs.load_model(DENSE)


@pytest.fixture(scope="module")
def quiet(models, fs):
    return fs.load_model(QUIET)


def detections(fs, handle, image: torch.Tensor, conf: float = 0.4) -> torch.Tensor:
    """FastSAM everything for one ``[H,W,3]`` image: ``[N,H,W]`` bool."""
    with fs.on_compute_device(handle):
        return fs.detect(handle, image, IMGSZ, conf, 0.9)


def run_mask(
    seg,
    handle,
    image,
    mode="everything",
    points="",
    boxes="",
    text="",
    combine="union",
    index=0,
    clip_folder="none",
    imgsz=IMGSZ,
    conf=0.4,
    iou=0.9,
):
    out = seg.DiffStylerFastSAMMask.execute(
        image, handle, mode, points, boxes, text, imgsz, conf, iou, combine, index, clip_folder
    )
    mask, preview = out.args
    return mask, preview, out.ui


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


# ------------------------------------------------------------------------------------------ loader


def test_loader_finds_weights_through_folder_paths(models, fs, seg, comfy_home):
    import folder_paths

    paths, exts = folder_paths.folder_names_and_paths["fastsam"]
    assert {".pt", ".safetensors"} <= set(exts)
    assert str(comfy_home.models / "fastsam") in paths
    assert "diffstyler_clip" in folder_paths.folder_names_and_paths
    names = folder_paths.get_filename_list("fastsam")
    assert {DENSE, DENSE_ST, QUIET, NOT_A_MODEL, STATE_DICT} <= set(names) and "notes.txt" not in names
    options = seg.DiffStylerFastSAMLoader.define_schema().inputs[0].options
    assert DENSE in options and DENSE_ST in options

    threads = torch.get_num_threads()
    handle = seg.DiffStylerFastSAMLoader.execute(DENSE).args[0]
    assert torch.get_num_threads() == threads  # ultralytics' device setup must not change ComfyUI's threads
    assert isinstance(handle, fs.FastSAMModel)
    assert handle.path == os.path.abspath(folder_paths.get_full_path("fastsam", DENSE))
    assert handle.scale == "s"
    assert handle.device().type == "cpu" and handle.weight_bytes() > 10**7  # FastSAM-s: ~11.8M parameters
    assert seg.DiffStylerFastSAMLoader.execute(DENSE).args[0] is handle  # cached
    st = os.stat(handle.path)
    os.utime(handle.path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a new file version is loaded again
    assert fs.load_model(DENSE) is not handle
    assert torch.get_num_threads() == threads
    fp = seg.DiffStylerFastSAMLoader.fingerprint_inputs(DENSE)
    assert fp == (DENSE, os.path.getmtime(handle.path))


def test_loader_refuses_escaping_names_missing_files_and_non_models(models, fs, seg):
    with pytest.raises(ValueError, match="leaves the model folder"):
        seg.DiffStylerFastSAMLoader.execute("../checkpoints/x.pt")
    with pytest.raises(ValueError, match="leaves the model folder"):
        seg.DiffStylerFastSAMLoader.execute(str(models / DENSE))  # an absolute path, even of a real file
    with pytest.raises(FileNotFoundError, match=r"'missing\.pt' not found in the 'fastsam' model folder"):
        seg.DiffStylerFastSAMLoader.execute("missing.pt")
    with pytest.raises(ValueError, match=rf"{NOT_A_MODEL}.*is not a FastSAM/YOLOv8-seg model"):
        seg.DiffStylerFastSAMLoader.execute(NOT_A_MODEL)
    with pytest.raises(ValueError, match=rf"{STATE_DICT}.*is not a FastSAM/YOLOv8-seg model"):
        seg.DiffStylerFastSAMLoader.execute(STATE_DICT)


def test_safetensors_weights_detect_like_the_pickle(models, fs, dense):
    st = fs.load_model(DENSE_ST)
    assert st.scale == "s"
    image = ff.scene_tensor()[0]
    a, b = detections(fs, dense, image), detections(fs, st, image)
    assert a.shape[0] > 0 and torch.equal(a, b)


# ------------------------------------------------------------------------------------------ outputs


@pytest.mark.parametrize("batch, height, width", [(1, 64, 96), (3, 64, 96), (1, 80, 48)])
def test_shapes_dtypes_ranges_and_ui(seg, dense, comfy_home, batch, height, width):
    image = ff.scene_tensor(batch, height, width)
    mask, preview, ui = run_mask(seg, dense, image)
    assert mask.shape == (batch, height, width) and mask.dtype == torch.float32
    assert preview.shape == (batch, height, width, 3) and preview.dtype == torch.float32
    for t in (mask, preview):
        assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    assert all(float(m.sum()) > 0 for m in mask)  # the dense model finds objects in every picture
    # one image: not under 'images' (the editor canvas shows it); a batch: also there, to browse every image
    assert set(ui) == {"diffstyler_preview", "diffstyler_source"} | ({"images"} if batch > 1 else set())
    assert ui.get("images", ui["diffstyler_preview"]) == ui["diffstyler_preview"]
    assert len(ui["diffstyler_preview"]) == batch and len(ui["diffstyler_source"]) == batch
    for i, ref in enumerate(ui["diffstyler_source"]):
        assert ref["type"] == "temp"
        saved = np.asarray(Image.open(comfy_home.temp / ref["subfolder"] / ref["filename"]))
        assert saved.shape == (height, width, 3)
        assert np.abs(saved.astype(int) - (image[i].numpy() * 255).round().astype(int)).max() <= 1  # the plain input
    for i, ref in enumerate(ui["diffstyler_preview"]):
        saved = np.asarray(Image.open(comfy_home.temp / ref["subfolder"] / ref["filename"]))
        assert np.abs(saved.astype(int) - (preview[i].numpy() * 255).astype(int)).max() <= 1


def test_the_picture_reaches_ultralytics_as_full_size_bgr(fs, dense, monkeypatch):
    """The random model barely looks at the picture, so check what it is given instead."""
    seen = []
    original = dense.predictor.setup_source

    def spy(source, *args, **kwargs):
        seen.append(source)
        return original(source, *args, **kwargs)

    monkeypatch.setattr(dense.predictor, "setup_source", spy)
    image = ff.scene_tensor(1, 64, 96)[0]
    detections(fs, dense, image)
    (arr,) = seen
    assert arr.dtype == np.uint8 and arr.shape == (64, 96, 3)
    assert np.array_equal(arr[..., ::-1], ff.scene(64, 96, seed=0))  # BGR, as ultralytics reads numpy arrays
    assert dense.predictor.args.imgsz == IMGSZ and not dense.predictor.args.retina_masks


@pytest.mark.slow  # the quick tier has bad_inputs/test_fastsam_inputs.py's RGBA and gray case
def test_rgba_and_gray_inputs(seg, dense):
    rgb = ff.scene_tensor(2)
    rgba = torch.cat([rgb, torch.rand(2, 64, 96, 1)], dim=-1)
    want, want_preview, _ = run_mask(seg, dense, rgb)
    got, preview, _ = run_mask(seg, dense, rgba)
    # alpha dropped, colours kept (the preview shows the picture; the random model's masks barely depend on it)
    assert torch.equal(got, want) and torch.equal(preview, want_preview)
    gray = rgb.mean(dim=-1, keepdim=True)
    got, preview, _ = run_mask(seg, dense, gray)
    want, want_preview, _ = run_mask(seg, dense, gray.expand(-1, -1, -1, 3))
    assert torch.equal(got, want) and torch.equal(preview, want_preview) and preview.shape == (2, 64, 96, 3)


# ------------------------------------------------------------------------------------------ prompts


@pytest.mark.slow
def test_point_prompt_returns_a_mask_containing_the_point(fs, seg, dense, quiet):
    image = ff.scene_tensor()
    dets = detections(fs, dense, image[0])
    assert dets.shape[0] > 0
    areas = dets.flatten(1).sum(1)
    checked = 0
    for y in range(3, 64, 15):
        for x in range(5, 96, 22):
            mask, preview, _ = run_mask(seg, dense, image, "points", ff.points_json((x, y, 1)))
            holders = torch.nonzero(dets[:, y, x]).flatten()
            assert bool(mask[0, y, x]) == (holders.numel() > 0)
            if holders.numel():
                smallest = holders[torch.argmin(areas[holders])]
                assert torch.equal(mask[0].bool(), dets[smallest])  # the most specific object under the point
                checked += 1
            assert torch.allclose(preview[0, y, x], torch.tensor((0.1, 0.9, 0.2)))  # the green dot
    assert checked > 0
    # no detection holds the point: empty mask, no crash
    mask, _, _ = run_mask(seg, quiet, image, "points", ff.points_json((10, 10, 1)))
    assert not mask.any()


@pytest.mark.slow
def test_large_images_select_on_the_inference_grid(fs, seg, dense):
    """A picture larger than imgsz: detections stay at inference resolution, only the chosen mask is upsampled."""
    from comfyui_diffstyler.nodes.core import fastsam_geometry

    image = torch.nn.functional.interpolate(ff.scene_tensor().permute(0, 3, 1, 2), size=(256, 384)).permute(0, 2, 3, 1)
    dets = detections(fs, dense, image[0].contiguous())
    gh, gw = dets.shape[1:]
    assert gw == IMGSZ and gh < 256 and dets.shape[0] > 0  # the letterbox window, not 256x384
    areas = dets.flatten(1).sum(1)
    checked = 0
    for y in range(7, 256, 50):
        for x in range(11, 384, 70):
            mask, _, _ = run_mask(seg, dense, image, "points", ff.points_json((x, y, 1)))
            assert mask.shape == (1, 256, 384)
            cy, cx = (y * gh) // 256, (x * gw) // 384
            holders = torch.nonzero(dets[:, cy, cx]).flatten()
            assert bool(mask[0, y, x]) == (holders.numel() > 0)
            if holders.numel():
                smallest = holders[torch.argmin(areas[holders])]
                assert torch.equal(mask[0].bool(), fastsam_geometry.upsample_mask(dets[smallest], 256, 384))
                checked += 1
    assert checked > 0


def test_negative_point_removes_the_masks_containing_it(fs, seg, dense):
    image = ff.scene_tensor()
    dets = detections(fs, dense, image[0])
    px, py = 40, 30
    positive_only, _, _ = run_mask(seg, dense, image, "points", ff.points_json((px, py, 1)))
    chosen = positive_only[0].bool()
    assert chosen[py, px]
    ys, xs = torch.nonzero(chosen).T
    far = torch.argmax((ys - py) ** 2 + (xs - px) ** 2)  # a pixel of the chosen object away from the point
    nx, ny = int(xs[far]), int(ys[far])
    mask, preview, _ = run_mask(seg, dense, image, "points", ff.points_json((px, py, 1), (nx, ny, 0)))
    assert not mask[0, ny, nx]
    assert not torch.equal(mask[0].bool(), chosen)  # the object holding the negative point was removed
    kept = mask[0].bool()
    if kept.any():  # whatever remains comes from detections without the negative point
        allowed = dets[~dets[:, ny, nx]]
        assert bool((kept & ~allowed.any(0)).sum() == 0)
    assert torch.allclose(preview[0, ny, nx], torch.tensor((0.95, 0.15, 0.15)))  # the red dot


def test_box_prompt_keeps_the_mask_inside_the_box(fs, seg, dense):
    image = ff.scene_tensor()
    dets = detections(fs, dense, image[0]).numpy()
    areas = dets.reshape(len(dets), -1).sum(1)
    target = int(np.argsort(areas)[len(areas) // 3])  # a smaller-than-median object
    ys, xs = np.nonzero(dets[target])
    box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
    mask, _, _ = run_mask(seg, dense, image, "boxes", boxes=json.dumps([box]))
    out = mask[0].numpy() > 0.5
    region = np.zeros_like(out)
    region[box[1] : box[3], box[0] : box[2]] = True
    ious = [(d & region).sum() / (d | region).sum() for d in dets]
    assert np.array_equal(out, dets[int(np.argmax(ious))])  # the detection that fits the box best
    inside = (out & region).sum() / out.sum()
    everything = dets.any(0)
    print(
        f"\nbox {box}: target {areas[target]} px, output {out.sum()} px, {inside:.3f} inside, best IoU {max(ious):.3f}"
    )
    assert inside >= 0.5
    assert inside > (everything & region).sum() / everything.sum()


@pytest.mark.slow
def test_text_prompt_ranks_masks_with_clip(fs, seg, dense, comfy_home):
    from comfyui_diffstyler.nodes.adapters import fastsam_clip
    from transformers import CLIPModel, CLIPProcessor

    assert CLIP in fastsam_clip.list_clip_folders()
    assert CLIP in seg.DiffStylerFastSAMMask.define_schema().inputs[-1].options
    image = ff.scene_tensor()
    dets = detections(fs, dense, image[0])
    folder = comfy_home.models / "diffstyler_clip" / CLIP
    model = CLIPModel.from_pretrained(str(folder), local_files_only=True).eval()
    proc = CLIPProcessor.from_pretrained(str(folder), local_files_only=True)
    crops = []
    for m in dets.numpy():
        ys, xs = np.nonzero(m)
        region = (image[0].numpy() * 255).round().astype(np.uint8)[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        keep = m[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1, None]
        crops.append(np.where(keep, region, 255).astype(np.uint8))

    def feats(out):
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    with torch.no_grad():
        img_f = torch.cat(
            [
                feats(model.get_image_features(**proc(images=crops[i : i + 32], return_tensors="pt")))
                for i in range(0, len(crops), 32)
            ]
        )
        for phrases in (["a red square"], ["a green car", "yellow"]):
            txt_f = feats(model.get_text_features(**proc(text=phrases, padding=True, return_tensors="pt")))
            sims = torch.nn.functional.normalize(txt_f, dim=-1) @ torch.nn.functional.normalize(img_f, dim=-1).T
            assert float(sims.std()) > 0  # the ranking is not a tie
            want = dets[sims.argmax(dim=1)].any(0)
            mask, _, _ = run_mask(seg, dense, image, "text", text="\n".join(phrases), clip_folder=CLIP)
            assert torch.equal(mask[0].bool(), want)
    with pytest.raises(ValueError, match="clip_folder: mode 'text' needs a CLIP model"):
        run_mask(seg, dense, image, "text", text="a dog", clip_folder="none")
    with pytest.raises(ValueError, match="leaves the model folder"):
        run_mask(seg, dense, image, "text", text="a dog", clip_folder="../fastsam")


# ------------------------------------------------------------------------------------------ graph


def _save_input(comfy_home, name="fastsam_scene.png"):
    Image.fromarray(ff.scene()).save(comfy_home.input / name)
    return name


def test_graph_load_image_to_mask_preview(run_graph, comfy_home, models):
    name = _save_input(comfy_home)
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "DiffStylerFastSAMLoader", "inputs": {"model_name": DENSE}},
        "3": {
            "class_type": "DiffStylerFastSAMMask",
            "inputs": {
                "image": ["1", 0],
                "fastsam": ["2", 0],
                "mode": "points",
                "points": ff.points_json((40, 30, 1)),
                "boxes": "",
                "text": "",
                "imgsz": IMGSZ,
                "conf": 0.4,
                "iou": 0.9,
                "combine": "union",
                "index": 0,
            },
        },
        "4": {"class_type": "MaskToImage", "inputs": {"mask": ["3", 0]}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}},
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["3", 1]}},
    }
    run = run_graph(prompt)
    mask = run.outputs("3")[0][0]
    assert mask.shape == (1, 64, 96) and bool(mask[0, 30, 40])
    assert len(run.ui["3"]["diffstyler_preview"]) == 1 and len(run.ui["3"]["diffstyler_source"]) == 1
    assert "images" not in run.ui["3"]
    assert len(run.ui["5"]["images"]) == 1 and len(run.ui["6"]["images"]) == 1
    assert (comfy_home.temp / run.ui["5"]["images"][0]["filename"]).is_file()

    bad = json.loads(json.dumps(prompt))
    bad["3"]["inputs"]["boxes"] = "[[1, 2, 3"
    failed = run_graph(bad, expect_success=False)
    assert not failed.success and "boxes: invalid JSON" in json.dumps(failed.error)
    outside = json.loads(json.dumps(prompt))
    outside["3"]["inputs"]["points"] = ff.points_json((96, 10, 1))
    failed = run_graph(outside, expect_success=False)
    assert not failed.success and "outside the 96x64 image" in failed.error["exception_message"]


# ------------------------------------------------------------------------------------------ bad input


def test_bad_inputs_name_the_widget(seg, dense):
    image = ff.scene_tensor()
    validate = seg.DiffStylerFastSAMMask.validate_inputs
    assert validate(points="", boxes="", imgsz=1024) is True
    assert validate(points=None, boxes=None, imgsz=None) is True  # linked inputs are checked at run time
    assert "points: invalid JSON" in validate(points='[{"x": 1,', boxes="", imgsz=1024)
    assert "boxes: box 0" in validate(points="", boxes="[[5, 5, 1, 1]]", imgsz=1024)
    assert "imgsz: expected a multiple of 32" in validate(points="", boxes="", imgsz=1000)
    assert "imgsz: expected 32..4096" in validate(points="", boxes="", imgsz=8192)
    with pytest.raises(ValueError, match="points: invalid JSON"):
        run_mask(seg, dense, image, "points", points="[{")
    with pytest.raises(ValueError, match=r"points: point 0 \(x=10, y=64\) is outside the 96x64 image"):
        run_mask(seg, dense, image, "points", ff.points_json((10, 64, 1)))
    with pytest.raises(ValueError, match=r"boxes: box 0 \[0, 0, 97, 10\] is outside the 96x64 image"):
        run_mask(seg, dense, image, "boxes", boxes="[[0, 0, 97, 10]]")
    with pytest.raises(ValueError, match="points: mode 'points' needs at least one point"):
        run_mask(seg, dense, image, "points")


def test_zero_detections_give_an_empty_mask_and_a_warning(fs, seg, quiet, dense):
    from comfyui_diffstyler.nodes.adapters import fastsam

    records = Records()
    logger = logging.getLogger(fastsam.__name__)  # the orchestration warns
    logger.addHandler(records)
    try:
        image = ff.scene_tensor(2)
        assert detections(fs, quiet, image[0]).shape[0] == 0
        for mode, kw in [
            ("everything", {}),
            ("boxes", {"boxes": "[[0, 0, 50, 50]]"}),
            ("text", {"text": "a dog", "clip_folder": CLIP}),
        ]:
            mask, preview, _ = run_mask(seg, quiet, image, mode, **kw)
            assert mask.shape == (2, 64, 96) and not mask.any() and preview.shape == (2, 64, 96, 3)
        assert sum("found no objects" in m for m in records.messages) == 6  # one per image per run
        records.messages.clear()
        mask, _, _ = run_mask(seg, dense, image, "everything", combine="index", index=1000)
        assert not mask.any() and any("index 1000 is past" in m for m in records.messages)
    finally:
        logger.removeHandler(records)


def test_progress_per_image_and_interrupt(seg, dense):
    import comfy.model_management
    import comfy.utils

    calls = []
    with comfy_host.progress_hook(lambda value, total, preview, node_id=None: calls.append((value, total))):
        run_mask(seg, dense, ff.scene_tensor(3))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    comfy.model_management.interrupt_current_processing(True)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            run_mask(seg, dense, ff.scene_tensor(2))
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert dense.device().type == "cpu" and dense.predictor.device.type == "cpu"
    assert dense.predictor.results is None  # no outputs kept from the interrupted run


# ------------------------------------------------------------------------------------------ isolation


_NO_ULTRALYTICS = """
import importlib.abc, json, socket, sys
from pathlib import Path

class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "ultralytics" or name.startswith("ultralytics."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _Block())
def _refuse(*a, **k):
    raise OSError("network blocked")
socket.socket.connect = socket.create_connection = socket.getaddrinfo = _refuse
sys.path.insert(0, TESTS)
sys.path.insert(0, TESTS + "/support")
import conftest, comfy_setup
home = comfy_setup.setup(conftest.COMFYUI, Path(BASE))
import nodes
(home.models / "fastsam" / "FastSAM-s.pt").write_bytes(b"x")
registered = [n for n in ("DiffStylerFastSAMLoader", "DiffStylerFastSAMMask") if n in nodes.NODE_CLASS_MAPPINGS]
try:
    nodes.NODE_CLASS_MAPPINGS["DiffStylerFastSAMLoader"].execute("FastSAM-s.pt")
    error = None
except ImportError as e:
    error = str(e)
print(json.dumps({"registered": registered, "error": error, "imported": "ultralytics" in sys.modules}))
"""


@pytest.mark.slow
def test_without_ultralytics_nodes_register_and_fail_with_install_hint(tmp_path, comfy_home):
    script = f"TESTS = {str(REPO / 'tests')!r}\nBASE = {str(tmp_path)!r}\n" + textwrap.dedent(_NO_ULTRALYTICS)
    env = {**os.environ, "COMFYUI_PATH": str(comfy_home.root), "YOLO_CONFIG_DIR": str(tmp_path / "yolo")}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["registered"] == ["DiffStylerFastSAMLoader", "DiffStylerFastSAMMask"]
    assert "pip install ultralytics" in result["error"] and not result["imported"]


@pytest.mark.slow
def test_no_network_and_nothing_written_outside_the_temp_folders(offline, fs, seg, models):
    with pytest.raises(OSError, match="network access attempted"):
        socket.create_connection(("example.com", 80))
    with pytest.raises(OSError, match="network access attempted"):
        socket.getaddrinfo("example.com", 80)
    import ultralytics.utils

    assert os.environ.get("YOLO_OFFLINE") == "True" and os.environ.get("YOLO_AUTOINSTALL") == "False"
    assert not ultralytics.utils.ONLINE
    config_dir = Path(ultralytics.utils.USER_CONFIG_DIR).resolve()
    assert HOME / ".config" not in config_dir.parents, config_dir
    # a fresh copy of the weights goes through the whole load path once more
    (models / "ds_fresh.pt").write_bytes((models / DENSE).read_bytes())
    handle = seg.DiffStylerFastSAMLoader.execute("ds_fresh.pt").args[0]
    for mode, kw in [
        ("everything", {}),
        ("points", {"points": ff.points_json((5, 5, 1))}),
        ("boxes", {"boxes": "[[0, 0, 40, 30]]"}),
        ("text", {"text": "a cat", "clip_folder": CLIP}),
    ]:
        run_mask(seg, handle, ff.scene_tensor(), mode, **kw)
    after = _outside_state()
    assert after["comfy_models"] == offline["comfy_models"]
    assert after["repo_artifacts"] == offline["repo_artifacts"]
    assert after["ultralytics_config"] == offline["ultralytics_config"]
    assert after["hf_cache"] == offline["hf_cache"]
