"""What each named option changes and what it saves, measured side by side (issue: fidelity).

On a narrow SD1.5-topology UNet (every SD1.5 layer, ``model_channels`` 32, random weights; ``--size 64``: the
tiny model of the tests), 10 DDIM steps, cfg 10.5, random prompt embeddings and LoRAs, k overlapping masks with a
feathered edge. For every option, the final latent's relative difference from the defaults
(``|option - defaults| / |defaults|``), the same over the style effect (``|option - defaults| / |defaults - plain|``,
plain = DDIM from the same start without styles), UNet rows per step and time, x the defaults' time, in one run.
Inversion grids get their own table: UNet rows, seconds, and the reconstruction error (invert, then plain DDIM
back with the empty prompt and cfg 1, relative to the input latent).

    python bench/options.py [--size 64] [--steps 10] [--channels 32] [--ks 1,2] [--json]
"""

from __future__ import annotations

import argparse
import json
import time

import common


def masks_for(k: int, size: int):
    import torch

    out = []
    a = torch.zeros(1, size, size)
    a[:, :, : size * 5 // 8] = 1.0
    a[:, :, size * 5 // 8 : size * 5 // 8 + 6] = torch.linspace(0.6, 0.05, 6)
    out.append(a)
    b = torch.zeros(1, size, size)
    b[:, size // 4 :, size * 3 // 8 :] = 1.0
    out.append(b)
    c = torch.zeros(1, size, size)
    c[:, size // 8 : size // 2, size // 8 : size // 2] = 0.3
    out.append(c)
    return out[:k]


def counting(patcher):
    import comfy.patcher_extension

    counter = {"rows": 0, "calls": 0}

    def count_rows(executor, x, *args, **kwargs):
        counter["rows"] += int(x.shape[0])
        counter["calls"] += 1
        return executor(x, *args, **kwargs)

    clone = patcher.clone()
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "diffstyler_bench_rows", count_rows)
    return clone, counter


def plain_released(model, x_t, steps, pos, neg, cfg):
    """ComfyUI's ddim sampler from ``x_t`` with the released last step: the tests' ``dst_core.plain_ddim``."""
    import sys

    sys.path.insert(0, str(common.ROOT / "tests" / "support"))
    import dst_core

    return dst_core.plain_ddim(model, x_t, steps, pos, neg, cfg)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--ks", default="1,2")
    ap.add_argument("--cfg", type=float, default=10.5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    common.setup(True)
    import torch
    from comfyui_diffstyler.nodes.adapters import inversion
    from comfyui_diffstyler.nodes.core.schedule import GRIDS
    from comfyui_diffstyler.nodes.inject import DiffStylerCrossLoRAInjector
    from comfyui_diffstyler.nodes.sample import DiffStylerMaskedFusionSampler
    from comfyui_diffstyler.nodes.style import DiffStylerStyleLoRA

    model = common.full_sd15(channels=args.channels)
    h = args.size // 8
    latent = torch.randn(1, 4, h, h, generator=torch.Generator().manual_seed(0)) * 0.8
    empty, neg = common.random_cond(0), common.random_cond(1)
    pos = [common.random_cond(10 + i) for i in range(4)]
    ks = [int(k) for k in args.ks.split(",")]
    loras = [common.random_lora(model, rank=8, seed=20 + i, scale=1.0) for i in range(max(ks))]
    res = {"size": args.size, "steps": args.steps, "channels": args.channels, "grids": {}, "options": {}}

    # ---- inversion grids: cost and reconstruction error
    invs = {}
    for grid in GRIDS:
        t = time.perf_counter()
        inv = inversion.invert(model, latent, args.steps, empty, disable_pbar=True, grid=grid)
        sec = time.perf_counter() - t
        invs[grid] = inv
        x_t = inversion.latent_out(model, inv.trajectory[0])
        back = plain_released(model, x_t, args.steps, empty, empty, 1.0)
        err = float((back - latent).norm() / latent.norm())
        res["grids"][grid] = {"unet_rows": inv.unet_rows, "seconds": sec, "reconstruction_rel_err": err}
    t0 = time.perf_counter()
    cached = inversion.invert(model, latent, args.steps, empty, disable_pbar=True, cache_dtype="fp32")
    res["grids"]["fine + feature cache"] = {
        "unet_rows": cached.unet_rows,
        "seconds": time.perf_counter() - t0,
        "cache_mb": cached.feature_cache.nbytes() / 2**20,
    }

    for k in ks:
        styles = None
        for i, m in enumerate(masks_for(k, args.size)):
            styles = DiffStylerStyleLoRA.execute("None", 1.0, pos[i + 1], m, lora=loras[i], styles=styles).args[0]
        x_t = inversion.latent_out(model, invs["fine"].trajectory[0])
        plain = plain_released(model, x_t, args.steps, pos[0], neg, args.cfg)

        def run(inject=None, background="exact", masks="hard", inv="fine", fusion="noise"):
            opts = dict(inject or {})
            lora_in = opts.pop("lora_in_injected_attention", False)
            patched = DiffStylerCrossLoRAInjector.execute(
                model, styles, 0.6, 0.5, "adaptive", lora_in, fusion, **opts
            ).args[0]
            patched, counter = counting(patched)
            use = cached if inv == "cache" else invs[inv]
            t = time.perf_counter()
            out = DiffStylerMaskedFusionSampler.execute(
                patched, use, pos[0], neg, args.cfg, background, styles, masks
            ).args[0]["samples"]
            return out, time.perf_counter() - t, counter["rows"] / args.steps

        cases = {
            "defaults (background exact)": {},
            "background = model (released)": {"background": "model"},
            "content_rows = shared": {"inject": {"content_rows": "shared"}},
            "lora_in_injected_attention on": {"inject": {"lora_in_injected_attention": True}},
            "masks = soft": {"masks": "soft"},
            "inversion_grid = fine/10": {"inv": "fine/10"},
            "inversion_grid = sampling": {"inv": "sampling"},
            "feature_cache (fp32)": {"inv": "cache"},
            "feature_cache + fusion = feature": {"inv": "cache", "fusion": "feature"},
        }
        base, base_t, _rows = run()
        base, base_t, base_rows = run()  # timed after a warm-up
        effect = float((base - plain).norm())
        for name, kw in cases.items():
            out, sec, rows = run(**kw)
            if name.startswith("defaults"):
                out, sec, rows = base, base_t, base_rows
            res["options"][f"{name} | k={k}"] = {
                "rel_to_defaults": float((out - base).norm() / base.norm()),
                "rel_to_style_effect": float((out - base).norm()) / effect,
                "rows_per_step": rows,
                "time_x_defaults": sec / base_t,
            }
        # background=model is the released reference for the exact background's deviation
        model_out, _s, model_rows = run(background="model")
        res["options"][f"background = model (released) | k={k}"]["rows_per_step"] = model_rows

    print(f"\nInversion grids ({args.steps} sampling steps, {args.size}px, model_channels {args.channels}):")
    print(f"{'grid':<24}{'UNet rows':>10}{'seconds':>10}{'reconstruction err':>20}")
    for grid, r in res["grids"].items():
        err = r.get("reconstruction_rel_err")
        print(f"{grid:<24}{r['unet_rows']:>10}{r['seconds']:>10.2f}{(f'{err:.2e}' if err is not None else '-'):>20}")
    print("\nOptions vs the defaults (final latent):")
    print(f"{'option':<44}{'rel diff':>10}{'/ style':>10}{'rows/step':>11}{'time x':>8}")
    for name, r in res["options"].items():
        print(
            f"{name:<44}{r['rel_to_defaults']:>10.3f}{r['rel_to_style_effect']:>10.3f}{r['rows_per_step']:>11.1f}"
            f"{r['time_x_defaults']:>8.2f}"
        )
    if args.json:
        print(json.dumps(res))


if __name__ == "__main__":
    main()
