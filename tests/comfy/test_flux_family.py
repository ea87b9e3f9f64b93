"""The Flux.1 family in the registry (design Sec. 6, issue #26 items 1, 4, 5): the same nodes take a Flux MODEL.

The injection's own rules, checked on the real nodes with a tiny Flux: the image tokens' residual update and Q/K of
each style row come from its own content row (text tokens and V untouched), the LoRA is bypassed in the q/k rows of
the Q/K-injected projections only, one transformer call per step holds every style's rows, masks are on the token
grid, and what is not Flux.1 is refused by name.
"""

from __future__ import annotations

import pytest
import torch

STEPS = 4
TOKENS = 8


@pytest.fixture(scope="module")
def fx(pack):
    from types import SimpleNamespace

    from comfyui_diffstyler.nodes import inject, invert, sample, style
    from comfyui_diffstyler.nodes.adapters.injector import arch, flux
    from comfyui_diffstyler.nodes.harness import tiny_flux

    spec = tiny_flux.TinyFlux(hidden=128, depth=2, depth_single=2, seed=5)
    model = tiny_flux.build_model(spec)
    return SimpleNamespace(
        inject=inject,
        invert=invert,
        sample=sample,
        style=style,
        arch=arch,
        flux=flux,
        tf=tiny_flux,
        spec=spec,
        model=model,
    )


def cond(fx, seed, guidance=3.5, tokens=TOKENS):
    return fx.tf.conditioning(fx.spec, tokens=tokens, seed=seed, guidance=guidance)


