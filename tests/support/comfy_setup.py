"""In-process ComfyUI for the tests (imported only after ComfyUI was found)."""

from __future__ import annotations

import asyncio
import logging
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

PACK_NAME = "comfyui_diffstyler"
CHECKPOINT_NAME = "diffstyler_tiny_sd15.safetensors"
_STATE: dict = {}


@dataclass
class ComfyHome:
    root: Path
    base: Path
    models: Path
    input: Path
    output: Path
    temp: Path
    extra: dict = field(default_factory=dict)


def setup(root: Path, base: Path) -> ComfyHome:
    if "home" in _STATE:
        return _STATE["home"]
    root_s = str(root)
    if root_s in sys.path:
        sys.path.remove(root_s)
    sys.path.insert(0, root_s)
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    comfy.cli_args.args.disable_all_custom_nodes = True
    import comfy.model_management  # noqa: F401 - after args.cpu
    import folder_paths
    import utils.extra_config  # noqa: F401 - before nodes, as main.py does

    home = ComfyHome(
        root=root, base=base, models=base / "models", input=base / "input", output=base / "output", temp=base / "temp"
    )
    for d in (home.input, home.output, home.temp):
        d.mkdir(parents=True, exist_ok=True)
    folder_paths.set_input_directory(str(home.input))
    folder_paths.set_output_directory(str(home.output))
    folder_paths.set_temp_directory(str(home.temp))
    for kind in ("checkpoints", "loras", "vae", "fastsam", "clip_vision", "diffstyler_clip"):
        d = home.models / kind
        d.mkdir(parents=True, exist_ok=True)
        folder_paths.add_model_folder_path(kind, str(d), is_default=True)

    import nodes

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    pack = sys.modules[PACK_NAME]
    register_extension(asyncio.run(pack.comfy_entrypoint()), "custom_nodes." + PACK_NAME)
    import dst_test_pack

    register_extension(asyncio.run(dst_test_pack.comfy_entrypoint()), "custom_nodes.dst_test_pack")
    logging.getLogger().setLevel(logging.INFO)
    _STATE["home"] = home
    return home


def register_extension(extension, relative_module: str) -> list[str]:
    """Register a V3 extension's nodes the way ``nodes.load_custom_node`` does."""
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


@dataclass
class TinyModels:
    model: object
    clip: object
    vae: object
    checkpoint: str
    checkpoint_path: Path


def tiny_models(home: ComfyHome) -> TinyModels:
    if "tiny" in _STATE:
        return _STATE["tiny"]
    import dst_tiny
    import safetensors.torch

    path = home.models / "checkpoints" / CHECKPOINT_NAME
    if not path.exists():
        sd = dst_tiny.tiny_sd15_checkpoint_state_dict(seed=0)
        safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    import comfy.utils

    sd = comfy.utils.load_torch_file(str(path))
    model, clip = dst_tiny.load_checkpoint_state_dict(sd)
    tm = TinyModels(model=model, clip=clip, vae=dst_tiny.tiny_vae(0), checkpoint=CHECKPOINT_NAME, checkpoint_path=path)
    _STATE["tiny"] = tm
    return tm


class StubServer:
    """What PromptExecutor needs of PromptServer; records every message."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.messages: list[tuple[str, dict]] = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def queue_updated(self):
        pass


def make_executor():
    import comfy_host

    return comfy_host.make_executor(StubServer())


@dataclass
class GraphRun:
    success: bool
    messages: list
    ui: dict
    executor: object
    error: dict | None = None

    def outputs(self, node_id: str):
        """The node's returned values (one list per output, each a list over batch slices)."""
        import comfy_host

        entry = comfy_host.cached_outputs(self.executor, node_id)
        if entry is None:
            return None
        return entry.outputs if hasattr(entry, "outputs") else entry

    def events(self, name: str) -> list[dict]:
        return [d for e, d in self.messages if e == name]

    def cached_nodes(self) -> list[str]:
        ev = self.events("execution_cached")
        return ev[-1]["nodes"] if ev else []

    def executed_nodes(self) -> list[str]:
        return [d["node"] for d in self.events("executing") if d.get("node") is not None]


def run_prompt(executor, prompt: dict, expect_success: bool = True) -> GraphRun:
    import execution

    prompt_id = str(uuid.uuid4())
    valid = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
    if not valid[0]:
        if expect_success:
            raise AssertionError(f"prompt failed validation: {valid[1]} {valid[3]}")
        return GraphRun(
            False,
            [("validation_error", {"error": valid[1], "node_errors": valid[3]})],
            {},
            executor,
            error={"validation": valid[1], "node_errors": valid[3]},
        )
    server = executor.server
    start = len(server.messages)
    executor.execute(prompt, prompt_id, {"client_id": "tests"}, valid[2])
    msgs = server.messages[start:] + [m for m in executor.status_messages if m not in server.messages[start:]]
    err = next((d for e, d in msgs if e in ("execution_error", "execution_interrupted")), None)
    run = GraphRun(executor.success, msgs, executor.history_result.get("outputs", {}), executor, error=err)
    if expect_success and not run.success:
        raise AssertionError(f"graph failed: {err}")
    return run
