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
* half       - k = 1: the style active on the first half of the steps only (start 0, end 0.5): no rows after;
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
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import statistics
import time

import common

WARMUP = 1  # set from --warmup


def timed(fn, device, repeats: int, warmup: int | None = None):
    import torch

    out = None
    for _ in range(WARMUP if warmup is None else warmup):
        out = fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def kernels_per_step(fn, steps: int) -> tuple[float, float]:
    """ATen operations that launch work, and host reads of device values among them, per sampling step, in one
    more (untimed) run of ``fn``."""
    with common.KernelCount() as kc:
        fn()
    return kc.n / steps, kc.syncs / steps


def counting(patcher):
    """A clone of ``patcher`` that counts the rows of every UNet call: rows per step are measured, not assumed."""

    counter = {"rows": 0}
    clone = patcher.clone()
    count_into(clone, counter)
    # a MODEL style's own UNet (an additional model of the patched MODEL): its rows count too
    for extra in clone.get_additional_models_with_key("diffstyler_style_models"):
        count_into(extra, counter)
    return clone, counter


def count_into(patcher, counter: dict) -> None:
    """Add the rows of every UNet call of ``patcher`` to ``counter["rows"]``."""
    import comfy.patcher_extension

    def count_rows(executor, x, *args, **kwargs):
        counter["rows"] += int(x.shape[0])
        return executor(x, *args, **kwargs)

    patcher.add_wrapper_with_key(
        comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "diffstyler_bench_rows", count_rows
    )


def reference_copies(model, loras, strength=1.0):
    """k+1 UNet copies (base first), each with one style's LoRA merged into its weights."""
    import torch

    copies = [model.model]
    for lora in loras:
        c = common.copy_unet(model)
        sd = c.state_dict()
        with torch.no_grad():
            for key, w in sd.items():
                base = "lora_unet_" + key[len("diffusion_model.") : -len(".weight")].replace(".", "_")
                if base + ".lora_down.weight" in lora:
                    down = lora[base + ".lora_down.weight"].to(w.device, torch.float32)
                    up = lora[base + ".lora_up.weight"].to(w.device, torch.float32)
                    alpha = float(lora[base + ".alpha"]) / down.shape[0]
                    w.add_((strength * alpha * (up @ down)).to(w.dtype))
        copies.append(c)
    return copies


def reference_sample(copies, inv, empty, neg, pos_list, masks_lat, cfg, counter=None):
    """The reference loop: every copy runs [content, uncond, cond]; predictions fused by mask, then CFG."""
    import torch
    from comfyui_diffstyler.nodes.core.masks import fuse, fusion_weights

    dev = next(copies[0].parameters()).device
    sigmas = inv.sigmas.to(dev)
    x = inv.trajectory[0].to(dev)
    weights, bg_w = fusion_weights([m.to(dev) for m in masks_lat])
    ctx_e, ctx_n = empty[0][0].to(dev), neg[0][0].to(dev)
    with torch.no_grad():
        for i in range(len(sigmas) - 1):
            s, s_next = sigmas[i], sigmas[i + 1]
            x_src = inv.content_input_at(s).to(dev)
            conds, unconds = [], []
            for c, pos in zip(copies, pos_list):
                inp = torch.cat([x_src, x, x])
                ctx = torch.cat([ctx_e, ctx_n, pos[0][0].to(dev)])
                out = c.apply_model(inp, s.repeat(3), c_crossattn=ctx, transformer_options={})
                if counter is not None:
                    counter["rows"] += int(inp.shape[0])
                unconds.append(out[1:2])
                conds.append(out[2:3])
            cond = fuse(conds[1:], weights, conds[0], bg_w)
            uncond = fuse(unconds[1:], weights, unconds[0], bg_w)
            den = uncond + (cond - uncond) * cfg
            x = x + (x - den) / s * (s_next - s)
    return x


