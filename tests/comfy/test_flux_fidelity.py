"""DiffStyler on Flux.1 (design Sec. 6; issue #26 item 6): the pack's nodes against a plain, unbatched oracle.

``flux_oracle`` implements Sec. 6 on its own (one ModelPatcher clone per branch with its LoRA merged by ComfyUI's
loader, the injected blocks' q/k rows cut out of the LoRA; a Python loop of Euler steps; every row of every branch
in its own model call; the injection by forward hooks on ComfyUI's Flux modules). The pack runs its nodes in-process
(DDIM Inversion -> Style LoRA Loader per style -> Cross-LoRA Attention Injector -> Masked Feature Fusion Sampler).
Both on the same tiny Flux-dev (hidden 128, 2 double and 2 single blocks), a 32x32 latent (16x16 tokens), prompts
of one token count, LoRA files in the kohya and the diffusers layouts, masks with edges off the token grid, 10 steps.
The oracle walks from the pack's inversion (the flow inversion is tested in test_flux_inversion).

Measured (v0.8.0 and v0.33.0): the pack is within 0.9e-7 .. 3.5e-7 of the oracle in every case, Flux.1-schnell
included (the styles move the result by 25-75%); each broken rule moves the oracle 2.4e-3 .. 1.8e-1 away from it.
"""

from __future__ import annotations

import math

import flux_oracle as fo
import pytest
import safetensors.torch
import torch
from dst_fixtures import mods, one_torch_thread  # noqa: F401 - fixtures

STEPS = 10
TOL = 1e-4  # relative difference of the final latent
TOKENS = 16  # every prompt's text length (one transformer call per step on the pack's side)
RANK = 4
LORA_FORMATS = ("kohya", "diffusers", "kohya")  # style i's LoRA file layout
GUIDANCE = 3.5  # Flux-dev's embedded guidance on the style and base prompts
# the diffusers modules a style LoRA covers (slices of the fused qkv / linear1 where ComfyUI's key map says so)
DIFFUSERS_MODULES = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj",
    "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp",
    "proj_out",
)  # fmt: skip


class Case:
    def __init__(self, spec, model, content, prompts, loras, names):
        self.spec, self.model, self.content, self.prompts, self.loras, self.names = (
            spec, model, content, prompts, loras, names,
        )  # fmt: skip


def flux_lora(model, fmt: str, seed: int, scale: float = 0.6) -> dict:
    """A random style LoRA on the attention and MLP Linears of every block of a Flux ``model``: ``kohya`` (whole
    fused tensors, ``lora_unet_double_blocks_0_img_attn_qkv``, alpha = rank/2) or ``diffusers`` (``transformer.`` keys
    on slices of the fused weights, alpha = rank)."""
    import comfy.utils

    g = torch.Generator().manual_seed(seed)
    state = model.model.state_dict()

    def factors(rows, cols):
        down = torch.randn(RANK, cols, generator=g) * scale / math.sqrt(cols)
        up = torch.randn(rows, RANK, generator=g) * scale / math.sqrt(RANK)
        return down.contiguous(), up.contiguous()

    out = {}
    if fmt == "kohya":
        for key in sorted(state):
            if not key.startswith(("diffusion_model.double_blocks.", "diffusion_model.single_blocks.")):
                continue
            if not key.endswith(".weight") or state[key].ndim != 2 or "_mod." in key or ".modulation." in key:
                continue  # Linears of the attention and MLP only (not the modulations)
            stem = "lora_unet_" + key[len("diffusion_model.") : -len(".weight")].replace(".", "_")
            out[stem + ".lora_down.weight"], out[stem + ".lora_up.weight"] = factors(*state[key].shape)
            out[stem + ".alpha"] = torch.tensor(RANK / 2)
        return out
    mapping = comfy.utils.flux_to_diffusers(model.model.model_config.unet_config, output_prefix="diffusion_model.")
    for name in sorted(mapping):
        module = name[: -len(".weight")]
        if not name.endswith(".weight") or not module.startswith(("transformer_blocks.", "single_transformer_blocks.")):
            continue
        if not module.endswith(DIFFUSERS_MODULES):
            continue
        target = mapping[name]
        key, where = (target, None) if isinstance(target, str) else target[:2]
        rows = state[key].shape[0] if where is None else where[2]
        out[f"transformer.{module}.lora_A.weight"], out[f"transformer.{module}.lora_B.weight"] = factors(
            rows, state[key].shape[1]
        )
    return out


