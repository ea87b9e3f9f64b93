"""FastSAM prompt parsing and checks: point/box JSON, widget values, prompts inside the image (no ComfyUI)."""

from __future__ import annotations

import pytest
from comfyui_diffstyler.nodes.core import fastsam_prompts
from comfyui_diffstyler.nodes.core.fastsam_prompts import BoxPrompt, MaskRequest, PointPrompt

H, W = 40, 60


def test_parse_points_formats():
    pts = fastsam_prompts.parse_points('[{"x": 3, "y": 4, "label": 1}, {"x": 5.5, "y": 6.49, "label": 0}]')
    assert pts == (PointPrompt(3, 4, True), PointPrompt(6, 6, False))  # rounded half up, as the JS editor does
    # other point editors write no label: positive
    assert fastsam_prompts.parse_points('[{"x": 1, "y": 2}]') == (PointPrompt(1, 2, True),)
    assert fastsam_prompts.parse_points("[[1, 2], [3, 4, 0]]") == (PointPrompt(1, 2, True), PointPrompt(3, 4, False))
    assert fastsam_prompts.parse_points('{"x": 7, "y": 8}') == (PointPrompt(7, 8, True),)
    assert (
        fastsam_prompts.parse_points("") == ()
        and fastsam_prompts.parse_points("  \n") == ()
        and fastsam_prompts.parse_points(None) == ()
    )


@pytest.mark.parametrize(
    "text, match",
    [
        ('[{"x": 1, "y": 2', r"points: invalid JSON .*line 1"),
        ('[{"x": 1}]', r"points: point 0 needs 'x' and 'y'"),
        ('[{"x": 1, "y": 2, "label": 2}]', r"points: point 0 label must be 1 .* or 0"),
        ('[{"x": true, "y": 2}]', r"points: point 0 x must be a finite number"),
        ('[{"x": "3", "y": 2}]', r"points: point 0 x must be a finite number"),
        ('"hello"', r"points: expected a JSON list"),
        ("[[1]]", r"points: point 0 must be an object"),
    ],
)
def test_parse_points_errors_name_the_widget(text, match):
    with pytest.raises(ValueError, match=match):
        fastsam_prompts.parse_points(text)


def test_parse_boxes():
    assert fastsam_prompts.parse_boxes("[[1, 2, 30, 40], [0, 0, 5.5, 6.2]]") == (
        BoxPrompt(1, 2, 30, 40),
        BoxPrompt(0, 0, 6, 6),
    )
    assert fastsam_prompts.parse_boxes("[1, 2, 30, 40]") == (BoxPrompt(1, 2, 30, 40),)
    assert fastsam_prompts.parse_boxes("") == ()
    with pytest.raises(ValueError, match=r"boxes: invalid JSON"):
        fastsam_prompts.parse_boxes("[[1, 2, 3, 4]")
    with pytest.raises(ValueError, match=r"boxes: box 0 \[5, 2, 3, 4\] is empty"):
        fastsam_prompts.parse_boxes("[[5, 2, 3, 4]]")
    with pytest.raises(ValueError, match=r"boxes: box 0 \[1, 2, 1, 4\] is empty"):  # empty once rounded
        fastsam_prompts.parse_boxes("[[1.4, 2, 0.6, 4]]")
    with pytest.raises(ValueError, match=r"boxes: box 1 must be \[x0, y0, x1, y1\]"):
        fastsam_prompts.parse_boxes("[[0, 0, 3, 4], [1, 2, 3]]")


def test_build_request_checks_widgets():
    req = fastsam_prompts.build_request("points", '[{"x": 1, "y": 2}]', "", "", "largest", 2, 640, 0.3, 0.8)
    assert req == MaskRequest("points", (PointPrompt(1, 2),), (), (), "largest", 2, 640, 0.3, 0.8)
    assert fastsam_prompts.build_request("text", text="a dog\n\n red car ").texts == ("a dog", "red car")
    with pytest.raises(ValueError, match="points: mode 'points' needs at least one point"):
        fastsam_prompts.build_request("points", "")
    with pytest.raises(ValueError, match="boxes: mode 'boxes' needs at least one box"):
        fastsam_prompts.build_request("boxes", boxes="[]")
    with pytest.raises(ValueError, match="text: mode 'text' needs"):
        fastsam_prompts.build_request("text", text="  ")
    with pytest.raises(ValueError, match="imgsz: expected a multiple of 32"):
        fastsam_prompts.build_request("everything", imgsz=1000)
    with pytest.raises(ValueError, match="combine: expected one of"):
        fastsam_prompts.build_request("everything", combine="sum")
    with pytest.raises(ValueError, match="mode: expected one of"):
        fastsam_prompts.build_request("all")


def test_prompts_outside_the_image_name_input_and_size():
    inside = fastsam_prompts.build_request("points", '[{"x": 59, "y": 39}]', "[[0, 0, 60, 40]]")
    fastsam_prompts.check_prompts_inside(inside, H, W)
    with pytest.raises(ValueError, match=r"points: point 0 \(x=60, y=3\) is outside the 60x40 image"):
        fastsam_prompts.check_prompts_inside(fastsam_prompts.build_request("points", '[{"x": 60, "y": 3}]'), H, W)
    with pytest.raises(ValueError, match=r"points: point 1 \(x=-1, y=3\)"):
        fastsam_prompts.check_prompts_inside(fastsam_prompts.build_request("points", "[[1, 1], [-1, 3]]"), H, W)
    with pytest.raises(ValueError, match=r"boxes: box 0 \[0, 0, 61, 10\] is outside the 60x40 image"):
        fastsam_prompts.check_prompts_inside(fastsam_prompts.build_request("boxes", boxes="[[0, 0, 61, 10]]"), H, W)
