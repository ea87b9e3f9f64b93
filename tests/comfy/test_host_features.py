"""What newer ComfyUI hosts do around the patched model (issue #19), on the CPU.

* ``calc_cond_batch`` may run ``apply_model`` in threads, one per device (v0.33's multi-GPU CFG split): two styled
  calls in flight at once on one patched model must each get their own rows.
* ``CFGGuider.inner_set_conds`` swaps a dynamic-VRAM MODEL for its non-dynamic delegate (a second BaseModel loaded
  from the same checkpoint) when a conditioning carries hooks, and the Injector itself works on that delegate under
  dynamic VRAM: an inversion made on the MODEL must be accepted there. Dynamic VRAM itself needs an NVIDIA GPU
  (bench/device_check.sh); the delegate's reload is ``ModelPatcher.clone(force_deepcopy=True)`` on the CPU.
* The node API: ``comfy_api.v0_0_2`` where the host ships it (ComfyUI asks packs to import a versioned API),
  ``comfy_api.latest`` where it does not; every node registers either way.
"""

from __future__ import annotations

import inspect
import threading

import pytest
import reliability_tools as rt
import torch
from comfyui_diffstyler.nodes.harness.graphs import hook_negative
from dst_fixtures import mods, one_torch_thread  # noqa: F401 - fixtures

STEPS = 4


@pytest.fixture(scope="module")
def prompts(tiny):
    def enc(text):
        return tiny.clip.encode_from_tokens_scheduled(tiny.clip.tokenize(text))

    return {"empty": enc(""), "s0": enc("painting of <sss>, deer"), "s1": enc("sketch of <ttt>"), "base": enc("a deer")}


@pytest.fixture(scope="module")
def content(tiny):
    img = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return tiny.vae.encode(img).float()


def two_styles(mods, tiny, prompts):
    import dst_core

    left = torch.zeros(1, 64, 64)
    left[:, :, :32] = 1
    styles = None
    for i, (mask, key) in enumerate(((left, "s0"), (1 - left, "s1"))):
        lora = dst_core.random_lora(tiny.model, seed=90 + i)
        node = mods.style.DiffStylerStyleLoRA
        styles = node.execute("None", 1.0, prompts[key], mask, lora=lora, styles=styles).args[0]
    return styles


def inject(mods, model, styles):
    return mods.inject.DiffStylerCrossLoRAInjector.execute(model, styles, 0.6, 0.5, "adaptive", True).args[0]


def sample(mods, patched, inversion, positive, negative, styles):
    node = mods.sample.DiffStylerMaskedFusionSampler
    return node.execute(patched, inversion, positive, negative, 5.0, "exact", styles).args[0]["samples"]


# ---------------------------------------------------------------------------------------------- threads


def split_call(args: tuple, kwargs: dict, chunks: list[int]):
    """The APPLY_MODEL call ``(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)`` restricted to
    the given chunks of ``transformer_options["cond_or_uncond"]`` (each chunk is ``b`` rows)."""
    x, t, c_concat, c_crossattn, control, options = args
    n = len(options["cond_or_uncond"])
    b = x.shape[0] // n
    rows = torch.tensor([j * b + i for j in chunks for i in range(b)])

    def take(v):
        return v[rows] if isinstance(v, torch.Tensor) and v.shape[:1] == x.shape[:1] else v

    options = dict(options, cond_or_uncond=[options["cond_or_uncond"][j] for j in chunks])
    kw = {k: take(v) for k, v in kwargs.items()}
    return (take(x), take(t), take(c_concat), take(c_crossattn), control, options), kw, rows


