#!/usr/bin/env bash
# Issue #7's GPU figures in one device call (bench/device_stage.sh prepares the carry here first):
#   run(command="bash bench/device_check.sh", carry=[".comfy", ".whl"], timeout_s=560)
# Each bench has its own time limit so that one overrun leaves the others' results. Logs and the JSON lines
# land in $OUT (the device tool brings them back); the table is in each .log.
set -uo pipefail
OUT=${OUT:-/tmp/diffstyler-device}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "FAIL: wheels in .whl/ (run bench/device_stage.sh here and carry .whl)"; exit 1; }
[ -f .comfy/main.py ] || { echo "FAIL: no .comfy/ (run bench/device_stage.sh here and carry .comfy)"; exit 1; }
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 COMFYUI_PATH=$PWD/.comfy YOLO_OFFLINE=True YOLO_AUTOINSTALL=False
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
git log -1 --format='commit %h %s' 2>/dev/null | tee -a "$OUT/gpu.txt"
bench() {  # name, seconds, script args...
  local name=$1 limit=$2
  shift 2
  echo "== $name: python3 $* (limit ${limit}s)"
  timeout "$limit" python3 "$@" > "$OUT/$name.log" 2>&1
  echo "rc=$?" >> "$OUT/$name.log"
  grep -v -E 'WARNING|it/s\]|s/it\]' "$OUT/$name.log" | tail -n 25
}
# about 8 minutes in all (the H100 of session 1 ran plain sampling at 0.05 s a step; most of the time is building
# the random-weight UNets and their copies), inside one call of at most 10 minutes
bench bench256 230 bench/run.py --size 256 --kernels --json
bench bench512 190 bench/run.py --size 512 --json
bench attention512 80 bench/attention_memory.py --size 512 --attention pytorch
