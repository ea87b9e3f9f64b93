"""LoRA files as the libraries people train with write them, applied at their true strength (issue #18, part 2).

Every file here is written by the library that owns its format (peft + diffusers, LyCORIS), never from a key list
of ours, for a diffusers ``UNet2DConditionModel`` twin of the tiny SD1.5-topology UNet that holds the same weights
(ComfyUI's own ``comfy.utils.unet_to_diffusers`` gives the mapping). The ground truth is that library's forward with
the adapter active, at strength 1.0 and 0.5 (peft/diffusers: ``set_adapters`` weights; LyCORIS: its multiplier). The
pack's side is the real thing: Style LoRA Loader -> Injector (injection windows at 0) -> Masked Fusion Sampler, with
the UNet calls recorded, so each compared row is a style row under the pack's per-row LoRA.
"""

from __future__ import annotations

import copy
import logging
import math

import pytest
import safetensors
import safetensors.torch
import torch
from dst_fixtures import mods, one_torch_thread, prompts  # noqa: F401 - fixtures

STEPS = 2
HALF = pytest.param(0.5, marks=pytest.mark.slow)  # every format at strength 1.0 in the quick tier, 0.5 in the full
TOL = 1e-4  # max |pack - library| over max |library - base|: relative to what the LoRA changes
ATTN = ["to_q", "to_k", "to_v", "to_out.0"]


@pytest.fixture(scope="module")
def base_twin(tiny):
    """The diffusers twin of the tiny UNet: every weight copied through ComfyUI's own key conversion."""
    return build_twin(tiny.model)


def build_twin(model, layers_per_block: int = 2, load: bool = True, width: int = 32):
    import comfy.utils
    from diffusers import UNet2DConditionModel

    cfg = model.model.model_config.unet_config
    assert list(cfg["channel_mult"]) == [1, 2, 4, 4] and cfg["model_channels"] == 32
    twin = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(width, 2 * width, 4 * width, 4 * width),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        layers_per_block=layers_per_block,
        cross_attention_dim=cfg["context_dim"],
        attention_head_dim=cfg["num_heads"],
        norm_num_groups=32,
    )
    if load:
        state = model.model.state_dict()
        mapping = comfy.utils.unet_to_diffusers(cfg)
        sd = {k: state["diffusion_model." + v] for k, v in mapping.items() if "diffusion_model." + v in state}
        twin.load_state_dict(sd, strict=True)
    return twin.eval()


@pytest.fixture(scope="module")
def inversion(tiny, mods, prompts):
    g = torch.Generator().manual_seed(0)
    latent = {"samples": torch.randn(1, 4, 8, 8, generator=g) * 0.5}
    return mods.invert.DiffStylerInvert.execute(
        tiny.model, latent, STEPS, conditioning=prompts["empty"], inversion_grid="sampling"
    ).args[0]


def pack_calls(tiny, mods, prompts, inversion, lora_name: str, strength: float) -> list[tuple]:
    """The UNet calls of a one-style run with ``lora_name`` over the whole image: (x, t, context, output)."""
    import comfy.patcher_extension

    mask = torch.ones(1, 64, 64)
    styles = mods.style.DiffStylerStyleLoRA.execute(lora_name, strength, prompts["style"], mask).args[0]
    patched = mods.inject.DiffStylerCrossLoRAInjector.execute(tiny.model, styles, 0.0, 0.0, "adaptive", True).args[0]
    calls = []

    def record(executor, x, timesteps, context, y, control, transformer_options, **kw):
        out = executor(x, timesteps, context, y, control, transformer_options, **kw)
        calls.append((x.detach().clone(), timesteps.detach().clone(), context.detach().clone(), out.detach().clone()))
        return out

    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test-lora-formats", record)
    mods.sample.DiffStylerMaskedFusionSampler.execute(
        patched, inversion, prompts["style"], prompts["neg"], 3.0, "exact"
    )
    assert len(calls) == STEPS
    return calls


@torch.no_grad()
def twin_out(twin, call) -> torch.Tensor:
    x, t, context, _ = call
    return twin(x, t, encoder_hidden_states=context).sample


def assert_matches_library(tiny, mods, prompts, inversion, base_twin, lora_name, reference, strength):
    """``reference(strength)`` -> the library's model with the adapter active at that strength."""
    calls = pack_calls(tiny, mods, prompts, inversion, lora_name, strength)
    lib = reference(strength)
    for call in calls:
        want, base, got = twin_out(lib, call), twin_out(base_twin, call), call[3]
        effect = float((want - base).abs().max())
        assert effect > 0.05 * float(base.abs().max()), "the adapter must change the output for this test to mean it"
        err = float((got - want).abs().max()) / effect
        assert err <= TOL, f"{lora_name} at strength {strength}: off by {err:.3g} of the adapter's effect"


