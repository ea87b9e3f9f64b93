"""Flux.1 LoRA files as per-style deltas on slices of the fused weights (design Sec. 6; issue #26 item 3).

A peft LoRA on every Linear of the diffusers ``FluxTransformer2DModel`` twin of the tiny Flux (same weights) is the
ground truth: the twin with the adapter at strength s minus the plain twin. Its files: diffusers'
``FluxPipeline.save_lora_weights`` (``transformer.`` keys, alpha in the header), peft's bare state dict
(``transformer_blocks.0.attn.to_q.lora_A.weight``), and the kohya / BFL layouts written here from the same factors
(whole fused tensors: the q/k/v(/mlp) factors stacked, ``up`` block-diagonal). Each file is parsed by the pack
(``flux_lora.flux_patches`` + ``flux_layer_deltas``) and its deltas are added by a plain function on the ComfyUI
model's Linear outputs (``out[..., slice] += scale * up(down(x))``); the change must equal the library's within
1e-4 of what the LoRA changes, every tensor of the file landing on the model.
"""

from __future__ import annotations

import copy
import json
import logging
import math

import pytest
import safetensors
import safetensors.torch
import torch

TOL = 1e-4  # max |pack - library| over max |library - base|
RANK, ALPHA = 4, 8


@pytest.fixture(scope="module")
def mods(pack):
    from comfyui_diffstyler.nodes.adapters import flux_lora, lora_file
    from comfyui_diffstyler.nodes.harness import tiny_flux

    class M:
        pass

    m = M()
    m.fl, m.lf, m.tf = flux_lora, lora_file, tiny_flux
    return m


@pytest.fixture(scope="module")
def flux(mods):
    spec = mods.tf.TinyFlux(hidden=128, depth=2, depth_single=2, guidance=True, seed=11)
    model = mods.tf.build_model(spec)
    twin = mods.tf.diffusers_twin(model)
    g = torch.Generator().manual_seed(12)
    x = torch.randn(1, 16, 8, 10, generator=g)
    cond = mods.tf.conditioning(spec, tokens=12, seed=13, guidance=3.5)
    return spec, model, twin, (x, 0.6, cond)


def linear_names(twin) -> list[str]:
    return sorted(n for n, m in twin.named_modules() if isinstance(m, torch.nn.Linear))


def peft_twin(base, seed: int, std: float = 0.4, **config):
    """The twin with a peft LoRA (``init_lora_weights=False``, factors seeded) on every Linear."""
    from peft import LoraConfig

    twin = copy.deepcopy(base)
    twin.add_adapter(LoraConfig(init_lora_weights=False, target_modules=linear_names(base), **config))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(twin.named_parameters()):
            if "lora_A" in name or "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std / math.sqrt(p.shape[-1]))
    return twin.eval()


def at_strength(twin, strength: float):
    twin.set_adapters(["default"], weights=[strength])
    return twin


def peft_layers(twin) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone().contiguous() for k, v in get_peft_model_state_dict(twin).items()}


# ---------------------------------------------------------------------------------------------- writers


def save_diffusers(twin, path) -> None:
    """What diffusers' Flux training scripts save: ``transformer.`` keys, the LoraConfig in the header."""
    from diffusers import FluxPipeline

    FluxPipeline.save_lora_weights(
        str(path.parent),
        transformer_lora_layers=peft_layers(twin),
        transformer_lora_adapter_metadata=twin.peft_config["default"].to_dict(),
        weight_name=path.name,
    )


def save_peft_bare(twin, path) -> None:
    """peft's own state dict as it comes (bare module paths, no header: the file means alpha = r)."""
    safetensors.torch.save_file(peft_layers(twin), str(path))


def fused_factors(model, twin, scale_of) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """The twin's per-module factors regrouped per ComfyUI weight: ``{bfl module: (down, up, scale)}`` with the
    slices' downs stacked and their ups placed block-diagonally on the slice rows, each block carrying its own
    ``scale_of(module)`` so that one kohya scale (alpha/rank = 1) holds them all."""
    import comfy.utils

    layers = peft_layers(twin)
    mapping = comfy.utils.flux_to_diffusers(model.model.model_config.unet_config, output_prefix="")
    state = model.model.diffusion_model.state_dict()
    groups: dict[str, list] = {}
    for module in sorted({k.rsplit(".lora_", 1)[0] for k in layers}):
        target = mapping[module + ".weight"]
        key, where, fn = (target, None, None) if isinstance(target, str) else (*target, None)[:3]
        down, up = layers[module + ".lora_A.weight"], layers[module + ".lora_B.weight"] * scale_of(module)
        if fn is not None:
            up = fn(up)
        groups.setdefault(key[: -len(".weight")], []).append((where, down, up))
    out = {}
    for bfl, parts in groups.items():
        rows = state[bfl + ".weight"].shape[0]
        down = torch.cat([d for _, d, _ in parts])
        up = torch.zeros(rows, down.shape[0])
        col = 0
        for where, d, u in parts:
            offset = 0 if where is None else where[1]
            up[offset : offset + u.shape[0], col : col + d.shape[0]] = u
            col += d.shape[0]
        out[bfl] = (down, up, 1.0)
    return out


