"""Dynamic VRAM check (issue #19; needs an NVIDIA GPU and ComfyUI v0.12 or newer, e.g. v0.33.0).

ComfyUI's ``main.py`` turns dynamic VRAM loading (``ModelPatcherDynamic``) on for NVIDIA GPUs; the pack's Injector
and Train Style LoRA then work on ComfyUI's non-dynamic delegate of the MODEL (nodes/adapters/dynamic_vram.py). This
runs the same graphs on two ``main.py`` servers on the GPU, one as started by default (dynamic) and one with
``--disable-dynamic-vram`` (classic), and compares what they wrote:

* the two-style DiffStyler graph (latent saved with SaveLatent);
* the same graph with its negative prompt from a hooked CLIP (CreateHookLora + SetClipHooks: the guider's delegate
  swap and the inversion fingerprint);
* Train Style LoRA, 6 seeded steps (the LoRA file it saves);
* a plain KSampler on the checkpoint's MODEL after the DiffStyler graphs (the input MODEL left as it was).

It fails when the default server did not load dynamically (its log lacks "prepared for dynamic VRAM loading"),
when the pack did not log that it took the non-dynamic copy, or when any output differs by more than ``--tol``
(relative to the output's largest magnitude). ``--cpu`` runs the same plumbing on the CPU (both servers classic).

    COMFYUI_PATH=.comfy33 python3 bench/dynamic_vram_check.py --out $OUT/dynamic_vram
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import common
from comfyui_diffstyler.nodes.harness import demo, graphs, host
from comfyui_diffstyler.nodes.harness import server as cs

STEPS = 4


def check_graphs(checkpoint: str, mode: str) -> dict[str, dict]:
    """API prompts by name; each writes its result under a name that holds ``mode``."""

    def styled(hooked: bool) -> dict:
        p = graphs.two_style_prompt(checkpoint, steps=STEPS)
        p["17"] = {"class_type": "SaveLatent", "inputs": {"samples": ["15", 0], "filename_prefix": ""}}
        return graphs.hook_negative(p) if hooked else p

    train = graphs.train_lora_prompt(
        checkpoint, graphs.CONTENT_IMAGE, f"dynamic_check_{mode}", steps=6, learning_rate=1e-3, rank=4
    )
    plain = graphs.core_ksampler_prompt(checkpoint)  # its KSampler is "k6"; save the latent instead of the preview
    plain["k8"] = {"class_type": "SaveLatent", "inputs": {"samples": ["k6", 0], "filename_prefix": ""}}
    del plain["k7"]
    out = {"styled": styled(False), "hooked": styled(True), "train": train, "ksampler_after": plain}
    for name, p in out.items():
        for node in p.values():
            if node["class_type"] == "SaveLatent":
                node["inputs"]["filename_prefix"] = f"dynamic_check_{mode}_{name}"
    return out


def run_server(mode: str, base: Path, cpu: bool, checkpoint: str) -> str:
    extra = ("--disable-dynamic-vram",) if mode == "classic" else ()
    server = cs.start(common.comfyui_root(), base, extra_args=extra, cpu=cpu)
    try:
        for name, prompt in check_graphs(checkpoint, mode).items():
            status, body = server.post("/prompt", {"prompt": prompt, "client_id": "dynamic-check"})
            if status != 200:
                raise SystemExit(f"FAIL: {mode} {name}: /prompt answered {status}: {json.dumps(body)[:2000]}")
            hist = server.wait_history(body["prompt_id"], timeout=600)
            if hist["status"].get("status_str") != "success":
                raise SystemExit(f"FAIL: {mode} {name}: {json.dumps(hist['status'])[:3000]}")
            print(f"{mode}: {name} ran", flush=True)
    finally:
        server.stop()
    return server.log.read_text(errors="replace")


def compare(base: Path, tol: float) -> list[str]:
    import safetensors.torch

    problems = []
    out = base / "output"
    for name in ("styled", "hooked", "ksampler_after"):
        files = {m: sorted(out.glob(f"dynamic_check_{m}_{name}*.latent")) for m in ("dynamic", "classic")}
        if not all(files.values()):
            problems.append(f"{name}: a latent is missing ({files})")
            continue
        a, b = (safetensors.torch.load_file(str(files[m][-1]))["latent_tensor"].float() for m in files)
        rel = float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
        print(f"{name}: max |dynamic - classic| / max |classic| = {rel:.3e}")
        if not rel <= tol:
            problems.append(f"{name}: dynamic and classic differ by {rel:.3e} (> {tol})")
    loras = {m: base / "models" / "loras" / f"dynamic_check_{m}.safetensors" for m in ("dynamic", "classic")}
    if all(p.is_file() for p in loras.values()):
        a, b = (safetensors.torch.load_file(str(p)) for p in loras.values())
        worst = max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-12)) for k in b if k in a)
        print(f"train: {len(b)} tensors, worst relative difference {worst:.3e}")
        if a.keys() != b.keys() or not worst <= tol:
            problems.append(f"train: the LoRA files differ (keys equal: {a.keys() == b.keys()}, worst {worst:.3e})")
    else:
        problems.append(f"train: a LoRA file is missing ({loras})")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="folder for the logs (default: a temporary folder)")
    ap.add_argument("--tol", type=float, default=2e-3)
    ap.add_argument("--cpu", action="store_true", help="run the plumbing on the CPU (no dynamic VRAM there)")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="diffstyler_dynamic_"))
    home = host.setup(common.comfyui_root(), base)  # in-process ComfyUI on the CPU: the tiny checkpoint, LoRAs
    tiny = demo.tiny_models(home)
    graphs.write_two_style_inputs(home, tiny.model)
    out = args.out or base
    out.mkdir(parents=True, exist_ok=True)
    problems = []
    for mode in ("dynamic", "classic"):
        t0 = time.time()
        log = run_server(mode, base, args.cpu, tiny.checkpoint)
        (out / f"server_{mode}.log").write_text(log)
        print(f"{mode}: {time.time() - t0:.1f} s")
        dynamic_on = "prepared for dynamic VRAM loading" in log
        took_copy = "non-dynamic copy of the model" in log
        print(f"{mode}: dynamic loading seen: {dynamic_on}; pack took the non-dynamic copy: {took_copy}")
        if mode == "dynamic" and not args.cpu and not (dynamic_on and took_copy):
            problems.append(f"dynamic: loading seen {dynamic_on}, non-dynamic copy logged {took_copy} (both expected)")
        if mode == "classic" and (dynamic_on or took_copy):
            problems.append("classic: dynamic loading happened under --disable-dynamic-vram")
    problems += compare(base, args.tol)
    for p in problems:
        print("FAIL:", p)
    print("dynamic VRAM check:", "FAIL" if problems else "OK")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
