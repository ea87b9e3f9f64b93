"""ComfyUI in this process: find it, import it on the chosen device, load the pack, register nodes.

The one way the tests, the benches and the headless runner (``scripts/diffstyler_run.py``) set ComfyUI up:

1. :func:`find_comfyui` - ``$COMFYUI_PATH``, else the ComfyUI whose ``custom_nodes/`` holds this pack, else
   ``~/ComfyUI``.
2. :func:`import_comfy` - ComfyUI first on ``sys.path``, its argument parsing off, the device (and attention
   backend) set on ``comfy.cli_args.args`` before ``comfy.model_management`` is imported, ``utils.extra_config``
   imported before ``nodes`` (as ``main.py`` does). Imports no torch: callers check files first.
3. :func:`set_directories` - input/output/temp (and model folders) under one base folder.
4. :func:`load_nodes` - ComfyUI's core and extra nodes, this pack's nodes and any other V3 extension, registered
   the way ``nodes.load_custom_node`` registers them.

:func:`setup` does all four for the tests and the benches that run graphs (CPU, the tiny-model node pack).
The pack is imported as package ``comfyui_diffstyler`` (:func:`load_pack`) without its root on ``sys.path``:
our ``nodes/`` would shadow ComfyUI's ``nodes.py``. A script outside the pack reaches this module before the pack
is a package by running this file (``runpy.run_path(".../nodes/harness/host.py")["load_pack"]()``); only the
standard library is imported at module level, so that works.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

PACK_NAME = "comfyui_diffstyler"
PACK_ROOT = Path(__file__).resolve().parents[2]
# --attention choice -> the ComfyUI command-line flag it stands for (default: what ComfyUI picks for the device:
# PyTorch SDPA on NVIDIA, sub-quadratic attention on the CPU)
ATTENTION = {
    "default": None,
    "pytorch": "use_pytorch_cross_attention",
    "sub_quad": "use_quad_cross_attention",
    "split": "use_split_cross_attention",
}
MODEL_KINDS = ("checkpoints", "loras", "vae", "fastsam", "clip_vision", "diffstyler_clip")
NOT_FOUND = (
    "ComfyUI (tested: v0.8.0 .. v0.33.0) not found: set COMFYUI_PATH, install this pack into ComfyUI/custom_nodes, "
    "or stage it at ~/ComfyUI (see README)"
)
_STATE: dict = {}


def comfyui_candidates(explicit: Path | None = None) -> list[Path]:
    """Where ComfyUI is looked for, in order: ``explicit`` alone when given, else ``$COMFYUI_PATH``, the ComfyUI
    holding this pack in ``custom_nodes/``, ``~/ComfyUI``."""
    if explicit:
        return [Path(explicit).expanduser()]
    found = [Path(os.environ["COMFYUI_PATH"]).expanduser()] if os.environ.get("COMFYUI_PATH") else []
    if PACK_ROOT.parent.name == "custom_nodes":
        found.append(PACK_ROOT.parent.parent)
    return found + [Path.home() / "ComfyUI"]


def find_comfyui(explicit: Path | None = None) -> Path | None:
    """The first candidate that is a ComfyUI checkout (``main.py`` and ``comfy/model_management.py``), or None."""
    for c in comfyui_candidates(explicit):
        if (c / "main.py").is_file() and (c / "comfy" / "model_management.py").is_file():
            return c.resolve()
    return None


def load_pack():
    """Import the pack root as package ``comfyui_diffstyler`` (never put the pack root on sys.path)."""
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(
        PACK_NAME, PACK_ROOT / "__init__.py", submodule_search_locations=[str(PACK_ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module


def import_comfy(root: Path, cpu: bool | None = True, attention: str = "default", custom_nodes: bool = False):
    """Import ComfyUI from ``root`` with its arguments set as ``main.py`` would parse them; returns ``folder_paths``.

    ``cpu``: True forces the CPU (``--cpu``), False leaves ComfyUI's device choice, None uses the CPU only when no
    CUDA GPU is there (imports torch). ``attention``: a key of :data:`ATTENTION`. ``custom_nodes`` False:
    ``--disable-all-custom-nodes`` (only :func:`load_nodes` registers nodes). Call it before anything imports
    ``comfy.model_management``; it imports no torch itself unless ``cpu`` is None.
    """
    root_s = str(root)
    if root_s in sys.path:
        sys.path.remove(root_s)
    sys.path.insert(0, root_s)
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    args = comfy.cli_args.args
    if cpu is None:
        import torch

        cpu = not torch.cuda.is_available()
    args.cpu = bool(cpu)
    if ATTENTION[attention]:
        setattr(args, ATTENTION[attention], True)
    args.disable_all_custom_nodes = not custom_nodes
    import folder_paths
    import utils.extra_config  # noqa: F401 - before nodes, as main.py does

    return folder_paths


@dataclass
class ComfyHome:
    """The folders a set-up ComfyUI reads and writes (``models`` holds one folder per model kind)."""

    root: Path
    base: Path
    models: Path
    input: Path
    output: Path
    temp: Path


def set_directories(root: Path, base: Path, model_kinds: tuple[str, ...] = ()) -> ComfyHome:
    """ComfyUI's input/output/temp folders under ``base``, and ``base/models/<kind>`` registered first for each
    of ``model_kinds``."""
    import folder_paths

    home = ComfyHome(root, base, base / "models", base / "input", base / "output", base / "temp")
    for d in (home.input, home.output, home.temp):
        d.mkdir(parents=True, exist_ok=True)
    folder_paths.set_input_directory(str(home.input))
    folder_paths.set_output_directory(str(home.output))
    folder_paths.set_temp_directory(str(home.temp))
    for kind in model_kinds:
        d = home.models / kind
        d.mkdir(parents=True, exist_ok=True)
        folder_paths.add_model_folder_path(kind, str(d), is_default=True)
    return home


def register_extension(extension, relative_module: str) -> list[str]:
    """Register a V3 extension's nodes the way ``nodes.load_custom_node`` does; returns their ids."""
    import nodes

    ids = []
    for node_cls in asyncio.run(extension.get_node_list()):
        schema = node_cls.GET_SCHEMA()
        nodes.NODE_CLASS_MAPPINGS[schema.node_id] = node_cls
        node_cls.RELATIVE_PYTHON_MODULE = relative_module
        if schema.display_name is not None:
            nodes.NODE_DISPLAY_NAME_MAPPINGS[schema.node_id] = schema.display_name
        ids.append(schema.node_id)
    return ids