def flux_masks(k: int, size: int = 256) -> list:
    """k overlapping masks ``[1,size,size]`` (a 32x32 latent at 256) whose latent-grid edges fall inside 2x2 token
    cells (latent rows/columns 19, 9, 13, 3, 5, 14, 16), one faint (0.3: hard masks take it whole); a corner stays
    outside all of them."""
    c = size // 32  # pixels per latent cell
    a = torch.zeros(1, size, size)
    a[:, :, : 19 * c] = 1.0  # latent columns 0..18; tokens 0..9 (latent 0..19)
    b = torch.zeros(1, size, size)
    b[:, 9 * c :, 13 * c :] = 1.0  # latent rows >= 9, columns >= 13
    f = torch.zeros(1, size, size)
    f[:, 3 * c : 15 * c, 5 * c : 17 * c] = 0.3  # latent rows 3..14, columns 5..16
    return [a, b, f][:k]


def make_case(comfy_home, guidance: bool, tag: str):
    """The tiny Flux (dev with a guidance embedding, or schnell without), its content latent, prompts and style LoRA
    files written into ComfyUI's models/loras (removed by the caller)."""
    from comfyui_diffstyler.nodes.harness import tiny_flux as tf

    spec = tf.TinyFlux(hidden=128, depth=2, depth_single=2, guidance=guidance, seed=21)
    model = tf.build_model(spec)
    content = tf.latent(32, 32, seed=22)
    style_guidance = GUIDANCE if guidance else None  # schnell's conditionings carry none (it would be ignored)
    prompts = {
        "empty": tf.conditioning(spec, tokens=TOKENS, seed=30, guidance=None),  # the inversion sets guidance 1.0
        "base": tf.conditioning(spec, tokens=TOKENS, seed=31, guidance=style_guidance),
        "neg": tf.conditioning(spec, tokens=TOKENS, seed=32, guidance=None),  # ComfyUI embeds its default 3.5
        "styles": [tf.conditioning(spec, tokens=TOKENS, seed=33 + i, guidance=style_guidance) for i in range(3)],
    }
    loras, names = [], []
    for i, fmt in enumerate(LORA_FORMATS):
        lora = flux_lora(model, fmt, seed=40 + i)
        name = f"flux_oracle_{tag}_{i}_{fmt}.safetensors"
        safetensors.torch.save_file(lora, str(comfy_home.models / "loras" / name))
        loras.append(lora)
        names.append(name)
    return Case(spec, model, content, prompts, loras, names)


@pytest.fixture(scope="module")
def flux(mods, comfy_home):
    case = make_case(comfy_home, guidance=True, tag="dev")
    yield case
    for name in case.names:
        (comfy_home.models / "loras" / name).unlink()


_INVERSION: dict = {}


def inversion(mods, flux):
    """The pack's DDIM Inversion node on the Flux MODEL (its Flux default grid), computed once."""
    if id(flux) not in _INVERSION:
        latent = {"samples": flux.content}
        _INVERSION[id(flux)] = mods.invert.DiffStylerInvert.execute(
            flux.model, latent, STEPS, conditioning=flux.prompts["empty"]
        ).args[0]
    return _INVERSION[id(flux)]


def oracle_styles(flux, k: int, masks=None) -> list:
    masks = flux_masks(k) if masks is None else masks
    return [fo.FluxStyle(flux.loras[i], 1.0, flux.prompts["styles"][i], masks[i]) for i in range(k)]


def run_oracle(flux, inv, k, background, cfg, rules=fo.Rules(), qk_end=0.5, styles=None, trace=None):
    p = flux.prompts
    return fo.diffstyler(
        flux.model, inv.sigmas, inv.trajectory, flux.content, oracle_styles(flux, k) if styles is None else styles,
        p["base"], p["neg"], p["empty"], cfg, background, qk_end=qk_end, rules=rules, trace=trace,
    )  # fmt: skip


_PACK: dict = {}