# ------------------------------------------------------------------ writers: the libraries' own files


def randomize_(module: torch.nn.Module, names: tuple[str, ...], seed: int, std: float) -> None:
    """Seeded random values for the adapter parameters whose name holds one of ``names`` (the libraries initialise
    some factors at zero, which would make the adapter an identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            if any(n in name for n in names):
                if "magnitude" in name or "dora_scale" in name:
                    p.mul_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(torch.randn(p.shape, generator=g) * std / math.sqrt(max(1, p.shape[-1])))


def peft_twin(base_twin, seed: int = 0, **config):
    from peft import LoraConfig

    twin = copy.deepcopy(base_twin)
    twin.add_adapter(LoraConfig(init_lora_weights=False, **config))
    randomize_(twin, ("lora_A", "lora_B", "lora_magnitude_vector"), seed, 0.6)
    return twin.eval()


def with_strength(twin):
    """The peft twin at a strength: diffusers' ``set_adapters`` weight (scales the LoRA's scaling, as users do)."""

    def at(strength: float):
        twin.set_adapters(["default"], weights=[strength])
        return twin

    return at


def save_diffusers(twin, path, convert=None) -> None:
    """What diffusers' training scripts save: ``save_lora_weights`` with the adapter config in the header."""
    from diffusers import StableDiffusionPipeline
    from peft import get_peft_model_state_dict

    layers = get_peft_model_state_dict(twin)
    meta = None
    if convert is None:
        meta = twin.peft_config["default"].to_dict()
    else:
        layers = convert(layers)
    StableDiffusionPipeline.save_lora_weights(
        str(path.parent), unet_lora_layers=layers, unet_lora_adapter_metadata=meta, weight_name=path.name
    )


def diffusers_reads(base_twin, path):
    """A fresh twin with the file loaded by diffusers itself (``lora_state_dict`` + ``load_lora_into_unet``)."""
    from diffusers import StableDiffusionPipeline

    sd, alphas, meta = StableDiffusionPipeline.lora_state_dict(str(path), return_lora_metadata=True)
    twin = copy.deepcopy(base_twin)
    StableDiffusionPipeline.load_lora_into_unet(sd, alphas, twin, adapter_name="default", metadata=meta)
    return twin.eval()


def lycoris_net(base_twin, seed: int, std: float = 0.5, **kwargs):
    from lycoris import create_lycoris

    twin = copy.deepcopy(base_twin)
    net = create_lycoris(twin, 1.0, **kwargs)
    net.apply_to()
    randomize_(net, ("hada_", "lokr_", "lora_up", "lora_down", "dora_scale"), seed, std)
    return twin.eval(), net


def lycoris_reference(twin, net):
    def at(strength: float):
        net.set_multiplier(strength)
        return twin

    return at


def loras_dir(comfy_home):
    return comfy_home.models / "loras"


# ------------------------------------------------------------------ formats applied at their true strength


@pytest.mark.parametrize("strength", [1.0, HALF])
def test_peft_file_alpha_from_the_header(tiny, mods, prompts, inversion, base_twin, comfy_home, strength):
    """PEFT keys (``unet.<module>.lora_A.weight``) with the alpha only in ``lora_adapter_metadata``: r 4, alpha 8,
    and a rank/alpha pattern for the cross-attention keys."""
    twin = peft_twin(
        base_twin,
        seed=1,
        r=4,
        lora_alpha=8,
        target_modules=ATTN,
        rank_pattern={"attn2.to_k": 2},
        alpha_pattern={"attn2.to_k": 1, "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q": 16},
    )
    path = loras_dir(comfy_home) / "fmt_peft.safetensors"
    save_diffusers(twin, path)
    with safetensors.safe_open(str(path), "pt") as f:
        assert not any("alpha" in k for k in f.keys()) and "lora_adapter_metadata" in f.metadata()
    reference = with_strength(twin)
    # diffusers reading the file computes what the in-memory peft model computes: the header is the file's meaning
    call = pack_calls(tiny, mods, prompts, inversion, "fmt_peft.safetensors", 1.0)[0]
    assert torch.allclose(twin_out(diffusers_reads(base_twin, path), call), twin_out(reference(1.0), call), atol=1e-6)
    assert_matches_library(tiny, mods, prompts, inversion, base_twin, "fmt_peft.safetensors", reference, strength)


