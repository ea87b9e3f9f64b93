"""DiffStyler core (issue: core): per-row LoRA, injection, masked fusion, exact background, isolation."""

from __future__ import annotations

import logging
import math
import os
import threading
import time

import dst_core
import pytest
import reliability_tools as rt
import safetensors.torch
import torch
from dst_fixtures import content, inverted, mods, one_torch_thread, prompts  # noqa: F401 - fixtures
from PIL import Image

STEPS = 10


def make_styles(mods, items):
    styles = None
    for lora, strength, cond, mask in items:
        styles = mods.style.DiffStylerStyleLoRA.execute("None", strength, cond, mask, lora=lora, styles=styles).args[0]
    return styles


def inject(mods, model, styles, feat=0.0, qk=0.0, blend="adaptive", lora_in_attn=True, **options):
    return mods.inject.DiffStylerCrossLoRAInjector.execute(
        model, styles, feat, qk, blend, lora_in_attn, **options
    ).args[0]


def run(mods, patched, inverted, prompts, styles, cfg=7.5, background="exact"):
    out = mods.sample.DiffStylerMaskedFusionSampler.execute(
        patched, inverted, prompts["base"], prompts["neg"], cfg, background, styles
    )
    return out.args[0]["samples"]


def half_mask(h=64, w=64, left=True):
    m = torch.zeros(1, h, w)
    if left:
        m[:, :, : w // 2] = 1
    else:
        m[:, :, w // 2 :] = 1
    return m


def x_t(mods, tiny, inverted):
    return mods.inversion.latent_out(tiny.model, inverted.trajectory[0])


# ------------------------------------------------------------------ identity and per-row LoRA


@pytest.mark.parametrize("cfg", [7.5, 1.0])
def test_identity_matches_plain_ddim(tiny, mods, inverted, prompts, cfg):
    styles = make_styles(mods, [(None, 0.0, prompts["style"], torch.ones(1, 64, 64))])
    out = run(mods, inject(mods, tiny.model, styles), inverted, prompts, styles, cfg=cfg)
    ref = dst_core.plain_ddim(tiny.model, x_t(mods, tiny, inverted), STEPS, prompts["style"], prompts["neg"], cfg)
    assert float((out - ref).abs().max()) <= 1e-5


@pytest.mark.parametrize("fmt", ["kohya", "diffusers", "peft"])
def test_per_row_lora_equals_core_merge(tiny, mods, inverted, prompts, comfy_home, fmt):
    import nodes

    lora = dst_core.random_lora(tiny.model, fmt=fmt, seed=1)
    name = f"test_{fmt}.safetensors"
    safetensors.torch.save_file(lora, str(comfy_home.models / "loras" / name))
    styles = mods.style.DiffStylerStyleLoRA.execute(name, 0.8, prompts["style"], torch.ones(1, 64, 64)).args[0]
    out = run(mods, inject(mods, tiny.model, styles), inverted, prompts, styles)
    ref_name = name
    if fmt == "peft":  # core ComfyUI does not map PEFT UNet keys; merge the kohya-renamed twin instead
        from comfyui_diffstyler.nodes.adapters.lora_file import rename_peft

        ref_name = "test_peft_as_kohya.safetensors"
        renamed = rename_peft(lora)
        assert all(k.startswith("lora_unet_") for k in renamed)
        safetensors.torch.save_file(renamed, str(comfy_home.models / "loras" / ref_name))
    (merged,) = nodes.LoraLoaderModelOnly().load_lora_model_only(tiny.model, ref_name, 0.8)
    ref = dst_core.plain_ddim(merged, x_t(mods, tiny, inverted), STEPS, prompts["style"], prompts["neg"], 7.5)
    base = dst_core.plain_ddim(tiny.model, x_t(mods, tiny, inverted), STEPS, prompts["style"], prompts["neg"], 7.5)
    assert float((ref - base).abs().max()) > 1e-2, "the LoRA must change the result for this test to mean anything"
    assert float((out - ref).abs().max()) <= 1e-4


# ------------------------------------------------------------------ exact background


def test_exact_background_bit_for_bit_and_psnr(tiny, mods, prompts):
    from comfyui_diffstyler.nodes.core.masks import resize_mask_to_latent

    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        lat = tiny.vae.encode(torch.rand(1, 256, 256, 3, generator=g)).float()
    inverted = mods.inversion.invert(tiny.model, lat, STEPS, prompts["empty"], disable_pbar=True, grid="sampling")
    lora = dst_core.random_lora(tiny.model, seed=2)
    mask = torch.zeros(1, 256, 256)
    mask[:, 16:80, 24:88] = 1.0
    styles = make_styles(mods, [(lora, 1.0, prompts["style"], mask)])
    out = run(mods, inject(mods, tiny.model, styles, 0.6, 0.5), inverted, prompts, styles)
    inside = resize_mask_to_latent(mask, 1, 32, 32, "m") > 0.5
    outside = ~inside.expand_as(out)
    assert torch.equal(out[outside], lat[outside]), "outside the mask the latent is the content latent, bit for bit"
    assert not torch.allclose(out[~outside], lat[~outside])
    dil = torch.nn.functional.max_pool2d(mask[None], kernel_size=97, stride=1, padding=48)[0]
    keep = (dil < 0.5)[0]
    assert keep.sum() > 20000
    psnr = {}
    with torch.no_grad():
        for how in ("tiled", "plain"):
            if how == "tiled":
                dec, rt = (tiny.vae.decode_tiled(x, tile_x=16, tile_y=16, overlap=4).float() for x in (out, lat))
            else:
                dec, rt = (tiny.vae.decode(x).float() for x in (out, lat))
            mse = float(((dec[0] - rt[0]) ** 2)[keep].mean())
            psnr[how] = 10 * math.log10(1.0 / max(mse, 1e-20))
    print(
        f"\nexact background, decoded pixels outside the mask dilated by 48 px vs the VAE round trip: "
        f"PSNR {psnr['tiled']:.1f} dB with VAE Decode (Tiled), {psnr['plain']:.1f} dB with plain VAE Decode "
        f"(the random tiny VAE's GroupNorm couples the whole image); max latent change inside "
        f"{float((out - lat).abs().max()):.3f}"
    )
    assert psnr["tiled"] >= 40.0


def test_model_background_differs_from_exact(tiny, mods, inverted, prompts, content):
    mask = half_mask()
    styles = make_styles(mods, [(None, 0.0, prompts["style"], mask)])
    patched = inject(mods, tiny.model, styles, 0.6, 0.5)
    exact = run(mods, patched, inverted, prompts, styles, background="exact")
    model_bg = run(mods, patched, inverted, prompts, styles, background="model")
    assert torch.equal(exact[..., 4:], content[1][..., 4:])
    assert not torch.allclose(model_bg[..., 4:], content[1][..., 4:])


# ------------------------------------------------------------------ injection: where and when


class Recorder:
    """Records the UNet calls, the ResBlock at output_blocks.4.0 and decoder attn1 Q/K of a patched model."""

    def __init__(self, tiny, patched):
        self.calls = []
        self.res = []
        self.qk = []
        self.qpre = {}
        self.base_res = tiny.model.model.diffusion_model.output_blocks[4][0]
        self.handles = []
        recorder = self

        def dm_wrapper(executor, x, timesteps, context, y, control, transformer_options, **kw):
            recorder.calls.append(
                {
                    "x": x.clone(),
                    "sigma": float(transformer_options["sigmas"][0]),
                    "cond_or_uncond": list(transformer_options["cond_or_uncond"]),
                }
            )
            return executor(x, timesteps, context, y, control, transformer_options, **kw)

        import comfy.patcher_extension

        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test-recorder", dm_wrapper)

        def res_hook(module, args, output):
            recorder.res.append((args[0].clone(), args[1].clone(), output.clone(), len(recorder.calls) - 1))

        self.handles.append(self.base_res.register_forward_hook(res_hook))
        attn = tiny.model.model.diffusion_model.output_blocks[4][1].transformer_blocks[0].attn1

        def q_hook(module, args, output):
            recorder.qpre[len(recorder.calls) - 1] = output.clone()

        self.handles.append(attn.to_q.register_forward_hook(q_hook))

    def close(self):
        for h in self.handles:
            h.remove()


def other_pack_replace(log):
    """Stands for another pack's attn1 replace: records the Q/K it receives, then plain attention."""
    import comfy.ldm.modules.attention as attention

    def replace(q, k, v, extra_options):
        log.append((q.clone(), k.clone(), v.clone()))
        return attention.optimized_attention(q, k, v, extra_options["n_heads"])

    return replace


@pytest.mark.parametrize("split,cfg", [(False, 7.5), (True, 7.5), (False, 1.0)])
def test_injection_where_and_when(tiny, mods, inverted, prompts, monkeypatch, split, cfg):
    from comfyui_diffstyler.nodes.core.schedule import qk_blend_ratio

    lora = dst_core.random_lora(tiny.model, seed=3)
    styles = make_styles(mods, [(lora, 1.0, prompts["style"], torch.ones(1, 64, 64))])
    base = tiny.model.clone()
    log = []
    base.set_model_attn1_replace(other_pack_replace(log), "output", 4)
    patched = inject(mods, base, styles, feat=0.6, qk=0.3)
    rec = Recorder(tiny, patched)
    if split:
        # ComfyUI batches cond chunks only while memory_required(...) * 1.5 < free memory: make every batch
        # "too big" so that each chunk gets a UNet call of its own, as under memory pressure
        monkeypatch.setattr(patched.model, "memory_required", lambda *a, **k: 1e30)
    try:
        run(mods, patched, inverted, prompts, styles, cfg=cfg)
    finally:
        rec.close()
    ms = tiny.model.model.model_sampling
    n_style_chunks = 2 if cfg != 1.0 else 1
    chunks_per_call = 1 if split else n_style_chunks
    assert len(rec.calls) == STEPS * (n_style_chunks // chunks_per_call)
    assert len(log) == len(rec.calls), "the other pack's attn1 replace must stay active (chained)"
    steps_seen = sorted({c["sigma"] for c in rec.calls}, reverse=True)
    h_gap = []
    for ci, call in enumerate(rec.calls):
        step = steps_seen.index(call["sigma"])
        res_on, qk_on = step < 6, step < 3
        rows = call["x"].shape[0]
        if res_on or qk_on:
            assert rows == 1 + chunks_per_call, "content row first, then the style rows"
            sigma = torch.tensor([call["sigma"]])
            expect = ms.calculate_input(sigma, inverted.content_input_at(sigma))
            assert torch.allclose(call["x"][0:1], expect, atol=1e-5), "row 0 is the content latent"
        else:
            assert rows == chunks_per_call, "the content row is dropped after the windows close"
        x, emb, out, call_idx = next(r for r in rec.res if r[3] == ci)
        with torch.no_grad():  # re-computed here, outside the sampler's inference mode
            # the run is over, so the patches are inert: the block's plain output, minus its skip, is its residual
            skip = rec.base_res.skip_connection(x)
            h = rec.base_res(x, emb) - skip
        if res_on:
            for r in range(1, rows):
                assert torch.allclose(out[r], skip[r] + h[0], atol=1e-5)
            h_gap.append(float((h[1] - h[0]).abs().max()))
        else:
            assert torch.allclose(out, skip + h, atol=1e-5)
        q_after = log[ci][0]
        q_pre = rec.qpre[ci]
        t = float(ms.timestep(torch.tensor([call["sigma"]])).detach()[0])
        r_ = qk_blend_ratio(t, "adaptive")
        if qk_on:
            for r in range(1, rows):
                assert torch.allclose(q_after[r], r_ * q_pre[0] + (1 - r_) * q_pre[r], atol=1e-5)
        else:
            assert torch.allclose(q_after, q_pre, atol=1e-6)
    assert max(h_gap) > 1e-4, "style and content residuals must differ, or the check above proves nothing"


# ------------------------------------------------------------------ one call per step, memory


def _rss():
    import psutil

    return psutil.Process().memory_info().rss


def _peak_rss_during(fn):
    peak = [_rss()]
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.002)

    t = threading.Thread(target=poll, daemon=True)
    start = _rss()
    t.start()
    try:
        fn()
    finally:
        stop.set()
        t.join()
    return peak[0] - start


def test_one_call_per_step_and_no_weight_copies(tiny, mods, inverted, prompts):
    import comfy.patcher_extension

    base_ptrs = {k: v.data_ptr() for k, v in tiny.model.model.state_dict().items()}
    peaks = {}
    for k in (1, 2, 3):
        items = [
            (dst_core.random_lora(tiny.model, seed=10 + i), 1.0, prompts["style"], half_mask(left=(i % 2 == 0)))
            for i in range(k)
        ]
        styles = make_styles(mods, items)
        patched = inject(mods, tiny.model, styles, 0.6, 0.5)
        calls = []
        patched.add_wrapper_with_key(
            comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL,
            "count",
            lambda ex, x, *a, **kw: calls.append(x.shape[0]) or ex(x, *a, **kw),
        )
        peaks[k] = _peak_rss_during(lambda: run(mods, patched, inverted, prompts, styles))
        assert len(calls) == STEPS, f"k={k}: {len(calls)} UNet calls for {STEPS} steps"
        assert calls[0] == 3 * k and calls[-1] == 2 * k, calls  # a content row per style while injecting
        ptrs = {kk: v.data_ptr() for kk, v in patched.model.state_dict().items()}
        assert ptrs == base_ptrs, "no UNet weight may be copied"
    print(
        f"\npeak RSS growth while sampling (tiny UNet, 64x64): k=1 {peaks[1] / 2**20:.1f} MB, "
        f"k=3 {peaks[3] / 2**20:.1f} MB"
    )


# ------------------------------------------------------------------ isolation


def test_isolation_and_repeatability(tiny, mods, inverted, prompts):
    xt = x_t(mods, tiny, inverted)
    before = dst_core.plain_ddim(tiny.model, xt, STEPS, prompts["style"], prompts["neg"], 7.5)
    lora = dst_core.random_lora(tiny.model, seed=4)
    styles = make_styles(
        mods,
        [
            (lora, 1.0, prompts["style"], half_mask()),
            (dst_core.random_lora(tiny.model, seed=5), 0.7, prompts["style2"], half_mask(left=False)),
        ],
    )
    patched = inject(mods, tiny.model, styles, 0.6, 0.5)
    a = run(mods, patched, inverted, prompts, styles)
    after = dst_core.plain_ddim(tiny.model, xt, STEPS, prompts["style"], prompts["neg"], 7.5)
    assert torch.equal(before, after)
    b = run(mods, patched, inverted, prompts, styles)
    assert torch.equal(a, b)
    # the patched MODEL in a plain KSampler behaves like the plain model (patches are inert outside a run)
    plain_with_patched = dst_core.plain_ddim(patched, xt, STEPS, prompts["style"], prompts["neg"], 7.5)
    assert torch.equal(plain_with_patched, before)
    assert patched.get_attachment("diffstyler").run is None


# ------------------------------------------------------------------ other UNet families


@pytest.mark.parametrize("kind", ["sd2", "sd2v", "sdxl"])
def test_other_families_end_to_end(mods, kind):
    import dst_tiny

    model = dst_tiny.tiny_unet(kind, seed=1)
    cond = dst_tiny.sdxl_conditioning if kind == "sdxl" else dst_tiny.plain_conditioning
    empty, pos, neg = cond(0), cond(1), cond(2)
    lat = torch.randn(1, 4, 8, 12, generator=torch.Generator().manual_seed(0))
    inv = mods.inversion.invert(model, lat, 6, empty, disable_pbar=True, grid="sampling")
    lora = dst_core.random_lora(model, seed=6)
    mask = torch.zeros(1, 64, 96)
    mask[:, :, :48] = 1
    styles = make_styles(mods, [(lora, 1.0, pos, mask)])
    patched = inject(mods, model, styles, 0.6, 0.5)
    out = mods.sample.DiffStylerMaskedFusionSampler.execute(patched, inv, pos, neg, 5.0, "exact", styles).args[0]
    out = out["samples"]
    assert out.shape == lat.shape and torch.isfinite(out).all()
    assert torch.equal(out[..., 6:], lat[..., 6:])
    assert not torch.allclose(out[..., :6], lat[..., :6])


# ------------------------------------------------------------------ graph


def test_graph_two_styles(tiny, run_graph, comfy_home):
    """The two-style graph (tests/support/reliability_tools.two_style_prompt, shared with the reliability suite)."""
    rt.write_two_style_inputs(comfy_home, tiny.model)
    prompt = rt.two_style_prompt(tiny.checkpoint, steps=6, save=True)
    result = run_graph(prompt)
    files = result.ui["17"]["images"]
    assert len(files) == 1
    saved = comfy_home.output / files[0].get("subfolder", "") / files[0]["filename"]
    assert saved.is_file() and Image.open(saved).size == (64, 64)
    # a re-run with another cfg re-samples but does not re-invert
    prompt["15"]["inputs"]["cfg"] = 7.0
    again = run_graph(prompt)
    assert "5" in again.cached_nodes() and "15" in again.executed_nodes()


# ------------------------------------------------------------------ bad input


def test_bad_inputs(tiny, mods, inverted, prompts, comfy_home):
    # a LoRA for another architecture: same names, other sizes (an SDXL-width LoRA on SD1.x)
    lora = dst_core.random_lora(tiny.model, seed=7)
    wide = {k: (torch.zeros(v.shape[0], v.shape[1] * 2) if k.endswith("down.weight") else v) for k, v in lora.items()}
    styles = make_styles(mods, [(wide, 1.0, prompts["style"], torch.ones(1, 64, 64))])
    with pytest.raises(ValueError, match=r"style 1 LoRA .*of its 128 matching layers have shapes that do not fit"):
        inject(mods, tiny.model, styles)
    alien = {
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 64),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(64, 4),
        "transformer.blocks.0.attn.qkv.lora_A.weight": torch.zeros(4, 8),
    }
    safetensors.torch.save_file(alien, str(comfy_home.models / "loras" / "alien.safetensors"))
    styles = mods.style.DiffStylerStyleLoRA.execute(
        "alien.safetensors", 1.0, prompts["style"], torch.ones(1, 64, 64)
    ).args[0]
    with pytest.raises(ValueError, match=r"alien.safetensors\): 0 of its 3 tensors match"):
        inject(mods, tiny.model, styles)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        mods.style.DiffStylerStyleLoRA.execute("missing.safetensors", 1.0, prompts["style"], torch.ones(1, 64, 64))
    with pytest.raises(ValueError, match="no absolute path"):
        mods.style.DiffStylerStyleLoRA.execute("../evil.safetensors", 1.0, prompts["style"], torch.ones(1, 64, 64))
    # masks that do not fit the latent
    for mask, pattern in (
        (torch.ones(3, 64, 64), "mask batch has 3 masks"),
        (torch.ones(1, 64, 128), "aspect ratios differ"),
    ):
        styles = make_styles(mods, [(None, 0.0, prompts["style"], mask)])
        with pytest.raises(ValueError, match=pattern):
            run(mods, inject(mods, tiny.model, styles), inverted, prompts, styles)
    with pytest.raises(ValueError, match="NaN"):
        make_styles(mods, [(None, 0.0, prompts["style"], torch.full((1, 64, 64), float("nan")))])
    # an all-zero mask: warning, style skipped, the content comes back unchanged
    styles = make_styles(mods, [(None, 0.0, prompts["style"], torch.zeros(1, 64, 64))])
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logging.getLogger("comfyui_diffstyler").addHandler(handler)
    try:
        out = run(mods, inject(mods, tiny.model, styles), inverted, prompts, styles)
    finally:
        logging.getLogger("comfyui_diffstyler").removeHandler(handler)
    assert any("all-zero mask" in r.getMessage() for r in records)
    assert torch.equal(out, inverted.content_latent)
    # an inversion made with another model or step count
    import dst_tiny

    styles = make_styles(mods, [(None, 0.0, prompts["style"], torch.ones(1, 64, 64))])
    other = dst_tiny.tiny_unet("sd15", seed=9)
    with pytest.raises(ValueError, match="another model"):
        run(mods, inject(mods, other, styles), inverted, prompts, styles)
    from comfyui_diffstyler.nodes.adapters.ddim import ddim_sampler
    from comfyui_diffstyler.nodes.adapters.guider import DiffStylerGuider

    guider = DiffStylerGuider(
        inject(mods, tiny.model, styles), inverted, styles, prompts["base"], prompts["neg"], 7.5, "exact"
    )
    sig = mods.inversion.sampling_sigmas(tiny.model, 20)
    lat = inverted.content_latent
    with pytest.raises(ValueError, match="10 steps but the sampler uses 20"):
        guider.sample(lat * 0, lat, ddim_sampler(), sig)
    # a plain MODEL (no Injector) and mismatched styles
    with pytest.raises(ValueError, match="Cross-LoRA Attention Injector"):
        DiffStylerGuider(tiny.model, inverted, styles, prompts["base"], prompts["neg"], 7.5, "exact")
    other_styles = make_styles(mods, [(None, 0.5, prompts["style"], torch.ones(1, 64, 64))])
    with pytest.raises(ValueError, match="differ from the 1 the Injector patched"):
        DiffStylerGuider(
            inject(mods, tiny.model, styles), inverted, other_styles, prompts["base"], prompts["neg"], 7.5, "exact"
        )
    assert os.path.exists(comfy_home.models / "loras" / "alien.safetensors")


# ------------------------------------------------------------------ content-feature cache


@pytest.mark.parametrize("k", [1, 2])
def test_feature_cache_equals_content_row(tiny, mods, content, prompts, k):
    import comfy.patcher_extension

    lat = content[1]
    plain = mods.inversion.invert(tiny.model, lat, STEPS, prompts["empty"], disable_pbar=True, grid="sampling")
    cached = mods.inversion.invert(
        tiny.model, lat, STEPS, prompts["empty"], disable_pbar=True, cache_dtype="fp32", grid="sampling"
    )
    assert torch.equal(plain.trajectory, cached.trajectory) or torch.allclose(
        plain.trajectory, cached.trajectory, atol=1e-6
    )
    assert cached.feature_cache.steps_recorded() == (6, 5)
    items = [
        (dst_core.random_lora(tiny.model, seed=30 + i), 1.0, prompts["style"], half_mask(left=(i == 0)))
        for i in range(k)
    ]
    styles = make_styles(mods, items)
    # the cache holds LoRA-free content features: the option it replaces is the shared content row
    patched = inject(mods, tiny.model, styles, 0.6, 0.5, content_rows="shared")
    rows = []
    patched.add_wrapper_with_key(
        comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL,
        "rows",
        lambda ex, x, *a, **kw: rows.append(x.shape[0]) or ex(x, *a, **kw),
    )
    a = run(mods, patched, plain, prompts, styles)
    assert rows[0] == 1 + 2 * k
    rows.clear()
    b = run(mods, patched, cached, prompts, styles)
    assert rows == [2 * k] * STEPS, "with the cache no call carries a content row"
    diff = float((a - b).abs().max())
    fp16 = mods.inversion.invert(
        tiny.model, lat, STEPS, prompts["empty"], disable_pbar=True, cache_dtype="fp16", grid="sampling"
    )
    c = run(mods, patched, fp16, prompts, styles)
    print(
        f"\nfeature cache k={k}: fp32 max |diff| {diff:.2e}, fp16 max |diff| {float((a - c).abs().max()):.2e}; "
        f"fp32 cache {cached.feature_cache.nbytes() / 2**20:.2f} MB, fp16 {fp16.feature_cache.nbytes() / 2**20:.2f} MB "
        f"for a 64x64 image, {STEPS} steps"
    )
    # the cache records the features where the inversion evaluated the UNet (one grid step cleaner than the
    # content row's own latent), so it departs from the shared content row by a little, not by the style effect
    rel = float((a - b).norm() / a.norm())
    print(f"feature cache vs shared content row, k={k}: relative difference {rel:.2e}")
    assert 0 < rel <= 0.1


# ------------------------------------------------------------------ feature-fusion mode


def one_full_mask_both_modes(tiny, mods, inverted, prompts):
    """(noise fusion, feature fusion, styles) for one style with a full mask."""
    lora = dst_core.random_lora(tiny.model, seed=40)
    styles = make_styles(mods, [(lora, 1.0, prompts["style"], torch.ones(1, 64, 64))])
    # feature fusion shares one LoRA-free content row: its noise-fusion twin is the shared-content-row option
    noise = run(mods, inject(mods, tiny.model, styles, 0.6, 0.5, content_rows="shared"), inverted, prompts, styles)
    patched = mods.inject.DiffStylerCrossLoRAInjector.execute(
        tiny.model, styles, 0.6, 0.5, "adaptive", True, "feature"
    ).args[0]
    return noise, run(mods, patched, inverted, prompts, styles), styles


def test_feature_fusion_equals_noise_fusion_for_one_full_mask(tiny, mods, inverted, prompts):
    noise, feat, _styles = one_full_mask_both_modes(tiny, mods, inverted, prompts)
    diff = float((noise - feat).abs().max())
    print(f"\nfeature fusion vs noise fusion, k=1 full mask: max |diff| {diff:.2e}")
    assert diff <= 1e-4


def test_feature_fusion_under_lowvram_weight_patches(tiny, mods, inverted, prompts, monkeypatch):
    """ComfyUI's lowvram mode casts weights per call and applies a LoRA the core loader added as a weight
    function (LowVramPatch) instead of merging it. The region prompts' keys/values must go through the
    layer's own forward, patches included: k=1 with a full mask still equals noise fusion."""
    import comfy.model_patcher
    import comfy.sd

    user = dst_core.random_lora(tiny.model, seed=60, scale=0.5)
    merged, _ = comfy.sd.load_lora_for_models(tiny.model, None, user, 1.0, 0)
    patched_layers = 0
    for name, module in tiny.model.model.named_modules():
        key = name + ".weight"
        if name.endswith(("attn2.to_k", "attn2.to_v")) and key in merged.patches:
            monkeypatch.setattr(module, "comfy_cast_weights", True)
            monkeypatch.setattr(module, "weight_function", [comfy.model_patcher.LowVramPatch(key, merged.patches)])
            patched_layers += 1
    assert patched_layers > 0
    noise, feat, styles = one_full_mask_both_modes(tiny, mods, inverted, prompts)
    monkeypatch.undo()
    unpatched = run(mods, inject(mods, tiny.model, styles, 0.6, 0.5, content_rows="shared"), inverted, prompts, styles)
    diff = float((noise - feat).abs().max())
    effect = float((noise - unpatched).abs().max())
    print(
        f"\nfeature vs noise fusion, lowvram weight patches on {patched_layers} K/V layers: max |diff| {diff:.2e} "
        f"(the patches change the result by {effect:.2e})"
    )
    assert effect > 1e-3, "the weight patches must matter for this test to mean anything"
    assert diff <= 1e-4


def test_feature_fusion_two_styles_two_rows(tiny, mods, inverted, prompts, content):
    import comfy.patcher_extension

    items = [
        (
            dst_core.random_lora(tiny.model, seed=41 + i),
            1.0,
            prompts["style" if i == 0 else "style2"],
            half_mask(left=(i == 0)),
        )
        for i in range(2)
    ]
    styles = make_styles(mods, items)
    patched = mods.inject.DiffStylerCrossLoRAInjector.execute(
        tiny.model, styles, 0.6, 0.5, "adaptive", True, "feature"
    ).args[0]
    rows = []
    patched.add_wrapper_with_key(
        comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL,
        "rows",
        lambda ex, x, *a, **kw: rows.append(x.shape[0]) or ex(x, *a, **kw),
    )
    feat = run(mods, patched, inverted, prompts, styles)
    assert rows[0] == 3 and rows[-1] == 2, rows
    noise = run(mods, inject(mods, tiny.model, styles, 0.6, 0.5), inverted, prompts, styles)
    assert torch.isfinite(feat).all() and not torch.equal(feat, content[1])
    print(f"\nfeature vs noise fusion, k=2 half masks: mean |diff| {float((feat - noise).abs().mean()):.3e}")


def test_feature_fusion_complementary_halves_of_one_style_equal_one_full_mask(tiny, mods, inverted, prompts):
    """Token weights that sum to 1: the same LoRA and prompt on the left and right halves == one full mask."""
    lora = dst_core.random_lora(tiny.model, seed=43)

    def fused(items):
        styles = make_styles(mods, items)
        patched = mods.inject.DiffStylerCrossLoRAInjector.execute(
            tiny.model, styles, 0.6, 0.5, "adaptive", True, "feature"
        ).args[0]
        return run(mods, patched, inverted, prompts, styles)

    one = fused([(lora, 1.0, prompts["style"], torch.ones(1, 64, 64))])
    halves = fused(
        [(lora, 1.0, prompts["style"], half_mask(left=True)), (lora, 1.0, prompts["style"], half_mask(left=False))]
    )
    diff = float((one - halves).abs().max())
    print(f"\nfeature fusion, one style on two complementary halves vs one full mask: max |diff| {diff:.2e}")
    assert diff <= 1e-4


def test_feature_fusion_batched_paths_equal_the_per_region_loops(tiny, mods, inverted, prompts, monkeypatch):
    """All regions' attentions in one call and all styles' LoRA factors side by side == one at a time."""
    from comfyui_diffstyler.nodes.adapters import feature_fusion

    items = [
        (dst_core.random_lora(tiny.model, seed=44 + i), 1.0, prompts["style" if i == 0 else "style2"], m)
        for i, m in enumerate((half_mask(left=True), torch.ones(1, 64, 64) * 0.5))
    ]
    styles = make_styles(mods, items)
    patched = mods.inject.DiffStylerCrossLoRAInjector.execute(
        tiny.model, styles, 0.6, 0.5, "adaptive", True, "feature"
    ).args[0]
    calls = {"batched": 0}
    real_stack = feature_fusion._stack_kv

    def counting_stack(*a, **k):
        out = real_stack(*a, **k)
        calls["batched"] += out is not None
        return out

    real_project = feature_fusion._project
    projections = {"batched": 0, "looped": 0}
    mode = "batched"

    def counting_project(*a, **k):
        projections[mode] += 1
        return real_project(*a, **k)

    monkeypatch.setattr(feature_fusion, "_project", counting_project)
    monkeypatch.setattr(feature_fusion, "_stack_kv", counting_stack)
    batched = run(mods, patched, inverted, prompts, styles)
    assert calls["batched"] > 0
    monkeypatch.setattr(feature_fusion, "_stack_kv", lambda *a, **k: None)
    monkeypatch.setattr(feature_fusion, "_stacked_factors", lambda *a, **k: None)
    mode = "looped"
    looped = run(mods, patched, inverted, prompts, styles)
    # region prompts are projected once per run on both paths (not once per layer call and step)
    assert projections["looped"] == projections["batched"] > 0, projections
    diff = float((batched - looped).abs().max())
    print(f"\nfeature fusion k=2, batched vs per-region loops: max |diff| {diff:.2e}")
    assert diff <= 1e-5 and not torch.equal(batched, inverted.content_latent)


def test_two_styles_each_row_gets_its_own_lora(tiny, mods, inverted, prompts):
    """With two full masks the later style covers everything: the result must be that style's LoRA alone,
    although both styles' rows run in the same UNet call (the batched per-style LoRA path)."""
    import comfy.sd

    a, b = dst_core.random_lora(tiny.model, seed=50), dst_core.random_lora(tiny.model, seed=51)
    full = torch.ones(1, 64, 64)
    xt = x_t(mods, tiny, inverted)
    for first, last in ((a, b), (b, a)):
        styles = make_styles(mods, [(first, 1.0, prompts["style2"], full), (last, 0.9, prompts["style"], full)])
        out = run(mods, inject(mods, tiny.model, styles), inverted, prompts, styles)
        merged, _ = comfy.sd.load_lora_for_models(tiny.model, None, last, 0.9, 0)
        ref = dst_core.plain_ddim(merged, xt, STEPS, prompts["style"], prompts["neg"], 7.5)
        assert float((out - ref).abs().max()) <= 1e-4


def test_sampler_styles_default_to_the_injectors(tiny, mods, inverted, prompts):
    """An unconnected styles input on the sampler means the styles the Injector patched."""
    styles = make_styles(mods, [(dst_core.random_lora(tiny.model, seed=60), 1.0, prompts["style"], half_mask())])
    patched = inject(mods, tiny.model, styles, 0.6, 0.5)
    connected = run(mods, patched, inverted, prompts, styles)
    default = mods.sample.DiffStylerMaskedFusionSampler.execute(
        patched, inverted, prompts["base"], prompts["neg"], 7.5, "exact"
    ).args[0]["samples"]
    assert torch.equal(connected, default)
    assert not torch.equal(default, inverted.content_latent)


# ------------------------------------------------------------------ per-layer fast paths and kernel counts


def thirds(k: int) -> list[torch.Tensor]:
    """k vertical stripes covering the left 3/4 of a 64x64 image."""
    masks = []
    for i in range(k):
        m = torch.zeros(1, 64, 64)
        m[:, :, i * 48 // k : (i + 1) * 48 // k] = 1
        masks.append(m)
    return masks


def k_styles(mods, tiny, prompts, k: int, seed: int = 70):
    return make_styles(
        mods,
        [(dst_core.random_lora(tiny.model, seed=seed + i), 1.0, prompts["style"], m) for i, m in enumerate(thirds(k))],
    )


@pytest.mark.parametrize("k,cache", [(1, False), (3, False), (3, True)])
def test_fast_paths_equal_the_general_paths(tiny, mods, content, prompts, monkeypatch, k, cache):
    """The per-layer fast paths (each style's LoRA as matmuls into views of the layer's output, k styles in one
    batched pair; Q/K and ResBlock injection in place on the injected rows) give what the general paths (gathers
    and scatters by row index) give, with and without the content-feature cache."""
    inv = mods.inversion.invert(
        tiny.model, content[1], STEPS, prompts["empty"], disable_pbar=True, cache_dtype="fp32", grid="sampling"
    )
    if not cache:
        inv = mods.inversion.invert(tiny.model, content[1], STEPS, prompts["empty"], disable_pbar=True, grid="sampling")
    styles = k_styles(mods, tiny, prompts, k)
    patched = inject(mods, tiny.model, styles, 0.6, 0.5)
    taken = {"plan": 0, "span": 0}
    plan, span, group = mods.layers.RowLoRAMixin._ds_plan, mods.rows.inject_span, mods.rows.inject_group

    def spy_plan(self, layout, x):
        out = plan(self, layout, x)
        taken["plan"] += bool(out)
        return out

    def spy_span(*a):
        out = span(*a)
        taken["span"] += out is not None
        return out

    def spy_group(*a):
        out = group(*a)
        taken["span"] += out is not None
        return out

    monkeypatch.setattr(mods.layers.RowLoRAMixin, "_ds_plan", spy_plan)
    monkeypatch.setattr(mods.rows, "inject_span", spy_span)
    monkeypatch.setattr(mods.rows, "inject_group", spy_group)
    fast = run(mods, patched, inv, prompts, styles)
    # 6 of 10 steps inside the ResBlock window, 5 inside the Q/K window: one in-place plan for each
    assert taken["plan"] > 0 and taken["span"] == 11, taken
    monkeypatch.setattr(mods.layers.RowLoRAMixin, "_ds_plan", lambda self, layout, x: None)
    monkeypatch.setattr(mods.rows, "inject_span", lambda *a: None)
    monkeypatch.setattr(mods.rows, "inject_group", lambda *a: None)
    general = run(mods, patched, inv, prompts, styles)
    diff = float((fast - general).abs().max())
    print(f"\nfast vs general per-layer paths, k={k}, cache={cache}: max |diff| {diff:.2e}")
    assert diff <= 1e-5
    assert not torch.equal(fast, inv.content_latent)


def kernel_count():
    """bench/common.py's KernelCount (loaded by path: the bench folder is not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "common.py"
    spec = importlib.util.spec_from_file_location("diffstyler_bench_common", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.KernelCount()


def counting_unet(model, counter):
    """A clone of ``model`` whose UNet calls (the diffusion model itself) run under ``counter``."""
    import comfy.patcher_extension

    def count(executor, *args, **kwargs):
        with counter:
            return executor(*args, **kwargs)

    clone = model.clone()
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "kernel-count", count)
    return clone


@pytest.mark.slow
def test_kernels_per_unet_call_do_not_grow_with_k(tiny, mods, content, prompts):
    """Inside the UNet, DiffStyler may add at most two kernels per LoRA layer (one style's low-rank pair, or all k
    styles' as one batched pair), two per Q/K-injected attention layer and one for the ResBlock, whatever k is:
    the per-kernel cost is what bounds a fast GPU at small sizes. (ComfyUI's own per-cond bookkeeping around the
    call and the masked fusion grow with k; the whole-step counts are printed.)"""
    inv = mods.inversion.invert(tiny.model, content[1], STEPS, prompts["empty"], disable_pbar=True, grid="sampling")
    xt = x_t(mods, tiny, inv)
    plain_unet, plain_all = kernel_count(), kernel_count()
    plain = counting_unet(tiny.model, plain_unet)
    dst_core.plain_ddim(plain, xt, STEPS, prompts["base"], prompts["neg"], 7.5)  # warm-up
    plain_unet.n = 0
    with plain_all:
        dst_core.plain_ddim(plain, xt, STEPS, prompts["base"], prompts["neg"], 7.5)
    assert plain_unet.n > 0
    extra = {}
    for k in (1, 3):
        styles = k_styles(mods, tiny, prompts, k)
        unet, whole = kernel_count(), kernel_count()
        patched = counting_unet(inject(mods, tiny.model, styles, 1.0, 1.0), unet)  # injection at every step
        run(mods, patched, inv, prompts, styles)
        unet.n = 0
        with whole:
            run(mods, patched, inv, prompts, styles)
        state = mods.install.state_of(patched)
        lora_layers = sum(isinstance(m, mods.layers.RowLoRAMixin) for m in patched.model.modules())
        qk_layers = sum(1 for kind, _slot in state.replace_slots if kind == "attn1")
        extra[k] = (unet.n - plain_unet.n) / STEPS
        bound = 2 * lora_layers + 2 * qk_layers + 1
        print(
            f"\nkernels per step, tiny UNet: plain {plain_unet.n / STEPS:.0f} in the UNet ({plain_all.n / STEPS:.0f} "
            f"in all), DiffStyler k={k}: +{extra[k]:.0f} in the UNet (bound {bound}: {lora_layers} LoRA layers, "
            f"{qk_layers} Q/K layers), +{(whole.n - plain_all.n) / STEPS:.0f} in all"
        )
        assert lora_layers > 0 and qk_layers > 0
        assert extra[k] <= bound
    assert extra[3] <= extra[1], "more styles must not add kernels inside the UNet"


def test_lora_in_injected_attention_switch(tiny, mods, inverted, prompts):
    """``lora_in_injected_attention=False`` (the reference scripts' behaviour) turns the LoRA off in exactly the
    self-attention projections of the Q/K-injected decoder blocks, and changes the result."""
    styles = k_styles(mods, tiny, prompts, 1)
    on, off = (inject(mods, tiny.model, styles, 0.6, 0.5, lora_in_attn=flag) for flag in (True, False))
    marked = {p for p, m in off.object_patches.items() if getattr(m, "_ds_in_injected_attention", False)}
    expected = {
        p
        for p, m in off.object_patches.items()
        if isinstance(m, mods.layers.RowLoRAMixin)
        and ".attn1." in p
        and any(p.startswith(f"diffusion_model.output_blocks.{i}.") for i in range(4, 12))
    }
    assert marked == expected and len(expected) == 8 * 4
    assert not torch.equal(run(mods, on, inverted, prompts, styles), run(mods, off, inverted, prompts, styles))


def test_global_style_without_a_mask_is_the_whole_picture(tiny, mods, inverted, prompts, caplog):
    """A Style LoRA Loader with no mask restyles the whole picture: the same as a mask of ones, and said so."""
    lora = dst_core.random_lora(tiny.model, seed=7)
    caplog.set_level(logging.INFO)
    unmasked = mods.style.DiffStylerStyleLoRA.execute("None", 1.0, prompts["style"], None, lora=lora).args[0]
    assert any("no mask: it restyles the whole picture" in r.getMessage() for r in caplog.records)
    full = mods.style.DiffStylerStyleLoRA.execute("None", 1.0, prompts["style"], torch.ones(1, 64, 64), lora=lora)
    full = full.args[0]
    a = run(mods, inject(mods, tiny.model, unmasked, 0.6, 0.5), inverted, prompts, unmasked)
    b = run(mods, inject(mods, tiny.model, full, 0.6, 0.5), inverted, prompts, full)
    assert torch.equal(a, b)
    assert not torch.equal(a, inverted.content_latent)
