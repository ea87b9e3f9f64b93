"""The original pixels outside the styled regions (issue #18 part 1), on photo-like pictures of odd sizes.

The graph is the shipped workflows' ending: VAE Decode -> Region Mask (DiffStyler) -> ComfyUI's Image Composite
Masked (destination: the content picture as loaded, source: the decoded result) -> Save Image. The saved PNG is
read back and compared with the input PNG:

* the output has the picture's original size: VAE Encode styles the centred crop to multiples of 8 (517x389 ->
  512x384 from (2, 2)) and the result is pasted back there, the border it cropped stays the original's;
* every pixel farther than ``feather`` from the region (the union of the style masks at latent size, any value
  above 0 after a bilinear resize, as the sampler keeps it) equals the input bit for bit;
* inside the region it is the decoded result (the same PNG bytes a Save Image of VAE Decode writes);
* in between it is ``m * decoded + (1 - m) * original`` with ``m = 1 - distance / feather``.

The region and the distances are recomputed here with scipy's exact Euclidean distance transform.
"""

from __future__ import annotations

import numpy as np
import photo_fixtures as pf
import pytest
import scipy.ndimage
from comfyui_diffstyler.nodes.harness import workflow as wt
from dst_fixtures import infos, one_torch_thread  # noqa: F401 - fixtures
from PIL import Image

FEATHER = 12
STEPS = 2


def _save(path, array):
    Image.fromarray(array).save(path)


