"""Isolation (issue #8): a DiffStyler run leaves ComfyUI's other work exactly as it was.

* a core KSampler graph gives bit-identical images before and after a two-style DiffStyler graph, in the same
  executor (which serves the very same checkpoint MODEL object to both graphs from its cache) and in a fresh one;
* a plain KSampler fed the Injector's patched MODEL gives the unpatched model's result;
* another pack's attn1 replace registered before the Injector stays active (called at every UNet call) and sees
  our Q/K injection; one registered after the Injector (which turns ours off there) is reported by a warning;
* ComfyUI's torch.compile wrapper (the TorchCompileModel node) before the Injector gives the uncompiled result;
* guidance hooks (pre-CFG functions such as APG, post-CFG functions such as PAG that call the model again) work on
  DiffStyler's mask-fused predictions;
* ``bench/soak.py``: the two-style graph 12 times in one process and executor, without errors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dst_core
import pytest
import reliability_tools as rt
import torch
from dst_fixtures import one_torch_thread  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parents[2]
STEPS = 4


@pytest.fixture(scope="module")
def inputs(tiny, comfy_home):
    rt.write_two_style_inputs(comfy_home, tiny.model)
    return comfy_home


def image_of(run, node_id):
    return run.outputs(node_id)[0][0]


# ---------------------------------------------------------------------------------------------- graphs


def test_core_graph_is_unchanged_by_a_diffstyler_graph(tiny, inputs, run_graph):
    import comfy_setup

    core = rt.core_ksampler_prompt(tiny.checkpoint)
    before = run_graph(core)
    diffstyler = run_graph(rt.two_style_prompt(tiny.checkpoint, steps=STEPS, cfg=7.0))
    assert "1" in diffstyler.cached_nodes(), "both graphs must share the checkpoint MODEL for this test to mean much"
    assert "15" in diffstyler.executed_nodes()
    after = run_graph(core)
    assert "k6" in after.executed_nodes(), "the KSampler must really run again, not come from the cache"
    assert "1" in after.cached_nodes()
    assert torch.equal(image_of(after, "k7"), image_of(before, "k7"))
    fresh = comfy_setup.run_prompt(comfy_setup.make_executor(), core)
    assert "1" in fresh.executed_nodes()
    assert torch.equal(image_of(fresh, "k7"), image_of(before, "k7"))


def test_plain_ksampler_on_the_patched_model_equals_the_unpatched_model(tiny, inputs, run_graph):
    prompt = rt.two_style_prompt(tiny.checkpoint, steps=STEPS, cfg=7.5)
    prompt.update(rt.core_ksampler_prompt(tiny.checkpoint, model_from=("14", 0), prefix="p"))  # patched MODEL
    prompt.update(rt.core_ksampler_prompt(tiny.checkpoint, model_from=("1", 0), prefix="u"))  # unpatched MODEL
    run = run_graph(prompt)
    assert {"14", "15", "p6", "u6"} <= set(run.executed_nodes())
    patched = run.outputs("14")[0][0]
    assert patched.get_attachment("diffstyler") is not None and rt.attachment_run(patched) == (None, None)
    assert torch.equal(run.outputs("p6")[0][0]["samples"], run.outputs("u6")[0][0]["samples"])
    assert torch.equal(image_of(run, "p7"), image_of(run, "u7"))


# ---------------------------------------------------------------------------------------------- other packs


def one_style_inputs(tiny, mask, lora_seed):
    """(inversion, cond, neg, styles): a random 64x64 image inverted, one random LoRA style on ``mask``."""
    from comfyui_diffstyler.nodes import style
    from comfyui_diffstyler.nodes.adapters import inversion

    def enc(text):
        return tiny.clip.encode_from_tokens_scheduled(tiny.clip.tokenize(text))

    empty, cond, neg = enc(""), enc("painting of <sss>"), enc("ugly")
    with torch.no_grad():
        lat = tiny.vae.encode(torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(2))).float()
    inv = inversion.invert(tiny.model, lat, STEPS, empty, disable_pbar=True, grid="sampling")
    styles = style.DiffStylerStyleLoRA.execute(
        "None", 1.0, cond, mask, lora=dst_core.random_lora(tiny.model, seed=lora_seed)
    ).args[0]
    return inv, cond, neg, styles


def test_another_packs_attn1_replace_stays_active(tiny, pack, caplog):
    import comfy.ldm.modules.attention as attention
    from comfyui_diffstyler.nodes import inject, sample
    from comfyui_diffstyler.nodes.adapters import inversion

    mask = torch.zeros(1, 64, 64)
    mask[:, :, :32] = 1
    inv, cond, neg, styles = one_style_inputs(tiny, mask, lora_seed=80)

    seen = []

    def other_pack(q, k, v, extra_options):  # another pack's attn1 replace: records what it gets, plain attention
        seen.append((extra_options["block"], q.clone(), k.clone()))
        return attention.optimized_attention(q, k, v, extra_options["n_heads"])

    base = tiny.model.clone()
    base.set_model_attn1_replace(other_pack, "output", 5)
    patched = inject.DiffStylerCrossLoRAInjector.execute(base, styles, 0.6, 0.5, "adaptive", True).args[0]
    counted = patched.clone()
    calls = rt.count_unet_calls(counted)
    attn = tiny.model.model.diffusion_model.output_blocks[5][1].transformer_blocks[0].attn1
    pre = {"q": [], "k": []}
    hooks = [
        attn.to_q.register_forward_hook(lambda m, a, out: pre["q"].append(out.clone())),
        attn.to_k.register_forward_hook(lambda m, a, out: pre["k"].append(out.clone())),
    ]
    try:
        sample.DiffStylerMaskedFusionSampler.execute(counted, inv, cond, neg, 6.0, "exact", styles)
    finally:
        for h in hooks:
            h.remove()
    assert len(calls) == STEPS and len(seen) == STEPS, "the other pack's replace runs at every UNet call"
    assert "replaced after it" not in caplog.text, "a replace chained under ours is not an override"
    assert all(block == ("output", 5) for block, _q, _k in seen)
    window = 2  # qk_injection_end 0.5 of 4 steps
    for i, (_block, q, k) in enumerate(seen):
        if i < window:  # rows: content, style cond, style uncond
            assert calls[i] == 3
            assert torch.equal(q[0], pre["q"][i][0]) and torch.equal(k[0], pre["k"][i][0]), "content row untouched"
            assert not torch.allclose(q[1:], pre["q"][i][1:]) and not torch.allclose(k[1:], pre["k"][i][1:])
        else:
            assert calls[i] == 2
            assert torch.equal(q, pre["q"][i]) and torch.equal(k, pre["k"][i]), "no injection after the window"
    # outside a DiffStyler run the chain still reaches the other pack, and the result is the plain model's
    seen.clear()
    xt = inversion.latent_out(tiny.model, inv.trajectory[0])
    chained = dst_core.plain_ddim(patched, xt, 2, cond, neg, 6.0)
    assert len(seen) == 2
    assert torch.equal(chained, dst_core.plain_ddim(base, xt, 2, cond, neg, 6.0))
    assert rt.attachment_run(patched) == (None, None)


def test_feature_cache_under_another_packs_per_layer_replace(tiny, pack):
    """A replace another pack set for one transformer index (``("output", 5, 0)``, which ComfyUI looks up before
    the block's) must not hide that layer from the content-feature cache: inversion records through it, and the
    sampler injects the recorded Q/K through it (the other pack's function sees the cached content Q/K in the
    style rows at the first step, where the adaptive blend takes the content's Q/K whole)."""
    import comfy.ldm.modules.attention as attention
    from comfyui_diffstyler.nodes import inject, sample
    from comfyui_diffstyler.nodes.adapters import inversion

    inv, cond, neg, styles = one_style_inputs(tiny, torch.ones(1, 64, 64), lora_seed=82)
    seen, qs = [], []

    def other_pack(q, k, v, extra_options):
        seen.append(extra_options["block"])
        qs.append((q.detach().clone(), k.detach().clone()))
        return attention.optimized_attention(q, k, v, extra_options["n_heads"])

    base = tiny.model.clone()
    base.set_model_attn1_replace(other_pack, "output", 5, 0)
    empty = tiny.clip.encode_from_tokens_scheduled(tiny.clip.tokenize(""))
    cached = inversion.invert(
        base, inv.content_latent, STEPS, empty, disable_pbar=True, cache_dtype="fp32", grid="sampling"
    )
    assert len(seen) == STEPS, "the other pack's replace runs during the inversion too"
    assert all((5, 0) in cached.feature_cache.qk[j] for j in cached.feature_cache.qk), "layer (5, 0) recorded"
    # the cache holds LoRA-free content features: the option it stands in for is the shared content row
    patched = inject.DiffStylerCrossLoRAInjector.execute(
        base, styles, 0.6, 0.5, "adaptive", False, "noise", "shared"
    ).args[0]
    seen.clear()
    qs.clear()
    sample.DiffStylerMaskedFusionSampler.execute(patched, cached, cond, neg, 6.0, "exact", styles)
    assert len(seen) == STEPS
    q0, k0 = qs[0]
    cq, ck = cached.feature_cache.qk[0][(5, 0)]
    assert q0.shape[0] == 2 * cq.shape[0], "no content row: the cache stands in for it"
    assert torch.equal(q0[:1], cq) and torch.equal(q0[1:], cq), "layer (5, 0) got the recorded content Q"
    assert torch.equal(k0[:1], ck) and torch.equal(k0[1:], ck), "layer (5, 0) got the recorded content K"


def test_a_replace_set_after_the_injector_is_reported(tiny, pack, caplog):
    """ComfyUI keeps one attention replace per block: one set after the Injector turns DiffStyler's Q/K
    injection off there. The sampler says so (block and replace named) instead of silently losing it."""
    import comfy.ldm.modules.attention as attention
    from comfyui_diffstyler.nodes import inject, sample

    inv, cond, neg, styles = one_style_inputs(tiny, torch.ones(1, 64, 64), lora_seed=81)
    patched = inject.DiffStylerCrossLoRAInjector.execute(tiny.model, styles, 0.6, 0.5, "adaptive", True).args[0]
    sample.DiffStylerMaskedFusionSampler.execute(patched, inv, cond, neg, 6.0, "exact", styles)
    assert "replaced after it" not in caplog.text

    def late_pack(q, k, v, extra_options):
        return attention.optimized_attention(q, k, v, extra_options["n_heads"])

    late = patched.clone()
    late.set_model_attn1_replace(late_pack, "output", 5)
    caplog.clear()
    sample.DiffStylerMaskedFusionSampler.execute(late, inv, cond, neg, 6.0, "exact", styles)
    warnings = [r.getMessage() for r in caplog.records if "replaced after it" in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    assert "late_pack" in warnings[0] and "('output', 5, 0)" in warnings[0] and "Q/K injection" in warnings[0]
    assert warnings[0].startswith("DiffStyler: 1 attention layer(s)")


def two_halves_inputs(tiny):
    """(inversion, cond, neg, styles): two random LoRA styles on the left and right halves."""
    from comfyui_diffstyler.nodes import style

    left = torch.zeros(1, 64, 64)
    left[:, :, :32] = 1
    inv, cond, neg, styles = one_style_inputs(tiny, left, lora_seed=84)
    other = tiny.clip.encode_from_tokens_scheduled(tiny.clip.tokenize("sketch of <ttt>"))
    styles = style.DiffStylerStyleLoRA.execute(
        "None", 1.0, other, 1 - left, lora=dst_core.random_lora(tiny.model, seed=85), styles=styles
    ).args[0]
    return inv, cond, neg, styles


def stylize(model, inv, cond, neg, styles, cfg=6.0):
    from comfyui_diffstyler.nodes import inject, sample

    patched = inject.DiffStylerCrossLoRAInjector.execute(model, styles, 0.6, 0.5, "adaptive", True).args[0]
    return sample.DiffStylerMaskedFusionSampler.execute(patched, inv, cond, neg, cfg, "exact", styles).args[0][
        "samples"
    ]


def test_pre_cfg_hooks_run_on_the_fused_predictions(tiny, pack):
    """ComfyUI's sampling_function runs the model's pre-CFG functions (APG, FreSca, TCFG, ...) on the cond/uncond
    predictions; DiffStyler's guider does the same on its mask-fused pair instead of skipping them."""
    from comfy_extras import nodes_apg

    inv, cond, neg, styles = two_halves_inputs(tiny)
    base = stylize(tiny.model, inv, cond, neg, styles)
    seen = []

    def cond_for_uncond(args):  # CFG of (cond, cond) is cond: the result must be the cfg=1 run's
        seen.append(len(args["conds_out"]))
        return [args["conds_out"][0], args["conds_out"][0]]

    hooked = tiny.model.clone()
    hooked.set_model_sampler_pre_cfg_function(cond_for_uncond)
    out = stylize(hooked, inv, cond, neg, styles)
    assert seen == [2] * STEPS
    assert float((out - stylize(tiny.model, inv, cond, neg, styles, cfg=1.0)).abs().max()) <= 1e-4
    assert float((out - base).abs().max()) > 1e-2
    apg = nodes_apg.APG.execute(tiny.model, 0.0, 5.0, 0.0).args[0]  # ComfyUI's APG node
    assert float((stylize(apg, inv, cond, neg, styles) - base).abs().max()) > 1e-3, "APG changes the result"


def test_post_cfg_hooks_model_calls_get_the_fused_prediction(tiny, pack):
    """A post-CFG function that asks the model again (PAG, SAG: ``calc_cond_batch(model, [cond], ...)``) gets
    DiffStyler's prediction for that entry, every style evaluated and fused by mask, not a batch the Injector
    would read as the first style's rows. A hook that re-evaluates the cond and uncond predictions unperturbed
    and adds the differences therefore changes nothing; ComfyUI's PAG node, whose perturbation of the tiny
    UNet's 1x1 middle block is the identity, likewise."""
    import comfy.samplers
    from comfy_extras import nodes_pag

    inv, cond, neg, styles = two_halves_inputs(tiny)
    base = stylize(tiny.model, inv, cond, neg, styles)
    calls = []

    def again(args):
        m, x, sigma, opts = args["model"], args["input"], args["sigma"], args["model_options"]
        c, u = comfy.samplers.calc_cond_batch(m, [args["cond"], args["uncond"]], x, sigma, opts)
        calls.append(1)
        gap = (args["cond_denoised"] - c) + (args["uncond_denoised"] - u)
        return args["denoised"] + gap * 5.0

    hooked = tiny.model.clone()
    hooked.set_model_sampler_post_cfg_function(again)
    out = stylize(hooked, inv, cond, neg, styles)
    assert len(calls) == STEPS
    assert float((out - base).abs().max()) <= 1e-4
    pag = nodes_pag.PerturbedAttentionGuidance.execute(tiny.model, 3.0).args[0]
    assert float((stylize(pag, inv, cond, neg, styles) - base).abs().max()) <= 1e-4


def test_cfg1_uncond_when_a_node_asks_and_a_calc_cond_batch_function_runs(tiny, pack):
    """At cfg 1 ComfyUI skips the uncond rows unless a node set ``disable_cfg1_optimization``: so does DiffStyler.
    A ``sampler_calc_cond_batch_function`` (Skip Layer Guidance: it evaluates ``[cond, None]`` and ``[None,
    uncond]`` itself, the second with its own options) runs and gets DiffStyler's fused predictions."""
    import comfy.samplers

    inv, cond, neg, styles = two_halves_inputs(tiny)
    plain_cfg1 = stylize(tiny.model, inv, cond, neg, styles, cfg=1.0)
    seen = []

    def post(args):
        seen.append(float(args["uncond_denoised"].abs().max()))
        return args["denoised"]

    hooked = tiny.model.clone()
    hooked.model_options["disable_cfg1_optimization"] = True
    hooked.set_model_sampler_post_cfg_function(post)
    out = stylize(hooked, inv, cond, neg, styles, cfg=1.0)
    assert len(seen) == STEPS and min(seen) > 0, "the uncond prediction was evaluated"
    assert float((out - plain_cfg1).abs().max()) <= 1e-4
    called = []

    def slg_like(args):
        called.append(1)
        c, u = args["conds"]
        m, x, sigma, opts = args["model"], args["input"], args["sigma"], args["model_options"]
        cond_out, _ = comfy.samplers.calc_cond_batch(m, [c, None], x, sigma, opts)
        _, uncond_out = comfy.samplers.calc_cond_batch(m, [None, u], x, sigma, dict(opts))
        return [cond_out, uncond_out]

    slg = tiny.model.clone()
    slg.set_model_sampler_calc_cond_batch_function(slg_like)
    out = stylize(slg, inv, cond, neg, styles)
    assert len(called) == STEPS
    assert float((out - stylize(tiny.model, inv, cond, neg, styles)).abs().max()) <= 1e-4


@pytest.mark.slow
def test_under_comfyuis_torch_compile_wrapper(tiny, pack):
    """ComfyUI's TorchCompileModel node (``set_torch_compile_wrapper``) before the Injector: dynamo traces the
    patched UNet with our layers in it, and the result equals the uncompiled run. Backend "eager" (dynamo's graph
    capture, guards and graph breaks without code generation); inductor, checked by hand on the CPU, gave the same
    result within 5.1e-07 after a 3.5-minute compile."""
    import torch._dynamo
    from comfy_api.torch_helpers import set_torch_compile_wrapper
    from comfyui_diffstyler.nodes import inject, sample

    mask = torch.zeros(1, 64, 64)
    mask[:, :, :32] = 1
    inv, cond, neg, styles = one_style_inputs(tiny, mask, lora_seed=83)
    patched = inject.DiffStylerCrossLoRAInjector.execute(tiny.model, styles, 0.6, 0.5, "adaptive", True).args[0]
    eager = sample.DiffStylerMaskedFusionSampler.execute(patched, inv, cond, neg, 6.0, "exact", styles).args[0]
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = tiny.model.clone()
    set_torch_compile_wrapper(model=compiled, backend="eager")
    try:
        patched = inject.DiffStylerCrossLoRAInjector.execute(compiled, styles, 0.6, 0.5, "adaptive", True).args[0]
        out = sample.DiffStylerMaskedFusionSampler.execute(patched, inv, cond, neg, 6.0, "exact", styles).args[0]
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    finally:
        torch._dynamo.reset()
    assert graphs > 0, "dynamo traced the UNet"
    assert float((out["samples"] - eager["samples"]).abs().max()) <= 1e-5


# ---------------------------------------------------------------------------------------------- soak


@pytest.mark.slow
def test_soak_twelve_runs_in_one_executor(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["YOLO_CONFIG_DIR"] = str(tmp_path / "yolo")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--runs", "12", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary, details = json.loads(lines[-1]), json.loads(lines[-2])
    print(f"\nsoak: {lines[-1]}, RSS {details['rss_mb'][4]} -> {details['rss_mb'][-1]} MB")
    assert set(summary) == {"runs", "errors", "rss_growth_pct"}
    assert summary["runs"] == 12 and summary["errors"] == 0, details["error_messages"]
    assert details["sampler_executions"] == 12
    assert details["network_attempts"] == 0