@pytest.mark.parametrize("strength", [1.0, HALF])
def test_peft_rslora_file(tiny, mods, prompts, inversion, base_twin, comfy_home, strength):
    """``use_rslora`` in the header: scaling alpha/sqrt(r)."""
    twin = peft_twin(base_twin, seed=2, r=4, lora_alpha=3, use_rslora=True, target_modules=ATTN)
    save_diffusers(twin, loras_dir(comfy_home) / "fmt_rslora.safetensors")
    assert_matches_library(
        tiny, mods, prompts, inversion, base_twin, "fmt_rslora.safetensors", with_strength(twin), strength
    )


@pytest.mark.parametrize("strength", [1.0, HALF])
def test_diffusers_old_format(tiny, mods, prompts, inversion, base_twin, comfy_home, strength):
    """``unet.<module>.lora.down.weight`` / ``.lora.up.weight`` (diffusers before PEFT; ``convert_state_dict_to_
    diffusers``), read by diffusers itself as the reference (no alpha in that format: scale 1)."""
    from diffusers.utils.state_dict_utils import convert_state_dict_to_diffusers

    twin = peft_twin(base_twin, seed=3, r=4, lora_alpha=4, target_modules=ATTN)
    path = loras_dir(comfy_home) / "fmt_diffusers_old.safetensors"
    save_diffusers(twin, path, convert=convert_state_dict_to_diffusers)
    with safetensors.safe_open(str(path), "pt") as f:
        assert all(k.startswith("unet.") and k.endswith((".lora.down.weight", ".lora.up.weight")) for k in f.keys())
    reference = diffusers_reads(base_twin, path)
    assert_matches_library(
        tiny, mods, prompts, inversion, base_twin, "fmt_diffusers_old.safetensors", with_strength(reference), strength
    )


def kohya_of(layers: dict) -> dict:
    """diffusers' PEFT -> kohya conversion, as its training scripts run it on the saved ``unet.``-prefixed dict."""
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya

    return convert_state_dict_to_kohya({"unet." + k: v for k, v in layers.items()})


def save_kohya(twin, path) -> dict:
    from peft import get_peft_model_state_dict

    sd = kohya_of(get_peft_model_state_dict(twin))
    safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return sd


@pytest.mark.parametrize("strength", [1.0, HALF])
def test_kohya_file(tiny, mods, prompts, inversion, base_twin, comfy_home, strength):
    twin = peft_twin(base_twin, seed=4, r=4, lora_alpha=4, target_modules=ATTN + ["proj_in", "ff.net.2"])
    sd = save_kohya(twin, loras_dir(comfy_home) / "fmt_kohya.safetensors")
    assert all(k.startswith("lora_unet_") for k in sd)
    assert_matches_library(
        tiny, mods, prompts, inversion, base_twin, "fmt_kohya.safetensors", with_strength(twin), strength
    )


@pytest.mark.parametrize("strength", [1.0, HALF])
@pytest.mark.parametrize("algo", ["lora", "loha", "lokr"])
def test_lycoris_locon_loha_lokr(tiny, mods, prompts, inversion, base_twin, comfy_home, algo, strength):
    """LyCORIS LoCon ("lora"), LoHa and LoKr on every layer LyCORIS targets by default (attention, ResBlock 3x3
    convs, ...)."""
    # LoHa's update is a Hadamard product of two low-rank products: larger factors for a comparable effect
    std = 1.5 if algo == "loha" else 0.5
    twin, net = lycoris_net(base_twin, seed=5, std=std, algo=algo, linear_dim=4, linear_alpha=2.0, factor=4)
    name = f"fmt_{algo}.safetensors"
    net.save_weights(str(loras_dir(comfy_home) / name), torch.float32, None)
    assert_matches_library(tiny, mods, prompts, inversion, base_twin, name, lycoris_reference(twin, net), strength)


# ------------------------------------------------------------------ DoRA


@pytest.mark.parametrize("strength", [1.0, HALF])
@pytest.mark.parametrize("layout", ["peft", "kohya"])
def test_peft_dora(tiny, mods, prompts, inversion, base_twin, comfy_home, layout, strength):
    """peft ``use_dora=True``: as diffusers saves it (``lora_magnitude_vector``) and converted to kohya by diffusers
    (``dora_scale``); peft's forward is W' = m * (W + s*BA) / ||W + s*BA|| per output row."""
    twin = peft_twin(base_twin, seed=6, r=4, lora_alpha=4, use_dora=True, target_modules=ATTN + ["proj_in"])
    name = f"fmt_dora_{layout}.safetensors"
    if layout == "peft":
        save_diffusers(twin, loras_dir(comfy_home) / name)
    else:
        sd = save_kohya(twin, loras_dir(comfy_home) / name)
        assert any("dora_scale" in k or "magnitude" in k for k in sd)
    assert_matches_library(tiny, mods, prompts, inversion, base_twin, name, with_strength(twin), strength)