def kohya_lora(fx, seed, rank=4, scale=0.3):
    """A kohya-layout Flux LoRA on every double/single block's fused projections and MLPs (random factors)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    state = fx.model.model.diffusion_model.state_dict()
    for key, w in state.items():
        if w.ndim != 2 or not key.endswith(".weight") or not key.startswith(("double_blocks", "single_blocks")):
            continue
        stem = "lora_unet_" + key[: -len(".weight")].replace(".", "_")
        sd[stem + ".lora_down.weight"] = torch.randn(rank, w.shape[1], generator=g) * scale
        sd[stem + ".lora_up.weight"] = torch.randn(w.shape[0], rank, generator=g) * scale
        sd[stem + ".alpha"] = torch.tensor(float(rank))
    return sd


def half_mask(h=64, w=64, left=True):
    m = torch.zeros(1, h, w)
    if left:
        m[:, :, : w // 2] = 1.0
    else:
        m[:, :, w // 2 :] = 1.0
    return m


def run(fx, styles_spec, cfg=1.0, background="exact", **inject_options):
    latent = {"samples": fx.tf.latent(8, 8, seed=3)}
    inv, x_t = fx.invert.DiffStylerInvert.execute(
        fx.model, latent, STEPS, conditioning=cond(fx, 9, guidance=None)
    ).result
    styles = None
    for seed, mask, strength in styles_spec:
        lora = kohya_lora(fx, seed) if strength else None
        styles = fx.style.DiffStylerStyleLoRA.execute(
            "None", strength, cond(fx, seed), mask=mask, lora=lora, styles=styles
        ).result[0]
    options = dict(
        feature_injection_end=0.6, qk_injection_end=0.5, qk_blend="adaptive", lora_in_injected_attention=False
    )
    options.update(inject_options)
    patched = fx.inject.DiffStylerCrossLoRAInjector.execute(fx.model, styles, **options).result[0]
    out = fx.sample.DiffStylerMaskedFusionSampler.execute(
        patched, inv, cond(fx, 1), cond(fx, 2), cfg, background
    ).result[0]
    return inv, out["samples"]


def test_a_flux_model_is_the_flux_family(fx):
    assert fx.arch.family_for(fx.model) is fx.flux.FLUX


def test_one_style_runs_and_keeps_the_content_outside(fx):
    inv, out = run(fx, [(11, half_mask(left=True), 1.0)])
    assert out.shape == inv.content_latent.shape and torch.isfinite(out).all()
    right = out[..., 4:]
    assert torch.equal(right, inv.content_latent[..., 4:]), "exact background: the content outside the mask"
    assert (out[..., :4] - inv.content_latent[..., :4]).abs().max() > 1e-3, "the style changes its region"


def test_the_default_blocks_are_patched_through_dit_replaces(fx):
    styles = fx.style.DiffStylerStyleLoRA.execute("None", 1.0, cond(fx, 4), mask=half_mask()).result[0]
    patched = fx.inject.DiffStylerCrossLoRAInjector.execute(fx.model, styles, 0.6, 0.5, "adaptive", False).result[0]
    dit = patched.model_options["transformer_options"]["patches_replace"]["dit"]
    assert set(dit) == {("double_block", 1), ("single_block", 1)}, "last double (features), second-half singles (Q/K)"
    custom = fx.inject.DiffStylerCrossLoRAInjector.execute(
        fx.model, styles, 0.6, 0.5, "adaptive", False, feature_blocks="double:0", qk_blocks="single:0-1, double:1"
    ).result[0]
    dit = custom.model_options["transformer_options"]["patches_replace"]["dit"]
    assert set(dit) == {("double_block", 0), ("double_block", 1), ("single_block", 0), ("single_block", 1)}
    with pytest.raises(ValueError, match=r"qk_blocks: 'single:2'.*outside this model's 2 single blocks"):
        fx.inject.DiffStylerCrossLoRAInjector.execute(
            fx.model, styles, 0.6, 0.5, "adaptive", False, qk_blocks="single:2"
        )
    with pytest.raises(ValueError, match=r"feature_blocks: 'middle:0' does not name a block"):
        fx.inject.DiffStylerCrossLoRAInjector.execute(
            fx.model, styles, 0.6, 0.5, "adaptive", False, feature_blocks="middle:0"
        )


def test_injection_runs_inside_its_windows_in_one_call_per_step(fx, monkeypatch):
    from comfyui_diffstyler.nodes.core.schedule import window_steps

    seen = {"res": [], "qk": [], "calls": []}
    res, blend = fx.flux._replace_image_update, fx.flux._blend_image_qk

    def count_res(call, x_in, x_out, start):
        seen["res"].append((x_out.shape[0], call.res_rows.tolist(), call.res_src.tolist()))
        return res(call, x_in, x_out, start)

    def count_qk(call, t, n_img):
        seen["qk"].append((call.qk_rows.tolist(), call.qk_src.tolist(), round(call.qk_ratio, 6)))
        return blend(call, t, n_img)

    monkeypatch.setattr(fx.flux, "_replace_image_update", count_res)
    monkeypatch.setattr(fx.flux, "_blend_image_qk", count_qk)
    forward = type(fx.model.model.diffusion_model).forward

    def counting_forward(self, x, *args, **kwargs):
        seen["calls"].append(x.shape[0])
        return forward(self, x, *args, **kwargs)

    monkeypatch.setattr(type(fx.model.model.diffusion_model), "forward", counting_forward)
    inv, _out = run(fx, [(11, half_mask(left=True), 1.0), (12, half_mask(left=False), 1.0)])
    n_res, n_qk = window_steps(0.6, STEPS), window_steps(0.5, STEPS)
    # rows per step at cfg 1: [content, cond] per style inside the windows, [cond] per style after (exact background)
    assert seen["calls"][:STEPS] == [1] * STEPS, "the inversion: one row per step on the sampling grid"
    sampling = seen["calls"][STEPS:]
    assert sampling == [4] * max(n_res, n_qk) + [2] * (STEPS - max(n_res, n_qk)), sampling
    assert [r[0] for r in seen["res"]] == [4] * n_res, "one feature block, one call per step"
    assert all(r[1:] == ([1, 3], [0, 2]) for r in seen["res"]), "each style row from its own content row"
    assert len(seen["qk"]) == 2 * n_qk, "Q and K of one block per step"
    ratios = [q[2] for q in seen["qk"][::2]]
    sigmas = inv.sigmas.tolist()
    assert ratios == [round(min(1.0, 2 * 1000 * s / 1000), 6) for s in sigmas[:n_qk]], "r = min(1, 2t/1000), t = 1000 s"


def qk_only_lora(fx, rows, rank=4, seed=21):
    """A kohya LoRA on single block 1's fused linear1 (Q/K-injected by default) whose up factor is non-zero on
    ``rows`` only."""
    g = torch.Generator().manual_seed(seed)
    w = fx.model.model.diffusion_model.single_blocks[1].linear1.weight
    up = torch.zeros(w.shape[0], rank)
    up[rows] = torch.randn(len(range(w.shape[0])[rows]), rank, generator=g)
    stem = "lora_unet_single_blocks_1_linear1"
    return {
        stem + ".lora_down.weight": torch.randn(rank, w.shape[1], generator=g),
        stem + ".lora_up.weight": up,
        stem + ".alpha": torch.tensor(float(rank)),
    }


def run_with_lora(fx, lora, in_attention):
    latent = {"samples": fx.tf.latent(8, 8, seed=3)}
    inv, _x = fx.invert.DiffStylerInvert.execute(fx.model, latent, STEPS, conditioning=cond(fx, 9, None)).result
    styles = fx.style.DiffStylerStyleLoRA.execute("None", 1.0, cond(fx, 11), mask=half_mask(), lora=lora).result[0]
    patched = fx.inject.DiffStylerCrossLoRAInjector.execute(
        fx.model, styles, 0.6, 0.5, "adaptive", in_attention
    ).result[0]
    return fx.sample.DiffStylerMaskedFusionSampler.execute(patched, inv, cond(fx, 1), cond(fx, 2), 1.0, "exact").result[
        0
    ]["samples"]


def test_the_lora_is_bypassed_in_the_injected_q_k_rows_only(fx):
    h = fx.spec.hidden
    plain = run_with_lora(fx, None, False)
    qk = qk_only_lora(fx, slice(0, 2 * h))
    assert torch.equal(run_with_lora(fx, qk, False), plain), "q/k rows of an injected projection: no LoRA"
    assert (run_with_lora(fx, qk, True) - plain).abs().max() > 1e-4, "lora_in_injected_attention on: it acts"
    v = qk_only_lora(fx, slice(2 * h, 3 * h))
    assert (run_with_lora(fx, v, False) - plain).abs().max() > 1e-4, "the v rows keep the LoRA"


def test_masks_are_on_the_token_grid(fx):
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:24, 24:32] = 1.0  # latent cell (2, 3): the token of cells rows 2-3, columns 2-3
    inv, out = run(fx, [(11, mask, 1.0)])
    changed = (out - inv.content_latent).abs().amax(dim=(0, 1)) > 0
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[2:4, 2:4] = True
    assert torch.equal(changed, expected), changed


@pytest.mark.parametrize("background", ["exact", "model"])
def test_cfg_above_one_and_the_model_background_run(fx, background):
    inv, out = run(fx, [(11, half_mask(left=True), 1.0), (12, half_mask(left=False), 0.5)], 3.0, background)
    assert torch.isfinite(out).all() and (out - inv.content_latent).abs().max() > 1e-3


def test_what_is_not_flux_1_is_refused_by_name(fx):
    import types

    base = fx.model.model
    fake = object.__new__(type(base))
    fake.__dict__.update(base.__dict__)
    fake.model_config = types.SimpleNamespace(unet_config={"image_model": "flux2"})
    with pytest.raises(ValueError, match=r"Flux-family model of kind 'flux2'.*Flux.2, Kontext"):
        fx.arch.family_for(types.SimpleNamespace(model=fake))
    styles = fx.style.DiffStylerStyleLoRA.execute("None", 1.0, cond(fx, 4), mask=half_mask()).result[0]
    with pytest.raises(ValueError, match=r"fusion: 'feature'.*on Flux set fusion to 'noise'"):
        fx.inject.DiffStylerCrossLoRAInjector.execute(fx.model, styles, 0.6, 0.5, "adaptive", False, fusion="feature")
    latent = {"samples": fx.tf.latent(8, 8, seed=3)}
    with pytest.raises(ValueError, match=r"feature_cache: .*on a Flux model set it to 'off'"):
        fx.invert.DiffStylerInvert.execute(fx.model, latent, STEPS, conditioning=cond(fx, 9), feature_cache="fp16")
    with pytest.raises(ValueError, match=r"inversion_grid: 'fine/5' is an SD/SDXL grid"):
        fx.invert.DiffStylerInvert.execute(fx.model, latent, STEPS, conditioning=cond(fx, 9), inversion_grid="fine/5")


def test_a_prompt_of_another_length_than_the_content_prompt_is_refused(fx):
    latent = {"samples": fx.tf.latent(8, 8, seed=3)}
    inv, _x = fx.invert.DiffStylerInvert.execute(fx.model, latent, STEPS, conditioning=cond(fx, 9, None)).result
    longer = cond(fx, 11, tokens=TOKENS + 4)
    styles = fx.style.DiffStylerStyleLoRA.execute("None", 1.0, longer, mask=half_mask()).result[0]
    patched = fx.inject.DiffStylerCrossLoRAInjector.execute(fx.model, styles, 0.6, 0.5, "adaptive", False).result[0]
    with pytest.raises(
        ValueError, match=r"style 1 \(prompt only\): its conditioning has 12 text tokens but the content"
    ):
        fx.sample.DiffStylerMaskedFusionSampler.execute(patched, inv, cond(fx, 1), cond(fx, 2), 1.0, "exact")
    off = fx.inject.DiffStylerCrossLoRAInjector.execute(fx.model, styles, 0.0, 0.0, "adaptive", False).result[0]
    out = fx.sample.DiffStylerMaskedFusionSampler.execute(off, inv, cond(fx, 1), cond(fx, 2), 1.0, "exact").result[0]
    assert torch.isfinite(out["samples"]).all(), "without injection windows no content row joins: any length runs"


def test_kontext_reference_latents_are_refused(fx):
    latent = {"samples": fx.tf.latent(8, 8, seed=3)}
    inv, _x = fx.invert.DiffStylerInvert.execute(fx.model, latent, STEPS, conditioning=cond(fx, 9, None)).result
    ref = cond(fx, 11)
    ref[0][1]["reference_latents"] = [fx.tf.latent(8, 8, seed=5)]
    styles = fx.style.DiffStylerStyleLoRA.execute("None", 1.0, ref, mask=half_mask()).result[0]
    patched = fx.inject.DiffStylerCrossLoRAInjector.execute(fx.model, styles, 0.6, 0.5, "adaptive", False).result[0]
    with pytest.raises(ValueError, match=r"style_0: this conditioning carries Kontext reference latents"):
        fx.sample.DiffStylerMaskedFusionSampler.execute(patched, inv, cond(fx, 1), cond(fx, 2), 1.0, "exact")


def test_a_fine_tuned_flux_model_as_a_style(fx):
    """A style held by a MODEL (Style Model node): a second Flux.1 with its own weights, its rows in its own call."""
    other = fx.tf.build_model(fx.tf.TinyFlux(hidden=128, depth=2, depth_single=2, seed=6))
    latent = {"samples": fx.tf.latent(8, 8, seed=3)}
    inv, _x = fx.invert.DiffStylerInvert.execute(fx.model, latent, STEPS, conditioning=cond(fx, 9, None)).result
    styles = fx.style.DiffStylerStyleModel.execute(other, cond(fx, 11), mask=half_mask()).result[0]
    patched = fx.inject.DiffStylerCrossLoRAInjector.execute(fx.model, styles, 0.6, 0.5, "adaptive", False).result[0]
    out = fx.sample.DiffStylerMaskedFusionSampler.execute(patched, inv, cond(fx, 1), cond(fx, 2), 1.0, "exact").result
    samples = out[0]["samples"]
    assert torch.equal(samples[..., 4:], inv.content_latent[..., 4:])
    assert (samples[..., :4] - inv.content_latent[..., :4]).abs().max() > 1e-3


def test_prompts_of_several_lengths_run_one_call_per_length_and_say_so(fx, monkeypatch, caplog):
    import logging

    calls = []
    forward = type(fx.model.model.diffusion_model).forward

    def counting_forward(self, x, *args, **kwargs):
        calls.append(x.shape[0])
        return forward(self, x, *args, **kwargs)

    latent = {"samples": fx.tf.latent(8, 8, seed=3)}
    inv, _x = fx.invert.DiffStylerInvert.execute(fx.model, latent, STEPS, conditioning=cond(fx, 9, None)).result
    styles = fx.style.DiffStylerStyleLoRA.execute("None", 1.0, cond(fx, 11), mask=half_mask()).result[0]
    longer = cond(fx, 12, tokens=TOKENS + 4)
    styles = fx.style.DiffStylerStyleLoRA.execute("None", 1.0, longer, mask=half_mask(left=False), styles=styles)
    patched = fx.inject.DiffStylerCrossLoRAInjector.execute(fx.model, styles.result[0], 0.0, 0.0, "adaptive", False)
    monkeypatch.setattr(type(fx.model.model.diffusion_model), "forward", counting_forward)
    with caplog.at_level(logging.INFO):
        fx.sample.DiffStylerMaskedFusionSampler.execute(patched.result[0], inv, cond(fx, 1), cond(fx, 2), 1.0, "exact")
    assert calls == [1, 1] * STEPS, "no windows: each style's row in a call of its own length, never padded"
    assert "the prompts have 2 text lengths (8, 12 tokens): one transformer call per length" in caplog.text


def test_each_injection_changes_the_result(fx):
    """Feature injection alone and Q/K injection alone each move the styled region (neither is a no-op)."""
    _inv, none = run(fx, [(11, half_mask(), 1.0)], feature_injection_end=0.0, qk_injection_end=0.0)
    _inv, feature = run(fx, [(11, half_mask(), 1.0)], feature_injection_end=0.6, qk_injection_end=0.0)
    _inv, qk = run(fx, [(11, half_mask(), 1.0)], feature_injection_end=0.0, qk_injection_end=0.5)
    assert (feature - none).abs().max() > 1e-3, "feature injection"
    assert (qk - none).abs().max() > 1e-3, "Q/K injection"


def test_guider_pieces_split_across_two_samplers_equal_one_run(fx):
    """DiffStyler Guider + DDIM Sampler (Euler on Flux) + Inversion Sigmas in two SamplerCustomAdvanced on SplitSigmas'
    halves give the all-in-one sampler's result."""
    from comfy_extras import nodes_custom_sampler as ncs

    latent = {"samples": fx.tf.latent(8, 8, seed=3)}
    inv, x_t = fx.invert.DiffStylerInvert.execute(fx.model, latent, STEPS, conditioning=cond(fx, 9, None)).result
    styles = fx.style.DiffStylerStyleLoRA.execute("None", 1.0, cond(fx, 11), mask=half_mask(), lora=kohya_lora(fx, 11))
    styles = styles.result[0]
    patched = fx.inject.DiffStylerCrossLoRAInjector.execute(fx.model, styles, 0.6, 0.5, "adaptive", False).result[0]
    whole = fx.sample.DiffStylerMaskedFusionSampler.execute(patched, inv, cond(fx, 1), cond(fx, 2), 1.0, "exact")
    whole = whole.result[0]["samples"]
    sigmas = fx.sample.DiffStylerInversionSigmas.execute(inv).result[0]
    high, low = ncs.SplitSigmas.execute(sigmas, 2).result
    sampler = fx.sample.DiffStylerDDIMSampler.execute().result[0]
    part = x_t
    for sig in (high, low):
        guider = fx.sample.DiffStylerGuiderNode.execute(patched, inv, cond(fx, 1), cond(fx, 2), 1.0, "exact").result[0]
        part = ncs.SamplerCustomAdvanced.execute(ncs.Noise_EmptyNoise(), guider, sampler, sig, part).result[0]
    rel = float((part["samples"] - whole).norm() / whole.norm())
    assert rel <= 1e-5, rel


def test_region_mask_covers_the_tokens_the_sampler_restyles(fx):
    """On Flux the sampler restyles whole 2x2-cell tokens: Region Mask (original pixels outside) covers the same cells,
    so nothing the sampler changed is pasted over with the original."""
    from comfyui_diffstyler.nodes import region
    from comfyui_diffstyler.nodes.harness import flux_demo

    mask = torch.zeros(1, 64, 64)
    mask[:, 16:24, 24:32] = 1.0  # latent cell (2, 3); its token holds cells rows 2-3, columns 2-3
    styles = fx.style.DiffStylerStyleLoRA.execute("None", 1.0, cond(fx, 11), mask=mask).result[0]
    image = torch.rand(1, 64, 64, 3)
    paste, _x, _y = region.DiffStylerRegionMask.execute(styles, image, flux_demo.tiny_vae(), 0, True).result
    expected = torch.zeros(1, 64, 64)
    expected[:, 16:32, 16:32] = 1.0
    assert torch.equal((paste > 0).float(), expected)
