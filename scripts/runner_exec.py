"""The headless runner's ComfyUI: imported in this process through the pack's harness, the workflow run through
ComfyUI's own executor, and what the user sees of it (one line per node, progress, skipped styles)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from comfyui_diffstyler.nodes.harness import demo, executor, host
from runner_checks import RunError, say

PACK_NAME = host.PACK_NAME


def import_comfyui(root: Path, gpu: bool, work: Path):
    """ComfyUI from ``root`` on the CPU (the GPU with ``gpu``) through the harness, its extra_model_paths.yaml read,
    its input/output/temp folders in ``work``; returns ``folder_paths``. No torch yet: named files are checked
    before the slow imports (:func:`load_nodes`)."""
    folder_paths = host.import_comfy(root, cpu=not gpu)
    import utils.extra_config

    extra = root / "extra_model_paths.yaml"
    if extra.is_file():
        utils.extra_config.load_extra_path_config(str(extra))
    host.set_directories(root, work)
    return folder_paths


def load_nodes(demo_mode: bool, verbose: bool) -> None:
    """ComfyUI's nodes and the pack's (and in demo mode the tiny VAE node); ComfyUI's own loading noise only with
    ``verbose`` (core extras that miss optional packages, torchaudio and such, log tracebacks: not our business)."""
    extensions = {demo.TINY_PACK: demo.tiny_nodes_extension()} if demo_mode else None
    host.load_nodes(extensions, quiet=not verbose)


class _OnlyUseful(logging.Filter):
    """Demo mode without -v: the pack's warnings and everyone's errors; not ComfyUI's notes about models and
    packages the demo does not use ("No VAE weights detected": the demo's VAE is a separate node)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or record.name.startswith(PACK_NAME)


def quiet_demo(work: Path, verbose: bool) -> None:
    """ultralytics keeps its settings file in the run's temporary folder and logs only errors; other loggers only
    errors (see _OnlyUseful)."""
    os.environ["YOLO_CONFIG_DIR"] = str(work / "ultralytics")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    if not verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_OnlyUseful())


class _SkippedStyles(logging.Handler):
    """Says on stdout, in the user's numbering, that the sampler skipped a style (its warning counts from 0)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.skipped: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "all-zero mask" in str(record.msg) and isinstance(record.args, tuple) and len(record.args) >= 2:
            index, name = record.args[0], record.args[1]
            number = str(int(index))  # the guider numbers styles from 1, as the user does
            if number not in self.skipped:
                self.skipped.append(number)
                say(
                    f"note: style {number} ({name}) is skipped: its mask is empty at the latent's size (1/8 of the "
                    "picture); give it a region (--points, --boxes, --text or --mask-everything)"
                )


def report_skipped_styles() -> list[str]:
    """Attach _SkippedStyles to the sampler's logger; returns its list of skipped style numbers (filled live)."""
    handler = _SkippedStyles()
    logger = logging.getLogger(f"{PACK_NAME}.nodes.adapters.guider")
    logger.addHandler(handler)
    for root_handler in logging.getLogger().handlers:  # said once, on stdout, in the user's numbering
        root_handler.addFilter(lambda r: not (r.name == logger.name and "all-zero mask" in str(r.msg)))
    return handler.skipped


def execute(prompt: dict, workflow: dict) -> executor.GraphRun:
    """Run the API prompt through ComfyUI's executor, one line per node that runs and a few progress lines; the
    saved PNG keeps ``workflow``. RunError when the prompt does not validate."""
    import comfy.utils

    last = {}

    def progress(value, total, preview=None, prompt_id=None, node_id=None):
        step = max(1, total // 4)
        if total > 1 and (value == total or value % step == 0) and last.get(node_id) != value:
            last[node_id] = value
            say(f"    {value}/{total}")

    def running(event, data):
        if event == "executing" and data.get("node") is not None:
            entry = prompt.get(str(data["node"]), {})
            say(f"  running {entry.get('_meta', {}).get('title', entry.get('class_type', data['node']))}")

    comfy.utils.set_progress_bar_global_hook(progress)
    comfy.utils.PROGRESS_BAR_ENABLED = logging.getLogger().level <= logging.INFO  # tqdm bars only with -v
    # the executor reports node by node only to a client
    ex = executor.make_executor(executor.StubServer(client_id="diffstyler_run", on_message=running))
    extra = {"client_id": "diffstyler_run", "extra_pnginfo": {"workflow": workflow}}  # the PNG keeps the workflow
    run = executor.run_prompt(ex, prompt, expect_success=False, extra_data=extra)
    if run.error and "validation" in run.error:
        raise RunError(f"the workflow does not validate: {run.failure_text()}")
    return run


def collect_images(outputs: dict, prompt: dict, folder_paths) -> list[Path]:
    files = []
    for node_id, ui in outputs.items():
        if prompt.get(node_id, {}).get("class_type") != "SaveImage":
            continue
        for ref in ui.get("images", []):
            base = folder_paths.get_directory_by_type(ref.get("type", "output"))
            files.append(Path(base) / ref.get("subfolder", "") / ref["filename"])
    return files
