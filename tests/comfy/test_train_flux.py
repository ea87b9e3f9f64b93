"""Train Style LoRA on Flux.1 (issue #26 item 9): the same node trains a LoRA on the double blocks' image-stream
attention with the flow-matching loss, its gradient is the loss's, it learns, a seed is deterministic, the file loads
in core's LoraLoader (every key, none skipped) and in the pack's Flux Style LoRA path, schnell trains, guidance comes
from the conditioning, sigmas from the MODEL's shift, an interrupt stops it, and other DiTs are refused by name.

The tiny Flux of the harness (hidden 128, one double and one single block) is built in-process, so every case runs
on both hosts; CONDITIONING is built directly (no T5).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from comfyui_diffstyler.nodes.harness import executor as comfy_host
from dst_fixtures import one_torch_thread  # noqa: F401 - fixture

PROMPT = "painting of <sss>"
TOKENS = 16  # text tokens of the directly built conditioning (Flux pads T5 to 256; the tiny runs need fewer)


@pytest.fixture(scope="module")
def mods(pack):
    from comfyui_diffstyler.nodes import train
    from comfyui_diffstyler.nodes.adapters import flux_lora, lora_save, training, training_flux
    from comfyui_diffstyler.nodes.core import training as core
    from comfyui_diffstyler.nodes.harness import tiny_flux

    class M:
        pass

    m = M()
    m.tr, m.tfx, m.core, m.fl, m.tf, m.save, m.node = (
        training,
        training_flux,
        core,
        flux_lora,
        tiny_flux,
        lora_save,
        train.DiffStylerTrainStyleLoRA,
    )
    return m


def flux_model(mods, guidance: bool = True, seed: int = 0):
    """The tiny Flux (dev or schnell) with its final layer at full scale: the harness's keeps it at a tenth (a smooth
    velocity for inversion), and then an attention LoRA barely moves the prediction (as test_train's trainable_tiny)."""
    spec = mods.tf.TinyFlux(hidden=128, depth=1, depth_single=1, guidance=guidance, seed=seed)
    sd = {k: v * 10.0 if k.startswith("final_layer.linear.") else v for k, v in mods.tf.state_dict(spec).items()}
    return spec, mods.tf.build_model(spec, sd)


@pytest.fixture(scope="module")
def dev(mods):
    return flux_model(mods, guidance=True)


@pytest.fixture(scope="module")
def schnell(mods):
    return flux_model(mods, guidance=False)


def inputs(mods, spec, guidance: float | None = 3.5, seed: int = 1):
    """A style latent (VAE space, 8x8 cells = a 64 px image) and a Flux CONDITIONING built directly."""
    cond = mods.tf.conditioning(spec, tokens=TOKENS, seed=seed + 1, guidance=guidance)
    return mods.tr.TrainingInputs(mods.tf.latent(8, 8, seed=seed), cond, prompt=PROMPT)


def cfg(mods, **kw):
    base = {"steps": 4, "learning_rate": 3e-3, "rank": 4, "resolution": 64, "seed": 0}
    base.update(kw)
    return mods.core.TrainingConfig(**base)


def velocity(mods, model, spec, seed: int = 0) -> torch.Tensor:
    """The raw velocity of ``model`` (loaded through model management, so its patches are in) on fixed inputs."""
    import comfy.model_management

    comfy.model_management.load_models_gpu([model])
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 16, 8, 8, generator=g)
    return mods.tf.comfy_velocity(model, x, torch.tensor([0.3, 0.8]), mods.tf.conditioning(spec, tokens=TOKENS))


def model_conds(cond: list, batch: int, guidance: float) -> dict:
    """``apply_model``'s keyword tensors for a directly built Flux CONDITIONING, repeated to ``batch`` rows."""
    return {
        "c_crossattn": cond[0][0].expand(batch, -1, -1),
        "y": cond[0][1]["pooled_output"].expand(batch, -1),
        "guidance": torch.full((batch,), float(guidance)),
    }


def attention_keys(depth: int = 1) -> set[str]:
    return {f"diffusion_model.double_blocks.{i}.img_attn.{p}.weight" for i in range(depth) for p in ("qkv", "proj")}


