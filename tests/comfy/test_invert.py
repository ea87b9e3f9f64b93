"""DDIM Inversion (issue: foundation): reconstruction, schedule, fingerprint, graph, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dst_fixtures import one_torch_thread  # noqa: F401 - fixture
from PIL import Image


@pytest.fixture(scope="module")
def inv_mod(pack):
    from comfyui_diffstyler.nodes.adapters import inversion

    return inversion


@pytest.fixture(scope="module")
def empty_cond(tiny):
    return tiny.clip.encode_from_tokens_scheduled(tiny.clip.tokenize(""))


def content_latent(tiny, h=64, w=64, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(batch, h, w, 3, generator=g)
    with torch.no_grad():
        return tiny.vae.encode(img).float()


def ddim_sample_from(model, x_t_latent, steps, cond, cfg=1.0):
    """Plain DDIM back from the inverted start, with the released last step (to alphas_cumprod[0])."""
    import dst_core

    return dst_core.plain_ddim(model, x_t_latent, steps, cond, cond, cfg)


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


def test_reconstruction_10_and_50_steps(tiny, inv_mod, empty_cond):
    lat = content_latent(tiny)
    errs = {}
    for steps in (10, 50):
        res = inv_mod.invert(tiny.model, lat, steps, empty_cond, disable_pbar=True, grid="sampling")
        x_t = inv_mod.latent_out(tiny.model, res.trajectory[0])
        rec = ddim_sample_from(tiny.model, x_t, steps, empty_cond)
        errs[steps] = rel_err(rec, lat)
        # the trajectory starts on the clean latent and moves away from it
        assert rel_err(inv_mod.latent_out(tiny.model, res.trajectory[-1]), lat) < 1e-6
        assert rel_err(x_t, lat) > 0.1
    print(f"\nDDIM inversion reconstruction relative error: 10 steps {errs[10]:.3e}, 50 steps {errs[50]:.3e}")
    assert errs[50] <= 5e-3  # the released step rule on the coarse sampling grid (the fine grid: see below)
    assert errs[50] < errs[10]


def test_batch_and_non_square(tiny, inv_mod, empty_cond):
    lat = content_latent(tiny, h=64, w=96, batch=2, seed=3)
    res = inv_mod.invert(tiny.model, lat, 20, empty_cond, disable_pbar=True, grid="sampling")
    assert res.trajectory.shape == (21, 2, 4, 8, 12)
    rec = ddim_sample_from(tiny.model, inv_mod.latent_out(tiny.model, res.trajectory[0]), 20, empty_cond)
    assert rel_err(rec[0], lat[0]) < 5e-3 and rel_err(rec[1], lat[1]) < 5e-3
    # the two batch items invert independently
    single = inv_mod.invert(tiny.model, lat[1:2], 20, empty_cond, disable_pbar=True, grid="sampling")
    assert torch.allclose(single.trajectory[:, 0], res.trajectory[:, 1], atol=1e-5)


@pytest.mark.parametrize(
    "grid,rows", [pytest.param("fine", 901, marks=pytest.mark.slow), ("fine/10", 91), ("sampling", 10)]
)
def test_grids_rows_and_reconstruction(tiny, inv_mod, empty_cond, grid, rows):
    """Each grid walks t = 1 .. the first sampling timestep (901 for 10 steps) at its stride, keeps the latents at
    the sampling timesteps only, and plain DDIM from its start gives the content back."""
    lat = content_latent(tiny)
    res = inv_mod.invert(tiny.model, lat, 10, empty_cond, disable_pbar=True, grid=grid)
    assert res.unet_rows == rows and res.grid == grid
    assert res.trajectory.shape == (11, 1, 4, 8, 8)  # 10 sampling timesteps + the clean latent, not 901
    rec = ddim_sample_from(tiny.model, inv_mod.latent_out(tiny.model, res.trajectory[0]), 10, empty_cond)
    err = rel_err(rec, lat)
    print(f"\ninversion grid {grid}: {rows} UNet rows, reconstruction rel. error {err:.2e}")
    assert err < 2e-2


def test_progress_bar_honours_comfy_setting(tiny, inv_mod, empty_cond, capsys):
    """ComfyUI's --disable-progress-bars (PROGRESS_BAR_ENABLED false) silences the inversion's console bar."""
    import comfy.utils

    lat = content_latent(tiny)
    old = comfy.utils.PROGRESS_BAR_ENABLED
    try:
        comfy.utils.PROGRESS_BAR_ENABLED = False
        capsys.readouterr()
        inv_mod.invert(tiny.model, lat, 3, empty_cond, grid="sampling")
        assert "it/s" not in capsys.readouterr().err
        comfy.utils.PROGRESS_BAR_ENABLED = True
        inv_mod.invert(tiny.model, lat, 3, empty_cond, grid="sampling")
        assert "3/3" in capsys.readouterr().err
    finally:
        comfy.utils.PROGRESS_BAR_ENABLED = old


def test_sigmas_are_the_samplers(tiny, inv_mod, empty_cond):
    import comfy.samplers

    lat = content_latent(tiny)
    for steps in (1, 7, 50):
        res = inv_mod.invert(tiny.model, lat, steps, empty_cond, disable_pbar=True, grid="sampling")
        ks = comfy.samplers.KSampler(tiny.model, steps=steps, device="cpu", sampler="ddim", scheduler="ddim_uniform")
        assert res.sigmas.shape == ks.sigmas.shape  # ddim_uniform may add a step (7 -> 8)
        assert torch.equal(res.sigmas, ks.sigmas.cpu().float())
        assert float(res.sigmas[-1]) == 0.0


def test_mismatched_reuse_names_what_differs(tiny, inv_mod, empty_cond):
    import dst_tiny

    lat = content_latent(tiny)
    res = inv_mod.invert(tiny.model, lat, 10, empty_cond, disable_pbar=True, grid="sampling")
    sig10 = inv_mod.sampling_sigmas(tiny.model, 10)
    inv_mod.check_inversion(res, tiny.model, sig10, lat.shape)  # same: fine
    inv_mod.check_inversion(res, tiny.model.clone(), sig10, lat.shape)  # a clone is the same model

    with pytest.raises(ValueError, match="10 steps but the sampler uses 20"):
        inv_mod.check_inversion(res, tiny.model, inv_mod.sampling_sigmas(tiny.model, 20), lat.shape)
    other = dst_tiny.tiny_unet("sd15", seed=5)
    with pytest.raises(ValueError, match="another model"):
        inv_mod.check_inversion(res, other, sig10, lat.shape)
    with pytest.raises(ValueError, match=r"latent of shape \[1, 4, 8, 8\].*\[1, 4, 8, 16\]"):
        inv_mod.check_inversion(res, tiny.model, sig10, (1, 4, 8, 16))
    # a merged LoRA makes it another model too
    patched = tiny.model.clone()
    key = next(k for k in patched.model.state_dict() if k.endswith("out.2.weight"))
    patched.add_patches({key: ("diff", (torch.zeros_like(patched.model.state_dict()[key]),))}, 1.0)
    with pytest.raises(ValueError, match="another model"):
        inv_mod.check_inversion(res, patched, sig10, lat.shape)


def test_bad_inputs(tiny, inv_mod, empty_cond, pack):
    from comfyui_diffstyler.nodes.invert import DiffStylerInvert

    with pytest.raises(ValueError, match="latent: the latent has 3 channels"):
        inv_mod.invert(tiny.model, torch.zeros(1, 3, 8, 8), 10, empty_cond)
    with pytest.raises(ValueError, match="latent batch is empty"):
        inv_mod.invert(tiny.model, torch.zeros(0, 4, 8, 8), 10, empty_cond)
    with pytest.raises(ValueError, match="steps: expected at least 1"):
        inv_mod.invert(tiny.model, torch.zeros(1, 4, 8, 8), 0, empty_cond)
    with pytest.raises(ValueError, match="connect the checkpoint's CLIP"):
        DiffStylerInvert.execute(tiny.model, {"samples": torch.zeros(1, 4, 8, 8)}, 3, inversion_grid="sampling")


def _save_input_image(comfy_home, name="content.png", size=(64, 64), seed=0):
    rng = np.random.default_rng(seed)
    arr = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(comfy_home.input / name)
    return name


def test_graph_inversion_runs_and_is_cached(tiny, run_graph, comfy_home):
    name = _save_input_image(comfy_home)
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny.checkpoint}},
        "2": {"class_type": "DiffStylerTestTinyVAE", "inputs": {"seed": 0}},
        "3": {"class_type": "LoadImage", "inputs": {"image": name}},
        "4": {"class_type": "VAEEncode", "inputs": {"pixels": ["3", 0], "vae": ["2", 0]}},
        "5": {
            "class_type": "DiffStylerInvert",
            "inputs": {
                "model": ["1", 0],
                "latent": ["4", 0],
                "steps": 8,
                "clip": ["1", 1],
                "inversion_grid": "sampling",
            },
        },
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 1], "vae": ["2", 0]}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }
    first = run_graph(prompt)
    assert "5" in first.executed_nodes()
    inv = first.outputs("5")[0][0]
    assert inv.trajectory.shape == (9, 1, 4, 8, 8)
    second = run_graph.executor and run_graph(prompt)
    assert "5" in second.cached_nodes()
    assert "5" not in second.executed_nodes()
    # a new step count is a new inversion
    prompt["5"]["inputs"]["steps"] = 9
    third = run_graph(prompt)
    assert "5" in third.executed_nodes()
