"""FastSAM Loader and FastSAM Mask: bad and unusual inputs (issue #8) give a clear error or a documented fallback.

Each error names the input, what was expected and the fix; ``stays_clean`` (dst_fixtures) checks the shared MODEL
after every test.

Documented fallbacks (docs/safety.md): RGBA / one-channel images: alpha dropped, gray expanded to RGB; an
8192x8192 image at imgsz 256 segments in ~10 s within 4.6x the float image's memory (~3.5 GB), with or without
detections (selection runs at FastSAM's inference resolution; only the chosen mask is brought to 8k).
"""

from __future__ import annotations

import json

import fastsam_fixtures as ff
import pytest
import reliability_tools as rt
import torch
from bad_input_tools import checked, mask_node
from dst_fixtures import (  # noqa: F401 - fixtures
    DENSE,
    QUIET,
    fastsam_models,
    mods,
    one_torch_thread,
    probe,
    prompts,
    stays_clean,
    yolo_config,
)

# ---------------------------------------------------------------------------------------------- clear errors


def test_file_that_is_not_a_model_asks_for_the_fastsam_release_weights(mods, fastsam_models):
    with pytest.raises(
        ValueError,
        match=r"(?s)model_name: 'rel_not_a_model\.pt' \(.*\) is not a FastSAM/YOLOv8-seg model \(.*\); use "
        r"FastSAM-s\.pt or FastSAM-x\.pt from the FastSAM release",
    ):
        mods.segment.DiffStylerFastSAMLoader.execute("rel_not_a_model.pt")


def test_missing_weights_file_names_the_fastsam_folder(mods):
    with pytest.raises(
        FileNotFoundError,
        match=r"model_name: FastSAM weights 'rel_missing\.pt' not found in the 'fastsam' model folder \(.*\); put "
        r"FastSAM-s\.pt or FastSAM-x\.pt there and refresh the node",
    ):
        mods.segment.DiffStylerFastSAMLoader.execute("rel_missing.pt")


def test_imgsz_not_a_multiple_of_32_is_refused_before_the_run(mods):
    with pytest.raises(
        ValueError, match=r"imgsz: expected a multiple of 32 \(at least 32\), got 100; FastSAM's stride is 32"
    ):
        checked(mods.segment.DiffStylerFastSAMMask.validate_inputs(points="", boxes="", imgsz=100))


def test_five_channel_image_is_refused(mods):
    with pytest.raises(ValueError, match=r"image: expected .*channels.*, got 5.*: .*(convert|connect)"):
        mask_node(mods, torch.rand(1, 64, 64, 5))


def test_empty_image_batch_is_refused(mods):
    with pytest.raises(ValueError, match=r"image: the image batch is empty .*: connect"):
        mask_node(mods, torch.zeros(0, 64, 64, 3))


# ---------------------------------------------------------------------------------------------- fallbacks


def test_rgba_image_drops_its_alpha_and_one_channel_image_is_expanded_to_rgb(mods, fastsam_models):
    handle = fastsam_models.load_model(QUIET)
    rgb = ff.scene_tensor(1)
    want = mask_node(mods, rgb, handle).args
    rgba = mask_node(mods, torch.cat([rgb, torch.rand(1, 64, 96, 1)], dim=-1), handle).args
    assert torch.equal(rgba[0], want[0]) and torch.equal(rgba[1], want[1])  # alpha dropped, colours kept
    gray = rgb.mean(dim=-1, keepdim=True)
    got = mask_node(mods, gray, handle).args
    ref = mask_node(mods, gray.expand(-1, -1, -1, 3), handle).args
    assert got[1].shape == (1, 64, 96, 3) and torch.equal(got[1], ref[1])


@pytest.mark.slow
def test_8k_image_without_detections_stays_within_8x_its_memory(mods, fastsam_models):
    """8192x8192 at imgsz 256, no detections: ~10 s and ~3.5 GB peak (4.6x the float image: the RGB copy, the uint8
    copy for ultralytics, the preview and its PNG) on one CPU thread."""
    handle = fastsam_models.load_model(QUIET)
    size = 8192
    image = torch.full((1, size, size, 3), 0.5)
    image[:, : size // 2] = 0.2
    with rt.LogRecords() as logs:
        out, peak = rt.peak_rss_growth(lambda: mask_node(mods, image, handle, imgsz=256))
    mask, preview = out.args
    assert mask.shape == (1, size, size) and not mask.any() and preview.shape == (1, size, size, 3)
    assert any("found no objects" in m for m in logs.messages)
    ratio = peak / image.nbytes
    print(f"\nFastSAM Mask {size}x{size} (no detections): peak RSS growth {peak / 2**20:.0f} MB = {ratio:.1f}x image")
    assert ratio < 8


@pytest.mark.slow
def test_memory_does_not_grow_with_detections_times_pixels(mods, fastsam_models):
    dense = fastsam_models.load_model(DENSE)
    size = 640
    image = ff.scene_tensor(1, size, size)
    with fastsam_models.on_compute_device(dense):
        n = int(fastsam_models.detect(dense, image[0], 256, 0.4, 0.9).shape[0])
    assert n >= 50, f"the dense test model found {n} objects; this test needs many (50 or more)"
    out, peak = rt.peak_rss_growth(lambda: mask_node(mods, image, dense, imgsz=256))
    print(f"\n{n} detections on {size}x{size}: peak RSS growth {peak / 2**20:.0f} MB")
    assert peak < 64 * size * size + 200 * 2**20  # a few image-sized buffers + the network at imgsz


@pytest.mark.slow
def test_8k_image_with_many_detections_and_a_point_stays_within_8x_its_memory(mods, fastsam_models):
    """Before the fix every detection was upsampled to 8192x8192 (~115 GB for 300 of them)."""
    dense = fastsam_models.load_model(DENSE)
    size = 8192
    image = torch.nn.functional.interpolate(ff.scene_tensor(1, 256, 256).permute(0, 3, 1, 2), size=(size, size))
    image = image.permute(0, 2, 3, 1).contiguous()
    with fastsam_models.on_compute_device(dense):
        dets = fastsam_models.detect(dense, image[0], 256, 0.4, 0.9)
    assert dets.shape[0] >= 50 and tuple(dets.shape[1:]) == (256, 256)  # the inference grid, not 8k
    gy, gx = (int(v) for v in torch.nonzero(dets.any(0))[len(torch.nonzero(dets.any(0))) // 2])
    x, y = gx * 32 + 5, gy * 32 + 17  # a pixel of that cell (8192 / 256 = 32 pixels a cell)
    points = json.dumps([{"x": x, "y": y, "label": 1}])
    out, peak = rt.peak_rss_growth(lambda: mask_node(mods, image, dense, mode="points", points=points, imgsz=256))
    mask = out.args[0]
    ratio = peak / image.nbytes
    print(f"\n{dets.shape[0]} detections, {size}x{size}, a point: peak RSS growth {peak / 2**20:.0f} MB = {ratio:.1f}x")
    assert mask.shape == (1, size, size) and bool(mask[0, y, x])
    assert ratio < 8