@pytest.mark.parametrize("strength", [1.0, HALF])
@pytest.mark.parametrize("wd_on_output", [True, False])
def test_lycoris_dora(tiny, mods, prompts, inversion, base_twin, comfy_home, wd_on_output, strength):
    """LyCORIS LoRA with ``dora_wd`` (norm per output row, or per input column with ``wd_on_output=False``)."""
    twin, net = lycoris_net(
        base_twin, seed=7, algo="lora", linear_dim=4, linear_alpha=2.0, dora_wd=True, wd_on_output=wd_on_output
    )
    name = f"fmt_lycoris_dora_{int(wd_on_output)}.safetensors"
    net.save_weights(str(loras_dir(comfy_home) / name), torch.float32, None)
    assert_matches_library(tiny, mods, prompts, inversion, base_twin, name, lycoris_reference(twin, net), strength)


# ------------------------------------------------------------------ partly matching and not understood


def test_partly_matching_file_says_what_was_not_used(tiny, mods, prompts, comfy_home, base_twin, caplog):
    """A LoRA for a UNet with three layers per block: a third of its layers do not exist in this model. It is
    applied for the layers that match, and the log says how many tensors were not used and where they point."""
    from peft import get_peft_model_state_dict

    wide = peft_twin(build_twin(tiny.model, layers_per_block=3, load=False), seed=8, r=2, target_modules=ATTN)
    sd = kohya_of(get_peft_model_state_dict(wide))
    safetensors.torch.save_file(sd, str(loras_dir(comfy_home) / "fmt_partial.safetensors"))
    ours = {name.replace(".", "_") for name, _ in base_twin.named_modules()}
    weights = [k for k in sd if not k.endswith(".alpha")]  # the count leaves out the alphas
    foreign = [k for k in weights if k.split(".")[0][len("lora_unet_") :] not in ours]
    assert 0 < len(foreign) < len(weights)
    styles = mods.style.DiffStylerStyleLoRA.execute(
        "fmt_partial.safetensors", 1.0, prompts["style"], torch.ones(1, 64, 64)
    ).args[0]
    with caplog.at_level(logging.WARNING):
        mods.inject.DiffStylerCrossLoRAInjector.execute(tiny.model, styles, 0.0, 0.0, "adaptive", True)
    text = caplog.text
    assert "fmt_partial.safetensors" in text
    assert f"{len(foreign)} of its {len(weights)} tensors were not used" in text
    assert any(k.split(".")[0] in text for k in foreign), text


def test_peft_lora_bias_is_refused_by_name(tiny, mods, prompts, base_twin, comfy_home):
    """A PEFT LoRA with ``lora_bias=True`` carries bias tensors the per-row LoRA does not apply: refused with the
    tensor's name and the fix, never run half-applied."""
    twin = peft_twin(base_twin, seed=9, r=4, target_modules=ATTN, lora_bias=True)
    save_diffusers(twin, loras_dir(comfy_home) / "fmt_lora_bias.safetensors")
    styles = mods.style.DiffStylerStyleLoRA.execute(
        "fmt_lora_bias.safetensors", 1.0, prompts["style"], torch.ones(1, 64, 64)
    ).args[0]
    with pytest.raises(ValueError, match=r"fmt_lora_bias\.safetensors.*lora_B\.bias.*(lora_bias|re-save|merge)"):
        mods.inject.DiffStylerCrossLoRAInjector.execute(tiny.model, styles, 0.0, 0.0, "adaptive", True)


def test_lycoris_file_for_a_wider_unet_is_refused_not_half_applied(tiny, mods, prompts, comfy_home):
    """A LoHa written by LyCORIS for a UNet with the same layer names and twice the channels: ComfyUI's LoHa patch
    fails on every layer and only logs it (returning the weight unpatched); the pack must stop, naming the file."""
    wider, net = lycoris_net(build_twin(tiny.model, load=False, width=64), seed=10, algo="loha", linear_dim=4)
    net.save_weights(str(loras_dir(comfy_home) / "fmt_loha_wide.safetensors"), torch.float32, None)
    styles = mods.style.DiffStylerStyleLoRA.execute(
        "fmt_loha_wide.safetensors", 1.0, prompts["style"], torch.ones(1, 64, 64)
    ).args[0]
    with pytest.raises(ValueError, match=r"fmt_loha_wide\.safetensors.*could not compute its loha update of .*another"):
        mods.inject.DiffStylerCrossLoRAInjector.execute(tiny.model, styles, 0.0, 0.0, "adaptive", True)
