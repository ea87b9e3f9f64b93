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
