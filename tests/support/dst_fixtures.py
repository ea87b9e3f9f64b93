"""Fixtures shared by tests on the real ComfyUI: the pack's modules, prompts, a content picture, its inversion, the
bad-input modules' files and their clean-model check.

Test modules import them by name (``from dst_fixtures import mods, prompts, content, inverted``): a second
``conftest.py`` under tests/ would take the module name ``conftest`` that tests import ``IN_CI`` and friends from.
A module-scoped fixture imported into a module is set up once for that module; ``one_torch_thread``, ``yolo_config``
and ``stays_clean`` are autouse wherever they are imported (with the fixtures they take).
"""

from __future__ import annotations

import sys

import pytest
import torch

STEPS = 10  # the sampling steps of the shared inversion where the test module sets no STEPS (test_core.STEPS)
QUIET = "rel_quiet.pt"  # a FastSAM test model that finds nothing in a plain picture
DENSE = "rel_dense.pt"  # one that finds many objects


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread for the whole module (see reliability_tools.torch_threads: much faster on a busy machine)."""
    import reliability_tools as rt

    with rt.torch_threads(1):
        yield


@pytest.fixture(scope="module")
def mods(pack):
    """The pack's node modules and the adapters tests drive directly."""
    from types import SimpleNamespace

    from comfyui_diffstyler.nodes import inject, invert, sample, segment, style, train
    from comfyui_diffstyler.nodes.adapters import ddim, guider, inversion, style_cache, training
    from comfyui_diffstyler.nodes.adapters.injector import install, layers
    from comfyui_diffstyler.nodes.core import rows

    return SimpleNamespace(
        inject=inject,
        invert=invert,
        sample=sample,
        segment=segment,
        style=style,
        train=train,
        guider=guider,
        ddim=ddim,
        inversion=inversion,
        inv=inversion,
        install=install,
        layers=layers,
        rows=rows,
        style_cache=style_cache,
        training=training,
    )


@pytest.fixture(scope="module")
def prompts(tiny):
    enc = lambda t: tiny.clip.encode_from_tokens_scheduled(tiny.clip.tokenize(t))  # noqa: E731
    return {
        "empty": enc(""),
        "style": enc("painting of <sss>, deer"),
        "style2": enc("sketch of grass"),
        "base": enc("a deer on grass"),
        "neg": enc("ugly, blurry, black, low res, unrealistic"),
    }


@pytest.fixture(scope="module")
def content(tiny):
    """A 64x64 random picture ``[1,64,64,3]`` and its latent ``[1,4,8,8]``."""
    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 64, 64, 3, generator=g)
    with torch.no_grad():
        return img, tiny.vae.encode(img).float()


@pytest.fixture(scope="module")
def content_latent(content):
    return content[1]


@pytest.fixture(scope="module")
def inverted(request, tiny, mods, content, prompts):
    """The content latent inverted over the test module's ``STEPS`` (``STEPS`` above where it sets none)."""
    steps = getattr(request.module, "STEPS", STEPS)
    return mods.inversion.invert(tiny.model, content[1], steps, prompts["empty"], disable_pbar=True, grid="sampling")


@pytest.fixture(scope="module")
def infos(comfy_home):
    """ComfyUI's /object_info for every registered node (in-process)."""
    from comfyui_diffstyler.nodes.harness import workflow as wt

    return wt.object_info()


@pytest.fixture(scope="module", autouse=True)
def yolo_config(tmp_path_factory):
    """ultralytics writes its settings file on import: keep it out of the home folder (autouse where imported)."""
    mp = pytest.MonkeyPatch()
    if "ultralytics" not in sys.modules:
        mp.setenv("YOLO_CONFIG_DIR", str(tmp_path_factory.mktemp("yolo_config")))
    yield
    mp.undo()


# ---------------------------------------------------------------------------------------------- bad inputs


@pytest.fixture(scope="module")
def probe(tiny, prompts, one_torch_thread):
    """The tiny MODEL's reference output, taken before any test of the module ran."""
    import reliability_tools as rt

    return rt.ModelProbe(tiny.model, prompts["style"], prompts["neg"])


class Tracker:
    """The MODELs an Injector patched during one test."""

    def __init__(self):
        self.patched = []


@pytest.fixture(autouse=True)
def stays_clean(probe):
    """After each test: the shared MODEL samples bit-identically, no patched MODEL holds an active run (autouse in
    the modules that import it, with ``probe``, ``prompts`` and ``one_torch_thread``)."""
    import reliability_tools as rt

    tracker = Tracker()
    yield tracker
    for model in tracker.patched:
        assert rt.attachment_run(model) == (None, None), "a patched MODEL kept an active DiffStyler run"
    assert probe.unchanged(), "the shared MODEL no longer gives its reference output"


@pytest.fixture(scope="module")
def loras(tiny, comfy_home):
    """Good and bad LoRA files in models/loras: rel_good, rel_truncated, rel_text, rel_flux, rel_sdxl."""
    import dst_core
    import dst_tiny
    import safetensors.torch

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
    xl = dst_core.random_lora(dst_tiny.tiny_unet("sdxl", seed=1), seed=3)
    safetensors.torch.save_file(xl, str(folder / "rel_sdxl.safetensors"))
    yield {"good": good}
    for name in ("rel_truncated", "rel_text", "rel_flux", "rel_sdxl"):  # later modules may list the folder
        (folder / f"{name}.safetensors").unlink()


@pytest.fixture(scope="module")
def fastsam_models(comfy_home, pack, yolo_config):
    """The FastSAM adapter, with QUIET, DENSE and a file that is not a model in models/fastsam."""
    import fastsam_fixtures as ff
    from comfyui_diffstyler.nodes.adapters import fastsam_model as fastsam

    fastsam.import_ultralytics()
    folder = comfy_home.models / "fastsam"
    ff.save_fastsam(folder / QUIET, seed=1, class_bias=None)
    ff.save_fastsam(folder / DENSE, seed=0, class_bias=2.0)
    (folder / "rel_not_a_model.pt").write_text("not a model\n")
    yield fastsam
    (folder / "rel_not_a_model.pt").unlink()
