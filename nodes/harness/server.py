"""A real ComfyUI server (``main.py --cpu``) on a free loopback port with the pack in ``custom_nodes/``.

The tests' server fixtures and the dynamic VRAM check (bench/) start one. Besides the pack, ``custom_nodes/`` holds
the tiny-model node pack (``nodes/harness/tiny_pack``: the Tiny VAE node the tiny-model graphs decode with).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .demo import TINY_PACK
from .host import PACK_ROOT

PACK_DIR_NAME = "comfyui-diffstyler"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    base: Path
    proc: subprocess.Popen
    log: Path

    def get(self, path: str, timeout: float = 30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            data = r.read()
            return json.loads(data) if r.headers.get_content_type() == "application/json" else data

    def post(self, path: str, payload: dict, timeout: float = 30):
        req = urllib.request.Request(
            self.url + path, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def wait_history(self, prompt_id: str, timeout: float = 300) -> dict:
        end = time.time() + timeout
        while time.time() < end:
            h = self.get(f"/history/{prompt_id}")
            if prompt_id in h and h[prompt_id].get("status", {}).get("completed") is not None:
                return h[prompt_id]
            if self.proc.poll() is not None:
                raise RuntimeError("ComfyUI exited:\n" + self.log.read_text()[-4000:])
            time.sleep(0.3)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout}s:\n" + self.log.read_text()[-4000:])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def start(
    comfy_root: Path,
    base: Path,
    timeout: float = 240,
    extra_args: tuple = (),
    cpu: bool = True,
) -> Server:
    """Start ``main.py --cpu`` (``cpu=False``: on ComfyUI's default device) with ``--base-directory base`` holding the
    pack and the tiny-model node pack as links; ``extra_args`` go to main.py as they are."""
    custom = base / "custom_nodes"
    custom.mkdir(parents=True, exist_ok=True)
    for name, target in ((PACK_DIR_NAME, PACK_ROOT), (TINY_PACK, PACK_ROOT / "nodes" / "harness" / "tiny_pack")):
        link = custom / name
        if not link.exists():
            link.symlink_to(target, target_is_directory=True)
    for d in ("models/checkpoints", "models/loras", "models/fastsam", "input", "output", "temp", "user"):
        (base / d).mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = base / "server.log"
    env = dict(os.environ)
    env.setdefault("YOLO_OFFLINE", "True")
    env.setdefault("YOLO_AUTOINSTALL", "False")
    cmd = [
        sys.executable,
        "main.py",
        *(("--cpu",) if cpu else ()),
        "--listen",
        "127.0.0.1",
        "--port",
        str(port),
        "--base-directory",
        str(base),
        "--disable-auto-launch",
        "--dont-print-server",
        *extra_args,
    ]
    proc = subprocess.Popen(cmd, cwd=str(comfy_root), stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    server = Server(url=f"http://127.0.0.1:{port}", base=base, proc=proc, log=log)
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError("ComfyUI exited during start-up:\n" + log.read_text()[-4000:])
        try:
            server.get("/system_stats", timeout=2)
            return server
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.5)
    server.stop()
    raise TimeoutError("ComfyUI did not start in time:\n" + log.read_text()[-4000:])
