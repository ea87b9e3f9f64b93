"""bench/run.py's table: one row per case (seconds, x plain, rows per step, peak memory, kernels), then the
speed-ups, the inversion's cost and the content cache's size."""

from __future__ import annotations


def print_table(res: dict, args, ks: list[int], n: int, torch_version: str, threads: int) -> None:
    """Print the results ``res`` of bench/run.py (``n`` sampling steps) as the README quotes them."""
    print(
        f"\nDiffStyler bench: {res['device']}, SD1.5 UNet (random weights, model_channels {args.channels}), "
        f"{args.size}x{args.size}, "
        f"{n} DDIM steps, cfg {args.cfg}, {res['attention']}, MALLOC_MMAP_THRESHOLD_ "
        f"{res['malloc_mmap_threshold'] or 'unset'}, median of {args.repeats} after {args.warmup} "
        f"warm-up run(s), torch "
        f"{torch_version}, {threads} CPU thread(s)"
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


FLUX_ROWS = (
    ("plain", "plain Flux-dev (KSampler, euler, cfg 1)"),
    ("diffstyler_k{k}", "diffstyler k={k} (defaults)"),
    ("model_bg_k{k}", "  background model k={k}"),
    ("copies_k{k}", "copy per style k={k} ({m} models)"),
)


def print_flux_table(res: dict) -> None:
    """Print the results ``res`` of bench/flux_cost.py: one line per case (wall and CPU seconds, x plain, rows and
    calls per step, x rows on both clocks, models and their weights), the inversion, the speed-ups and the goals as
    pass/miss lines."""
    load = res["load_average"]
    print(
        f"\nDiffStyler Flux bench: tiny Flux.1-dev (random weights) hidden {res['hidden']}, {res['double_blocks']} "
        f"double + {res['single_blocks']} single blocks, {res['size']} px ({res['tokens']} image tokens), "
        f"{res['text_tokens']} text tokens, {res['steps']} steps, LoRA rank {res['lora_rank']}, ComfyUI "
        f"{res['comfyui']}, torch {res['torch']}, {res['threads']} thread(s), {res['cpu_model']}; median of "
        f"{res['repeats']} round(s) after {res['warmup']} warm-up round(s); load average at start "
        f"{'/'.join(f'{v:.2f}' for v in load['start'])}, at end {'/'.join(f'{v:.2f}' for v in load['end'])}"
    )
    print(
        f"{'run':<40}{'wall s':>8}{'cpu s':>8}{'x plain':>9}{'rows/step':>11}{'calls/step':>12}{'x rows':>8}"
        f"{'(cpu)':>7}{'models':>8}{'weights MB':>12}"
    )
    wall, cpu = res["wall"], res["cpu"]
    for k in [None, *res["ks"]]:
        for tag, name in FLUX_ROWS:
            if (k is None) != (tag == "plain"):
                continue
            tag = tag.format(k=k)
            name = name.format(k=k, m=res["models"][tag])
            print(
                f"{name:<40}{wall['times_s'][tag]:>8.3f}{cpu['times_s'][tag]:>8.3f}{wall['x_plain'][tag]:>9.2f}"
                f"{res['rows_per_step'][tag]:>11.1f}{res['calls_per_step'][tag]:>12.1f}{wall['x_rows'][tag]:>8.2f}"
                f"{cpu['x_rows'][tag]:>7.2f}{res['models'][tag]:>8d}{res['weights_mb'][tag]:>12.1f}"
            )
    print(
        f"inversion (DDIM Inversion node, {res['inversion_grid']} grid): {wall['times_s']['inversion']:.3f} s wall, "
        f"{cpu['times_s']['inversion']:.3f} s CPU, {res['rows_per_step']['inversion']:.1f} rows per step; plain: "
        f"{wall['plain_s_per_row'] * 1e3:.1f} ms per row wall, {cpu['plain_s_per_row'] * 1e3:.1f} ms CPU; each "
        f"style's LoRA {res['lora_mb_per_style']:.2f} MB"
    )
    for k in wall["copies_over_diffstyler"]:
        print(
            f"speed-up over the copy-per-style design, k={k}: {wall['copies_over_diffstyler'][k]:.2f}x wall, "
            f"{cpu['copies_over_diffstyler'][k]:.2f}x CPU"
        )
    for goal in res["goals"]:
        value = goal["value"] if isinstance(goal["value"], str) else f"{goal['value']:.2f}"
        print(f"goal {'pass' if goal['met'] else 'miss'}: {goal['goal']}: {value} (target {goal['target']})")