def tiny_flux_vae():
    """A 16-channel AutoencoderKL (the Flux VAE's latent) with 32 channels and seeded weights, for the node."""
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from comfyui_diffstyler.nodes.harness import tiny

    config = {"params": {**tiny.TINY_VAE_CONFIG["params"], "embed_dim": 16}}
    config["params"]["ddconfig"] = {**config["params"]["ddconfig"], "z_channels": 16}
    ae = AutoencoderKL(**config["params"])
    vae = comfy.sd.VAE(sd=tiny.randomize_state_dict(ae.state_dict(), 7), config=config)
    vae.latent_channels = 16
    return vae


# ----------------------------------------------------------------------------------------------- the loss


def test_targets_are_the_image_stream_attention(mods, dev):
    _spec, model = dev
    attn = mods.tr.find_targets(model.model, "attention")
    assert {t.weight_key for t in attn} == attention_keys()
    assert {t.prefix for t in attn} == {
        "lora_unet_double_blocks_0_img_attn_qkv",
        "lora_unet_double_blocks_0_img_attn_proj",
    }
    every = {t.weight_key for t in mods.tr.find_targets(model.model, "all_linear")}
    assert attention_keys() < every
    assert (
        "diffusion_model.single_blocks.0.linear1.weight" in every
        and "diffusion_model.single_blocks.0.linear2.weight" in every
    )
    assert all(k.startswith(("diffusion_model.double_blocks.", "diffusion_model.single_blocks.")) for k in every)


def test_loss_is_the_flow_matching_velocity_loss(mods, dev):
    """x_s = s*noise + (1-s)*x0, ||v - (noise - x0)||^2 with v the diffusion model's raw output, guidance carried."""
    import comfy.model_management

    spec, model = dev
    comfy.model_management.load_models_gpu([model])
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 16, 8, 8, generator=g), torch.randn(3, 16, 8, 8, generator=g)
    sigma = torch.tensor([0.1, 0.5, 0.9])
    cond = mods.tf.conditioning(spec, tokens=TOKENS, seed=4, guidance=2.0)
    conds = model_conds(cond, 3, 2.0)
    with torch.inference_mode(False), torch.no_grad():
        got = mods.tfx.flow_loss(mods.tr.LoraDenoiser(model.model), model.model.model_sampling, x0, noise, sigma, conds)
    x_s = sigma.view(-1, 1, 1, 1) * noise + (1 - sigma.view(-1, 1, 1, 1)) * x0
    v = mods.tf.comfy_velocity(model, x_s, sigma, cond)
    want = ((v - (noise - x0)) ** 2).mean()
    assert torch.allclose(got, want, rtol=1e-4), (float(got), float(want))


