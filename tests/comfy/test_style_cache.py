"""The per-style content-feature cache (issue 17, item 4): a re-run that changes only prompts, masks or cfg runs
2 rows per style per step and gives the uncached run's result; a changed LoRA, strength or foreign patch misses;
the cache is bounded (LRU) and dies with the InversionResult."""

from __future__ import annotations

import gc
import logging
import weakref

import dst_core
import pytest
import reliability_tools as rt
import torch
from dst_fixtures import content, content_latent, mods, one_torch_thread  # noqa: F401 - fixtures

STEPS = 10
FEAT, QK = 0.6, 0.5  # the released windows: ResBlock on steps 0-5 of 10, Q/K on steps 0-4


@pytest.fixture(scope="module")
def prompts(tiny):
    enc = lambda t: tiny.clip.encode_from_tokens_scheduled(tiny.clip.tokenize(t))  # noqa: E731
    texts = {
        "empty": "",
        "a": "painting of <sss>, deer",
        "b": "sketch of grass",
        "c": "watercolor of a lake",
        "d": "charcoal drawing, trees",
        "base": "a deer on grass",
        "neg": "ugly, blurry, black, low res, unrealistic",
        "neg2": "low quality",
    }
    return {k: enc(v) for k, v in texts.items()}


@pytest.fixture(scope="module")
def loras(tiny):
    return [dst_core.random_lora(tiny.model, seed=90 + i) for i in range(3)]


def invert(mods, tiny, latent, prompts, cache_mb=2048, model=None):
    """DDIM Inversion through its node (the node owns the cache), on the sampler's own steps (fast)."""
    node = mods.invert.DiffStylerInvert
    return node.execute(
        tiny.model if model is None else model,
        {"samples": latent},
        STEPS,
        conditioning=prompts["empty"],
        inversion_grid="sampling",
        content_cache_mb=cache_mb,
    ).args[0]


def box(x0, x1, y0=0, y1=64):
    m = torch.zeros(1, 64, 64)
    m[:, y0:y1, x0:x1] = 1
    return m


def styles_of(mods, items):
    styles = None
    for lora, strength, cond, mask in items:
        styles = mods.style.DiffStylerStyleLoRA.execute("None", strength, cond, mask, lora=lora, styles=styles).args[0]
    return styles


_ROWS: list[int] = []


def _count_rows(executor, x, *args, **kwargs):
    """One function for every run: its identity is part of the content cache's key, so it must not change."""
    _ROWS.append(int(x.shape[0]))
    return executor(x, *args, **kwargs)


class Rows:
    """Counts the rows of every UNet call of a MODEL (a DIFFUSION_MODEL wrapper, as test_core does)."""

    def __init__(self, model):
        import comfy.patcher_extension

        _ROWS.clear()
        model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test-rows", _count_rows)

    def take(self):
        out = list(_ROWS)
        _ROWS.clear()
        return out


def sample(mods, tiny, inv, styles, prompts, cfg=7.5, neg="neg", model=None, lora_in_attn=False, **options):
    """Injector + Masked Feature Fusion Sampler; returns (final latent, rows of each UNet call)."""
    patched = model if model is not None else tiny.model
    patched = mods.inject.DiffStylerCrossLoRAInjector.execute(
        patched, styles, FEAT, QK, "adaptive", lora_in_attn, **options
    ).args[0]
    rows = Rows(patched)
    out = mods.sample.DiffStylerMaskedFusionSampler.execute(
        patched, inv, prompts["base"], prompts[neg], cfg, "exact", styles
    ).args[0]["samples"]
    assert patched.get_attachment("diffstyler").run is None
    return out, rows.take()


def first_run(k, loras, prompts):
    return [(loras[i], 1.0, prompts["ab"[i]], box(32 * i, 32 * i + 32)) for i in range(k)]


def rerun(k, loras, prompts):
    """Other prompts, other (overlapping) masks; the same LoRAs and strengths."""
    return [(loras[i], 1.0, prompts["cd"[i]], box(8 + 20 * i, 40 + 20 * i, 4, 60)) for i in range(k)]


def windows_rows(k):
    """Rows per step without the cache: a content row per style on the 6 ResBlock-window steps, then 2 per style."""
    return [3 * k] * 6 + [2 * k] * (STEPS - 6)