@pytest.mark.slow
def test_concurrent_styled_calls_match_sequential(tiny, mods, prompts, content):
    """Two styled apply_model calls of one step, in flight at the same time in two threads on one patched model (as
    ComfyUI's per-device threads run them), give the rows they give one after the other and the rows of the whole
    call. A barrier inside the UNet holds both calls until each has started, so they always overlap."""
    import comfy.patcher_extension

    inversion = mods.inversion.invert(tiny.model, content, STEPS, prompts["empty"], disable_pbar=True)
    styles = two_styles(mods, tiny, prompts)
    outer = tiny.model.clone()  # a keyed wrapper added before the Injector's runs outside it
    seen = {}
    barrier = threading.Barrier(2, timeout=60)
    waiting = threading.local()

    def pre_hook(_module, _args):
        if getattr(waiting, "armed", False):
            waiting.armed = False
            barrier.wait()

    def in_thread(fn, out, key):
        def run():
            waiting.armed = True
            with torch.inference_mode():
                out[key] = fn()

        return threading.Thread(target=run)

    def check_threads(executor, *args, **kwargs):
        whole = executor(*args, **kwargs)
        n = len(args[5]["cond_or_uncond"])
        if seen or n < 2:
            return whole
        halves = [list(range(n // 2)), list(range(n // 2, n))]
        calls = [split_call(args, kwargs, h) for h in halves]
        seen["sequential"] = [executor(*a, **kw) for a, kw, _rows in calls]
        seen["whole"] = [whole[rows] for _a, _kw, rows in calls]
        out = {}
        threads = [in_thread(lambda a=a, kw=kw: executor(*a, **kw), out, i) for i, (a, kw, _r) in enumerate(calls)]
        handle = outer.model.diffusion_model.input_blocks[0].register_forward_pre_hook(pre_hook)
        try:
            for th in threads:
                th.start()
            for th in threads:
                th.join(timeout=120)
        finally:
            handle.remove()
        seen["concurrent"] = [out.get(i) for i in range(2)]
        return whole

    outer.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "concurrency-test", check_threads)
    patched = inject(mods, outer, styles)
    sample(mods, patched, inversion, prompts["base"], prompts["empty"], styles)
    assert seen, "no styled apply_model call with two or more chunks was seen"
    for i in range(2):
        assert seen["concurrent"][i] is not None, f"thread {i} raised (see the log)"
        torch.testing.assert_close(seen["sequential"][i], seen["whole"][i], rtol=0, atol=1e-5)
        torch.testing.assert_close(seen["concurrent"][i], seen["sequential"][i], rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------- hooked conditioning


def hooked(mods, tiny, comfy_home, text: str):
    """``text`` encoded by a CLIP that carries a LoRA hook (core CreateHookLora + SetClipHooks): a conditioning with
    hooks, which makes a dynamic-VRAM guider swap in the non-dynamic delegate."""
    import comfy_extras.nodes_hooks as hooks_nodes
    import safetensors.torch

    import nodes

    name = "hook_lora.safetensors"
    path = comfy_home.models / "loras" / name
    if not path.exists():
        import dst_core

        safetensors.torch.save_file(dst_core.random_lora(tiny.model, seed=77), str(path))
    (hook,) = hooks_nodes.CreateHookLora().create_hook(name, strength_model=0.7, strength_clip=0.0)
    (clip,) = hooks_nodes.SetClipHooks().apply_hooks(tiny.clip, schedule_clip=False, apply_to_conds=True, hooks=hook)
    (cond,) = nodes.CLIPTextEncode().encode(clip, text)
    import comfy.sampler_helpers

    assert comfy.sampler_helpers.cond_has_hooks(cond)
    return cond


@pytest.mark.slow  # a second BaseModel from the checkpoint (force_deepcopy): ~30 s on v0.33
def test_inversion_accepted_on_the_non_dynamic_delegate(tiny, mods, prompts, content, comfy_home):
    """An inversion made on the MODEL is accepted by a sampler whose patched model is the MODEL's reloaded copy (what
    ComfyUI's non-dynamic delegate is), with a hooked negative prompt, and gives the same latent as on the MODEL."""
    import nodes

    (model,) = nodes.CheckpointLoaderSimple().load_checkpoint(tiny.checkpoint)[:1]
    if "force_deepcopy" not in inspect.signature(model.clone).parameters:
        pytest.skip("this ComfyUI has no non-dynamic delegate (dynamic VRAM came with v0.12)")
    delegate = model.clone(force_deepcopy=True)  # the reload get_non_dynamic_delegate() does, as a plain ModelPatcher
    assert delegate.model is not model.model
    inversion = mods.inversion.invert(model, content, STEPS, prompts["empty"], disable_pbar=True)
    styles = two_styles(mods, tiny, prompts)
    negative = hooked(mods, tiny, comfy_home, "ugly")
    on_model = sample(mods, inject(mods, model, styles), inversion, prompts["base"], negative, styles)
    on_delegate = sample(mods, inject(mods, delegate, styles), inversion, prompts["base"], negative, styles)
    assert torch.equal(on_delegate, on_model)


def test_hooked_negative_in_a_graph(tiny, comfy_home, run_graph):
    """The two-style graph with its negative prompt from a hooked CLIP (CreateHookLora + SetClipHooks) runs, and the
    hook changes the result."""
    rt.write_two_style_inputs(comfy_home, tiny.model)
    plain = rt.two_style_prompt(tiny.checkpoint, steps=STEPS)
    with_hook = hook_negative(rt.two_style_prompt(tiny.checkpoint, steps=STEPS))
    a = run_graph(plain).outputs("15")[0][0]["samples"]
    b = run_graph(with_hook).outputs("15")[0][0]["samples"]
    assert torch.isfinite(b).all()
    assert not torch.equal(a, b)


# ---------------------------------------------------------------------------------------------- versioned node API

NODE_IDS = {
    "DiffStylerInvert",
    "DiffStylerStyleLoRA",
    "DiffStylerStyleModel",
    "DiffStylerCrossLoRAInjector",
    "DiffStylerMaskedFusionSampler",
    "DiffStylerGuider",
    "DiffStylerDDIMSampler",
    "DiffStylerInversionSigmas",
    "DiffStylerRegionMask",
    "DiffStylerFastSAMLoader",
    "DiffStylerFastSAMMask",
    "DiffStylerTrainStyleLoRA",
}


def test_pack_imports_the_versioned_api_where_the_host_has_it(pack):
    """``nodes/_api.py`` takes ``comfy_api.v0_0_2`` on a host that ships it (v0.8.0 and v0.33.0 do), and every node
    the pack registers is a V3 node of that API."""
    import importlib
    import importlib.util

    from comfyui_diffstyler.nodes import _api

    import nodes

    if importlib.util.find_spec("comfy_api.v0_0_2") is None:
        assert _api.API_MODULE == "comfy_api.latest"
    else:
        assert _api.API_MODULE == "comfy_api.v0_0_2"
    api = importlib.import_module(_api.API_MODULE)
    assert (_api.io, _api.ui, _api.ComfyExtension) == (api.io, api.ui, api.ComfyExtension)
    registered = {k: v for k, v in nodes.NODE_CLASS_MAPPINGS.items() if k.startswith("DiffStyler") and "Test" not in k}
    assert set(registered) == NODE_IDS
    for node_id, cls in registered.items():
        assert issubclass(cls, api.io.ComfyNode), node_id
        assert cls.GET_SCHEMA().node_id == node_id


def test_api_falls_back_to_latest_without_the_versioned_module(pack, monkeypatch, caplog):
    """On a host without ``comfy_api.v0_0_2`` the same module imports ``comfy_api.latest`` and logs which, at debug
    level; a versioned API that is there but broken is an error, not a silent fallback."""
    import importlib.util
    import logging
    import sys
    import types
    from pathlib import Path

    import comfy_api.latest

    source = Path(sys.modules["comfyui_diffstyler"].__file__).parent / "nodes" / "_api.py"

    def load_copy():
        spec = importlib.util.spec_from_file_location("dst_api_probe", source)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    monkeypatch.setitem(sys.modules, "comfy_api.v0_0_2", None)  # "import comfy_api.v0_0_2" now fails as absent
    with caplog.at_level(logging.DEBUG, logger="dst_api_probe"):
        probe = load_copy()
    assert probe.API_MODULE == "comfy_api.latest"
    assert probe.io is comfy_api.latest.io and probe.ComfyExtension is comfy_api.latest.ComfyExtension
    assert any("comfy_api.latest" in r.getMessage() for r in caplog.records if r.name == "dst_api_probe")

    # a versioned API that exists but lacks a name the pack uses: the ImportError surfaces, no silent fallback
    monkeypatch.setitem(sys.modules, "comfy_api.v0_0_2", types.ModuleType("comfy_api.v0_0_2"))
    with pytest.raises(ImportError, match="ComfyExtension"):
        load_copy()
