#!/usr/bin/env bash
# Prepares, on this machine, what bench/device_check.sh needs on a lent GPU machine (no registry there):
#   .comfy/  ComfyUI v0.8.0 without .git, tests and custom nodes (17 MB)
#   .whl/    the wheels of ComfyUI's requirements the device image lacks (torchsde, trampoline, av; 35 MB)
# Both are ignored by git (.git/info/exclude) and travel with the device tool's carry: [".comfy", ".whl"].
# Then: run(command="bash bench/device_check.sh", carry=[".comfy", ".whl"], timeout_s=560).
set -euo pipefail
cd "$(dirname "$0")/.."
COMFY=${COMFYUI_PATH:-$HOME/ComfyUI}
for d in /.comfy/ /.whl/; do grep -qxF "$d" .git/info/exclude || echo "$d" >> .git/info/exclude; done
if [ ! -f .comfy/main.py ]; then
  mkdir -p .comfy
  (cd "$COMFY" && tar cf - --exclude=./.git --exclude=./tests --exclude=./tests-unit --exclude='./custom_nodes/*' .) \
    | tar xf - -C .comfy
fi
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  torchsde==0.2.6 trampoline==0.1.2 av==18.1.0
du -sh .comfy .whl