def compare(a, b):
    diff = float((a - b).abs().max())
    rel = float((a - b).norm() / b.norm())
    return torch.equal(a, b), diff, rel


@pytest.mark.parametrize("k", [1, 2])
def test_rerun_runs_two_rows_per_style_and_equals_the_uncached_run(tiny, mods, content_latent, prompts, loras, k):
    inv = invert(mods, tiny, content_latent, prompts)
    cache = inv.source_cache
    assert cache is not None and cache.limit == 2048 * 2**20
    _, rows = sample(mods, tiny, inv, styles_of(mods, first_run(k, loras, prompts)), prompts)
    assert rows == windows_rows(k), "the first run computes every content row (and records it)"
    assert len(cache.entries) == k
    for e in cache.entries.values():
        assert sorted(e.res) == list(range(6)) and sorted(e.qk) == list(range(5)), "the steps the windows need"
    per_step = cache.nbytes() / k / 6
    new = styles_of(mods, rerun(k, loras, prompts))
    cached, rows = sample(mods, tiny, inv, new, prompts, cfg=5.0, neg="neg2")
    assert rows == [2 * k] * STEPS, "the re-run runs no content row: 2 rows per style per step"
    assert cache.hits == 6 * k
    # the uncached run of the same new inputs: a fresh inversion (the same trajectory), and the cache off
    plain_inv = invert(mods, tiny, content_latent, prompts, cache_mb=0)
    assert plain_inv.source_cache is None and torch.equal(plain_inv.trajectory, inv.trajectory)
    uncached, rows = sample(mods, tiny, plain_inv, new, prompts, cfg=5.0, neg="neg2")
    assert rows == windows_rows(k)
    same, diff, rel = compare(cached, uncached)
    print(
        f"\ncontent cache k={k}: re-run vs uncached run: torch.equal {same}, max |diff| {diff:.3e}, relative "
        f"{rel:.3e}; cache {cache.nbytes() / 2**10:.1f} KiB, {per_step / 2**10:.2f} KiB per style per step for a "
        f"{content_latent.shape[-2]}x{content_latent.shape[-1]} latent (tiny UNet, fp32)"
    )
    assert rel <= 1e-6
    assert not torch.equal(cached, content_latent), "the styles must change the picture for this to mean anything"


def test_lora_strength_lora_and_injected_attention_are_in_the_key(tiny, mods, content_latent, prompts, loras):
    inv = invert(mods, tiny, content_latent, prompts)
    one = lambda lora, strength, cond="a": styles_of(mods, [(lora, strength, prompts[cond], box(0, 40))])  # noqa: E731
    _, rows = sample(mods, tiny, inv, one(loras[0], 1.0), prompts)
    assert rows == windows_rows(1)
    # the same LoRA as another dict of other tensors with the same bytes, another prompt: a hit (digest by content)
    copy = {key: v.clone() for key, v in loras[0].items()}
    _, rows = sample(mods, tiny, inv, one(copy, 1.0, "c"), prompts, cfg=3.0)
    assert rows == [2] * STEPS
    for what, styles, extra in (
        ("another strength", one(loras[0], 0.7), {}),
        ("another LoRA", one(loras[1], 1.0), {}),
        ("the LoRA inside the injected attention", one(loras[0], 1.0), {"lora_in_attn": True}),
    ):
        _, rows = sample(mods, tiny, inv, styles, prompts, **extra)
        assert rows == windows_rows(1), what
    assert len(inv.source_cache.entries) == 4


def test_shared_content_row_and_model_background_use_the_lora_free_entry(tiny, mods, content_latent, prompts, loras):
    """A LoRA-free source (the shared content row, the model background's base branch) has one key, whoever uses it."""
    inv = invert(mods, tiny, content_latent, prompts)
    items = first_run(2, loras, prompts)
    _, rows = sample(mods, tiny, inv, styles_of(mods, items), prompts, content_rows="shared")
    assert rows == [5] * 6 + [4] * 4  # one shared content row
    keys = list(inv.source_cache.entries)
    assert len(keys) == 1 and keys[0][0] == mods.style_cache.NO_LORA
    _, rows = sample(mods, tiny, inv, styles_of(mods, rerun(2, loras, prompts)), prompts, content_rows="shared")
    assert rows == [4] * STEPS


