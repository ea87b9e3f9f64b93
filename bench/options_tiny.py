"""Each named option's deviation from the defaults on the tests' tiny SD1.5 model (issue: fidelity).

The fidelity tests' set-up (tests/comfy/test_fidelity.py, through the pack's harness: the tiny SD1.5 checkpoint,
a 64x64 content picture, 10 steps, cfg 10.5, random LoRAs, overlapping masks with a feathered edge). For every
option: the final latent's ``|option - defaults| / |defaults|``, the same over the style effect
``|defaults - plain DDIM|`` and the UNet rows per step, k = 1 and 2, in one run. Then ``background = exact`` against
the released ``background = model`` inside the styled region (the union of the hard masks at latent size): how much
the kept background moves the styled regions. ``bench/options.py`` gives the grids' cost on a narrow SD1.5 UNet.

    python bench/options_tiny.py
"""

from __future__ import annotations

import json
import pathlib
import tempfile

import common


def main():
    from comfyui_diffstyler.nodes.harness import demo, host

    home = host.setup(common.comfyui_root(), pathlib.Path(tempfile.mkdtemp()))
    tiny = demo.tiny_models(home)
    import logging

    logging.getLogger().setLevel(logging.WARNING)
    import comfy.utils
    import torch
    from comfyui_diffstyler.nodes.adapters import inversion
    from comfyui_diffstyler.nodes.core.masks import region_mask_latent
    from comfyui_diffstyler.nodes.core.schedule import GRIDS
    from comfyui_diffstyler.nodes.harness.probes import count_unet_calls, plain_ddim
    from comfyui_diffstyler.nodes.harness.styles import overlapping_masks, run_styles
    from comfyui_diffstyler.nodes.harness.tiny import random_lora

    comfy.utils.set_progress_bar_enabled(False)

    img = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(3))
    lat = tiny.vae.encode(img).float()

    def enc(t):
        return tiny.clip.encode_from_tokens_scheduled(tiny.clip.tokenize(t))

    prompts = {
        "empty": enc(""),
        "base": enc(""),
        "neg": enc("ugly, blurry, black, low res, unrealistic"),
        "styles": [enc("painting of <sss>, deer, grass"), enc("sketch of grass"), enc("mosaic of a deer")],
    }
    model = tiny.model.clone()
    calls = count_unet_calls(model, "bench_rows")
    loras = [random_lora(model, seed=40 + i, scale=1.5) for i in range(3)]  # the fidelity tests' LoRAs
    invs = {g: inversion.invert(model, lat, 10, prompts["empty"], disable_pbar=True, grid=g) for g in GRIDS}
    cached = inversion.invert(model, lat, 10, prompts["empty"], disable_pbar=True, cache_dtype="fp32")
    out = {}
    for k in (1, 2):

        def run(inv="fine", **kw):
            calls.clear()
            bg = kw.pop("background", "exact")
            use = cached if inv == "cache" else invs[inv]
            lora_in = kw.pop("lora_in_attention", False)
            masks = kw.pop("masks", "hard")
            got = run_styles(
                model, use, loras[:k], prompts, overlapping_masks(k), bg, masks, lora_in_attention=lora_in, **kw
            )
            return got, sum(calls) / 10

        base, base_rows = run()
        x_t = inversion.latent_out(model, invs["fine"].trajectory[0])
        plain = plain_ddim(tiny.model, x_t, 10, prompts["base"], prompts["neg"], 10.5)
        effect = float((base - plain).norm())
        cases = {
            "defaults (background exact)": {},
            "background = model (released)": {"background": "model"},
            "content_rows = shared": {"content_rows": "shared"},
            "lora_in_injected_attention on": {"lora_in_attention": True},
            "masks = soft": {"masks": "soft"},
            **{f"inversion_grid = {g}": {"inv": g} for g in GRIDS if g != "fine"},
            "feature_cache (fp32)": {"inv": "cache"},
            "feature_cache + fusion = feature": {"inv": "cache", "fusion": "feature"},
        }
        for name, kw in cases.items():
            got, r = run(**kw)
            out[f"{name} | k={k}"] = {
                "rel_to_defaults": float((got - base).norm() / base.norm()),
                "rel_to_style_effect": float((got - base).norm()) / effect,
                "rows_per_step": r,
            }
        model_bg, _r = run(background="model")
        effect_model = float((model_bg - plain).norm())
        for name, kw in (("base_injection = style windows", {"base_injection": "style windows"}),):
            got, r = run(background="model", **kw)
            out[f"{name} (vs background model) | k={k}"] = {
                "rel_to_defaults": float((got - model_bg).norm() / model_bg.norm()),
                "rel_to_style_effect": float((got - model_bg).norm()) / effect_model,
                "rows_per_step": r,
            }
        # background = exact vs the released model background, inside the styled region only
        exact = base
        region = region_mask_latent(overlapping_masks(k), *lat.shape[-2:]).to(exact.dtype)
        inside = float(((exact - model_bg) * region).norm() / (model_bg * region).norm())
        plain_in = float(((model_bg - plain) * region).norm())
        out[f"background exact vs model, inside the masks | k={k}"] = {
            "rel_to_defaults": inside,
            "rel_to_style_effect": float(((exact - model_bg) * region).norm()) / plain_in,
            "rows_per_step": base_rows,
            "region_cells": int(region.sum()),
        }
    print("rel diff: |option - defaults| / |defaults|; / style: |option - defaults| / |defaults - plain DDIM|")
    print("base_injection: against the defaults with background = model (and / |that - plain DDIM|)")
    print("background exact vs model: |exact - model| / |model| and / |model - plain DDIM|, both inside the masks")
    print(f"{'option':<56}{'rel diff':>10}{'/ style':>10}{'rows/step':>11}")
    for name, r in out.items():
        print(f"{name:<56}{r['rel_to_defaults']:>10.2e}{r['rel_to_style_effect']:>10.2e}{r['rows_per_step']:>11.1f}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
