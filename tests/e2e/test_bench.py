"""bench/run.py end to end on a narrow SD1.5 UNet (every layer, little arithmetic): the table and the JSON line; its
Flux section on a very small Flux (rows, calls and models counted).

The full-size numbers in docs/performance.md come from the same script; this keeps the
script, its JSON contract (issue: performance) and its row accounting from rotting.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import conftest
import pytest

ROOT = Path(__file__).resolve().parents[2]
# each test runs a bench script in its own Python; the SD ones take minutes (slow), the Flux one ~10 s


@pytest.mark.slow
def test_bench_prints_the_table_and_the_json_contract(tmp_path):
    env = dict(os.environ, COMFYUI_PATH=str(conftest.require_comfyui()))
    cmd = [sys.executable, str(ROOT / "bench" / "run.py"), "--cpu", "--channels", "32", "--size", "64"]
    cmd += ["--steps", "4", "--repeats", "1", "--warmup", "0", "--ks", "1,3", "--attention", "pytorch", "--kernels"]
    cmd += ["--json"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    res = json.loads(lines[-1])
    for key in ("size", "steps", "plain_s", "diffstyler_s", "reference_s", "diffstyler_fast_s", "rows_per_step"):
        assert key in res, key
    for key in ("peak_rss_mb", "inversion_s", "rerun_inversion_s"):
        assert key in res, key
    assert res["size"] == 64 and res["steps"] == 4 and res["model_channels"] == 32
    assert res["attention"] == "attention_pytorch", "--attention pytorch must pick ComfyUI's SDPA backend"
    assert "malloc_mmap_threshold" in res
    assert set(res["diffstyler_s"]) == set(res["reference_s"]) == set(res["diffstyler_fast_s"]) == {"1", "3"}
    times = [res["plain_s"], *res["diffstyler_s"].values(), *res["reference_s"].values()]
    assert all(t > 0 for t in times)
    rows = res["rows_per_step"]
    assert rows["plain"] == 2 and rows["reference_k1"] == 6 and rows["reference_k3"] == 12
    assert rows["fast_k1"] == rows["fast_k3"] == 2 and rows["cache_k3"] == 6
    # a style on the first half of the steps runs its rows there only, then the base branch carries its region on
    # (its LoRA-free content row, cond, uncond: 3 rows on each step after the end, issue 25); a MODEL style runs the
    # defaults' rows, in its own UNet's call
    assert rows["half_k1"] == 3, rows["half_k1"]
    assert rows["model_style_k1"] == rows["diffstyler_k1"]
    # one content row per style, only inside the windows (2 of the 4 steps here): k=3 runs three times k=1's
    assert 2 < rows["diffstyler_k1"] < 3 and abs((rows["diffstyler_k3"] - 6) - 3 * (rows["diffstyler_k1"] - 2)) < 1e-9
    # the re-run on the per-style content cache: no content row, 2 rows per style per step
    assert rows["rerun_k1"] == 2 and rows["rerun_k3"] == 6
    assert set(res["diffstyler_rerun_s"]) == set(res["content_cache_mb"]) == {"1", "3"}
    assert all(v > 0 for v in res["diffstyler_rerun_s"].values()) and res["content_cache_mb"]["3"] > 0
    assert abs(res["content_cache_mb_per_style_step"]["3"] - res["content_cache_mb_per_style_step"]["1"]) < 1e-9
    assert all(v > 0 for v in res["peak_rss_mb"].values())
    assert res["rerun_inversion_s"] < res["inversion_s"], "a re-run with unchanged content must not re-invert"
    kern, syncs = res["kernels_per_step"], res["syncs_per_step"]
    assert set(kern) == set(syncs) == set(rows), "--kernels counts every case"
    # one batched UNet call per step: k=3 launches far fewer kernels than the reference's four UNet copies,
    # and only a few more than k=1 (the per-cond bookkeeping and the fusion, not per-layer work)
    assert kern["plain"] < kern["diffstyler_k1"] < kern["reference_k1"]
    assert kern["diffstyler_k3"] < 1.1 * kern["diffstyler_k1"] and kern["diffstyler_k3"] < kern["reference_k3"] / 2
    table = "\n".join(lines)
    labels = ("plain DDIM", "diffstyler k=3", "reference k=3", "+ cache + feat.fusion", "speed-up over", "kernels")
    for label in (*labels, "re-run (content cache) k=3", "per-style content cache after k=3"):
        assert label in table, label
    assert list(tmp_path.iterdir()) == [], "the bench writes nothing"


def test_flux_section_counts_the_rows_of_each_design(tmp_path):
    """bench/run.py --family flux on a very small Flux: the rows and calls per step, counted by the bench's wrapper,
    the models each design holds, and the goal lines (times are printed, never checked)."""
    env = dict(os.environ, COMFYUI_PATH=str(conftest.require_comfyui()))
    cmd = [sys.executable, str(ROOT / "bench" / "run.py"), "--family", "flux", "--hidden", "128", "--double", "1"]
    cmd += ["--single", "1", "--size", "64", "--steps", "4", "--text-tokens", "16", "--repeats", "1", "--warmup", "0"]
    cmd += ["--json"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    res = json.loads(lines[-1])
    assert res["family"] == "flux" and res["steps"] == 4 and res["tokens"] == 16 and res["ks"] == [1, 3]
    for clock in ("wall", "cpu"):
        assert all(t > 0 for t in res[clock]["times_s"].values()), clock
        assert set(res[clock]["copies_over_diffstyler"]) == {"1", "3"}, clock
    assert len(res["load_average"]["start"]) == 3 and res["threads"] == 1
    rows, calls = res["rows_per_step"], res["calls_per_step"]
    # plain Flux-dev at cfg 1 and the flow inversion: 1 row per step
    assert rows["plain"] == rows["inversion"] == 1
    # the defaults: [content, cond] per style while the windows are open (2 of the 4 steps), [cond] after, all in
    # one call per step; the model background adds the base branch's 2 rows on every step
    assert rows["diffstyler_k1"] == (2 * 2 + 1 * 2) / 4 and rows["diffstyler_k3"] == (6 * 2 + 3 * 2) / 4
    assert rows["model_bg_k1"] == rows["diffstyler_k1"] + 2 and rows["model_bg_k3"] == rows["diffstyler_k3"] + 2
    assert calls["diffstyler_k1"] == calls["diffstyler_k3"] == calls["model_bg_k3"] == 1
    # a model per style and the base, each running [content, cond] in its own call every step
    assert rows["copies_k1"] == 4 and rows["copies_k3"] == 8
    assert calls["copies_k1"] == 2 and calls["copies_k3"] == 4
    models, weights = res["models"], res["weights_mb"]
    assert models["diffstyler_k1"] == models["diffstyler_k3"] == models["model_bg_k3"] == 1
    assert models["copies_k1"] == 2 and models["copies_k3"] == 4
    assert weights["diffstyler_k3"] == weights["diffstyler_k1"] == weights["plain"] > 0
    assert abs(weights["copies_k3"] - 4 * weights["plain"]) < 1e-6
    goals = res["goals"]
    assert len(goals) == 2 * 4 + 1 and all(isinstance(g["met"], bool) for g in goals), "4 timed goals per clock"
    assert goals[-1]["met"], "one model in memory whatever k (counted, not timed)"
    table = "\n".join(lines)
    for label in ("plain Flux-dev", "diffstyler k=3", "copy per style k=3 (4 models)", "inversion (DDIM", "goal "):
        assert label in table, label
    assert list(tmp_path.iterdir()) == [], "the bench writes nothing"


@pytest.mark.slow
def test_attention_memory_runs_each_backend_in_its_own_process(tmp_path):
    env = dict(os.environ, COMFYUI_PATH=str(conftest.require_comfyui()))
    cmd = [sys.executable, str(ROOT / "bench" / "attention_memory.py"), "--cpu", "--channels", "32", "--size", "64"]
    cmd += ["--rows", "1,3", "--attention", "pytorch,sub_quad", "--json"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["size"] == 64 and res["model_channels"] == 32
    got = [(c["attention"], c["rows"]) for c in res["calls"]]
    assert got == [
        ("attention_pytorch", 1),
        ("attention_pytorch", 3),
        ("attention_sub_quad", 1),
        ("attention_sub_quad", 3),
    ]
    assert all(c["seconds"] > 0 and c["peak_mb"] >= c["base_mb"] > 0 for c in res["calls"])
    assert "x fewest rows" in proc.stdout
    assert list(tmp_path.iterdir()) == [], "the bench writes nothing"