def test_foreign_patches_are_in_the_key(tiny, mods, content_latent, prompts, loras):
    import comfy_extras.nodes_model_advanced as advanced

    inv = invert(mods, tiny, content_latent, prompts)
    styles = lambda cond: styles_of(mods, [(loras[0], 1.0, prompts[cond], box(0, 40))])  # noqa: E731
    _, rows = sample(mods, tiny, inv, styles("a"), prompts)
    assert rows == windows_rows(1)

    def scale_q(q, k, v, extra_options):  # another pack's self-attention patch
        return q * 1.5, k, v

    patched_after = tiny.model.clone()
    patched_after.set_model_attn1_patch(scale_q)
    _, rows = sample(mods, tiny, inv, styles("c"), prompts, model=patched_after)
    assert rows == windows_rows(1), "a patch the content row would see: a miss"
    _, rows = sample(mods, tiny, inv, styles("d"), prompts, model=patched_after)
    assert rows == [2] * STEPS, "the same patch object again: a hit"

    def other_replace(q, k, v, extra_options):
        import comfy.ldm.modules.attention as attention

        return attention.optimized_attention(q * 0.5, k, v, extra_options["n_heads"])

    chained = tiny.model.clone()
    chained.set_model_attn1_replace(other_replace, "output", 4)  # ours chains to it
    out, rows = sample(mods, tiny, inv, styles("c"), prompts, model=chained)
    assert rows == windows_rows(1), "an attention replace ours chains to: a miss"
    plain = invert(mods, tiny, content_latent, prompts, cache_mb=0)
    ref, _ = sample(mods, tiny, plain, styles("c"), prompts, model=chained)
    assert torch.equal(out, ref)

    # another node's object patch (ModelSamplingDiscrete's model_sampling; the inversion is made through it)
    (sampling,) = advanced.ModelSamplingDiscrete().patch(tiny.model, "eps", False)
    inv = invert(mods, tiny, content_latent, prompts, model=sampling)
    _, rows = sample(mods, tiny, inv, styles("a"), prompts, model=sampling)
    assert rows == windows_rows(1)
    _, rows = sample(mods, tiny, inv, styles("c"), prompts, model=sampling)
    assert rows == [2] * STEPS, "the same object patch: a hit"
    (again,) = advanced.ModelSamplingDiscrete().patch(tiny.model, "eps", False)
    _, rows = sample(mods, tiny, inv, styles("d"), prompts, model=again)
    assert rows == windows_rows(1), "another object patch (equal numbers, another object): a miss"


