"""Flow-matching inversion grids on a tiny Flux.1 (design Sec. 6; issue #26 item 2).

For each grid (the sampler's sigmas, each interval cut into 2, 4, 8 sub-steps): the content latent is inverted
(empty prompt, guidance 1.0, cfg 1), sampled back with plain Euler and the same prompt, and the relative error
``|back - content| / |content|`` (VAE-space latent), the model rows and the inversion time are printed, then the
default Sec. 6's rule picks (the cheapest grid within 2x of the finest grid's error). The model is the harness's
tiny Flux, loaded from its file through ComfyUI's own loader where the host's detection allows (else built
in-process). Random weights: the numbers say how the grids behave on a smooth random flow, not on real Flux.

    python bench/flux_inversion.py [--hidden 256] [--blocks 2] [--size 256] [--steps 10 20] [--schnell] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import common


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--blocks", type=int, default=2, help="double and single blocks each")
    ap.add_argument("--size", type=int, default=256, help="image side in pixels (latent = size / 8)")
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 20])
    ap.add_argument("--schnell", action="store_true", help="no guidance embedding (FluxSchnell)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    common.setup(cpu=True)
    import logging

    logging.getLogger().setLevel(logging.WARNING)
    import comfy.model_detection
    from comfyui_diffstyler.nodes.adapters import flux_inversion as fi
    from comfyui_diffstyler.nodes.core import flow
    from comfyui_diffstyler.nodes.harness import tiny_flux as tf

    spec = tf.TinyFlux(hidden=args.hidden, depth=args.blocks, depth_single=args.blocks, guidance=not args.schnell)
    sd = tf.state_dict(spec)
    t = time.perf_counter()
    if comfy.model_detection.detect_unet_config(sd, "")["num_heads"] == spec.hidden // tf.HEAD_DIM:
        model, how = tf.load_file(tf.save_file(tempfile.mktemp(suffix=".safetensors"), spec)), "core loader"
    else:
        model, how = tf.build_model(spec, sd), "in-process (this host's detection fixes 24 heads)"
    load_s = time.perf_counter() - t
    content = tf.latent(args.size // 8, args.size // 8, seed=3)
    empty = tf.conditioning(spec, tokens=256, seed=9, guidance=None)
    print(
        f"tiny Flux {'schnell' if args.schnell else 'dev'} hidden {spec.hidden}, {args.blocks}+{args.blocks} blocks, "
        f"{args.size} px, {how} in {load_s:.2f} s"
    )
    report = []
    for steps in args.steps:
        errors, rows = {}, {}
        for grid in flow.FLOW_GRIDS:
            t = time.perf_counter()
            inv = fi.invert(model, content, steps, empty, grid=grid, disable_pbar=True)
            seconds = time.perf_counter() - t
            back = fi.sample_euler(model, inv.trajectory[0], inv.sigmas, inv.conditioning)
            errors[grid], rows[grid] = flow.reconstruction_error(content, back), inv.unet_rows
            print(f"  {steps:3d} steps  {grid:9s} {rows[grid]:4d} rows  error {errors[grid]:.5f}  {seconds:6.2f} s")
            report.append({"steps": steps, "grid": grid, "rows": rows[grid], "error": errors[grid], "s": seconds})
        pick = flow.pick_grid(errors, steps)
        print(f"  {steps:3d} steps  default by the 2x rule: {pick} ({errors[pick] / errors['fine/8']:.2f}x fine/8)")
        report.append({"steps": steps, "default": pick})
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
