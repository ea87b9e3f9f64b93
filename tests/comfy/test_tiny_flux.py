"""The tiny Flux.1 of the harness (issue #26, item 7): ComfyUI's loader reads its file where the host's detection
allows, the in-process build is the same model, CONDITIONING built directly drives sampling, and a diffusers twin
with the same weights computes the same velocity (the ground truth of the Flux LoRA tests)."""

from __future__ import annotations

import pytest
import torch

TOL = 1e-5  # relative (max abs difference over max abs output); float32 agreement is ~3e-7


@pytest.fixture(scope="module")
def tf(pack):
    from comfyui_diffstyler.nodes.harness import tiny_flux

    return tiny_flux


@pytest.fixture(scope="module")
def unet_folder(comfy_home):
    import folder_paths

    folder = comfy_home.models / "diffusion_models"
    folder.mkdir(parents=True, exist_ok=True)
    folder_paths.add_model_folder_path("diffusion_models", str(folder), is_default=True)
    return folder


def detected_heads(sd: dict) -> int:
    import comfy.model_detection

    return comfy.model_detection.detect_unet_config(sd, "")["num_heads"]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_file_is_comfyui_format_and_detected_as_flux(tf):
    import comfy.model_detection

    for spec in (tf.TinyFlux(), tf.TinyFlux(hidden=256, depth=2, depth_single=2, guidance=False)):
        sd = tf.state_dict(spec)
        assert "double_blocks.0.img_attn.norm.query_norm.scale" in sd, "BFL key names, as flux1-dev.safetensors"
        assert ("guidance_in.in_layer.weight" in sd) == spec.guidance
        assert sd["double_blocks.0.img_attn.qkv.weight"].shape == (3 * spec.hidden, spec.hidden)
        assert sd[f"single_blocks.{spec.depth_single - 1}.linear1.weight"].shape == (7 * spec.hidden, spec.hidden)
        found = comfy.model_detection.detect_unet_config(sd, "")
        want = spec.unet_config()
        # every field the host detects matches the spec, except the head count older hosts fix at 24
        diff = {k: (found[k], want[k]) for k in found if k in want and found[k] != want[k]}
        assert set(diff) <= {"num_heads"}, diff
        assert found["num_heads"] in (spec.hidden // 128, 24)


@pytest.mark.parametrize("guidance", [True, False], ids=["dev", "schnell"])
def test_core_unet_loader_reads_the_file_where_detection_allows(tf, unet_folder, guidance):
    import nodes

    spec = tf.TinyFlux(hidden=128, guidance=guidance, seed=3)
    name = f"tiny_flux_{'dev' if guidance else 'schnell'}.safetensors"
    sd = tf.state_dict(spec)
    tf.save_file(unet_folder / name, spec)
    if detected_heads(sd) != spec.hidden // 128:  # v0.8.0: 24 heads fixed, a 128-wide model cannot load
        with pytest.raises(ValueError, match="divisible by num_heads 24"):
            nodes.UNETLoader().load_unet(name, "default")
        return
    loaded = nodes.UNETLoader().load_unet(name, "default")[0]
    built = tf.build_model(spec)
    assert type(loaded.model.model_config) is type(built.model.model_config)
    assert type(loaded.model.model_config).__name__ == ("Flux" if guidance else "FluxSchnell")
    a, b = loaded.model.state_dict(), built.model.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), "the loader's weights are the file's"
    assert loaded.model.diffusion_model.img_in.weight.dtype == torch.float32
    x = tf.latent(8, 8, seed=1)
    cond = tf.conditioning(spec, tokens=16)
    assert torch.equal(tf.comfy_velocity(loaded, x, 0.5, cond), tf.comfy_velocity(built, x, 0.5, cond))


