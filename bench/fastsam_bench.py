"""FastSAM Mask cost: milliseconds per 1024-pixel image at imgsz 1024, FastSAM-s architecture, random weights.

Measured side by side in one run, on one predictor:

- ``ultralytics``: the bare ultralytics FastSAM predictor call on a BGR uint8 array (the floor);
- ``detect``: the pack's ``adapters.fastsam_model.detect`` (tensor -> array conversion, masks to bool on the CPU);
- ``node``: the whole FastSAM Mask node (``segment`` with device placement, selection, preview, UI images).

A random YOLOv8s-seg detects nothing, which would leave out the per-detection mask work. The ``dense``
rows therefore use the test models' head-bias trick (nodes/harness/tiny_fastsam.py): every anchor
scores 0.88 and a few hundred masks come out, about what FastSAM finds in a busy photo. Weights are random,
so only timings mean anything here. Nothing is downloaded; files go to a temporary folder.

    python bench/fastsam_bench.py [--repeats 5] [--warmup 2] [--size 1024] [--cpu] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import common


def setup_comfy(cpu: bool, temp: Path):
    """ComfyUI and the pack via bench/common.py, with FastSAM and temp folders in ``temp``."""
    common.setup(cpu)
    import folder_paths

    folder_paths.set_temp_directory(str(temp / "temp"))
    folder_paths.add_model_folder_path("fastsam", str(temp / "fastsam"), is_default=True)


def timed(fn, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--size", type=int, default=1024, help="square test image side (pixels)")
    ap.add_argument("--imgsz", type=int, default=1024)
    ap.add_argument("--cpu", action="store_true", help="force ComfyUI's CPU mode (the default without CUDA)")
    ap.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="fastsam_bench_") as tmp:
        tmp_path = Path(tmp)
        os.environ.setdefault("YOLO_CONFIG_DIR", str(tmp_path / "yolo"))
        (tmp_path / "fastsam").mkdir()
        (tmp_path / "temp").mkdir()
        setup_comfy(args.cpu, tmp_path)

        import comfy.model_management
        import numpy as np
        import torch
        import ultralytics
        from comfyui_diffstyler.nodes import segment
        from comfyui_diffstyler.nodes.adapters import fastsam_model as fastsam
        from comfyui_diffstyler.nodes.core.fastsam_images import to_uint8
        from comfyui_diffstyler.nodes.core.fastsam_prompts import MaskRequest
        from comfyui_diffstyler.nodes.harness import tiny_fastsam as ff

        fastsam.import_ultralytics()
        ff.save_fastsam(tmp_path / "fastsam" / "random.pt", seed=0, class_bias=None)
        ff.save_fastsam(tmp_path / "fastsam" / "dense.pt", seed=0, class_bias=2.0)
        image = ff.scene_tensor(1, args.size, args.size)
        bgr = np.ascontiguousarray(to_uint8(image[0])[..., ::-1])
        device = comfy.model_management.get_torch_device()
        rows = []
        for label, name in (("random", "random.pt"), ("dense", "dense.pt")):
            model = fastsam.load_model(name)
            request = MaskRequest(imgsz=args.imgsz)
            with fastsam.on_compute_device(model):
                n = int(fastsam.detect(model, image[0], args.imgsz, 0.4, 0.9).shape[0])

                def bare(model=model):
                    model.predictor(source=bgr, stream=False)
                    if device.type == "cuda":
                        torch.cuda.synchronize()

                def detect(model=model):
                    fastsam.detect(model, image[0], args.imgsz, request.conf, request.iou)

                t_bare = timed(bare, args.repeats, args.warmup)
                t_detect = timed(detect, args.repeats, args.warmup)

            def node(model=model):
                segment.DiffStylerFastSAMMask.execute(
                    image, model, "everything", "", "", "", args.imgsz, 0.4, 0.9, "union", 0, "none"
                )

            t_node = timed(node, args.repeats, args.warmup)
            base = statistics.median(t_bare)
            for case, times in (("ultralytics", t_bare), ("detect", t_detect), ("node", t_node)):
                med = statistics.median(times)
                rows.append(
                    {
                        "model": label,
                        "case": case,
                        "detections": n,
                        "median_ms": round(med, 1),
                        "min_ms": round(min(times), 1),
                        "ratio_to_ultralytics": round(med / base, 3),
                    }
                )

        title = (
            f"FastSAM-s (yolov8s-seg, random weights), {args.size}x{args.size} image, imgsz {args.imgsz}, "
            f"device {device}, torch {torch.__version__}, ultralytics {ultralytics.__version__}, "
            f"median of {args.repeats} after {args.warmup} warm-up"
        )
        print(title)
        print(f"{'model':<8}{'case':<13}{'detections':>11}{'median ms':>11}{'min ms':>9}{'x bare':>8}")
        for r in rows:
            print(
                f"{r['model']:<8}{r['case']:<13}{r['detections']:>11}{r['median_ms']:>11.1f}{r['min_ms']:>9.1f}"
                f"{r['ratio_to_ultralytics']:>8.2f}"
            )
        if args.json:
            print(
                json.dumps(
                    {
                        "bench": "fastsam",
                        "size": args.size,
                        "imgsz": args.imgsz,
                        "device": str(device),
                        "torch": torch.__version__,
                        "ultralytics": ultralytics.__version__,
                        "threads": torch.get_num_threads(),
                        "rows": rows,
                    }
                )
            )


if __name__ == "__main__":
    main()