def test_gradient_is_the_diffusers_twins(mods, dev):
    """Flux's blocks add residuals in place after their LayerNorms read them, and RoPE runs in comfy_kitchen; the LoRA
    gradient through them is still the loss's own: for every Linear of both block kinds, dL/dup and dL/ddown equal
    those implied by dL/dW of diffusers' twin (no in-place residuals, its own RoPE) holding the same merged weights."""
    import comfy.model_management
    import comfy.utils

    spec, model = dev
    comfy.model_management.load_models_gpu([model])
    base = model.model
    g = torch.Generator().manual_seed(5)
    x0, noise = torch.randn(2, 16, 8, 8, generator=g), torch.randn(2, 16, 8, 8, generator=g)
    sigma = torch.tensor([0.3, 0.7])
    cond = mods.tf.conditioning(spec, tokens=TOKENS, seed=6, guidance=3.5)
    twin = mods.tf.diffusers_twin(model)
    with torch.inference_mode(False):
        lora = mods.tr.init_lora(mods.tr.find_targets(base, "all_linear"), 2, 4.0, g, "cpu")
        with torch.no_grad():
            for _down, up in lora.factors.values():
                up.copy_(0.05 * torch.randn(up.shape, generator=g))
        denoiser = mods.tr.LoraDenoiser(base, lora)
        with torch.enable_grad(), mods.tfx.differentiable_rope():
            loss = mods.tfx.flow_loss(denoiser, base.model_sampling, x0, noise, sigma, model_conds(cond, 2, 3.5))
            loss.backward()
        merged = {k: v.detach() for k, v in denoiser.params().items()}

        # the twin with the same merged weights, and its dL/dW assembled on ComfyUI's fused layout
        mapping = comfy.utils.flux_to_diffusers(base.model_config.unet_config, output_prefix="diffusion_model.")
        params = dict(twin.named_parameters())
        slices = {}
        for name, target in mapping.items():
            key, where = (target, None) if isinstance(target, str) else target[:2]
            if name in params and key in lora.factors:
                w = merged["base." + key]
                with torch.no_grad():
                    params[name].copy_(w if where is None else w.narrow(*where))
                slices[name] = (key, where)
        x_s = mods.core.flow_noised(x0, noise, sigma)
        with torch.enable_grad():
            v = mods.tf.twin_velocity.__wrapped__(twin, x_s, sigma, cond)  # the harness's call, with gradients
            twin_loss = ((v - (noise - x0)) ** 2).mean()
            twin_loss.backward()
    assert float(loss.detach()) == pytest.approx(float(twin_loss.detach()), rel=1e-4)
    grad_w = {k: torch.zeros_like(merged["base." + k]) for k in lora.factors}
    for name, (key, where) in slices.items():
        (grad_w[key] if where is None else grad_w[key].narrow(*where)).copy_(params[name].grad)
    assert set(grad_w) == set(lora.factors) and all(float(gw.abs().max()) > 0 for gw in grad_w.values())
    worst = 0.0
    for key, (down, up) in lora.factors.items():
        want_up = lora.scale * grad_w[key] @ down.detach().T
        want_down = lora.scale * up.detach().T @ grad_w[key]
        for got, want in ((up.grad, want_up), (down.grad, want_down)):
            err = float((got - want).abs().max()) / float(want.abs().max())
            worst = max(worst, err)
    print(f"\nFlux LoRA gradient vs the diffusers twin's: worst relative difference {worst:.2e}")
    assert worst < 1e-3


def test_sigmas_come_from_the_models_shift(mods, dev):
    """Training draws sigmas from the MODEL's ModelSamplingFlux table: a Model Sampling Flux patch's shift, when the
    MODEL carries one (every sigma the model sees is in that table, most are not in the unpatched one)."""
    import comfy_extras.nodes_model_advanced as advanced

    spec, model = dev
    (patched,) = advanced.ModelSamplingFlux().patch(model, 3.0, 3.0, 64, 64)
    table = patched.get_model_object("model_sampling").sigmas.float()
    plain = model.get_model_object("model_sampling").sigmas.float()
    seen = []
    hook = model.model.diffusion_model.register_forward_pre_hook(lambda _m, args: seen.append(args[1].detach().clone()))
    try:
        mods.tr.train(patched, inputs(mods, spec), cfg(mods, steps=12), progress=False)
    finally:
        hook.remove()
    seen = torch.cat(seen).float()
    assert seen.numel() == 12
    assert all(bool((table == s).any()) for s in seen)
    assert sum(bool((plain == s).any()) for s in seen) < 6
    assert float(seen.mean()) > 0.75  # a shift of e^3 puts most of the table near 1


# ----------------------------------------------------------------------------------------------- learning


def test_loss_falls_on_a_learnable_target(mods, dev):
    """100 steps on one latent: the fixed-timestep loss (10 sigmas, fixed noise) falls below 0.7x its start with the
    attention targets at lr 3e-3 (numbers printed); the paper's lr 2e-4 reduces it too."""
    spec, model = dev
    inp = inputs(mods, spec)
    start = mods.tr.fixed_timestep_loss(model, inp, None, count=10)
    ends = {}
    for lr in (3e-3, 2e-4):
        res = mods.tr.train(model, inp, cfg(mods, steps=100, learning_rate=lr), progress=False)
        assert res.family == "flux" and len(res.targets) == 2
        ends[lr] = mods.tr.fixed_timestep_loss(model, inp, res.lora, count=10)
        print(
            f"\nFlux style LoRA, 100 steps, attention, lr {lr:g}: fixed-timestep loss {start:.4f} -> {ends[lr]:.4f} "
            f"(x{ends[lr] / start:.3f}); training loss, mean of first/last 20 steps {np.mean(res.losses[:20]):.4f} "
            f"-> {np.mean(res.losses[-20:]):.4f}"
        )
    assert ends[3e-3] < 0.7 * start
    assert ends[2e-4] < 0.99 * start


