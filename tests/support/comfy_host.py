"""The one place that talks to ComfyUI's executor and knows how ComfyUI hosts differ.

Shared by the tests (``comfy_setup``), the benchmarks (``bench/``) and the headless runner
(``scripts/diffstyler_run.py``). Tested hosts: ComfyUI v0.8.0 .. v0.33.0. Every difference is detected from the
host's own code, never from its version number:

* ``PromptExecutor``'s ``cache_args``: v0.23 reads ``ram_inactive`` besides ``lru`` and ``ram`` (a ``KeyError``
  when missing); older hosts read only the keys they know (``dict.get``), so :func:`make_executor` passes every
  key a host's ``main.py`` passes, all 0 (the classic cache frees nothing by RAM pressure).
* The output cache: ``executor.caches.outputs.get`` returns the entry on v0.8 and a coroutine from v0.18.
* Progress bars: from v0.9.2 ``ProgressBar`` throttles its hook (at most one update per 0.1 s and 0.5 %);
  :func:`unthrottled_progress` and :func:`progress_hook` let a hook see every update, as the tests that act
  between steps need.
* Core nodes that gained required inputs (``LoraModelLoader.bypass`` from v0.14): :func:`fill_new_inputs`
  adds them to an API prompt only when the host's node declares them.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect

# cache_args keys some host reads with ``cache_args[key]``; the value 0 turns the RAM headroom logic off
CACHE_ARGS = {"lru": 0, "ram": 0, "ram_inactive": 0}


def make_executor(server):
    """``execution.PromptExecutor`` with the classic cache (outputs freed as soon as unused), on any host."""
    import execution

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


def required_inputs(class_type: str) -> set[str]:
    """The names of the required inputs the host's node ``class_type`` declares."""
    import nodes

    return set(nodes.NODE_CLASS_MAPPINGS[class_type].INPUT_TYPES().get("required", {}))


def fill_new_inputs(prompt: dict, added: dict[str, dict]) -> dict:
    """``prompt`` with the inputs ``added[class_type]`` set on its nodes of that type, but only those inputs the
    host's node requires (inputs core nodes gained in later hosts, given the value that keeps the old behaviour)."""
    for node in prompt.values():
        new = added.get(node["class_type"])
        if new:
            required = required_inputs(node["class_type"])
            node["inputs"].update({k: v for k, v in new.items() if k in required and k not in node["inputs"]})
    return prompt