def load_nodes(extensions: dict | None = None, quiet: bool = False) -> None:
    """ComfyUI's core and extra nodes, then this pack's, then ``extensions`` ({module name: V3 extension}).

    ``quiet``: core extras that miss optional packages (torchaudio, ...) log tracebacks while they load; only
    errors are logged then.
    """
    import comfy.model_management  # noqa: F401 - after import_comfy set the device

    import nodes

    root = logging.getLogger()
    level = root.level
    if quiet:
        root.setLevel(logging.ERROR)
    try:
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    finally:
        root.setLevel(level)
    register_extension(asyncio.run(load_pack().comfy_entrypoint()), "custom_nodes." + PACK_NAME)
    for module, extension in (extensions or {}).items():
        register_extension(extension, "custom_nodes." + module)


def setup(root: Path, base: Path) -> ComfyHome:
    """ComfyUI on the CPU with its folders under ``base`` (every model kind the pack uses), its nodes, this pack's
    and the tiny-model nodes (:mod:`.demo`) registered. Once per process: later calls return the first home."""
    if "home" in _STATE:
        return _STATE["home"]
    import_comfy(root, cpu=True)
    import comfy.model_management  # noqa: F401 - right after the device is set, as main.py does

    home = set_directories(root, base, MODEL_KINDS)
    from . import demo

    load_nodes({demo.TINY_PACK: demo.tiny_nodes_extension()})
    _STATE["home"] = home
    return home