def test_same_seed_same_lora(mods, dev):
    spec, model = dev
    inp = inputs(mods, spec)
    a = mods.tr.train(model, inp, cfg(mods, seed=7), progress=False).state_dict()
    b = mods.tr.train(model, inp, cfg(mods, seed=7), progress=False).state_dict()
    c = mods.tr.train(model, inp, cfg(mods, seed=8), progress=False).state_dict()
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a if k.endswith("lora_up.weight"))


def test_guidance_is_the_conditionings(mods, dev, schnell):
    """dev trains at the guidance its conditioning carries (another guidance, another LoRA); schnell has no guidance
    embedding, so the same run gives the same LoRA whatever the conditioning says."""
    for (spec, model), differs in ((dev, True), (schnell, False)):
        a = mods.tr.train(model, inputs(mods, spec, guidance=1.0), cfg(mods, steps=3), progress=False).state_dict()
        b = mods.tr.train(model, inputs(mods, spec, guidance=3.5), cfg(mods, steps=3), progress=False).state_dict()
        same = all(torch.equal(a[k], b[k]) for k in a)
        assert same != differs, spec


# ----------------------------------------------------------------------------------------------- files and loaders


def load_in_core(model, lora_sd, caplog):
    """``comfy.sd.load_lora_for_models`` (what core's LoraLoader calls) with its warnings captured; returns the patched
    clone and the warnings about keys it skipped."""
    import comfy.sd

    with caplog.at_level(logging.WARNING):
        caplog.clear()
        loaded, _clip = comfy.sd.load_lora_for_models(model, None, lora_sd, 1.0, 0.0)
    skipped = [
        r.getMessage()
        for r in caplog.records
        if "lora key not loaded" in r.getMessage() or "NOT LOAD" in r.getMessage()
    ]
    return loaded, skipped


@pytest.mark.parametrize("targets", ["attention", "all_linear"])
def test_the_lora_loads_in_core_and_in_the_style_lora_path(mods, dev, caplog, targets):
    spec, model = dev
    inp = inputs(mods, spec)
    res = mods.tr.train(model, inp, cfg(mods, steps=4, targets=targets), progress=False)
    sd = res.state_dict()
    keys = {t.weight_key for t in res.targets}
    assert len(sd) == 3 * len(keys) and all(k.startswith("lora_unet_") for k in sd)

    before = velocity(mods, model, spec)
    loaded, skipped = load_in_core(model, sd, caplog)
    assert skipped == []  # every key lands ...
    assert set(loaded.patches) == keys  # ... on the layer it was trained for
    after = velocity(mods, loaded, spec)
    assert float((after - before).abs().max()) > 1e-5
    # the merged LoRA is what training saw: the same loss as the trained factors applied functionally
    merged = mods.tr.fixed_timestep_loss(loaded, inp, None, count=4)
    assert merged == pytest.approx(mods.tr.fixed_timestep_loss(model, inp, res.lora, count=4), rel=1e-4)
    assert torch.equal(velocity(mods, model, spec), before)  # the input MODEL is unchanged

    # the pack's Style LoRA path for Flux reads the same dict: one whole-tensor delta per trained layer
    patches = mods.fl.flux_patches(sd, model, "trained")
    deltas = mods.fl.flux_layer_deltas(patches, model, 1.0, "trained")
    assert set(deltas) == {k[: -len(".weight")] for k in keys}
    for module, (delta,) in deltas.items():
        prefix = "lora_unet_" + module[len("diffusion_model.") :].replace(".", "_")
        assert delta.out_slice is None and delta.scale == pytest.approx(1.0)
        assert torch.equal(delta.down, sd[prefix + ".lora_down.weight"].float())
        assert torch.equal(delta.up, sd[prefix + ".lora_up.weight"].float())