def run_pack(mods, flux, k, background, cfg, qk_end=0.5):
    """The pack's nodes: Style LoRA Loader per style (its file, prompt, mask), Injector, Masked Fusion Sampler."""
    key = (id(flux), k, background, cfg, qk_end)
    if key not in _PACK:
        styles = None
        for i, mask in enumerate(flux_masks(k)):
            styles = mods.style.DiffStylerStyleLoRA.execute(
                flux.names[i], 1.0, flux.prompts["styles"][i], mask, styles=styles
            ).args[0]
        patched = mods.inject.DiffStylerCrossLoRAInjector.execute(
            flux.model, styles, 0.6, qk_end, "adaptive", False
        ).args[0]
        p = flux.prompts
        _PACK[key] = mods.sample.DiffStylerMaskedFusionSampler.execute(
            patched, inversion(mods, flux), p["base"], p["neg"], cfg, background, styles, "hard"
        ).args[0]["samples"]
    return _PACK[key]


_ORACLE: dict = {}


def oracle(flux, inv, k, background, cfg, rules=fo.Rules(), qk_end=0.5):
    key = (id(flux), k, background, cfg, rules, qk_end)
    if key not in _ORACLE:
        _ORACLE[key] = run_oracle(flux, inv, k, background, cfg, rules=rules, qk_end=qk_end)
    return _ORACLE[key]


def rel(a, b) -> float:
    return float((a.detach().float() - b.detach().float()).norm() / b.detach().float().norm())


_PLAIN: dict = {}


def style_effect(flux, inv, want, cfg) -> float:
    """How far the result moves from plain Euler sampling from the same start with the base prompt."""
    if (id(flux), cfg) not in _PLAIN:
        p = flux.prompts
        _PLAIN[id(flux), cfg] = fo.plain_euler(flux.model, inv.sigmas, inv.trajectory[0], p["base"], p["neg"], cfg)
    return float((want - _PLAIN[id(flux), cfg]).norm())


# ---------------------------------------------------------------------------------------------- the pack = the oracle

CASES = [(k, background, cfg) for k in (1, 2, 3) for background in ("exact", "model") for cfg in (1.0, 3.0)]
QUICK = {(2, "model", 1.0), (3, "exact", 3.0)}  # the quick tier's cases; the rest are slow


@pytest.mark.parametrize(
    "k,background,cfg", [pytest.param(*c, marks=() if c in QUICK else pytest.mark.slow) for c in CASES]
)
def test_pack_equals_the_oracle(mods, flux, k, background, cfg):
    """Sec. 6 defaults (features in the last double block on 6 of 10 steps, Q/K in the second half's single blocks
    on 5, adaptive blend, the LoRA bypassed in those q/k rows, hard masks on the token grid; cfg 1 with guidance 3.5
    in the prompts, or cfg 3 with a negative prompt): the final latents agree within 1e-4."""
    inv = inversion(mods, flux)
    got = run_pack(mods, flux, k, background, cfg)
    want = oracle(flux, inv, k, background, cfg)
    effect = style_effect(flux, inv, want, cfg)
    d = rel(got, want)
    print(
        f"\nflux k={k} background={background} cfg={cfg}: |pack - oracle| / |oracle| = {d:.2e}; "
        f"style effect / |oracle| = {effect / float(want.norm()):.2e}"
    )
    assert effect > 0.05 * float(want.norm()), "the styles must move the result for the comparison to mean it"
    assert d <= TOL, d


def test_schnell_equals_the_oracle(mods, comfy_home):
    """Flux.1-schnell (no guidance embedding; its prompts carry no guidance): the same nodes, the same oracle, k = 2
    with overlapping masks, cfg 1, exact background."""
    case = make_case(comfy_home, guidance=False, tag="schnell")
    try:
        assert not case.model.model.diffusion_model.params.guidance_embed
        inv = inversion(mods, case)
        got = run_pack(mods, case, 2, "exact", 1.0)
        want = oracle(case, inv, 2, "exact", 1.0)
        effect = style_effect(case, inv, want, 1.0)
        d = rel(got, want)
        share = effect / float(want.norm())
        print(f"\nschnell k=2: |pack - oracle| / |oracle| = {d:.2e}; style effect / |oracle| = {share:.2e}")
        assert effect > 0.05 * float(want.norm()), "the styles must move the result for the comparison to mean it"
        assert d <= TOL, d
    finally:
        for name in case.names:
            (comfy_home.models / "loras" / name).unlink()


