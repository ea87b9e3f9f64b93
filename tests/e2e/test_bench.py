"""bench/run.py end to end on a narrow SD1.5 UNet (every layer, little arithmetic): the table and the JSON line.

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
pytestmark = pytest.mark.slow  # each test runs a bench script in its own Python


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
