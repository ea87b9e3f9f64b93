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
    from comfyui_diffstyler.nodes.harness import styles as run
    from comfyui_diffstyler.nodes.harness.probes import plain_ddim

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
        back = plain_ddim(model, x_t, args.steps, empty, empty, 1.0)
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
        styles = run.chain_styles(loras[:k], pos[1 : k + 1], run.overlapping_masks(k, args.size))
        x_t = inversion.latent_out(model, invs["fine"].trajectory[0])
        plain = plain_ddim(model, x_t, args.steps, pos[0], neg, args.cfg)

        def run_case(inject=None, background="exact", masks="hard", inv="fine", fusion="noise"):
            opts = dict(inject or {})
            lora_in = opts.pop("lora_in_injected_attention", False)
            patched, rows = common.count_rows(run.inject(model, styles, lora_in, fusion=fusion, **opts))
            use = cached if inv == "cache" else invs[inv]
            t = time.perf_counter()
            out = run.sample(patched, use, styles, pos[0], neg, args.cfg, background, masks)
            return out, time.perf_counter() - t, sum(rows) / args.steps

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
        base, base_t, _rows = run_case()
        base, base_t, base_rows = run_case()  # timed after a warm-up
        effect = float((base - plain).norm())
        for name, kw in cases.items():
            out, sec, rows = run_case(**kw)
            if name.startswith("defaults"):
                out, sec, rows = base, base_t, base_rows
            res["options"][f"{name} | k={k}"] = {
                "rel_to_defaults": float((out - base).norm() / base.norm()),
                "rel_to_style_effect": float((out - base).norm()) / effect,
                "rows_per_step": rows,
                "time_x_defaults": sec / base_t,
            }
        # background=model is the released reference for the exact background's deviation
        model_out, _s, model_rows = run_case(background="model")
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
