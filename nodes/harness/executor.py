"""Running an API prompt through ComfyUI's own ``execution.PromptExecutor``, and how ComfyUI hosts differ there.

Tested hosts: ComfyUI v0.8.0 .. v0.33.0. Every difference is detected from the host's own code, never from its
version number:

* ``PromptExecutor``'s ``cache_args``: v0.23 reads ``ram_inactive`` besides ``lru`` and ``ram`` (a ``KeyError``
  when missing); older hosts read only the keys they know (``dict.get``), so :func:`make_executor` passes every
  key a host's ``main.py`` passes, all 0 (the classic cache frees nothing by RAM pressure).
* The output cache: ``executor.caches.outputs.get`` returns the entry on v0.8 and a coroutine from v0.18.
* Progress bars: from v0.9.2 ``ProgressBar`` throttles its hook (at most one update per 0.1 s and 0.5 %);
  :func:`unthrottled_progress` and :func:`progress_hook` let a hook see every update, as the tests that act
  between steps need.
* Core nodes that gained required inputs (``LoraModelLoader.bypass`` from v0.14): :func:`fill_new_inputs`
  adds them to an API prompt only when the host's node declares them.

:class:`StubServer` stands in for ``server.PromptServer`` (the executor reports to it); :func:`run_prompt`
validates and runs a prompt and returns a :class:`GraphRun`. Nothing here imports ComfyUI at module import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import uuid
from dataclasses import dataclass

# cache_args keys some host reads with ``cache_args[key]``; the value 0 turns the RAM headroom logic off
CACHE_ARGS = {"lru": 0, "ram": 0, "ram_inactive": 0}


class StubServer:
    """What ``PromptExecutor`` needs of ``PromptServer``: records every message; ``on_message(event, data)`` sees
    each one as it comes. The executor reports node by node only to a client: give ``client_id`` for that."""

    def __init__(self, client_id: str | None = None, on_message=None):
        self.client_id = client_id
        self.last_node_id = None
        self.last_prompt_id = None
        self.messages: list[tuple[str, dict]] = []
        self.on_message = on_message

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))
        if self.on_message is not None:
            self.on_message(event, data)

    def queue_updated(self):
        pass


def make_executor(server=None):
    """``execution.PromptExecutor`` with the classic cache (outputs freed as soon as unused), on any host.
    ``server``: a :class:`StubServer` (a new one when None)."""
    import execution

    server = StubServer() if server is None else server
    return execution.PromptExecutor(server, cache_type=execution.CacheType.CLASSIC, cache_args=dict(CACHE_ARGS))


def cached_outputs(executor, node_id: str):
    """The node's cached entry in the executor's output cache (``None`` when absent), on any host."""
    entry = executor.caches.outputs.get(str(node_id))
    if inspect.isawaitable(entry):
        entry = asyncio.run(entry)
    return entry


@contextlib.contextmanager
def unthrottled_progress():
    """Inside the block every ``ProgressBar`` update reaches the progress hook (hosts that throttle it)."""
    import comfy.utils

    names = ("PROGRESS_THROTTLE_MIN_INTERVAL", "PROGRESS_THROTTLE_MIN_PERCENT")
    saved = {name: getattr(comfy.utils, name) for name in names if hasattr(comfy.utils, name)}
    for name in saved:
        setattr(comfy.utils, name, 0)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(comfy.utils, name, value)


@contextlib.contextmanager
def progress_hook(hook):
    """``hook`` is ComfyUI's global progress-bar hook, unthrottled, inside the block; the old hook comes back after."""
    import comfy.utils

    old = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        with unthrottled_progress():
            yield
    finally:
        comfy.utils.set_progress_bar_global_hook(old)


def node_class(class_type: str):
    """The class ComfyUI registered for ``class_type``."""
    import nodes

    return nodes.NODE_CLASS_MAPPINGS[class_type]


def required_inputs(class_type: str) -> set[str]:
    """The names of the required inputs the host's node ``class_type`` declares."""
    return set(node_class(class_type).INPUT_TYPES().get("required", {}))


def fill_new_inputs(prompt: dict, added: dict[str, dict]) -> dict:
    """``prompt`` with the inputs ``added[class_type]`` set on its nodes of that type, but only those inputs the
    host's node requires (inputs core nodes gained in later hosts, given the value that keeps the old behaviour)."""
    for node in prompt.values():
        new = added.get(node["class_type"])
        if new:
            required = required_inputs(node["class_type"])
            node["inputs"].update({k: v for k, v in new.items() if k in required and k not in node["inputs"]})
    return prompt


@dataclass
class GraphRun:
    """One prompt's run: ``messages`` are the (event, data) pairs the executor sent, ``ui`` its history outputs."""

    success: bool
    messages: list
    ui: dict
    executor: object
    error: dict | None = None

    def outputs(self, node_id: str):
        """The node's returned values (one list per output, each a list over batch slices)."""
        entry = cached_outputs(self.executor, node_id)
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

    def failure_text(self) -> str:
        """The failing node and its message in one line (the validation errors when it did not validate)."""
        if self.error and "validation" in self.error:
            return validation_text(self.error["validation"], self.error["node_errors"])
        for event, data in self.messages:
            if event == "execution_error":
                message = data.get("exception_message", "").strip()
                return f"node {data.get('node_id')} ({data.get('node_type')}): {message}"
            if event == "execution_interrupted":
                return "interrupted"
        return "unknown error (run with -v for ComfyUI's log)"


def validation_text(error: dict, node_errors: dict | None) -> str:
    """ComfyUI's validation result as one message and a line per node input error."""
    details = [
        f"node {node_id} ({err.get('class_type')}): {e.get('message')}: {e.get('details')}"
        for node_id, err in (node_errors or {}).items()
        for e in err.get("errors", [])
    ]
    return f"{error.get('message')}\n  " + "\n  ".join(details)


def run_prompt(executor, prompt: dict, expect_success: bool = True, extra_data: dict | None = None) -> GraphRun:
    """Validate and run an API prompt with ``executor``; ``expect_success`` raises AssertionError on failure.
    ``extra_data`` goes to the executor (``client_id``, ``extra_pnginfo``; default: client ``tests``)."""
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
    executor.execute(prompt, prompt_id, extra_data or {"client_id": "tests"}, valid[2])
    msgs = server.messages[start:] + [m for m in executor.status_messages if m not in server.messages[start:]]
    err = next((d for e, d in msgs if e in ("execution_error", "execution_interrupted")), None)
    run = GraphRun(executor.success, msgs, executor.history_result.get("outputs", {}), executor, error=err)
    if expect_success and not run.success:
        raise AssertionError(f"graph failed: {err}")
    return run