@pytest.mark.parametrize(
    "hidden,depth,guidance",
    [(128, 1, True), (256, 2, True), (128, 1, False)],
    ids=["dev-128x1", "dev-256x2", "schnell-128x1"],
)
def test_diffusers_twin_computes_the_same_velocity(tf, hidden, depth, guidance):
    spec = tf.TinyFlux(hidden=hidden, depth=depth, depth_single=depth, guidance=guidance, seed=1)
    model = tf.build_model(spec)
    twin = tf.diffusers_twin(model)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 16, 8, 12, generator=g)  # not square: rows and columns of the ids must not swap
    cond = tf.conditioning(spec, tokens=24, guidance=4.0 if guidance else None)
    for sigma in (1.0, 0.37, 0.0):
        want = tf.twin_velocity(twin, x, sigma, cond)
        got = tf.comfy_velocity(model, x, sigma, cond)
        assert want.shape == got.shape == x.shape
        assert rel(got, want) < TOL, f"sigma {sigma}: off by {rel(got, want):.3g}"
    # the comparison can fail: another guidance, or a transposed latent, changes the twin's output
    if guidance:
        other = tf.conditioning(spec, tokens=24, guidance=1.0)
        assert rel(tf.comfy_velocity(model, x, 0.37, cond), tf.twin_velocity(twin, x, 0.37, other)) > 1e-3
    xt = x.transpose(2, 3).contiguous()
    assert rel(tf.comfy_velocity(model, xt, 0.37, cond).transpose(2, 3), tf.twin_velocity(twin, x, 0.37, cond)) > 1e-3


@pytest.mark.parametrize("guidance", [True, False], ids=["dev", "schnell"])
def test_direct_conditioning_drives_core_sampling(tf, guidance):
    import comfy.samplers

    spec = tf.TinyFlux(guidance=guidance)
    model = tf.build_model(spec)
    x = tf.latent(8, 8, seed=2)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", 3).cpu()
    assert float(sigmas[0]) == pytest.approx(1.0) and float(sigmas[-1]) == 0.0

    def run(guidance_value):
        cond = tf.conditioning(spec, tokens=16, guidance=guidance_value)
        guider = comfy.samplers.CFGGuider(model)
        guider.set_conds(cond, cond)
        guider.set_cfg(1.0)
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
        return guider.sample(noise, x, comfy.samplers.ksampler("euler"), sigmas, disable_pbar=True, seed=0)

    a, b = run(3.5), run(1.0)
    assert a.shape == x.shape and torch.isfinite(a).all()
    if guidance:
        assert rel(a, b) > 1e-4, "dev: the guidance embedding changes the output"
    else:
        assert torch.equal(a, b), "schnell has no guidance embedding"


@pytest.mark.slow
def test_core_unet_loader_at_the_width_a_fixed_24_head_detection_needs(tf, unet_folder):
    """Hosts whose detection fixes 24 heads (v0.8.0) load Flux.1 files of hidden 3072 only: the one full-width test
    (531M parameters, 2.1 GB fp32, about 2 minutes and 7 GB of RAM on the 2-core CI machine). Elsewhere the 128-wide
    file above goes through the same loader."""
    import gc

    import safetensors

    import nodes

    small = tf.TinyFlux(hidden=128)
    if detected_heads(tf.state_dict(small)) == small.hidden // 128:
        pytest.skip("this host derives the heads from the width: its loader reads the 128-wide file (tested above)")
    spec = tf.TinyFlux(hidden=3072, seed=7)
    name = "tiny_flux_3072.safetensors"
    tf.save_file(unet_folder / name, spec)
    gc.collect()
    try:
        model = nodes.UNETLoader().load_unet(name, "default")[0]
        config = model.model.model_config
        assert type(config).__name__ == "Flux" and config.unet_config["num_heads"] == 24
        assert config.unet_config["hidden_size"] == 3072 and config.unet_config["depth"] == 1
        state = model.model.state_dict()
        with safetensors.safe_open(str(unet_folder / name), "pt") as f:
            for key in ("double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight", "txt_in.weight"):
                assert torch.equal(state["diffusion_model." + key], f.get_tensor(key)), key
        v = tf.comfy_velocity(model, tf.latent(4, 4), 0.5, tf.conditioning(spec, tokens=4))
        assert v.shape == (1, 16, 4, 4) and torch.isfinite(v).all()
    finally:
        (unet_folder / name).unlink(missing_ok=True)
        gc.collect()