def test_the_node_trains_flux_from_conditioning_and_saves_a_file_core_loads(mods, dev, comfy_home, caplog):
    import safetensors

    import nodes

    spec, model = dev
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    cond = mods.tf.conditioning(spec, tokens=TOKENS, seed=3, guidance=3.5)
    settings = dict(steps=3, learning_rate=3e-3, rank=4, targets="attention", seed=0, resolution=64)
    before = velocity(mods, model, spec)
    # keywords only and no clip, as ComfyUI calls it when 'clip' is not connected
    lora, curve = mods.node.execute(
        model=model,
        vae=tiny_flux_vae(),
        image=image,
        prompt=PROMPT,
        **settings,
        save_name="flux_style",
        conditioning=cond,
    ).result
    assert {k[: -len(".lora_down.weight")] for k in lora if k.endswith(".lora_down.weight")} == {
        "lora_unet_double_blocks_0_img_attn_qkv",
        "lora_unet_double_blocks_0_img_attn_proj",
    }
    assert curve.shape[0] == 1 and curve.shape[-1] == 3
    path = comfy_home.models / "loras" / "flux_style.safetensors"
    with safetensors.safe_open(str(path), "pt") as f:
        meta = f.metadata()
        assert set(f.keys()) == set(lora)
    assert meta["diffstyler_family"] == "flux" and meta["ss_base_model_version"] == "flux1"
    with caplog.at_level(logging.WARNING):
        caplog.clear()
        loaded, _clip = nodes.LoraLoader().load_lora(model, None, "flux_style.safetensors", 1.0, 1.0)
    assert not [r for r in caplog.records if "lora key not loaded" in r.getMessage()]
    assert set(loaded.patches) == attention_keys()
    assert not torch.equal(velocity(mods, loaded, spec), before)
    # neither clip nor conditioning: the error names both
    with pytest.raises(ValueError, match="clip: the prompt needs a text encoder.*'conditioning'"):
        mods.node.execute(model=model, vae=tiny_flux_vae(), image=image, prompt=PROMPT, **settings)