def save_kohya(model, twin, path, scale_of, layout: str = "kohya") -> dict:
    """kohya (``lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight`` + ``.alpha``) or BFL/ComfyUI
    (``diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight``, no alpha) from the twin's factors."""
    sd = {}
    for bfl, (down, up, _) in fused_factors(model, twin, scale_of).items():
        if layout == "kohya":
            stem = "lora_unet_" + bfl.replace(".", "_")
            sd[stem + ".lora_down.weight"], sd[stem + ".lora_up.weight"] = down, up
            sd[stem + ".alpha"] = torch.tensor(float(down.shape[0]))  # alpha = rank: scale 1, folded into up
        else:
            stem = "diffusion_model." + bfl
            sd[stem + ".lora_A.weight"], sd[stem + ".lora_B.weight"] = down, up
    sd = {k: v.contiguous() for k, v in sd.items()}
    safetensors.torch.save_file(sd, str(path))
    return sd


# ---------------------------------------------------------------------------------------------- the pack's side


def plain_delta(x: torch.Tensor, d) -> torch.Tensor:
    """What a style's delta adds to a Linear's output slice, written out: ``scale * up(down(x))`` (+ full forms)."""
    if d.weight is not None:
        out = x @ d.weight.t()
    else:
        out = d.scale * ((x @ d.down.flatten(1).t()) @ d.up.flatten(1).t())
    return out if d.bias is None else out + d.bias


@torch.no_grad()
def velocity_with(mods, model, deltas: dict, inputs) -> torch.Tensor:
    """The ComfyUI model's velocity with ``deltas`` added to its Linear outputs by forward hooks (removed after)."""
    x, sigma, cond = inputs
    handles = []
    for path, ds in deltas.items():
        module = model.model.get_submodule(path)

        def hook(mod, args, out, ds=ds):
            out = out.clone()
            for d in ds:
                lo, hi = d.out_range(out.shape[-1])
                out[..., lo:hi] += plain_delta(args[0], d).to(out.dtype)
            return out

        handles.append(module.register_forward_hook(hook))
    try:
        return mods.tf.comfy_velocity(model, x, sigma, cond)
    finally:
        for h in handles:
            h.remove()


def parse(mods, model, sd: dict, strength: float, name: str) -> dict:
    patches = mods.fl.flux_patches(sd, model, name)
    return mods.fl.flux_layer_deltas(patches, model, strength, name)


def assert_matches(mods, flux, deltas, lib_twin, strength, label):
    spec, model, base_twin, inputs = flux
    x, sigma, cond = inputs
    want = mods.tf.twin_velocity(at_strength(lib_twin, strength), x, sigma, cond)
    base = mods.tf.twin_velocity(base_twin, x, sigma, cond)
    got = velocity_with(mods, model, deltas, inputs)
    base_c = mods.tf.comfy_velocity(model, x, sigma, cond)
    effect = float((want - base).abs().max())
    assert effect > 0.05 * float(base.abs().max()), "the LoRA must change the output for the test to mean it"
    err = float(((got - base_c) - (want - base)).abs().max()) / effect
    assert err <= TOL, f"{label} at strength {strength}: off by {err:.3g} of the LoRA's effect"
    logging.getLogger(__name__).warning("%s at strength %s: off by %.3g of the LoRA's effect", label, strength, err)
    return err


def landed_slices(deltas: dict) -> set:
    return {(path, d.out_slice) for path, ds in deltas.items() for d in ds}


def expected_slices(model, twin) -> set:
    """(module path, out_slice) each adapted twin Linear must land on, from ComfyUI's own map."""
    import comfy.utils

    mapping = comfy.utils.flux_to_diffusers(model.model.model_config.unet_config, output_prefix="diffusion_model.")
    out = set()
    for name in linear_names(twin):
        target = mapping[name + ".weight"]
        key, where = (target, None) if isinstance(target, str) else target[:2]
        out.add((key[: -len(".weight")], None if where is None else (where[1], where[2])))
    return out