# ---------------------------------------------------------------------------------------------- one rule broken

# rule -> (the oracle with that rule broken, the Q/K window both sides run): r = 1 differs from the adaptive blend
# only below sigma 0.5, which the default window (5 of 10 steps, sigma >= 0.76) never reaches in a style branch
BROKEN = {
    "text tokens injected too": (fo.Rules(image_tokens_only=False), 0.5),
    "LoRA kept in the injected q/k rows": (fo.Rules(lora_bypassed=False), 0.5),
    "r = 1 instead of the adaptive blend": (fo.Rules(adaptive_blend=False), 1.0),
    "masks on the latent grid, not the token grid": (fo.Rules(token_grid=False), 0.5),
    "content rows at the style prompt's guidance": (fo.Rules(content_guidance_one=False), 0.5),
    "V injected too": (fo.Rules(v_untouched=False), 0.5),
}


QUICK_RULES = (
    "text tokens injected too",
    "LoRA kept in the injected q/k rows",
    "masks on the latent grid, not the token grid",
)


@pytest.mark.parametrize("rule", [pytest.param(r, marks=() if r in QUICK_RULES else pytest.mark.slow) for r in BROKEN])
def test_an_oracle_with_one_rule_broken_is_far_from_the_pack(mods, flux, rule):
    """The comparison can tell: the pack agrees with the oracle and is far (> 10x the tolerance) from the same oracle
    with one Sec. 6 rule broken (k = 3, exact background, cfg 3: measured at k = 2, model background, cfg 1 the
    adaptive blend moves the result by 9.3e-4 only, the other rules by 1.5e-3 .. 6.4e-2)."""
    rules, qk_end = BROKEN[rule]
    inv = inversion(mods, flux)
    got = run_pack(mods, flux, 3, "exact", 3.0, qk_end)
    right = oracle(flux, inv, 3, "exact", 3.0, qk_end=qk_end)
    broken = oracle(flux, inv, 3, "exact", 3.0, rules=rules, qk_end=qk_end)
    d_right, d_broken = rel(got, right), rel(got, broken)
    print(f"\n{rule}: |pack - oracle| / |oracle| = {d_right:.2e}, |pack - broken oracle| / |broken| = {d_broken:.2e}")
    assert d_right <= TOL, d_right
    assert d_broken > 10 * TOL, d_broken


# ---------------------------------------------------------------------------------------------- the oracle itself


def comfy_euler(model, sigmas, start, positive, negative, cfg):
    """ComfyUI's own "euler" sampler through its CFGGuider from the model-space latent ``start``; VAE space."""
    import comfy.samplers

    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    vae_space = model.model.process_latent_out(start.clone())  # noise_scaling(s0, start, start) = start
    return guider.sample(
        start.clone(), vae_space, comfy.samplers.ksampler("euler"), sigmas, disable_pbar=True, seed=0
    ).float()


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_oracle_without_styles_effect_is_comfy_euler(mods, flux, cfg):
    """No LoRA, every style on the base prompt, windows 0, masks covering everything: the oracle's loop, model calls
    and fusion give ComfyUI's own Euler sampling (and so does its plain Euler)."""
    from comfyui_diffstyler.nodes.adapters import flux_inversion

    p = flux.prompts
    inv = flux_inversion.invert(flux.model, flux.content, STEPS, p["empty"], disable_pbar=True)
    full = torch.ones(1, 256, 256)
    styles = [fo.FluxStyle(None, 1.0, p["base"], full) for _ in range(2)]
    got = fo.diffstyler(
        flux.model, inv.sigmas, inv.trajectory, flux.content, styles, p["base"], p["neg"], p["empty"], cfg,
        "exact", feature_end=0.0, qk_end=0.0,
    )  # fmt: skip
    want = comfy_euler(flux.model, inv.sigmas, inv.trajectory[0], p["base"], p["neg"], cfg)
    assert rel(got, want) <= 1e-5, rel(got, want)
    plain = fo.plain_euler(flux.model, inv.sigmas, inv.trajectory[0], p["base"], p["neg"], cfg)
    assert rel(plain, want) <= 1e-5, rel(plain, want)
    assert rel(want, flux.content) > 0.05