def test_the_conditioning_input_in_a_graph(tiny, run_graph, comfy_home):
    """The new optional inputs through ComfyUI's executor (the tiny SD checkpoint: the graph loaders both hosts
    have): 'clip' left unconnected, the prompt as a CLIP Text Encode into 'conditioning'."""
    import numpy as np
    from comfyui_diffstyler.nodes.harness import graphs
    from PIL import Image

    rng = np.random.default_rng(5)
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(comfy_home.input / "flux_cond.png")
    prompt = graphs.train_lora_prompt(tiny.checkpoint, "flux_cond.png", "", steps=2, prompt=PROMPT)
    del prompt["4"]["inputs"]["clip"]
    prompt["6"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": PROMPT}}
    prompt["4"]["inputs"]["conditioning"] = ["6", 0]
    run = run_graph(prompt)
    assert "4" in run.executed_nodes()
    assert len([k for k in run.outputs("4")[0][0] if k.endswith("lora_down.weight")]) == 128


def test_schnell_trains_and_loads(mods, schnell, caplog):
    spec, model = schnell
    assert not model.model.model_config.unet_config["guidance_embed"]
    res = mods.tr.train(model, inputs(mods, spec, guidance=None), cfg(mods, steps=3), progress=False)
    assert res.family == "flux" and all(np.isfinite(res.losses))
    loaded, skipped = load_in_core(model, res.state_dict(), caplog)
    assert skipped == [] and set(loaded.patches) == attention_keys()
    deltas = mods.fl.flux_layer_deltas(mods.fl.flux_patches(res.state_dict(), model, "schnell"), model, 1.0)
    assert set(deltas) == {k[: -len(".weight")] for k in attention_keys()}


# ----------------------------------------------------------------------------------------------- safety


def test_interrupt_stops_within_one_step_and_restores_the_rope(mods, dev):
    import comfy.ldm.flux.math as flux_math
    import comfy.model_management

    spec, model = dev
    before = velocity(mods, model, spec)
    rope, flag = flux_math.apply_rope, getattr(comfy.model_management, "in_training", None)
    seen = []

    def hook(value, total, preview, node_id=None):
        seen.append(value)
        if value == 3:
            comfy.model_management.interrupt_current_processing(True)

    try:
        with comfy_host.progress_hook(hook), pytest.raises(comfy.model_management.InterruptProcessingException):
            mods.tr.train(model, inputs(mods, spec), cfg(mods, steps=50), progress=False)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert seen == [1, 2, 3]  # the step after the interrupt never ran
    assert flux_math.apply_rope is rope and getattr(comfy.model_management, "in_training", None) == flag
    assert torch.equal(velocity(mods, model, spec), before)
    for name, p in model.model.named_parameters():
        assert p.grad is None, name


def other_dit(kind: str):
    """A tiny Flux.2 or SD3 (MMDiT) ModelPatcher built from ComfyUI's own configs (random weights; never run)."""
    import comfy.model_detection
    from comfyui_diffstyler.nodes.harness import tiny

    if kind == "flux2":
        unet_config = {
            "image_model": "flux2",
            "axes_dim": [32, 32, 32, 32],
            "num_heads": 1,
            "mlp_ratio": 3.0,
            "theta": 2000,
            "out_channels": 128,
            "global_modulation": True,
            "mlp_silu_act": True,
            "qkv_bias": False,
            "ops_bias": False,
            "default_ref_method": "index",
            "ref_index_scale": 10.0,
            "txt_ids_dims": [3],
            "patch_size": 1,
            "in_channels": 128,
            "hidden_size": 128,
            "context_in_dim": 256,
            "vec_in_dim": None,
            "depth": 1,
            "depth_single_blocks": 1,
            "guidance_embed": True,
            "yak_mlp": False,
            "txt_norm": False,
        }
    else:
        unet_config = {
            "in_channels": 16,
            "patch_size": 2,
            "out_channels": 16,
            "depth": 2,
            "input_size": None,
            "adm_in_channels": 64,
            "context_embedder_config": {
                "target": "torch.nn.Linear",
                "params": {"in_features": 64, "out_features": 128},
            },
            "num_patches": 64,
            "pos_embed_max_size": 8,
            "pos_embed_scaling_factor": None,
            "x_block_self_attn_layers": [],
        }
    config = comfy.model_detection.model_config_from_unet_config(unet_config, None)
    return tiny.as_patcher(config.get_model({}))


@pytest.mark.parametrize(
    ("kind", "named"), [("flux2", r"Flux2 \(image_model 'flux2'"), ("sd3", r"SD3 \(image_model None")]
)
def test_other_dits_are_refused_by_name(mods, dev, kind, named):
    spec, _model = dev
    model = other_dit(kind)
    message = (
        r"model: Train Style LoRA trains SD1.x, SD2.x and SDXL UNets and Flux.1 \(dev, schnell\); "
        rf"this MODEL is {named}"
    )
    with pytest.raises(ValueError, match=message):
        mods.tr.train(model, inputs(mods, spec), cfg(mods), progress=False)
    with pytest.raises(ValueError, match=message):
        mods.tr.find_targets(model.model, "attention")
    image = torch.rand(1, 64, 64, 3)
    with pytest.raises(ValueError, match=message):  # before the image is encoded
        mods.node.execute(model, None, None, image, PROMPT, 2, 1e-3, 2, "attention", 0, 64)


def test_a_conditioning_without_pooled_output_is_refused(mods, dev):
    spec, model = dev
    cond = mods.tf.conditioning(spec, tokens=TOKENS)
    bare = [[cond[0][0], {"guidance": 3.5}]]
    with pytest.raises(ValueError, match="conditioning: entry 0 has no pooled_output, which Flux.1 needs"):
        mods.tr.train(model, mods.tr.TrainingInputs(mods.tf.latent(8, 8), bare), cfg(mods), progress=False)
    with pytest.raises(ValueError, match="this model expects 16 channels"):
        mods.tr.train(model, mods.tr.TrainingInputs(torch.zeros(1, 4, 8, 8), cond), cfg(mods), progress=False)


def test_tooltips_say_what_differs_on_flux(mods):
    schema = mods.node.define_schema()
    tips = {i.id: i.tooltip for i in schema.inputs}
    for name in ("model", "clip", "vae", "targets", "seed", "resolution", "conditioning"):
        assert "Flux" in tips[name], name
    assert "Flux" in schema.description
