"""Soak: the two-style DiffStyler graph N times in one process through one PromptExecutor.

Usage::

    python bench/soak.py --runs 50 --json

Each run is ``tests/comfy/test_core.py::test_graph_two_styles``' graph (tiny random-weight SD1.5-topology models
written into a temporary models folder by the pack's harness, ``nodes/harness``) with a different cfg and
second-style strength, so the second Style LoRA Loader (its LoRA file is read again), the Injector (a fresh patched
MODEL clone), the sampler, VAE Decode and Preview Image really run every time, while ComfyUI serves the checkpoint,
the inversion and the first style from its cache. A run counts as an error when the executor reports one or when
the sampler did not execute. RSS is read after ``gc.collect()``; the growth is measured from run 5 (the caches are
warm by then) to run N. It needs no pytest.

The last line is ``{"runs": N, "errors": E, "rss_growth_pct": G}``; with ``--json`` the line before it holds the
details (RSS per run in MB, seconds, sampler executions, network attempts). The network is refused (and every
attempt counted) for the whole soak.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import common
from comfyui_diffstyler.nodes.harness import demo, executor, graphs, host
from comfyui_diffstyler.nodes.harness.probes import NetworkGuard, rss_bytes

WARM_RUN = 5


def soak(runs: int, steps: int, base: Path, log_every: int = 0, threads: int = 1) -> dict:
    guard = NetworkGuard().install()
    try:
        home = host.setup(common.comfyui_root(), base)
        tiny = demo.tiny_models(home)
        if threads:
            import torch

            torch.set_num_threads(threads)
        logging.getLogger().setLevel(logging.WARNING)  # one INFO line per patch per run would flood the output
        graphs.write_two_style_inputs(home, tiny.model)
        ex = executor.make_executor()
        errors, sampled, rss, seconds, messages = 0, 0, [], [], []
        for i in range(runs):
            cfg, strength = round(4.0 + 0.05 * i, 2), round(0.5 + 0.01 * (i % 40), 2)
            prompt = graphs.two_style_prompt(tiny.checkpoint, steps=steps, cfg=cfg, strength2=strength)
            start = time.perf_counter()
            try:
                run = executor.run_prompt(ex, prompt, expect_success=False)
                ok = run.success and "15" in run.executed_nodes()
                sampled += "15" in run.executed_nodes()
                if not run.success:
                    messages.append(str(run.error)[:300])
            except Exception as e:  # noqa: BLE001 - a soak counts every failure and goes on
                ok = False
                messages.append(f"{type(e).__name__}: {e}"[:300])
            seconds.append(time.perf_counter() - start)
            errors += not ok
            rss.append(rss_bytes())
            if log_every and (i + 1) % log_every == 0:
                print(f"run {i + 1}/{runs}: {seconds[-1]:.2f} s, RSS {rss[-1] / 2**20:.1f} MB", flush=True)
    finally:
        guard.uninstall()
    ref = rss[min(WARM_RUN, len(rss)) - 1]
    growth = 100.0 * (rss[-1] - ref) / ref
    return {
        "runs": runs,
        "errors": errors,
        "rss_growth_pct": round(growth, 2),
        "sampler_executions": sampled,
        "threads": threads,
        "network_attempts": len(guard.attempts),
        "rss_mb": [round(r / 2**20, 1) for r in rss],
        "seconds_per_run": [round(s, 2) for s in seconds],
        "error_messages": messages[:5],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50, help="graph runs (default 50)")
    parser.add_argument("--steps", type=int, default=4, help="DDIM steps per run (default 4)")
    parser.add_argument("--json", action="store_true", help="print the details as JSON before the summary line")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: the tiny models run faster on one thread, and on a busy machine a "
        "multi-threaded OpenMP pool can spin for a time slice at every op; 0 keeps torch's default)",
    )
    parser.add_argument("--log-every", type=int, default=0, help="print a progress line every N runs")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs: expected at least 1")
    with tempfile.TemporaryDirectory(prefix="diffstyler_soak_") as tmp:
        result = soak(args.runs, args.steps, Path(tmp), args.log_every, args.threads)
    summary = {k: result[k] for k in ("runs", "errors", "rss_growth_pct")}
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['runs']} runs, {result['errors']} errors, {result['sampler_executions']} sampler executions, "
            f"RSS {result['rss_mb'][min(WARM_RUN, args.runs) - 1]} -> {result['rss_mb'][-1]} MB, "
            f"{sum(result['seconds_per_run']):.1f} s"
        )
    print(json.dumps(summary))
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
