"""Bad and unusual inputs for every node (issue #8): a clear error or a documented fallback, never a patched model.

Each error case asserts the message names the input, what was expected and the fix (``pytest.raises(match=...)``);
widget checks that ComfyUI runs before a graph starts (``validate_inputs``) are raised the same way here. After
every test (error or not), an autouse fixture checks that the shared tiny MODEL still samples bit-identically to a
reference taken at module start and that every MODEL an Injector patched in the test has no active DiffStyler run.

Documented fallbacks (docs/safety.md, 'Bad inputs and what happens', says what users get):

* all-zero mask: a warning, the style is skipped; full mask: the whole image is restyled;
* strength 0: the plain model on that style's rows; negative strength: the LoRA is subtracted (= core merge at
  that strength);
* cfg 1: no uncond rows; cfg 0: the style branches' negative-prompt prediction only;
* steps 1: runs, but ComfyUI's ``ddim_uniform`` with one step goes from sigma 0.041 (t = 1) to 0, so almost
  nothing changes;
* a 60x60 image: VAE Encode crops to 56x56 (centred), the latent is 7x7; a 60x60 (or 64x64) mask is
  area-resized to 7x7 (same aspect ratio), the output decodes to 56x56;
* a latent batch of 4 with 4 masks: every item is styled in its own region, like a batch of 1;
* eight styles: one UNet call per step (1 content row + 16 style rows);
* RGBA / one-channel images into FastSAM: alpha dropped, gray expanded to RGB; an 8192x8192 image at imgsz 256
  segments in ~10 s within 4.6x the float image's memory (~3.5 GB), with or without detections (selection runs
  at FastSAM's inference resolution; only the chosen mask is brought to 8k);
* Train Style LoRA: RGBA style images lose their alpha; a failing save leaves no file (and an older file of that
  name intact).
"""

from __future__ import annotations

import json
import os

import dst_core
import fastsam_fixtures as ff
import pytest
import reliability_tools as rt
import safetensors.torch
import torch
from dst_fixtures import prompts  # noqa: F401 - fixture

STEPS = 4
QUIET = "rel_quiet.pt"
DENSE = "rel_dense.pt"


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread for the whole module (see reliability_tools.torch_threads: much faster on a busy machine)."""
    with rt.torch_threads(1):
        yield


@pytest.fixture(scope="module")
def mods(pack):
    return rt.node_modules()


@pytest.fixture(scope="module")
def probe(tiny, prompts, one_torch_thread):
    """The tiny MODEL's reference output, taken before any test of this module ran."""
    return rt.ModelProbe(tiny.model, prompts["style"], prompts["neg"])


@pytest.fixture(scope="module")
def content(tiny):
    img = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return tiny.vae.encode(img).float()


@pytest.fixture(scope="module")
def inv(tiny, mods, content, prompts):
    return mods.inversion.invert(tiny.model, content, STEPS, prompts["empty"], disable_pbar=True, grid="sampling")