# ---------------------------------------------------------------------------------------------- formats


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_diffusers_file_lands_on_slices_with_the_header_alpha(mods, flux, comfy_home, strength):
    """``FluxPipeline.save_lora_weights``: ``transformer.<module>.lora_A/B.weight``, r 4, alpha 8 and an alpha pattern
    in ``lora_adapter_metadata`` only."""
    spec, model, base_twin, _ = flux
    lib = peft_twin(base_twin, seed=1, r=RANK, lora_alpha=ALPHA, alpha_pattern={"attn.to_k": 2})
    name = "flux_diffusers.safetensors"
    save_diffusers(lib, comfy_home.models / "loras" / name)
    with safetensors.safe_open(str(comfy_home.models / "loras" / name), "pt") as f:
        keys, meta = list(f.keys()), json.loads(f.metadata()["lora_adapter_metadata"])
    assert all(k.startswith("transformer.") for k in keys) and not any("alpha" in k for k in keys)
    assert meta["transformer.lora_alpha"] == ALPHA
    sd = mods.lf.load_lora_file(name)  # the Style LoRA Loader's reader: the header's alphas become tensors
    deltas = parse(mods, model, sd, strength, name)
    assert landed_slices(deltas) == expected_slices(model, base_twin), "every module of the LoRA lands, none else"
    q = deltas["diffusion_model.double_blocks.0.img_attn.qkv"]
    assert [d.out_slice for d in q] == [(0, 128), (128, 128), (256, 128)]
    assert [d.scale for d in q] == [strength * ALPHA / RANK, strength * 2 / RANK, strength * ALPHA / RANK]
    assert [d.out_slice for d in deltas["diffusion_model.single_blocks.1.linear1"]] == [
        (0, 128),
        (128, 128),
        (256, 128),
        (384, 512),
    ]
    assert_matches(mods, flux, deltas, lib, strength, name)


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_peft_bare_state_dict(mods, flux, comfy_home, strength):
    """peft's ``get_peft_model_state_dict`` saved as it is: bare diffusers module paths, alpha = r."""
    spec, model, base_twin, _ = flux
    lib = peft_twin(base_twin, seed=2, r=RANK, lora_alpha=RANK)
    name = "flux_peft_bare.safetensors"
    save_peft_bare(lib, comfy_home.models / "loras" / name)
    sd = mods.lf.load_lora_file(name)
    assert any(k.startswith("transformer_blocks.") for k in sd) and not any(k.startswith("transformer.") for k in sd)
    deltas = parse(mods, model, sd, strength, name)
    assert landed_slices(deltas) == expected_slices(model, base_twin)
    assert_matches(mods, flux, deltas, lib, strength, name)


@pytest.mark.parametrize("strength", [1.0, 0.5])
@pytest.mark.parametrize("layout", ["kohya", "bfl"])
def test_kohya_and_bfl_whole_tensors(mods, flux, comfy_home, layout, strength):
    """Whole fused tensors (``lora_unet_double_blocks_0_img_attn_qkv``, ``diffusion_model.single_blocks.0.linear1``)
    written from the peft twin's factors: one delta per fused weight, no slice."""
    spec, model, base_twin, _ = flux
    lib = peft_twin(base_twin, seed=3, r=RANK, lora_alpha=ALPHA)
    name = f"flux_{layout}.safetensors"
    sd = save_kohya(model, lib, comfy_home.models / "loras" / name, lambda m: ALPHA / RANK, layout)
    assert sd[
        "lora_unet_single_blocks_0_linear1.lora_up.weight"
        if layout == "kohya"
        else "diffusion_model.single_blocks.0.linear1.lora_B.weight"
    ].shape == (7 * 128, 4 * RANK)
    deltas = parse(mods, model, mods.lf.load_lora_file(name), strength, name)
    whole = {(p, None) for p, _ in expected_slices(model, base_twin)}
    assert landed_slices(deltas) == whole, "one whole-tensor delta per fused weight"
    assert_matches(mods, flux, deltas, lib, strength, name)