def test_lru_bound_and_the_log(tiny, mods, content_latent, prompts, loras, caplog):
    inv = invert(mods, tiny, content_latent, prompts)
    _, rows = sample(mods, tiny, inv, styles_of(mods, first_run(1, loras, prompts)), prompts)
    entry = next(iter(inv.source_cache.entries.values()))
    size = entry.nbytes
    # room for one style's entry and a half: the second style of a two-style run is not stored ...
    inv.source_cache = cache = mods.style_cache.ContentCache(int(size * 1.5))
    items = first_run(2, loras, prompts)
    with caplog.at_level(logging.INFO, logger="comfyui_diffstyler.nodes.adapters.style_cache"):
        _, rows = sample(mods, tiny, inv, styles_of(mods, items), prompts)
    assert rows == windows_rows(2)
    assert cache.nbytes() <= cache.limit and cache.evicted == 0
    assert "per step" in caplog.text and "content cache full" in caplog.text
    (kept,) = [e.label for e in cache.entries.values()]
    other = items[1] if kept.startswith("style 1 ") else items[0]
    _, rows = sample(mods, tiny, inv, styles_of(mods, items), prompts, cfg=4.0)
    assert rows[:6] == [5] * 6, "one style from the cache, the other's content row still computed"
    # ... and a run of the other style alone evicts the stored one (least recently used, not in use) to store it
    _, rows = sample(mods, tiny, inv, styles_of(mods, [other]), prompts)
    assert rows == windows_rows(1)
    assert cache.evicted == 1 and len(cache.entries) == 1 and cache.nbytes() <= cache.limit
    _, rows = sample(mods, tiny, inv, styles_of(mods, [other]), prompts, cfg=4.0)
    assert rows == [2] * STEPS
    # an entry larger than the whole bound is never stored, and the log says how much it needs
    inv.source_cache = small = mods.style_cache.ContentCache(size // 20)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="comfyui_diffstyler.nodes.adapters.style_cache"):
        _, rows = sample(mods, tiny, inv, styles_of(mods, [items[0]]), prompts)
        _, rows = sample(mods, tiny, inv, styles_of(mods, [items[0]]), prompts, cfg=4.0)
    assert rows == windows_rows(1) and small.nbytes() == 0
    assert caplog.text.count("more than content_cache_mb") == 1 and "MB per step for a 8x8 latent" in caplog.text


def test_dropping_the_inversion_frees_the_cache(tiny, mods, content_latent, prompts, loras):
    inv = invert(mods, tiny, content_latent, prompts)
    _, _rows = sample(mods, tiny, inv, styles_of(mods, first_run(2, loras, prompts)), prompts)
    cache = inv.source_cache
    stored = next(iter(cache.entries.values())).res[0]
    refs = weakref.ref(cache), weakref.ref(stored)
    del cache, stored, inv
    gc.collect()
    assert refs[0]() is None and refs[1]() is None, "nothing but the InversionResult may hold the cache"


def test_graph_rerun_with_another_prompt_runs_two_rows_per_style(tiny, run_graph, comfy_home):
    """Through ComfyUI's executor: the second run re-executes Style, Injector and Sampler, not DDIM Inversion, and
    its UNet calls carry no content row; it equals a run of the same graph with the cache off."""
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    rt.write_two_style_inputs(comfy_home, tiny.model)
    steps = 10
    prompt = rt.two_style_prompt(tiny.checkpoint, steps=steps)
    rows = []

    def count(module, args):
        if isinstance(module, UNetModel):
            rows.append(int(args[0].shape[0]))

    hook = torch.nn.modules.module.register_module_forward_pre_hook(count)
    try:
        run_graph(prompt)
        first, rows[:] = list(rows), []
        prompt["6"]["inputs"]["text"] = "watercolor of <sss>, a lake"
        prompt["15"]["inputs"]["cfg"] = 6.0
        again = run_graph(prompt)
        second, rows[:] = list(rows), []
        prompt["5"]["inputs"]["content_cache_mb"] = 0
        off = run_graph(prompt)
        third = list(rows)
    finally:
        hook.remove()
    inversion = [1] * steps  # DDIM Inversion's calls (one row each), in the runs that execute it
    assert first == inversion + windows_rows(2), first
    assert "5" in again.cached_nodes() and {"6", "12", "14", "15"} <= set(again.executed_nodes())
    assert second == [4] * steps, second
    assert "5" in off.executed_nodes() and third == inversion + windows_rows(2)
    a, b = again.outputs("15")[0][0]["samples"], off.outputs("15")[0][0]["samples"]
    same, diff, rel = compare(a, b)
    print(f"\ngraph re-run with the content cache vs cache off: torch.equal {same}, max |diff| {diff:.3e}")
    assert rel <= 1e-6


def test_another_packs_new_wrapper_is_not_served_stale_features(tiny, mods, content_latent, prompts, loras):
    """Only another pack's wrapper changes between two runs (a DIFFUSION_MODEL wrapper that scales the UNet input,
    so the content rows compute other features): the second run runs its content rows again and equals a run on an
    inversion without a cache."""
    import comfy.patcher_extension

    def with_wrapper(factor):
        def other_pack(executor, x, *args, **kwargs):
            return executor(x * factor, *args, **kwargs)

        model = tiny.model.clone()
        model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "other-pack", other_pack)
        return model

    inv = invert(mods, tiny, content_latent, prompts)
    styles = styles_of(mods, first_run(1, loras, prompts))
    sample(mods, tiny, inv, styles, prompts, model=with_wrapper(1.02))
    second, rows = sample(mods, tiny, inv, styles, prompts, model=with_wrapper(0.98))
    uncached, _ = sample(
        mods, tiny, invert(mods, tiny, content_latent, prompts, cache_mb=0), styles, prompts, model=with_wrapper(0.98)
    )
    same, diff, rel = compare(second, uncached)
    print(f"\nanother pack's wrapper changed: vs the uncached run max |diff| {diff:.2e} (relative {rel:.2e})")
    assert rows == windows_rows(1), "the content rows run again"
    assert same, f"stale features: relative {rel:.2e}"