def _ellipse(height: int, width: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    red = np.zeros((height, width, 3), np.uint8)
    red[..., 0] = np.where(inside, 255, 0)
    return red


def paste_graph(infos: dict, tiny, picture: str, masks: list[str], feather: int, keep: bool, background: str):
    """The API prompt and the ids of the two Save Image nodes (pasted, decoded)."""
    wf = {"last_node_id": 0, "last_link_id": 0, "nodes": [], "links": [], "version": 0.4}

    def add(kind, values=None):
        return wt.add_node(wf, infos, kind, (0, 0), values)

    ckpt = add("CheckpointLoaderSimple", [tiny.checkpoint])
    vae = add("DiffStylerTestTinyVAE", [0, "fixed"])
    image = add("LoadImage", [picture, "image"])
    enc = add("VAEEncode")
    inv = add("DiffStylerInvert", [STEPS, "off", 0.6, 0.5, "sampling"])
    neg = add("CLIPTextEncode", ["ugly"])
    base = add("CLIPTextEncode", ["a landscape"])
    wt.connect(wf, image, 0, enc, "pixels")
    wt.connect(wf, vae, 0, enc, "vae")
    wt.connect(wf, ckpt, 0, inv, "model")
    wt.connect(wf, enc, 0, inv, "latent")
    wt.connect(wf, ckpt, 1, inv, "clip")
    for n in (neg, base):
        wt.connect(wf, ckpt, 1, n, "clip")
    styles = None
    for i, name in enumerate(masks):
        m = add("LoadImageMask", [name, "red", "image"])
        text = add("CLIPTextEncode", [f"painting of <sss>, style {i + 1}"])
        wt.connect(wf, ckpt, 1, text, "clip")
        style = add("DiffStylerStyleLoRA", ["None", 1.0])
        wt.connect(wf, text, 0, style, "conditioning")
        wt.connect(wf, m, 0, style, "mask")
        if styles is not None:
            wt.connect(wf, styles, 0, style, "styles")
        styles = style
    inj = add("DiffStylerCrossLoRAInjector")
    wt.connect(wf, ckpt, 0, inj, "model")
    wt.connect(wf, styles, 0, inj, "styles")
    sampler = add("DiffStylerMaskedFusionSampler", [7.5, background])
    wt.connect(wf, inj, 0, sampler, "model")
    wt.connect(wf, inv, 0, sampler, "inversion")
    wt.connect(wf, base, 0, sampler, "positive")
    wt.connect(wf, neg, 0, sampler, "negative")
    wt.connect(wf, styles, 0, sampler, "styles")
    dec = add("VAEDecode")
    wt.connect(wf, sampler, 0, dec, "samples")
    wt.connect(wf, vae, 0, dec, "vae")
    region = add("DiffStylerRegionMask", [feather, keep])
    wt.connect(wf, styles, 0, region, "styles")
    wt.connect(wf, image, 0, region, "image")
    wt.connect(wf, vae, 0, region, "vae")
    comp = add("ImageCompositeMasked", [0, 0, False])
    wt.connect(wf, image, 0, comp, "destination")
    wt.connect(wf, dec, 0, comp, "source")
    wt.connect(wf, region, 0, comp, "mask")
    wt.connect(wf, region, 1, comp, "x")
    wt.connect(wf, region, 2, comp, "y")
    save_paste = add("SaveImage", ["paste"])
    save_dec = add("SaveImage", ["decoded"])
    wt.connect(wf, comp, 0, save_paste, "images")
    wt.connect(wf, dec, 0, save_dec, "images")
    return wt.ui_to_api(wf, infos), str(save_paste["id"]), str(save_dec["id"])


def _png(home, result, node_id) -> np.ndarray:
    (ref,) = result.ui[node_id]["images"]
    with Image.open(home.output / ref.get("subfolder", "") / ref["filename"]) as im:
        assert im.mode == "RGB"
        return np.asarray(im).astype(np.int16)


CASES = {  # (height, width): ellipses (cy, cx, ry, rx) as fractions of the picture
    (389, 517): [(0.55, 0.35, 0.22, 0.18)],
    (424, 640): [(0.3, 0.7, 0.15, 0.12), (0.7, 0.3, 0.2, 0.25)],
}
QUICK = (389, 517)  # the size the quick tier (-m "not slow") runs


@pytest.mark.parametrize(
    "size",
    [s if s == QUICK else pytest.param(s, marks=pytest.mark.slow) for s in sorted(CASES)],
    ids=lambda s: f"{s[1]}x{s[0]}",
)
def test_original_pixels_outside_the_region_bit_for_bit(size, infos, tiny, comfy_home, run_graph):
    height, width = size
    photo = pf.photo(height, width, seed=height)
    picture = f"paste_{width}x{height}.png"
    _save(comfy_home.input / picture, photo)
    names, union = [], np.zeros((height, width, 3), np.uint8)
    for i, (cy, cx, ry, rx) in enumerate(CASES[size]):
        mask = _ellipse(height, width, cy * height, cx * width, ry * height, rx * width)
        names.append(f"paste_{width}x{height}_mask{i}.png")
        _save(comfy_home.input / names[-1], mask)
        union = np.maximum(union, mask)
    prompt, paste_id, dec_id = paste_graph(infos, tiny, picture, names, FEATHER, True, "exact")
    result = run_graph(prompt)
    out, decoded = _png(comfy_home, result, paste_id), _png(comfy_home, result, dec_id)
    original = photo.astype(np.int16)
    assert out.shape == original.shape, "the output keeps the picture's original size"

    region, (x, y, cw, ch) = pf.region_like_sampler([union[..., 0] / 255.0], height, width)
    assert decoded.shape == (ch, cw, 3), "VAE Encode cropped the picture to multiples of 8"
    dist = scipy.ndimage.distance_transform_edt(~region)
    outside = dist >= FEATHER
    seam = (dist > 0) & (dist < FEATHER)
    assert region.mean() > 0.05 and outside.mean() > 0.3 and seam.any()
    # outside the region grown by the feather width (and in VAE Encode's border): the input, bit for bit
    np.testing.assert_array_equal(out[outside], original[outside])
    # the decoded picture alone differs there: this is what the paste is for
    dec_full = original.copy()
    dec_full[y : y + ch, x : x + cw] = decoded
    in_crop = np.zeros_like(region)
    in_crop[y : y + ch, x : x + cw] = True
    assert (dec_full[outside & in_crop] != original[outside & in_crop]).any(axis=-1).mean() > 0.5
    # inside the region: the decoded result
    np.testing.assert_array_equal(out[region], dec_full[region])
    # the seam: a blend over the feather width (uint8 truncation of the float blend: within 1)
    m = (1.0 - dist / FEATHER)[..., None]
    blend = m * dec_full + (1.0 - m) * original
    assert np.abs(out - blend)[seam].max() <= 1.0 + 1e-4
    differs = (dec_full != original).any(axis=-1) & seam
    assert differs.sum() > 100


@pytest.mark.slow
def test_keep_original_off_is_the_decoded_crop_in_the_original_border(infos, tiny, comfy_home, run_graph):
    """background = model: the model repaints the background; keep_original off pastes the whole decoded crop."""
    height, width = 389, 517
    photo = pf.photo(height, width, seed=7)
    _save(comfy_home.input / "paste_model.png", photo)
    _save(comfy_home.input / "paste_model_mask.png", _ellipse(height, width, 200, 250, 60, 90))
    prompt, paste_id, dec_id = paste_graph(infos, tiny, "paste_model.png", ["paste_model_mask.png"], 8, False, "model")
    result = run_graph(prompt)
    out, decoded = _png(comfy_home, result, paste_id), _png(comfy_home, result, dec_id)
    np.testing.assert_array_equal(out[2 : 2 + 384, 2 : 2 + 512], decoded)
    border = np.ones((height, width), bool)
    border[2 : 2 + 384, 2 : 2 + 512] = False
    np.testing.assert_array_equal(out[border], photo.astype(np.int16)[border])
