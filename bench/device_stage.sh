#!/usr/bin/env bash
# Prepares, on this machine, what bench/device_check.sh needs on a lent GPU machine (no registry there):
#   .comfy/  ComfyUI v0.8.0 without .git, tests and custom nodes (17 MB)
#   .whl/    the wheels of ComfyUI's requirements the device image lacks (torchsde, trampoline, av; 35 MB)
#   .comfy33/, .whl33/  the same for ComfyUI v0.33.0 (~/ComfyUI-v0.33; its comfy-aimdo for dynamic VRAM; about 60 MB
#            together)
# All are ignored by git (.git/info/exclude) and travel with the device tool's carry: [".comfy", ".whl"], then
# [".comfy33", ".whl33"] for the dynamic VRAM check.
# Then: run(command="bash bench/device_check.sh", carry=[".comfy", ".whl"], timeout_s=560) and
#       run(command="bash bench/device_check.sh dynamic", carry=[".comfy33", ".whl33"], timeout_s=400).
set -euo pipefail
cd "$(dirname "$0")/.."
COMFY=${COMFYUI_PATH:-$HOME/ComfyUI}
for d in /.comfy/ /.whl/ /.comfy33/ /.whl33/; do grep -qxF "$d" .git/info/exclude || echo "$d" >> .git/info/exclude; done
if [ ! -f .comfy/main.py ]; then
  mkdir -p .comfy
  (cd "$COMFY" && tar cf - --exclude=./.git --exclude=./tests --exclude=./tests-unit --exclude='./custom_nodes/*' .) \
    | tar xf - -C .comfy
fi
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  torchsde==0.2.6 trampoline==0.1.2 av==18.1.0
COMFY33=${COMFYUI_V033_PATH:-$HOME/ComfyUI-v0.33}
if [ ! -f .comfy33/main.py ]; then
  mkdir -p .comfy33
  (cd "$COMFY33" && tar cf - --exclude=./.git --exclude=./tests --exclude=./tests-unit --exclude='./custom_nodes/*' \
    --exclude=./blueprints --exclude=./comfy_api_nodes .) | tar xf - -C .comfy33
  mkdir -p .comfy33/comfy_api_nodes && touch .comfy33/comfy_api_nodes/__init__.py  # API nodes are not loaded
fi
mkdir -p .whl33
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl33 \
  torchsde==0.2.6 trampoline==0.1.2 av==18.1.0 comfy-aimdo==0.4.13 blake3 simpleeval
du -sh .comfy .whl .comfy33 .whl33
