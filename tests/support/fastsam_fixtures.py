"""FastSAM test helpers: a blocked network, a safetensors copy of the weights, a file snapshot, point prompts.

The random-weight FastSAM-s, the tiny CLIP and the test scene are the harness's (``nodes/harness/tiny_fastsam.py``:
the runner's demo mode and the FastSAM bench use them too); the tests reach them here as ``ff.*``.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from comfyui_diffstyler.nodes.harness.tiny_fastsam import (  # noqa: F401 - re-exported for the tests
    build_fastsam_s,
    save_fastsam,
    save_tiny_clip,
    scene,
    scene_tensor,
)

NETWORK_CALLS = ("connect", "connect_ex")


class NetworkBlockedError(OSError):
    pass


def block_network(mp) -> None:
    """Make every outgoing connection and DNS lookup fail (``mp`` is a pytest MonkeyPatch)."""

    def refuse(*args, **kwargs):
        raise NetworkBlockedError(f"network access attempted in a test: {args[1:] if len(args) > 1 else args}")

    for name in NETWORK_CALLS:
        mp.setattr(socket.socket, name, refuse)
    mp.setattr(socket, "create_connection", refuse)
    mp.setattr(socket, "getaddrinfo", refuse)


def save_fastsam_safetensors(path: Path, net) -> None:
    """The same weights as a plain safetensors state dict (the pickle-free format the loader also accepts)."""
    import safetensors.torch

    sd = {k: v.detach().float().contiguous() for k, v in net.state_dict().items()}
    safetensors.torch.save_file(sd, str(path))


def snapshot(root: Path, skip_dirs: tuple[str, ...] = ("__pycache__", ".git", ".ruff_cache")) -> set[str]:
    """Relative paths of every file under ``root`` (skipping caches Python itself writes)."""
    out: set[str] = set()
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skip_dirs]
        rel = os.path.relpath(dirpath, root)
        out.update(os.path.normpath(os.path.join(rel, f)) for f in filenames)
    return out


def points_json(*points: tuple[int, int, int]) -> str:
    return json.dumps([{"x": x, "y": y, "label": label} for x, y, label in points])
