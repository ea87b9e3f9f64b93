"""DiffStyler cost, measured side by side in one process (design Sec. 4; issue: performance).

Same inputs for every row: a full-size SD1.5 UNet with random weights (fp16 on a GPU, fp32 on the CPU),
random prompt embeddings, a random content latent and k stripe masks. Rows:

* plain      - DDIM CFG sampling through ComfyUI's own KSampler (2 UNet rows per step);
* diffstyler - the defaults (the released computation, design Sec. 5): per style a content row with that
               style's LoRA while its injection windows are open + its cond/uncond rows, background exact,
               all in one UNet call per step (3 rows per style in the windows, 2 after);
* model bg   - the defaults with background = model (the released background: + a base branch's 3 rows);
* shared     - the shared-content-row option (one LoRA-free content row for every style: 2k + 1 rows);
* reference  - the released design emulated: k+1 UNet copies (base + one per style, LoRA merged), each
               running [content, uncond, cond] every step, noise fused by mask (3(k+1) rows per step);
               its injection bookkeeping is left out, which only flatters it;
* cache      - the feature-cache option (content features recorded at inversion: 2k rows per step);
* re-run     - the defaults again with other prompts and cfg on an inversion whose per-style content cache a first
               run filled (DDIM Inversion ``content_cache_mb``): no content row, 2k rows per step, the same result;
* fast       - the cache plus the experimental feature-fusion mode (2 rows per step whatever k);
* half       - k = 1: the style active on the first half of the steps only (start 0, end 0.5): after its end the
               base branch carries its region on (3 rows per step: content, uncond, cond);
* MODEL style - k = 1: the style held by a second full-size UNet (Style Model node): its rows in an extra call of
               that UNet per step (the rows counted across both UNets; its memory is the second UNet).

The sampling runs use an inversion on the sampler's own steps (``--grid``; the sampling cost does not depend on
it); the inversion's own cost is reported on its own line for ``--grid`` and, with ``--time-grids``, for every
grid (the released fine grid costs about 1000 UNet rows).

Warm-up runs are excluded; every time is the median of ``--repeats``. Ratios are to ``plain`` in the
same run. ``--kernels`` adds one untimed run per case that counts the ATen operations launching work
(views excluded) per step: what bounds a fast GPU at small sizes, counted alike on the CPU. ``--json``
prints one JSON object as the last line.

    python bench/run.py [--size 256] [--steps 10] [--repeats 3] [--cpu] [--attention pytorch] [--kernels] [--json]

``--family flux`` runs the Flux.1 section instead (bench/flux_cost.py: a tiny Flux on the CPU, its own options;
``python bench/run.py --family flux --help``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import common
import graph_rerun
import reference
import report


def main():
    family = argparse.ArgumentParser(add_help=False)
    family.add_argument("--family", choices=("sd15", "flux"), default="sd15")
    known, rest = family.parse_known_args()
    if known.family == "flux":
        import flux_cost

        return flux_cost.main(rest)
    sys.argv[1:] = rest
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=("sd15", "flux"), default="sd15", help="flux: the Flux.1 section")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs before each timed case (0 on a slow CPU)")
    ap.add_argument("--ks", default="1,2,3")
    ap.add_argument("--cfg", type=float, default=10.5)
    ap.add_argument(
        "--channels",
        type=int,
        default=320,
        help="UNet model_channels (SD1.5: 320); e.g. 32 keeps every layer but little arithmetic, a proxy for the "
        "per-layer overhead that bounds a fast GPU at small sizes",
    )
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument(
        "--attention",
        choices=sorted(common.ATTENTION),
        default="default",
        help="ComfyUI's attention backend, as its --use-*-cross-attention flags pick it (default: ComfyUI's choice "
        "for the device: PyTorch SDPA on NVIDIA, sub-quadratic on the CPU)",
    )
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--grid", default="sampling", help="inversion grid of the sampling runs (see GRIDS)")
    ap.add_argument(
        "--time-grids", action="store_true", help="also time the inversion on every grid (fine: ~1000 rows)"
    )
    ap.add_argument("--kernels", action="store_true", help="count kernels per step (one more untimed run per case)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    common.setup(args.cpu, args.attention)
    import comfy.ldm.modules.attention
    import comfy.model_management as mm
    import torch
    from comfyui_diffstyler.nodes.adapters import inversion
    from comfyui_diffstyler.nodes.core.masks import resize_mask_to_latent
    from comfyui_diffstyler.nodes.inject import DiffStylerCrossLoRAInjector
    from comfyui_diffstyler.nodes.sample import DiffStylerMaskedFusionSampler
    from comfyui_diffstyler.nodes.style import DiffStylerStyleLoRA

    import nodes

    dev = mm.get_torch_device()

    def timed(fn, repeats: int = args.repeats, warmup: int = args.warmup):
        return common.timed(fn, dev, repeats, warmup)

    ks = [int(k) for k in args.ks.split(",")]
    model = common.full_sd15(channels=args.channels)
    mm.load_models_gpu([model])
    h = args.size // 8
    latent = torch.randn(1, 4, h, h, generator=torch.Generator().manual_seed(0)) * 0.5
    empty, neg = common.random_cond(0), common.random_cond(1)
    pos = [common.random_cond(10 + i) for i in range(max(ks) + 1)]
    loras = [common.random_lora(model, seed=20 + i) for i in range(max(ks))]
    res = {
        "size": args.size,
        "steps": args.steps,
        "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
        "repeats": args.repeats,
        "model_channels": args.channels,
        "attention": comfy.ldm.modules.attention.optimized_attention.__name__,
        # glibc keeps freed heap pages in the RSS unless allocations this large are mmapped (None: its default)
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
        "warmup": args.warmup,
        "diffstyler_s": {},
        "reference_s": {},
        "diffstyler_fast_s": {},
        "rows_per_step": {},
        "peak_mb": {},
        "peak_rss_mb": {},
        "peak_mb_measure": "CUDA allocator peak" if dev.type == "cuda" else "process peak RSS",
        "kernels_per_step": {},
        "syncs_per_step": {},
    }

    t_inv, inv = timed(lambda: inversion.invert(model, latent, args.steps, empty, disable_pbar=True, grid=args.grid))
    _, inv_cached = timed(
        lambda: inversion.invert(
            model,
            latent,
            args.steps,
            empty,
            disable_pbar=True,
            cache_dtype="fp16" if dev.type == "cuda" else "fp32",
            grid=args.grid,
        ),
        repeats=1,
        warmup=0,
    )
    res["inversion_s"] = t_inv
    res["inversion_grid"] = args.grid
    res["inversion_rows"] = {args.grid: inv.unet_rows}
    res["inversion_grid_s"] = {args.grid: t_inv}
    if args.time_grids:
        from comfyui_diffstyler.nodes.core.schedule import GRIDS

        for grid in GRIDS:
            if grid == args.grid:
                continue
            t_g, inv_g = timed(
                lambda grid=grid: inversion.invert(model, latent, args.steps, empty, disable_pbar=True, grid=grid),
                repeats=1,
                warmup=0,
            )
            res["inversion_rows"][grid], res["inversion_grid_s"][grid] = inv_g.unet_rows, t_g
    res["feature_cache_mb"] = inv_cached.feature_cache.nbytes() / 2**20
    x_t = inversion.latent_out(model, inv.trajectory[0])

    plain_model, plain_rows = common.count_rows(model)
    n = inv.steps
    runs_per_case = args.warmup + args.repeats

    def plain():
        return nodes.common_ksampler(
            plain_model,
            0,
            args.steps,
            args.cfg,
            "ddim",
            "ddim_uniform",
            pos[0],
            neg,
            {"samples": x_t},
            disable_noise=True,
            start_step=0,
            last_step=args.steps,
            force_full_denoise=True,
        )

    with common.PeakMemory(dev) as pm:
        res["plain_s"], _ = timed(plain)
    res["peak_mb"]["plain"] = pm.peak / 2**20
    res["peak_rss_mb"]["plain"] = pm.rss / 2**20
    res["rows_per_step"]["plain"] = sum(plain_rows) / (runs_per_case * n)
    if args.kernels:
        res["kernels_per_step"]["plain"], res["syncs_per_step"]["plain"] = common.kernels_per_step(plain, n)

    def measure(fn, key: str, tag: str, k: int, rows: list) -> None:
        """Time ``fn`` and record its time (``res[key][k]``), peak memory, rows per step (``rows``: the live list of
        the rows of its UNet calls) and, with --kernels, kernels and syncs per step under ``{tag}_k{k}``."""
        with common.PeakMemory(dev) as pm:
            t, _ = timed(fn)
        res.setdefault(key, {})[str(k)] = t
        res["peak_mb"][f"{tag}_k{k}"] = pm.peak / 2**20
        res["peak_rss_mb"][f"{tag}_k{k}"] = pm.rss / 2**20
        res["rows_per_step"][f"{tag}_k{k}"] = sum(rows) / (runs_per_case * n)
        if args.kernels:
            kern, syncs = common.kernels_per_step(fn, n)
            res["kernels_per_step"][f"{tag}_k{k}"], res["syncs_per_step"][f"{tag}_k{k}"] = kern, syncs

    for k in ks:
        masks = common.stripes(k, args.size)
        styles = None
        for i in range(k):
            styles = DiffStylerStyleLoRA.execute("None", 1.0, pos[i + 1], masks[i], lora=loras[i], styles=styles).args[
                0
            ]
        patched = DiffStylerCrossLoRAInjector.execute(model, styles, 0.6, 0.5, "adaptive", False).args[0]
        shared = DiffStylerCrossLoRAInjector.execute(
            model, styles, 0.6, 0.5, "adaptive", False, "noise", "shared"
        ).args[0]
        fused = DiffStylerCrossLoRAInjector.execute(model, styles, 0.6, 0.5, "adaptive", False, "feature").args[0]
        runs = (
            ("diffstyler", inv, patched, "diffstyler_s", "exact"),
            ("model_bg", inv, patched, "diffstyler_model_bg_s", "model"),
            ("shared", inv, shared, "diffstyler_shared_s", "exact"),
            ("cache", inv_cached, patched, "diffstyler_cache_s", "exact"),
            ("fast", inv_cached, fused, "diffstyler_fast_s", "exact"),
        )
        for tag, use, mdl, key, bg in runs:
            if tag != "diffstyler" and k == 2:
                continue
            mdl, rows = common.count_rows(mdl)

            def ours(use=use, mdl=mdl, styles=styles, bg=bg):
                return DiffStylerMaskedFusionSampler.execute(mdl, use, pos[0], neg, args.cfg, bg, styles)

            measure(ours, key, tag, k, rows)
        # re-run (content cache): a first run fills the inversion's per-style content cache; the timed runs change
        # the prompts and cfg (new Style objects, a new Injector) and find every content row's features stored
        from comfyui_diffstyler.nodes.adapters.style_cache import ContentCache

        inv_store = dataclasses.replace(inv, source_cache=ContentCache(1 << 40))
        DiffStylerMaskedFusionSampler.execute(patched, inv_store, pos[0], neg, args.cfg, "exact", styles)
        restyled = None
        for i in range(k):
            restyled = DiffStylerStyleLoRA.execute(
                "None", 1.0, pos[(i + 2) % len(pos)], masks[i], lora=loras[i], styles=restyled
            ).args[0]
        again, rows = common.count_rows(
            DiffStylerCrossLoRAInjector.execute(model, restyled, 0.6, 0.5, "adaptive", False).args[0]
        )

        def rerun(again=again, inv_store=inv_store, restyled=restyled):
            return DiffStylerMaskedFusionSampler.execute(again, inv_store, pos[0], neg, args.cfg - 1, "exact", restyled)

        measure(rerun, "diffstyler_rerun_s", "rerun", k, rows)
        res.setdefault("content_cache_mb", {})[str(k)] = inv_store.source_cache.nbytes() / 2**20
        first = next(iter(inv_store.source_cache.entries.values()))  # step 0 holds both the residual and the Q/K
        step0 = first.res[0].numel() * first.res[0].element_size()
        step0 += sum(q.numel() * q.element_size() * 2 for q, _k in first.qk[0].values())
        res.setdefault("content_cache_mb_per_style_step", {})[str(k)] = step0 / 2**20
        if k == 1:  # styles in time and a style held by a MODEL (issue 21)
            from comfyui_diffstyler.nodes.style import DiffStylerStyleModel

            half = DiffStylerStyleLoRA.execute(
                "None", 1.0, pos[1], masks[0], lora=loras[0], start_percent=0.0, end_percent=0.5
            ).args[0]
            style_unet = common.full_sd15(seed=1, channels=args.channels)  # a second UNet: a fine-tuned checkpoint
            by_model = DiffStylerStyleModel.execute(style_unet, pos[1], masks[0]).args[0]
            for tag, st, key in (("half", half, "diffstyler_half_s"), ("model_style", by_model, "diffstyler_model_s")):
                mdl, rows = common.count_rows(
                    DiffStylerCrossLoRAInjector.execute(model, st, 0.6, 0.5, "adaptive", False).args[0]
                )

                def timed_style(mdl=mdl, st=st):
                    return DiffStylerMaskedFusionSampler.execute(mdl, inv, pos[0], neg, args.cfg, "exact", st)

                measure(timed_style, key, tag, 1, rows)
                del mdl
            del style_unet, by_model
        del patched, fused, shared, again, inv_store
        if not args.no_reference:
            copies = reference.reference_copies(model, loras[:k])
            ref_rows: list[int] = []
            masks_lat = [resize_mask_to_latent(m, 1, h, h, "m") for m in masks]

            def reference_run(copies=copies, masks_lat=masks_lat, k=k, ref_rows=ref_rows):
                return reference.reference_sample(copies, inv, empty, neg, pos[: k + 1], masks_lat, args.cfg, ref_rows)

            measure(reference_run, "reference_s", "reference", k, ref_rows)
            del copies, reference_run  # the closure holds the copies too
            mm.soft_empty_cache()
    first, second = graph_rerun.rerun_cost(model, latent, empty, args.steps, args.grid)
    res["first_graph_run_s"], res["rerun_inversion_s"] = first, second

    report.print_table(res, args, ks, n, torch.__version__, torch.get_num_threads())
    if args.json:
        print(json.dumps(res))


if __name__ == "__main__":
    main()