def test_oracle_with_empty_masks_walks_the_trajectory(mods, flux):
    """Masks covering nothing, exact background: every step's latent is the inversion's at the next sigma."""
    from comfyui_diffstyler.nodes.adapters import flux_inversion

    p = flux.prompts
    inv = flux_inversion.invert(flux.model, flux.content, STEPS, p["empty"], disable_pbar=True)
    empty = torch.zeros(1, 256, 256)
    styles = [fo.FluxStyle(flux.loras[i], 1.0, p["styles"][i], empty) for i in range(2)]
    trace = []
    out = fo.diffstyler(
        flux.model, inv.sigmas, inv.trajectory, flux.content, styles, p["base"], p["neg"], p["empty"], 3.0, "exact",
        trace=trace,
    )  # fmt: skip
    assert len(trace) == STEPS
    assert all(torch.equal(z, inv.trajectory[i + 1]) for i, z in enumerate(trace))
    assert torch.equal(out, flux.content)


def test_oracle_injection_of_a_row_into_itself_changes_nothing(mods, flux):
    """The hooks are exact: a style row that is the content row itself comes out as it went in, with or without
    the feature and Q/K injection (text tokens, token order, in-place block updates); another row moves."""
    model = flux.model
    feats, qks = fo.default_blocks(model)
    assert feats == [("double", 1)] and qks == [("single", 1)]
    x = torch.randn(1, 16, 32, 32, generator=torch.Generator().manual_seed(5))
    y = torch.randn(1, 16, 32, 32, generator=torch.Generator().manual_seed(6))
    cond = flux.prompts["styles"][0]
    clone = model.clone()
    plain = fo.velocity(clone, x, 0.7, cond)
    for rules in (fo.Rules(), fo.Rules(image_tokens_only=False, v_untouched=False)):
        inj = fo.Injection(feats, qks, 256, model.model.diffusion_model.hidden_size, rules)
        inj.features = inj.qk = True
        inj.r = 0.6
        with inj.hooks(clone):
            inj.mode = "record"
            recorded = fo.velocity(clone, x, 0.7, cond)
            inj.mode = "apply"
            same = fo.velocity(clone, x, 0.7, cond)
            moved = fo.velocity(clone, y, 0.7, cond)
        assert torch.equal(recorded, plain)
        assert rel(same, plain) <= 1e-6, rel(same, plain)
        assert rel(moved, fo.velocity(clone, y, 0.7, cond)) > 1e-2


def test_oracle_merge_leaves_the_injected_q_k_rows_alone(mods, flux):
    """ComfyUI's loader merges the whole LoRA but the Q/K blocks' fused q and k rows (both file layouts)."""
    import comfy.model_management

    model = flux.model
    _feats, qks = fo.default_blocks(model)
    h = model.model.diffusion_model.hidden_size
    base = {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()}
    for lora in flux.loras[:2]:
        clone = fo.branch_model(model, lora, 1.0, qks)
        comfy.model_management.load_models_gpu([clone])
        merged = {k: v.clone() for k, v in clone.model.diffusion_model.state_dict().items()}
        comfy.model_management.load_models_gpu([model.clone()])
        cut, kept = "single_blocks.1.linear1.weight", "single_blocks.0.linear1.weight"
        assert torch.equal(merged[cut][: 2 * h], base[cut][: 2 * h])
        assert not torch.equal(merged[cut][2 * h :], base[cut][2 * h :])
        assert not torch.equal(merged[kept][: 2 * h], base[kept][: 2 * h])
        assert not torch.equal(
            merged["double_blocks.1.img_attn.qkv.weight"], base["double_blocks.1.img_attn.qkv.weight"]
        )


def test_oracle_windows_count_steps_as_the_pack():
    """The oracle's restated window rule gives the pack's ``schedule.in_window`` step counts."""
    from comfyui_diffstyler.nodes.core import schedule

    for steps in range(1, 61):
        for end in (0.0, 0.25, 0.5, 0.55, 0.6, 0.8, 1.0):
            n = fo.window_steps(end, steps)
            assert [i < n for i in range(steps)] == [schedule.in_window(i, end, steps) for i in range(steps)]
