#!/usr/bin/env bash
# Issue #7's GPU figures in one device call (bench/device_stage.sh prepares the carry here first):
#   run(command="bash bench/device_check.sh", carry=[".comfy", ".whl"], timeout_s=560)
# Each bench has its own time limit so that one overrun leaves the others' results. Logs and the JSON lines
# land in $OUT (the device tool brings them back); the table is in each .log.
#
# Issue #19's dynamic VRAM check (ComfyUI v0.33.0, which loads models dynamically on NVIDIA GPUs) is a separate call,
# since both ComfyUI copies and their wheels do not fit one carry:
#   run(command="bash bench/device_check.sh dynamic", carry=[".comfy33", ".whl33"], timeout_s=400)
# It runs bench/dynamic_vram_check.py: the two-style graph, the same with a hooked negative prompt, Train Style LoRA
# and a plain KSampler afterwards, on main.py servers with dynamic VRAM on and off, and compares their outputs.
set -uo pipefail
OUT=${OUT:-/tmp/diffstyler-device}
mkdir -p "$OUT"
if [ "${1:-}" = dynamic ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site33 .whl33/*.whl \
    || { echo "FAIL: wheels in .whl33/ (run bench/device_stage.sh here and carry .whl33)"; exit 1; }
  [ -f .comfy33/main.py ] || { echo "FAIL: no .comfy33/ (run bench/device_stage.sh here and carry .comfy33)"; exit 1; }
  export PYTHONPATH=/tmp/site33 PYTHONUNBUFFERED=1 COMFYUI_PATH=$PWD/.comfy33 YOLO_OFFLINE=True YOLO_AUTOINSTALL=False
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
  timeout 360 python3 bench/dynamic_vram_check.py --out "$OUT/dynamic_vram" 2>&1 | tee "$OUT/dynamic_vram.log" \
    | grep -v -E 'WARNING|it/s\]|s/it\]' | tail -n 30
  exit "${PIPESTATUS[0]}"
fi
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