def test_a_q_k_bypass_cut_keeps_v_and_mlp(mods, flux, comfy_home):
    """The Q/K bypass of Sec. 6 on either layout: the q and k rows cut out of a whole kohya ``linear1`` delta equal the
    diffusers file's v and mlp slices, so both layouts bypass the same thing."""
    spec, model, base_twin, inputs = flux
    lib = peft_twin(base_twin, seed=4, r=RANK, lora_alpha=RANK)
    save_peft_bare(lib, comfy_home.models / "loras" / "flux_cut_a.safetensors")
    save_kohya(model, lib, comfy_home.models / "loras" / "flux_cut_b.safetensors", lambda m: 1.0)
    path, h = "diffusion_model.single_blocks.0.linear1", spec.hidden
    sliced = parse(mods, model, mods.lf.load_lora_file("flux_cut_a.safetensors"), 1.0, "a")[path]
    whole = parse(mods, model, mods.lf.load_lora_file("flux_cut_b.safetensors"), 1.0, "b")[path]
    kept_sliced = [c for c in (d.without_rows(0, 2 * h, 7 * h) for d in sliced) if c is not None]
    kept_whole = [c for c in (d.without_rows(0, 2 * h, 7 * h) for d in whole) if c is not None]
    assert [d.out_slice for d in kept_sliced] == [(2 * h, h), (3 * h, 4 * h)]
    assert [d.out_slice for d in kept_whole] == [(2 * h, 5 * h)]
    x = torch.randn(3, h, generator=torch.Generator().manual_seed(0))
    a, b = torch.zeros(3, 7 * h), torch.zeros(3, 7 * h)
    for d in kept_sliced:
        a[:, slice(*d.out_range(7 * h))] += plain_delta(x, d)
    for d in kept_whole:
        b[:, slice(*d.out_range(7 * h))] += plain_delta(x, d)
    assert torch.allclose(a, b, atol=1e-5 * float(a.abs().max())) and a[:, : 2 * h].abs().max() == 0


# ---------------------------------------------------------------------------------------------- refused by name


def test_files_that_do_not_fit_are_refused_by_name(mods, flux, comfy_home, tiny):
    spec, model, base_twin, _ = flux
    lib = peft_twin(base_twin, seed=5, r=RANK, lora_alpha=RANK)
    sd = mods.fl.normalize_keys(peft_layers(lib))
    # a LoRA for an SD UNet: nothing lands, the family its keys look like is named
    sd15 = {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight": torch.zeros(4, 32),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight": torch.zeros(32, 4),
    }
    with pytest.raises(ValueError, match=r"sd15_style\.safetensors: 0 of its 2 tensors match .* SD/SDXL UNet"):
        mods.fl.flux_patches(sd15, model, "sd15_style.safetensors")
    # a Flux LoRA with one more double block than this model: refused, not applied without it
    extra = dict(sd)
    extra["transformer.transformer_blocks.7.attn.to_q.lora_A.weight"] = sd[
        "transformer.transformer_blocks.0.attn.to_q.lora_A.weight"
    ]
    extra["transformer.transformer_blocks.7.attn.to_q.lora_B.weight"] = sd[
        "transformer.transformer_blocks.0.attn.to_q.lora_B.weight"
    ]
    with pytest.raises(
        ValueError, match=r"deep\.safetensors: 2 of its .*transformer_blocks\.7\.attn\.to_q.*half-applied"
    ):
        mods.fl.flux_patches(extra, model, "deep.safetensors")
    # a Flux LoRA for a wider Flux: the same names, other shapes
    wide = mods.tf.build_model(mods.tf.TinyFlux(hidden=256, depth=2, depth_single=2, seed=1))
    wide_sd = mods.fl.normalize_keys(peft_layers(peft_twin(mods.tf.diffusers_twin(wide), seed=6, r=RANK)))
    with pytest.raises(ValueError, match=r"wide\.safetensors: its LoRA factors for .* another Flux size"):
        mods.fl.flux_layer_deltas(
            mods.fl.flux_patches(wide_sd, model, "wide.safetensors"), model, 1.0, "wide.safetensors"
        )
    # the SD reader never drops the slices silently
    with pytest.raises(ValueError, match=r"sd-path: \d+ of its layers land on slices .*flux_lora"):
        mods.lf.layer_deltas(mods.fl.flux_patches(sd, model, "x"), model, 1.0, "sd-path")
    # a Flux LoRA on an SD model, and an SD model given to the Flux reader
    with pytest.raises(ValueError, match=r"flux_on_sd: 0 of its .* tensors match this model's UNet"):
        mods.lf.unet_patches(sd, tiny.model, "flux_on_sd")
    with pytest.raises(ValueError, match=r"model: Flux LoRA parsing needs a Flux.1 .* got BaseModel"):
        mods.fl.flux_patches(sd, tiny.model, "x")