@pytest.fixture(scope="module")
def loras(tiny, comfy_home):
    """Good and bad LoRA files in models/loras."""
    folder = comfy_home.models / "loras"
    good = dst_core.random_lora(tiny.model, seed=40)
    safetensors.torch.save_file(good, str(folder / "rel_good.safetensors"))
    data = (folder / "rel_good.safetensors").read_bytes()
    (folder / "rel_truncated.safetensors").write_bytes(data[: len(data) // 2])
    (folder / "rel_text.safetensors").write_text("this is not a LoRA\n" * 10)
    flux = {
        f"transformer.single_transformer_blocks.{i}.attn.to_q.lora_{ab}.weight": torch.zeros(4, 64)
        for i in range(3)
        for ab in "AB"
    }
    safetensors.torch.save_file(flux, str(folder / "rel_flux.safetensors"))
    import dst_tiny

    xl = dst_core.random_lora(dst_tiny.tiny_unet("sdxl", seed=1), seed=3)
    safetensors.torch.save_file(xl, str(folder / "rel_sdxl.safetensors"))
    yield {"good": good}
    for name in ("rel_truncated", "rel_text", "rel_flux", "rel_sdxl"):  # later modules may list the folder
        (folder / f"{name}.safetensors").unlink()


@pytest.fixture(scope="module")
def fastsam_models(comfy_home, pack, tmp_path_factory):
    import sys

    mp = pytest.MonkeyPatch()
    if "ultralytics" not in sys.modules:  # ultralytics writes its settings file on import
        mp.setenv("YOLO_CONFIG_DIR", str(tmp_path_factory.mktemp("yolo_config")))
    from comfyui_diffstyler.nodes.adapters import fastsam_model as fastsam

    fastsam.import_ultralytics()
    folder = comfy_home.models / "fastsam"
    ff.save_fastsam(folder / QUIET, seed=1, class_bias=None)
    ff.save_fastsam(folder / DENSE, seed=0, class_bias=2.0)
    (folder / "rel_not_a_model.pt").write_text("not a model\n")
    yield fastsam
    (folder / "rel_not_a_model.pt").unlink()
    mp.undo()


class Tracker:
    """The MODELs an Injector patched during one test."""

    def __init__(self):
        self.patched = []


@pytest.fixture(autouse=True)
def stays_clean(probe):
    """After each test: the shared MODEL samples bit-identically, no patched MODEL holds an active run."""
    tracker = Tracker()
    yield tracker
    for model in tracker.patched:
        assert rt.attachment_run(model) == (None, None), "a patched MODEL kept an active DiffStyler run"
    assert probe.unchanged(), "the shared MODEL no longer gives its reference output"


# ---------------------------------------------------------------------------------------------- helpers


def add_style(mods, cond, mask, name="None", lora=None, strength=1.0, styles=None):
    return mods.style.DiffStylerStyleLoRA.execute(name, strength, cond, mask, lora=lora, styles=styles).args[0]


def inject(mods, tracker, model, styles, feat=0.6, qk=0.5):
    patched = mods.inject.DiffStylerCrossLoRAInjector.execute(model, styles, feat, qk, "adaptive", True).args[0]
    tracker.patched.append(patched)
    return patched


def sample(mods, patched, inversion, prompts, styles, cfg=7.5, background="exact"):
    node = mods.sample.DiffStylerMaskedFusionSampler
    return node.execute(patched, inversion, prompts["base"], prompts["neg"], cfg, background, styles).args[0]["samples"]


def half(h=64, w=64, left=True, batch=1):
    m = torch.zeros(batch, h, w)
    if left:
        m[:, :, : w // 2] = 1
    else:
        m[:, :, w // 2 :] = 1
    return m


def checked(result):
    """Raise a ``validate_inputs`` message as the ValueError ComfyUI shows before the run."""
    if result is not True:
        raise ValueError(result)
    return result


def mask_node(mods, image, fastsam=None, imgsz=64, mode="everything", points=""):
    node = mods.segment.DiffStylerFastSAMMask
    return node.execute(image, fastsam, mode, points, "", "", imgsz, 0.4, 0.9, "union", 0, "none")


def unknown_unet():
    import dst_tiny

    cfg = dict(
        dst_tiny.SD15_UNET,
        channel_mult=[1, 2],
        num_res_blocks=[2, 2],
        transformer_depth=[1, 1, 1, 1],
        transformer_depth_output=[1] * 6,
    )
    return dst_tiny._patcher(dst_tiny.TinySD15(cfg).get_model({}))


# ---------------------------------------------------------------------------------------------- clear errors

C = {}  # case id -> (function(ctx), exception type, message regex)


def case(name, exc, match, marks=()):
    def register(fn):
        C[name] = pytest.param(fn, exc, match, id=name, marks=marks)
        return fn

    return register


# Style LoRA Loader ------------------------------------------------------------------------------------------


@case(
    "lora_missing_file",
    FileNotFoundError,
    r"lora_name: 'rel_missing\.safetensors' was not found in the loras model folder\(s\) .*: put the file there",
)
def _(x):
    add_style(x.mods, x.prompts["style"], half(), name="rel_missing.safetensors")


@case(
    "lora_truncated_file",
    ValueError,
    r"lora_name: 'rel_truncated\.safetensors' could not be read as a LoRA file \(.*incomplete.*\): re-download "
    r"or re-save it",
)
def _(x):
    add_style(x.mods, x.prompts["style"], half(), name="rel_truncated.safetensors")


@case(
    "lora_not_safetensors",
    ValueError,
    r"lora_name: 'rel_text\.safetensors' could not be read as a LoRA file \(.*\): re-download or re-save it",
)
def _(x):
    add_style(x.mods, x.prompts["style"], half(), name="rel_text.safetensors")


@case(
    "lora_flux_keys_match_nothing",
    ValueError,
    r"style 1 LoRA \(rel_flux\.safetensors\): 0 of its 6 tensors match this model's UNet \(BaseModel, TinySD15\): "
    r"it is a LoRA for another architecture .*pick a LoRA trained for this checkpoint's family",
)
def _(x):
    styles = add_style(x.mods, x.prompts["style"], half(), name="rel_flux.safetensors")
    inject(x.mods, x.tracker, x.tiny.model, styles)


@case(
    "lora_sdxl_shapes_do_not_fit",
    ValueError,
    r"style 1 LoRA \(rel_sdxl\.safetensors\): \d+ of its \d+ matching layers have shapes that do not fit this "
    r"model \(e\.g\. .*LoRA gives \[.*\], model has \[.*\]\): it is a LoRA for another architecture; pick one "
    r"trained for this checkpoint's family",
)
def _(x):
    styles = add_style(x.mods, x.prompts["style"], half(), name="rel_sdxl.safetensors")
    inject(x.mods, x.tracker, x.tiny.model, styles)


@case("strength_nan", ValueError, r"strength: expected a (finite )?number, got (NaN|nan)")
def _(x):  # NaN passes ComfyUI's min/max check (every comparison is False): the node refuses it when it runs
    add_style(x.mods, x.prompts["style"], half(), strength=float("nan"))


@case(
    "strength_nan_from_a_link",
    ValueError,
    r"strength: expected a (finite )?number, got nan",
)
def _(x):
    add_style(x.mods, x.prompts["style"], half(), lora=x.loras["good"], strength=float("nan"))


@case(
    "conditioning_empty",
    ValueError,
    r"conditioning: empty CONDITIONING: connect a CLIP Text Encode of the style's prompt",
)
def _(x):
    add_style(x.mods, [], half())


@case(
    "mask_zero_size",
    ValueError,
    r"style 1 \(prompt only\) mask: the mask is empty \(shape \[1, 0, 64\]\): connect a mask with at least one pixel",
)
def _(x):
    add_style(x.mods, x.prompts["style"], torch.zeros(1, 0, 64))


@case(
    "mask_empty_batch",
    ValueError,
    r"style 1 \(prompt only\) mask: the mask is empty \(shape \[0, 64, 64\]\): connect a mask with at least one",
)
def _(x):
    add_style(x.mods, x.prompts["style"], torch.zeros(0, 64, 64))


@case(
    "mask_nan",
    ValueError,
    r"style 1 \(prompt only\) mask: the mask contains NaN or infinite values: check the node that made it",
)
def _(x):
    add_style(x.mods, x.prompts["style"], torch.full((1, 64, 64), float("nan")))


@case("mask_inf", ValueError, r"style 2 \(rel_good\.safetensors\) mask: the mask contains NaN or infinite values")
def _(x):
    styles = add_style(x.mods, x.prompts["style"], half())
    m = half()
    m[0, 0, 0] = float("inf")
    add_style(x.mods, x.prompts["style"], m, name="rel_good.safetensors", styles=styles)


@case(
    "mask_5d",
    ValueError,
    r"style 1 \(prompt only\) mask: expected a MASK of shape \[B,H,W\], got \[1, 2, 3, 64, 64\]: .*(connect|use)",
)
def _(x):
    add_style(x.mods, x.prompts["style"], torch.ones(1, 2, 3, 64, 64))


@case("seventeen_styles", ValueError, r"styles: at most 16 styles can be chained, got 17")
def _(x):
    styles = None
    for _ in range(17):
        styles = add_style(x.mods, x.prompts["style"], half(), styles=styles)


# DDIM Inversion ---------------------------------------------------------------------------------------------


def _invert(x, latent, clip="tiny", conditioning=None, steps=STEPS):
    clip = x.tiny.clip if clip == "tiny" else clip
    return x.mods.invert.DiffStylerInvert.execute(
        x.tiny.model, {"samples": latent}, steps, clip=clip, conditioning=conditioning, inversion_grid="sampling"
    )


@case(
    "invert_without_clip",
    ValueError,
    r"DDIM Inversion needs the empty prompt for the content branch: connect the checkpoint's CLIP to 'clip'",
)
def _(x):
    _invert(x, x.content, clip=None)


@case("invert_steps_0", ValueError, r"steps: expected at least 1 inversion step, got 0")
def _(x):  # in a graph ComfyUI's own min check refuses it first (tests/comfy/test_widget_ranges.py)
    x.mods.inversion.invert(x.tiny.model, x.content, 0, x.prompts["empty"], disable_pbar=True)


@case(
    "invert_16_channel_latent",
    ValueError,
    r"latent: the latent has 16 channels but this model expects 4: encode the image with this model's VAE",
)
def _(x):
    _invert(x, torch.zeros(1, 16, 8, 8))


@case("invert_nan_latent", ValueError, r"latent: the latent contains NaN or infinite values: re-encode the image")
def _(x):
    _invert(x, torch.full((1, 4, 8, 8), float("nan")))


@case(
    "invert_empty_latent_batch",
    ValueError,
    r"latent: the latent batch is empty \(0 images\): connect a VAE Encode of at least one image",
)
def _(x):
    _invert(x, torch.zeros(0, 4, 8, 8))


@case(
    "invert_video_latent",
    ValueError,
    r"latent: expected a LATENT with samples \[B,C,h,w\], got \[1, 4, 2, 8, 8\]: connect a VAE Encode output",
)
def _(x):
    _invert(x, torch.zeros(1, 4, 2, 8, 8))


# Cross-LoRA Attention Injector ------------------------------------------------------------------------------


@case(
    "inject_without_styles",
    ValueError,
    r"styles: no styles connected: chain at least one Style LoRA Loader \(DiffStyler\)",
)
def _(x):
    inject(x.mods, x.tracker, x.tiny.model, [])


@case(
    "inject_unknown_unet",
    ValueError,
    r"model: DiffStyler supports SD1\.x, SD2\.x and SDXL UNets; this one \(BaseModel, 6 decoder blocks\) is not "
    r"one of them: .*checkpoint",
)
def _(x):
    styles = add_style(x.mods, x.prompts["style"], half())
    inject(x.mods, x.tracker, unknown_unet(), styles)


@case(
    "inject_twice",
    ValueError,
    r"model: this MODEL already comes from a Cross-LoRA Attention Injector \(DiffStyler\); one Injector patches a "
    r"model for all its styles",
)
def _(x):
    styles = add_style(x.mods, x.prompts["style"], half(), lora=x.loras["good"])
    inject(x.mods, x.tracker, inject(x.mods, x.tracker, x.tiny.model, styles), styles)


# Masked Feature Fusion Sampler / Guider ---------------------------------------------------------------------


@case(
    "sample_plain_model",
    ValueError,
    r"model: this MODEL has no DiffStyler patches: connect the MODEL output of Cross-LoRA Attention Injector",
)
def _(x):
    styles = add_style(x.mods, x.prompts["style"], half())
    sample(x.mods, x.tiny.model, x.inv, x.prompts, styles)


@case(
    "sample_other_styles",
    ValueError,
    r"styles: the sampler got 1 style\(s\) that differ from the 1 the Injector patched \(LoRA, strength or order\): "
    r"connect the same DIFFSTYLER_STYLES to both nodes",
)
def _(x):
    styles = add_style(x.mods, x.prompts["style"], half())
    other = add_style(x.mods, x.prompts["style"], half(), strength=0.5, lora=x.loras["good"])
    sample(x.mods, inject(x.mods, x.tracker, x.tiny.model, styles), x.inv, x.prompts, other)


@case(
    "sample_inversion_of_other_model",
    ValueError,
    r"inversion: the inversion was made with another model .*: feed DDIM Inversion the same MODEL that goes into "
    r"the sampler",
)
def _(x):
    import dst_tiny

    styles = add_style(x.mods, x.prompts["style"], half())
    other = dst_tiny.tiny_unet("sd15", seed=9)
    sample(x.mods, inject(x.mods, x.tracker, other, styles), x.inv, x.prompts, styles)


@case(
    "sample_mask_batch_3_for_1",
    ValueError,
    r"style 1 \(prompt only\) mask: the mask batch has 3 masks but the content latent batch has 1 images: give one "
    r"mask \(shared\) or 1 masks",
)
def _(x):
    styles = add_style(x.mods, x.prompts["style"], half(batch=3))
    sample(x.mods, inject(x.mods, x.tracker, x.tiny.model, styles), x.inv, x.prompts, styles)


@case(
    "sample_mask_aspect",
    ValueError,
    r"style 1 \(prompt only\) mask: the mask is 128x64 \(width x height\) but the content latent is 8x8 \(64x64 "
    r"image\): the aspect ratios differ; make the mask from the content image or resize it to the image size",
)
def _(x):
    styles = add_style(x.mods, x.prompts["style"], half(64, 128))
    sample(x.mods, inject(x.mods, x.tracker, x.tiny.model, styles), x.inv, x.prompts, styles)


@case("guider_background", ValueError, r"background: expected one of \('exact', 'model'\), got 'blur'")
def _(x):
    styles = add_style(x.mods, x.prompts["style"], half())
    patched = inject(x.mods, x.tracker, x.tiny.model, styles)
    x.mods.guider.DiffStylerGuider(patched, x.inv, styles, x.prompts["base"], x.prompts["neg"], 5.0, "blur")


@case("guider_not_an_inversion", TypeError, r"inversion: connect the inversion output of DDIM Inversion \(DiffStyler\)")
def _(x):
    styles = add_style(x.mods, x.prompts["style"], half())
    patched = inject(x.mods, x.tracker, x.tiny.model, styles)
    x.mods.guider.DiffStylerGuider(patched, {"samples": x.content}, styles, x.prompts["base"], x.prompts["neg"], 5.0)


@case(
    "guider_latent_of_another_shape",
    ValueError,
    r"latent_image: got shape \[1, 4, 8, 12\] but the inversion's content latent is \[1, 4, 8, 8\]: connect the "
    r"inverted latent of the same DDIM Inversion",
)
def _(x):
    styles = add_style(x.mods, x.prompts["style"], half())
    patched = inject(x.mods, x.tracker, x.tiny.model, styles)
    g = x.mods.guider.DiffStylerGuider(patched, x.inv, styles, x.prompts["base"], x.prompts["neg"], 5.0)
    g.sample(torch.zeros(1, 4, 8, 12), torch.zeros(1, 4, 8, 12), x.mods.guider.ddim_sampler(), x.inv.sigmas)


# FastSAM ----------------------------------------------------------------------------------------------------


@case(
    "fastsam_not_a_model",
    ValueError,
    r"(?s)model_name: 'rel_not_a_model\.pt' \(.*\) is not a FastSAM/YOLOv8-seg model \(.*\); use FastSAM-s\.pt or "
    r"FastSAM-x\.pt from the FastSAM release",
)
def _(x):
    x.fastsam  # noqa: B018 - writes the files
    x.mods.segment.DiffStylerFastSAMLoader.execute("rel_not_a_model.pt")


@case(
    "fastsam_missing_file",
    FileNotFoundError,
    r"model_name: FastSAM weights 'rel_missing\.pt' not found in the 'fastsam' model folder \(.*\); put "
    r"FastSAM-s\.pt or FastSAM-x\.pt there and refresh the node",
)
def _(x):
    x.mods.segment.DiffStylerFastSAMLoader.execute("rel_missing.pt")


@case(
    "fastsam_imgsz_not_multiple_of_32",
    ValueError,
    r"imgsz: expected a multiple of 32 \(at least 32\), got 100; FastSAM's stride is 32",
)
def _(x):
    checked(x.mods.segment.DiffStylerFastSAMMask.validate_inputs(points="", boxes="", imgsz=100))


@case(
    "fastsam_five_channels",
    ValueError,
    r"image: expected .*channels.*, got 5.*: .*(convert|connect)",
)
def _(x):
    mask_node(x.mods, torch.rand(1, 64, 64, 5))


@case(
    "fastsam_empty_image",
    ValueError,
    r"image: the image batch is empty .*: connect",
)
def _(x):
    mask_node(x.mods, torch.zeros(0, 64, 64, 3))


# Train Style LoRA -------------------------------------------------------------------------------------------

TRAIN_ARGS = dict(
    prompt="painting of <sss>", steps=2, learning_rate=1e-3, rank=2, targets="attention", seed=0, resolution=64
)


def _train(x, image, **kw):
    args = {**TRAIN_ARGS, **kw}
    return x.mods.train.DiffStylerTrainStyleLoRA.execute(x.tiny.model, x.tiny.clip, x.tiny.vae, image, **args)


@case(
    "train_empty_image",
    ValueError,
    r"image: the style image batch is empty \(0 images\): connect at least one style image",
)
def _(x):
    _train(x, torch.zeros(0, 64, 64, 3))


@case(
    "train_gray_image",
    ValueError,
    r"image: expected an RGB image with at least 1x1 pixels, got shape \[1, 64, 64, 1\]: connect a Load Image",
)
def _(x):
    _train(x, torch.rand(1, 64, 64, 1))


@case(
    "train_save_name_path",
    ValueError,
    r"save_name: '\.\./x' is not a plain file name; .*give a name such as 'my_style'",
)
def _(x):
    checked(x.mods.train.DiffStylerTrainStyleLoRA.validate_inputs(save_name="../x"))


@case("train_steps_0", ValueError, r"steps: expected at least 1 training step, got 0")
def _(x):  # in a graph ComfyUI's own min check refuses it first (tests/comfy/test_widget_ranges.py)
    _train(x, torch.rand(1, 64, 64, 3), steps=0)


@case("train_rank_0", ValueError, r"rank: expected a LoRA rank of at least 1, got 0")
def _(x):
    _train(x, torch.rand(1, 64, 64, 3), rank=0)


class Ctx:
    def __init__(self, request, **kw):
        self._request = request
        self.__dict__.update(kw)

    @property
    def fastsam(self):
        return self._request.getfixturevalue("fastsam_models")


@pytest.mark.parametrize("fn, exc, match", list(C.values()))
def test_clear_error(request, tiny, mods, prompts, content, inv, loras, stays_clean, fn, exc, match):
    ctx = Ctx(
        request, tiny=tiny, mods=mods, prompts=prompts, content=content, inv=inv, loras=loras, tracker=stays_clean
    )
    with pytest.raises(exc, match=match):
        fn(ctx)


def test_every_node_has_bad_input_cases():
    names = " ".join(C)
    for family in ("lora", "mask", "invert", "inject", "sample", "guider", "fastsam", "train"):
        assert family in names
    assert len(C) >= 25


# ---------------------------------------------------------------------------------------------- fallbacks


def test_all_zero_mask_warns_and_skips_the_style(tiny, mods, inv, prompts, loras, stays_clean):
    other = dst_core.random_lora(tiny.model, seed=41)
    right = add_style(mods, prompts["style2"], half(left=False), lora=other)
    both = add_style(mods, prompts["style"], torch.zeros(1, 64, 64), lora=loras["good"])
    both = add_style(mods, prompts["style2"], half(left=False), lora=other, styles=both)
    with rt.LogRecords() as logs:
        out = sample(mods, inject(mods, stays_clean, tiny.model, both), inv, prompts, both)
    assert any("style 1" in m and "all-zero mask" in m and "skipped" in m for m in logs.messages), logs.messages
    alone = sample(mods, inject(mods, stays_clean, tiny.model, right), inv, prompts, right)
    assert torch.allclose(out, alone, atol=1e-6)
    assert torch.equal(out[..., :4], inv.content_latent[..., :4])


def test_full_mask_restyles_the_whole_image(tiny, mods, inv, prompts, loras, stays_clean):
    styles = add_style(mods, prompts["style"], torch.ones(1, 64, 64), lora=loras["good"])
    out = sample(mods, inject(mods, stays_clean, tiny.model, styles), inv, prompts, styles)
    assert torch.isfinite(out).all()
    assert float((out != inv.content_latent).float().mean()) > 0.99


def test_mask_values_outside_zero_to_one_are_clamped(mods, prompts):
    m = torch.linspace(-1.0, 2.0, 64 * 64).reshape(1, 64, 64)
    (style,) = add_style(mods, prompts["style"], m)
    assert torch.equal(style.mask, m.clamp(0, 1)), "a 0..255 or signed mask is read as 0..1 (clamped)"


def test_strength_zero_is_the_plain_model(tiny, mods, inv, prompts, loras, stays_clean):
    zero = add_style(mods, prompts["style"], half(), lora=loras["good"], strength=0.0)
    none = add_style(mods, prompts["style"], half())
    patched = inject(mods, stays_clean, tiny.model, zero)
    lora_layers = [k for k in patched.object_patches if "output_blocks.4.0" not in k]
    assert lora_layers == [], "strength 0 must not patch any LoRA layer"
    a = sample(mods, patched, inv, prompts, zero)
    b = sample(mods, inject(mods, stays_clean, tiny.model, none), inv, prompts, none)
    assert torch.equal(a, b)


def test_negative_strength_subtracts_the_lora(tiny, mods, inv, prompts, loras, stays_clean):
    import nodes

    full = torch.ones(1, 64, 64)
    outs = {}
    for s in (-0.7, 0.0, 0.7):
        styles = add_style(mods, prompts["style"], full, name="rel_good.safetensors", strength=s)
        outs[s] = sample(mods, inject(mods, stays_clean, tiny.model, styles, 0.0, 0.0), inv, prompts, styles)
    (merged,) = nodes.LoraLoaderModelOnly().load_lora_model_only(tiny.model, "rel_good.safetensors", -0.7)
    xt = mods.inversion.latent_out(tiny.model, inv.trajectory[0])
    ref = dst_core.plain_ddim(merged, xt, STEPS, prompts["style"], prompts["neg"], 7.5)
    assert float((outs[-0.7] - ref).abs().max()) <= 1e-4
    assert float((outs[-0.7] - outs[0.0]).abs().max()) > 1e-3
    assert float((outs[-0.7] - outs[0.7]).abs().max()) > 1e-3


def test_one_step_runs_and_barely_changes_the_image(tiny, mods, content, prompts, loras, stays_clean):
    one = mods.inversion.invert(tiny.model, content, 1, prompts["empty"], disable_pbar=True, grid="sampling")
    assert one.sigmas.shape == (2,) and float(one.sigmas[0]) < 0.05  # ddim_uniform, 1 step: sigma[t=1] -> 0
    styles = add_style(mods, prompts["style"], torch.ones(1, 64, 64), lora=loras["good"])
    out = sample(mods, inject(mods, stays_clean, tiny.model, styles), one, prompts, styles)
    change = float((out - content).abs().max())
    print(f"\nsteps=1: max latent change {change:.4f} (sigma {float(one.sigmas[0]):.4f} -> 0)")
    assert torch.isfinite(out).all() and 0 < change < 0.5


def test_cfg_one_and_zero(tiny, mods, inv, prompts, loras, stays_clean):
    styles = add_style(mods, prompts["style"], half(), lora=loras["good"])
    patched = inject(mods, stays_clean, tiny.model, styles)
    counter = patched.clone()
    rows = rt.count_unet_calls(counter)
    one = sample(mods, counter, inv, prompts, styles, cfg=1.0)
    assert rows[0] == 2 and rows[-1] == 1, rows  # content + cond while injecting, then cond only: no uncond rows
    zero = sample(mods, patched, inv, prompts, styles, cfg=0.0)
    neg_styles = add_style(mods, prompts["neg"], half(), lora=loras["good"])
    ref = sample(mods, inject(mods, stays_clean, tiny.model, neg_styles), inv, prompts, neg_styles, cfg=1.0)
    assert float((zero - ref).abs().max()) <= 1e-5, "cfg 0 = the negative prompt's prediction on the style rows"
    assert float((zero - one).abs().max()) > 1e-3


def test_latent_batch_of_four(tiny, mods, prompts, loras, stays_clean):
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        lat = tiny.vae.encode(torch.rand(4, 64, 64, 3, generator=g)).float()
    inv4 = mods.inversion.invert(tiny.model, lat, STEPS, prompts["empty"], disable_pbar=True, grid="sampling")
    masks = torch.zeros(4, 64, 64)
    for i in range(4):
        masks[i, 16 * i : 16 * i + 16, :] = 1  # a different band per image
    styles = add_style(mods, prompts["style"], masks, lora=loras["good"])
    out = sample(mods, inject(mods, stays_clean, tiny.model, styles), inv4, prompts, styles)
    assert out.shape == lat.shape
    for i in range(4):
        band = torch.zeros(8, dtype=torch.bool)
        band[2 * i : 2 * i + 2] = True
        assert torch.equal(out[i][:, ~band], lat[i][:, ~band]), f"image {i}: outside its mask = content"
        assert not torch.allclose(out[i][:, band], lat[i][:, band])
    one = mods.inversion.invert(tiny.model, lat[2:3], STEPS, prompts["empty"], disable_pbar=True, grid="sampling")
    single = add_style(mods, prompts["style"], masks[2:3], lora=loras["good"])
    ref = sample(mods, inject(mods, stays_clean, tiny.model, single), one, prompts, single)
    assert float((out[2:3] - ref).abs().max()) <= 1e-4, "a batch item is styled like a batch of one"
    two = add_style(mods, prompts["style"], masks[:2], lora=loras["good"])
    with pytest.raises(
        ValueError,
        match=r"the mask batch has 2 masks but the content latent batch has 4 images: give "
        r"one mask \(shared\) or 4 masks",
    ):
        sample(mods, inject(mods, stays_clean, tiny.model, two), inv4, prompts, two)


def test_eight_styles_in_one_call_per_step(tiny, mods, inv, prompts, stays_clean):
    styles = None
    for i in range(8):
        band = torch.zeros(1, 64, 64)
        band[:, 8 * i : 8 * i + 8, :] = 1
        styles = add_style(
            mods, prompts["style"], band, lora=dst_core.random_lora(tiny.model, seed=50 + i), styles=styles
        )
    patched = inject(mods, stays_clean, tiny.model, styles)
    counter = patched.clone()
    rows = rt.count_unet_calls(counter)
    out = sample(mods, counter, inv, prompts, styles)
    assert len(rows) == STEPS and rows[0] == 3 * 8 and rows[-1] == 16, rows  # a content row per style
    assert torch.isfinite(out).all()
    assert float((out != inv.content_latent).float().mean()) > 0.99


def test_sixty_pixel_image_is_cropped_by_the_vae(tiny, mods, prompts, loras, stays_clean):
    import nodes

    img = torch.rand(1, 60, 60, 3, generator=torch.Generator().manual_seed(6))
    (latent,) = nodes.VAEEncode().encode(tiny.vae, img)
    assert latent["samples"].shape == (1, 4, 7, 7)  # ComfyUI crops to 56x56 (multiples of 8), centred
    inversion, _ = mods.invert.DiffStylerInvert.execute(
        tiny.model, latent, STEPS, clip=tiny.clip, inversion_grid="sampling"
    ).args
    for mask in (half(60, 60), half(64, 64)):
        styles = add_style(mods, prompts["style"], mask, lora=loras["good"])
        out = sample(mods, inject(mods, stays_clean, tiny.model, styles), inversion, prompts, styles)
        assert out.shape == (1, 4, 7, 7)
        assert torch.equal(out[..., 4:], latent["samples"][..., 4:])  # right of the (binarized) half mask
        assert not torch.allclose(out[..., :3], latent["samples"][..., :3])
    (decoded,) = nodes.VAEDecode().decode(tiny.vae, {"samples": out})
    assert decoded.shape == (1, 56, 56, 3)


def test_fastsam_rgba_and_one_channel_images(mods, fastsam_models, stays_clean):
    handle = fastsam_models.load_model(QUIET)
    rgb = ff.scene_tensor(1)
    want = mask_node(mods, rgb, handle).args
    rgba = mask_node(mods, torch.cat([rgb, torch.rand(1, 64, 96, 1)], dim=-1), handle).args
    assert torch.equal(rgba[0], want[0]) and torch.equal(rgba[1], want[1])  # alpha dropped, colours kept
    gray = rgb.mean(dim=-1, keepdim=True)
    got = mask_node(mods, gray, handle).args
    ref = mask_node(mods, gray.expand(-1, -1, -1, 3), handle).args
    assert got[1].shape == (1, 64, 96, 3) and torch.equal(got[1], ref[1])


def test_fastsam_8k_image_stays_within_memory(mods, fastsam_models, stays_clean):
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


def test_fastsam_memory_does_not_grow_with_detections_times_pixels(mods, fastsam_models, stays_clean):
    dense = fastsam_models.load_model(DENSE)
    size = 640
    image = ff.scene_tensor(1, size, size)
    with fastsam_models.on_compute_device(dense):
        n = int(fastsam_models.detect(dense, image[0], 256, 0.4, 0.9).shape[0])
    assert n >= 50, f"the dense test model found {n} objects; this test needs many (50 or more)"
    out, peak = rt.peak_rss_growth(lambda: mask_node(mods, image, dense, imgsz=256))
    print(f"\n{n} detections on {size}x{size}: peak RSS growth {peak / 2**20:.0f} MB")
    assert peak < 64 * size * size + 200 * 2**20  # a few image-sized buffers + the network at imgsz


def test_fastsam_8k_image_with_many_detections_and_a_point(mods, fastsam_models, stays_clean):
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


def test_train_rgba_style_image_drops_alpha(tiny, mods, stays_clean):
    rgb = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(7))
    a, _ = _train_direct(tiny, mods, rgb)
    b, _ = _train_direct(tiny, mods, torch.cat([rgb, torch.zeros(1, 64, 64, 1)], dim=-1))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _train_direct(tiny, mods, image, **kw):
    args = {**TRAIN_ARGS, **kw}
    return mods.train.DiffStylerTrainStyleLoRA.execute(tiny.model, tiny.clip, tiny.vae, image, **args).args


@pytest.mark.parametrize(
    "failure", [OSError(28, "No space left on device"), KeyboardInterrupt("Ctrl+C")], ids=["disk_full", "interrupted"]
)
def test_failing_lora_save_leaves_no_partial_file(tiny, mods, comfy_home, monkeypatch, stays_clean, failure):
    """The save writes half the file, then fails (disk full) or is interrupted (a BaseException)."""
    folder = comfy_home.models / "loras"
    path = folder / "rel_saved.safetensors"
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(8))
    _train_direct(tiny, mods, image, save_name="rel_saved")
    before = path.read_bytes()
    real_save = safetensors.torch.save_file

    def half_then_fail(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as f:
            f.truncate(os.path.getsize(filename) // 2)
        raise failure

    monkeypatch.setattr(safetensors.torch, "save_file", half_then_fail)
    listing = set(os.listdir(folder))
    with pytest.raises(type(failure)):
        _train_direct(tiny, mods, image, save_name="rel_saved", seed=1)
    with pytest.raises(type(failure)):
        _train_direct(tiny, mods, image, save_name="rel_new_name", seed=1)
    assert set(os.listdir(folder)) == listing, "no temporary or half-written file is left behind"
    assert path.read_bytes() == before, "the older file of that name is intact"
    assert not (folder / "rel_new_name.safetensors").exists()


def test_prompts_with_an_area_are_refused_by_name(tiny, mods, inv, prompts, loras, stays_clean):
    """ComfyUI runs a conditioning with an area (ConditioningSetArea, or a mask with its area set to the bounds) on
    a crop of the latent, where the content row and the injected features do not line up: a clear error naming
    the input instead of a tensor-size error from inside the UNet. An area that covers the whole latent runs."""
    import node_helpers

    def with_area(cond, h, w, y=0, x=0):
        return node_helpers.conditioning_set_values(cond, {"area": (h, w, y, x), "strength": 1.0})

    cropped = add_style(mods, with_area(prompts["style"], 4, 4), half(), lora=loras["good"])
    with pytest.raises(ValueError, match=r"styles \(style 1, .*: its prompt\): this conditioning covers part"):
        sample(mods, inject(mods, stays_clean, tiny.model, cropped), inv, prompts, cropped)
    styles = add_style(mods, prompts["style"], half(), lora=loras["good"])
    patched = inject(mods, stays_clean, tiny.model, styles)
    area_base = dict(prompts, base=with_area(prompts["base"], 8, 4, 0, 4))
    with pytest.raises(ValueError, match=r"^positive: .*an area of 8x4 at \(0, 4\) of the 8x8 latent"):
        sample(mods, patched, inv, area_base, styles)
    whole = add_style(mods, with_area(prompts["style"], 8, 8), half(), lora=loras["good"])
    out = sample(mods, inject(mods, stays_clean, tiny.model, whole), inv, prompts, whole)
    # ComfyUI copies each area into the other prompts when it prepares them: equal up to float rounding
    assert float((out - sample(mods, patched, inv, prompts, styles)).abs().max()) <= 1e-5