def rerun_cost(pack, model, latent, cond, steps, grid="sampling"):
    """Seconds a second graph run spends when only the sampler-side inputs change (inversion from cache)."""
    from comfy_api.latest import ComfyExtension, io

    import nodes

    class BenchInputs(io.ComfyNode):
        @classmethod
        def define_schema(cls):
            return io.Schema(
                node_id="DiffStylerBenchInputs",
                category="DiffStyler/bench",
                inputs=[],
                outputs=[io.Model.Output(), io.Latent.Output(), io.Conditioning.Output()],
            )

        @classmethod
        def execute(cls):
            return io.NodeOutput(model, {"samples": latent}, cond)

    class Ext(ComfyExtension):
        async def get_node_list(self):
            return [BenchInputs]

    if "PreviewAny" not in nodes.NODE_CLASS_MAPPINGS:
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    for ext in (asyncio.run(pack.comfy_entrypoint()), Ext()):
        for cls in asyncio.run(ext.get_node_list()):
            nodes.NODE_CLASS_MAPPINGS[cls.GET_SCHEMA().node_id] = cls

    class Server:
        client_id = None
        last_node_id = None
        last_prompt_id = None

        def send_sync(self, *a, **k):
            pass

        def queue_updated(self):
            pass

    ex = common.make_executor(Server())

    def graph(cfg_marker):
        return {
            "1": {"class_type": "DiffStylerBenchInputs", "inputs": {}},
            "2": {
                "class_type": "DiffStylerInvert",
                "inputs": {
                    "model": ["1", 0],
                    "latent": ["1", 1],
                    "steps": steps,
                    "conditioning": ["1", 2],
                    "inversion_grid": grid,
                },
            },
            "3": {"class_type": "DiffStylerInversionSigmas", "inputs": {"inversion": ["2", 0]}},
            "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}},
            "5": {"class_type": "PrimitiveFloat", "inputs": {"value": cfg_marker}},
        }

    times = []
    for i, marker in enumerate((1.0, 2.0)):
        p = graph(marker)
        t = time.perf_counter()
        ex.execute(p, f"bench-{i}", {}, ["4", "5"])
        times.append(time.perf_counter() - t)
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    global WARMUP
    WARMUP = args.warmup

    pack = common.setup(args.cpu, args.attention)
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

    t_inv, inv = timed(
        lambda: inversion.invert(model, latent, args.steps, empty, disable_pbar=True, grid=args.grid), dev, args.repeats
    )
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
        dev,
        1,
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
                dev,
                1,
                warmup=0,
            )
            res["inversion_rows"][grid], res["inversion_grid_s"][grid] = inv_g.unet_rows, t_g
    res["feature_cache_mb"] = inv_cached.feature_cache.nbytes() / 2**20
    x_t = inversion.latent_out(model, inv.trajectory[0])

    plain_model, plain_rows = counting(model)
    n = inv.steps
    runs_per_case = WARMUP + args.repeats

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
        res["plain_s"], _ = timed(plain, dev, args.repeats)
    res["peak_mb"]["plain"] = pm.peak / 2**20
    res["peak_rss_mb"]["plain"] = pm.rss / 2**20
    res["rows_per_step"]["plain"] = plain_rows["rows"] / (runs_per_case * n)
    if args.kernels:
        res["kernels_per_step"]["plain"], res["syncs_per_step"]["plain"] = kernels_per_step(plain, n)

    def measure(fn, key: str, tag: str, k: int, rows: dict) -> None:
        """Time ``fn`` and record its time (``res[key][k]``), peak memory, rows per step (from the ``rows`` counter
        of its model) and, with --kernels, kernels and syncs per step under ``{tag}_k{k}``."""
        with common.PeakMemory(dev) as pm:
            t, _ = timed(fn, dev, args.repeats)
        res.setdefault(key, {})[str(k)] = t
        res["peak_mb"][f"{tag}_k{k}"] = pm.peak / 2**20
        res["peak_rss_mb"][f"{tag}_k{k}"] = pm.rss / 2**20
        res["rows_per_step"][f"{tag}_k{k}"] = rows["rows"] / (runs_per_case * n)
        if args.kernels:
            kern, syncs = kernels_per_step(fn, n)
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
            mdl, rows = counting(mdl)

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
        again, rows = counting(
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
                mdl, rows = counting(
                    DiffStylerCrossLoRAInjector.execute(model, st, 0.6, 0.5, "adaptive", False).args[0]
                )

                def timed_style(mdl=mdl, st=st):
                    return DiffStylerMaskedFusionSampler.execute(mdl, inv, pos[0], neg, args.cfg, "exact", st)

                measure(timed_style, key, tag, 1, rows)
                del mdl
            del style_unet, by_model
        del patched, fused, shared, again, inv_store
        if not args.no_reference:
            copies = reference_copies(model, loras[:k])
            ref_rows = {"rows": 0}
            masks_lat = [resize_mask_to_latent(m, 1, h, h, "m") for m in masks]

            def reference(copies=copies, masks_lat=masks_lat, k=k, ref_rows=ref_rows):
                return reference_sample(copies, inv, empty, neg, pos[: k + 1], masks_lat, args.cfg, ref_rows)

            with common.PeakMemory(dev) as pm:
                t, _ = timed(reference, dev, args.repeats)
            res["reference_s"][str(k)] = t
            res["peak_mb"][f"reference_k{k}"] = pm.peak / 2**20
            res["peak_rss_mb"][f"reference_k{k}"] = pm.rss / 2**20
            res["rows_per_step"][f"reference_k{k}"] = ref_rows["rows"] / (runs_per_case * n)
            if args.kernels:
                kern, syncs = kernels_per_step(reference, n)
                res["kernels_per_step"][f"reference_k{k}"], res["syncs_per_step"][f"reference_k{k}"] = kern, syncs
            del copies, reference  # the closure holds the copies too
            mm.soft_empty_cache()
    first, second = rerun_cost(pack, model, latent, empty, args.steps, args.grid)
    res["first_graph_run_s"], res["rerun_inversion_s"] = first, second

    print(
        f"\nDiffStyler bench: {res['device']}, SD1.5 UNet (random weights, model_channels {args.channels}), "
        f"{args.size}x{args.size}, "
        f"{n} DDIM steps, cfg {args.cfg}, {res['attention']}, MALLOC_MMAP_THRESHOLD_ "
        f"{res['malloc_mmap_threshold'] or 'unset'}, median of {args.repeats} after {args.warmup} "
        f"warm-up run(s), torch "
        f"{torch.__version__}, {torch.get_num_threads()} CPU thread(s)"
    )
    kern = res["kernels_per_step"]
    print(
        f"{'run':<30}{'seconds':>10}{'x plain':>10}{'rows/step':>11}{'peak MB':>10}"
        + (f"{'kernels/step':>14}{'x plain':>9}{'syncs/step':>12}" if kern else "")
    )

    def row(name, t, tag):
        rows = res["rows_per_step"][tag]
        line = f"{name:<30}{t:>10.3f}{t / res['plain_s']:>10.2f}{rows:>11.1f}{res['peak_mb'][tag]:>10.0f}"
        if tag in kern:
            line += f"{kern[tag]:>14.0f}{kern[tag] / kern['plain']:>9.2f}{res['syncs_per_step'][tag]:>12.1f}"
        print(line)

    row("plain DDIM", res["plain_s"], "plain")
    for k in ks:
        row(f"diffstyler k={k}", res["diffstyler_s"][str(k)], f"diffstyler_k{k}")
        if str(k) in res.get("diffstyler_model_bg_s", {}):
            row(f"  background model k={k}", res["diffstyler_model_bg_s"][str(k)], f"model_bg_k{k}")
        if str(k) in res.get("diffstyler_shared_s", {}):
            row(f"  shared content k={k}", res["diffstyler_shared_s"][str(k)], f"shared_k{k}")
        if str(k) in res.get("diffstyler_rerun_s", {}):
            row(f"  re-run (content cache) k={k}", res["diffstyler_rerun_s"][str(k)], f"rerun_k{k}")
        if str(k) in res.get("diffstyler_half_s", {}):
            row("  style on 0-0.5 only", res["diffstyler_half_s"][str(k)], f"half_k{k}")
        if str(k) in res.get("diffstyler_model_s", {}):
            row("  MODEL style (2 UNets)", res["diffstyler_model_s"][str(k)], f"model_style_k{k}")
        if str(k) in res.get("diffstyler_cache_s", {}):
            row(f"  + feature cache k={k}", res["diffstyler_cache_s"][str(k)], f"cache_k{k}")
        if str(k) in res["diffstyler_fast_s"]:
            row("  + cache + feat.fusion", res["diffstyler_fast_s"][str(k)], f"fast_k{k}")
        if str(k) in res["reference_s"]:
            row(f"reference k={k}", res["reference_s"][str(k)], f"reference_k{k}")
    for k in ks:
        if str(k) in res["reference_s"]:
            speedup = res["reference_s"][str(k)] / res["diffstyler_s"][str(k)]
            print(f"speed-up over the reference design, k={k}: {speedup:.2f}x")
    for grid, rows in res["inversion_rows"].items():
        print(f"inversion on the {grid} grid: {rows} UNet rows, {res['inversion_grid_s'][grid]:.3f} s")
    print(
        f"inversion: {res['inversion_s']:.3f} s; feature cache {res['feature_cache_mb']:.1f} MB; graph re-run with "
        f"unchanged content: {res['rerun_inversion_s']:.3f} s (first run {res['first_graph_run_s']:.3f} s)"
    )
    for k, mb in res.get("content_cache_mb", {}).items():
        per = res["content_cache_mb_per_style_step"][k]
        print(
            f"per-style content cache after k={k}: {mb:.1f} MB in all, {per:.2f} MB per style per step in the windows"
        )
    if "diffstyler_k1" in res["peak_mb"] and "diffstyler_k3" in res["peak_mb"]:
        print(f"peak memory k=3 / k=1: {res['peak_mb']['diffstyler_k3'] / res['peak_mb']['diffstyler_k1']:.3f}")
    if args.json:
        print(json.dumps(res))


if __name__ == "__main__":
    main()
