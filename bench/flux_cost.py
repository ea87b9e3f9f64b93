"""DiffStyler's cost on Flux.1, measured side by side in one process (design Sec. 6; issue #26 item 11).

A tiny Flux.1-dev (``nodes/harness/tiny_flux.py``, random weights, built in-process on every host), fp32 on the CPU,
a random content latent, random T5-width prompts (``--text-tokens``; guidance 3.5 in the conditioning), k stripe
masks and one kohya-layout random LoRA per style (``--rank``). Every case runs through ComfyUI's or the pack's real
nodes and machinery:

* inversion   - DDIM Inversion (the flow inversion on a Flux MODEL, grid ``--grid``): its cost on its own line;
* plain       - Flux-dev sampling through ComfyUI's KSampler (``comfy.sample.sample``: euler, simple, cfg 1, from
                the inverted latent): 1 row per step;
* diffstyler  - the defaults: Style LoRA Loader per style, Cross-LoRA Attention Injector (0.6 / 0.5, adaptive),
                Masked Feature Fusion Sampler at cfg 1, exact background: 2 rows per style while the injection
                windows are open, 1 after, in one transformer call per step;
* model bg    - the same with background = model (+ the base branch's 2 rows);
* copies      - the released design carried over (bench/flux_copies.py): k+1 Flux models, each style's LoRA merged
                by ComfyUI's loader, each running [content, cond] every step (2(k+1) rows in k+1 calls), velocities
                fused by mask. Its injection bookkeeping is left out, which only flatters it.

Rows are counted by a keyed DIFFUSION_MODEL wrapper on each call (never from a formula), and the distinct diffusion
models it saw give the models in memory and their weights' bytes (unique tensor storages). Timing: ``--warmup``
untimed rounds, then ``--repeats`` rounds; each round runs every case once, in the same order, so a load that
drifts over the run touches every case alike; each time is the median of its rounds, on two clocks: wall time and
the process's CPU time (on a CPU shared with other jobs the wall time also holds the time spent waiting for a core;
torch runs on ``--threads`` threads, 1 by default, so the CPU time is the work done). Goals (printed as pass or
miss, never asserted): DiffStyler within 10% of (its rows) x (plain's time per row), the copy design at least 1.8x
slower than DiffStyler at k = 1 and 1.4x at k = 3, one model in memory whatever k. ``--json`` prints one JSON
object as the last line.

    python bench/run.py --family flux [--hidden 256] [--double 2] [--single 2] [--size 256] [--steps 10]
        [--text-tokens 256] [--ks 1,3] [--rank 4] [--repeats 3] [--warmup 1] [--threads 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import common
import flux_copies
import report

KEY = "diffstyler_bench_flux_rows"
GOAL_ROWS = 0.10  # DiffStyler's time within 10% of rows x plain's time per row
GOAL_COPIES = {1: 1.8, 3: 1.4}  # the copy design at least this much slower than DiffStyler
# wall: perf_counter; cpu: this process's CPU time (one torch thread: what the run computed, without the time it
# waited for a core that other jobs held)
CLOCKS = ("wall", "cpu")


class RowCounter:
    """The rows of each diffusion-model call (a keyed DIFFUSION_MODEL wrapper) and the distinct diffusion models
    that ran them."""

    def __init__(self):
        self.rows: list[int] = []
        self.models: dict[int, object] = {}

        def wrapper(executor, x, *args, **kwargs):
            self.rows.append(int(x.shape[0]))
            self.models.setdefault(id(executor.class_obj), executor.class_obj)
            return executor(x, *args, **kwargs)

        wrapper.diffstyler_cache_neutral = True  # it only observes
        self.wrapper = wrapper

    def add_to(self, patcher):
        """Add the wrapper to ``patcher`` itself (a ModelPatcher the bench owns); returns it."""
        import comfy.patcher_extension

        patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, KEY, self.wrapper)
        return patcher

    def attach(self, patcher):
        """A clone of ``patcher`` whose diffusion-model calls are counted."""
        return self.add_to(patcher.clone())

    def weight_bytes(self) -> int:
        """Bytes of the unique tensor storages (parameters and buffers) of the diffusion models seen."""
        seen = {}
        for module in self.models.values():
            for t in (*module.parameters(), *module.buffers()):
                storage = t.untyped_storage()
                seen[storage.data_ptr()] = storage.nbytes()
        return sum(seen.values())


def arguments(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=256, help="width (a multiple of 128: one head per 128)")
    ap.add_argument("--double", type=int, default=2, help="double-stream blocks")
    ap.add_argument("--single", type=int, default=2, help="single-stream blocks")
    ap.add_argument("--size", type=int, default=256, help="image side in pixels (latent = size / 8, tokens = /16)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--text-tokens", type=int, default=256, help="T5 tokens per prompt (Flux pads to 256)")
    ap.add_argument("--ks", default="1,3")
    ap.add_argument("--rank", type=int, default=4, help="rank of each style's LoRA")
    ap.add_argument("--grid", default="sampling", help="flow inversion grid (sampling, fine/2, fine/4, fine/8)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds before the timed ones")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: the CPU time is the work done)")
    ap.add_argument("--json", action="store_true")
    return ap.parse_args(argv)


def host_info() -> dict:
    import torch

    try:
        import comfyui_version

        comfy_version = comfyui_version.__version__
    except ImportError:
        comfy_version = "unknown"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "comfyui": comfy_version,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_model": f"{cpu}, {os.cpu_count()} cores",
        "device": "cpu",
    }


def main(argv=None):
    args = arguments(argv)
    load_start = os.getloadavg()
    common.setup(cpu=True)
    import logging

    import torch

    torch.set_num_threads(args.threads)

    logging.getLogger().setLevel(logging.WARNING)
    import comfy.sample
    import comfy.utils

    comfy.utils.PROGRESS_BAR_ENABLED = False  # the nodes' progress bars (the run prints its table)
    from comfyui_diffstyler.nodes.core.masks import resize_mask_to_latent, to_patch_grid
    from comfyui_diffstyler.nodes.harness import tiny_flux as tf
    from comfyui_diffstyler.nodes.inject import DiffStylerCrossLoRAInjector
    from comfyui_diffstyler.nodes.invert import DiffStylerInvert
    from comfyui_diffstyler.nodes.sample import DiffStylerMaskedFusionSampler
    from comfyui_diffstyler.nodes.style import DiffStylerStyleLoRA

    ks = [int(k) for k in args.ks.split(",")]
    spec = tf.TinyFlux(hidden=args.hidden, depth=args.double, depth_single=args.single, guidance=True)
    sd = tf.state_dict(spec)
    model = tf.build_model(spec, sd)
    h = args.size // 8
    content = {"samples": tf.latent(h, h, seed=3)}
    empty = tf.conditioning(spec, tokens=args.text_tokens, seed=9, guidance=None)
    negative = tf.conditioning(spec, tokens=args.text_tokens, seed=8)  # unused at cfg 1
    prompts = [tf.conditioning(spec, tokens=args.text_tokens, seed=10 + i) for i in range(max(ks) + 1)]
    loras = [common.random_flux_lora(model, rank=args.rank, seed=20 + i) for i in range(max(ks))]

    cases: dict[str, tuple] = {}  # tag -> (run, its RowCounter), in the order every round runs them
    counter = RowCounter()
    inv_model = counter.attach(model)

    def inversion(inv_model=inv_model):
        return DiffStylerInvert.execute(
            inv_model, content, args.steps, conditioning=empty, inversion_grid=args.grid
        ).result

    cases["inversion"] = (inversion, counter)
    inv, x_t = inversion()
    counter.rows.clear()
    n = inv.steps

    counter = RowCounter()
    plain_model = counter.attach(model)

    def plain(plain_model=plain_model):
        return comfy.sample.sample(
            plain_model, inv.trajectory[0], args.steps, 1.0, "euler", "simple", prompts[0], negative,
            x_t["samples"], disable_pbar=True, seed=0,
        )  # fmt: skip

    cases["plain"] = (plain, counter)
    for k in ks:
        masks = common.stripes(k, args.size)
        styles = None
        for i in range(k):
            styles = DiffStylerStyleLoRA.execute(
                "None", 1.0, prompts[i + 1], mask=masks[i], lora=loras[i], styles=styles
            ).result[0]
        patched = DiffStylerCrossLoRAInjector.execute(model, styles, 0.6, 0.5, "adaptive", False).result[0]
        for tag, background in ((f"diffstyler_k{k}", "exact"), (f"model_bg_k{k}", "model")):
            counter = RowCounter()
            mdl = counter.attach(patched)

            def ours(mdl=mdl, background=background):
                return DiffStylerMaskedFusionSampler.execute(mdl, inv, prompts[0], negative, 1.0, background).result

            cases[tag] = (ours, counter)
        counter = RowCounter()
        copies = [counter.add_to(c) for c in flux_copies.build_copies(lambda: tf.build_model(spec, sd), loras[:k])]
        token_masks = [to_patch_grid(resize_mask_to_latent(m, 1, h, h, "mask", mode="hard"), 2) for m in masks]

        def copy_design(copies=copies, token_masks=token_masks, k=k):
            return flux_copies.sample(copies, inv, empty, prompts[: k + 1], token_masks)

        cases[f"copies_k{k}"] = (copy_design, counter)

    rounds, rows, calls = measure(cases, args.warmup, args.repeats)
    res = {
        "family": "flux",
        "hidden": args.hidden,
        "double_blocks": args.double,
        "single_blocks": args.single,
        "size": args.size,
        "tokens": (h // 2) ** 2,
        "text_tokens": args.text_tokens,
        "steps": n,
        "ks": ks,
        "lora_rank": args.rank,
        "lora_mb_per_style": sum(t.numel() * t.element_size() for t in loras[0].values()) / 2**20,
        "inversion_grid": inv.grid,
        "repeats": args.repeats,
        "warmup": args.warmup,
        **host_info(),
        "rows_per_step": {tag: r / n for tag, r in rows.items()},
        "calls_per_step": {tag: c / n for tag, c in calls.items()},
        "models": {tag: len(c.models) for tag, (_run, c) in cases.items()},
        "weights_mb": {tag: c.weight_bytes() / 2**20 for tag, (_run, c) in cases.items()},
    }
    res["load_average"] = {"start": list(load_start), "end": list(os.getloadavg())}
    for clock in CLOCKS:
        res[clock] = ratios(res, ks, {tag: statistics.median(r[clock]) for tag, r in rounds.items()})
        res[clock]["rounds_s"] = {tag: r[clock] for tag, r in rounds.items()}
    res["times_s"] = res["wall"]["times_s"]
    res["goals"] = goals(res, ks)
    report.print_flux_table(res)
    if args.json:
        print(json.dumps(res))


def measure(cases: dict, warmup: int, repeats: int):
    """Run every case once per round (``warmup`` untimed rounds, then ``repeats`` timed ones); returns each case's
    seconds per timed round on each clock (``{tag: {"wall": [...], "cpu": [...]}}``), its rows per run and its calls
    per run (ValueError when a case's rows change between runs)."""
    rounds = {tag: {clock: [] for clock in CLOCKS} for tag in cases}
    rows = {tag: set() for tag in cases}
    calls = {tag: set() for tag in cases}
    for r in range(warmup + repeats):
        for tag, (run, counter) in cases.items():
            counter.rows.clear()
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            rows[tag].add(sum(counter.rows))
            calls[tag].add(len(counter.rows))
            if r >= warmup:
                rounds[tag]["wall"].append(wall)
                rounds[tag]["cpu"].append(cpu)
    for tag in cases:
        if len(rows[tag]) != 1 or len(calls[tag]) != 1:
            raise ValueError(f"{tag}: the rows per run changed between runs: {sorted(rows[tag])}")
    return rounds, {tag: rows[tag].pop() for tag in cases}, {tag: calls[tag].pop() for tag in cases}


def ratios(res: dict, ks: list[int], t: dict) -> dict:
    """For the median seconds ``t`` of one clock: each case's time over plain's, over (its rows x plain's time per
    row), and the copy design's over DiffStyler's."""
    n = res["steps"]
    per_row = t["plain"] / (res["rows_per_step"]["plain"] * n)
    sampling = [tag for tag in t if tag != "inversion"]
    return {
        "times_s": t,
        "plain_s_per_row": per_row,
        "x_plain": {tag: t[tag] / t["plain"] for tag in sampling},
        "x_rows": {tag: t[tag] / (res["rows_per_step"][tag] * n * per_row) for tag in sampling},
        "copies_over_diffstyler": {str(k): t[f"copies_k{k}"] / t[f"diffstyler_k{k}"] for k in ks},
    }


def goals(res: dict, ks: list[int]) -> list[dict]:
    """The issue's goals, each on both clocks where it is a time: value, target, met."""
    out = []
    for clock in CLOCKS:
        for k in ks:
            x = res[clock]["x_rows"][f"diffstyler_k{k}"]
            out.append(
                {
                    "goal": f"DiffStyler k={k} within 10% of rows x plain time per row ({clock} time)",
                    "clock": clock,
                    "value": x,
                    "target": f"{1 - GOAL_ROWS:.2f}..{1 + GOAL_ROWS:.2f}",
                    "met": abs(x - 1.0) <= GOAL_ROWS,
                }
            )
        for k in [k for k in ks if k in GOAL_COPIES]:
            x = res[clock]["copies_over_diffstyler"][str(k)]
            out.append(
                {
                    "goal": f"copy-per-style design k={k} at least {GOAL_COPIES[k]}x slower than DiffStyler "
                    f"({clock} time)",
                    "clock": clock,
                    "value": x,
                    "target": f">= {GOAL_COPIES[k]}",
                    "met": x >= GOAL_COPIES[k],
                }
            )
    ours = [tag for tag in res["models"] if tag.startswith(("diffstyler_k", "model_bg_k"))]
    models = sorted({res["models"][tag] for tag in ours})
    weights = sorted({round(res["weights_mb"][tag], 6) for tag in ours})
    out.append(
        {
            "goal": "DiffStyler: one model in memory whatever k",
            "clock": None,
            "value": f"{models} model(s), {weights} MB of weights",
            "target": "1 model, the same bytes for every k",
            "met": models == [1] and len(weights) == 1,
        }
    )
    return out


if __name__ == "__main__":
    main()
