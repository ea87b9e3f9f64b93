"""Helpers for the reliability tests (issue #8).

* :class:`ModelProbe` - a fixed short core DDIM sampling of a MODEL, to show a MODEL is bit-identical to what it
  was (nothing left patched) after an error or an interrupt.
* :class:`Interrupter` - fires ComfyUI's interrupt from inside a run.
* the graphs (two styles, core KSampler), :class:`NetworkGuard` and :func:`count_unet_calls` are the harness's
  (``nodes/harness/graphs.py``, ``probes.py``: the soak runs them too); the tests reach them here as ``rt.*``.

Nothing here imports ComfyUI at module import time.
"""

from __future__ import annotations

import contextlib
import gc
import logging

from comfyui_diffstyler.nodes.harness.graphs import (  # noqa: F401 - re-exported for the tests
    CONTENT_IMAGE,
    LORA_NAMES,
    MASK_IMAGES,
    core_ksampler_prompt,
    two_style_prompt,
    write_two_style_inputs,
)
from comfyui_diffstyler.nodes.harness.probes import (  # noqa: F401 - re-exported for the tests
    NetworkGuard,
    count_unet_calls,
    plain_ddim,
    rss_bytes,
)

# ---------------------------------------------------------------------------------------------- model state


class ModelProbe:
    """A fixed 2-step core DDIM sampling (cfg 1: one UNet row per step) of ``model``, recorded at creation.

    It runs through ``comfy.sample`` and model management, so wrappers, attention replaces and object patches
    left on the MODEL (or on its shared BaseModel) would show in :meth:`output`.
    """

    def __init__(self, model, positive, negative=None):
        import torch

        self.model = model
        self.positive, self.negative = positive, positive if negative is None else negative
        self.latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1234))
        self.reference = self.output()

    def output(self, model=None):
        return plain_ddim(model or self.model, self.latent.clone(), 2, self.positive, self.negative, 1.0)

    def unchanged(self, model=None) -> bool:
        import torch

        return torch.equal(self.output(model), self.reference)


def attachment_run(model):
    """The DiffStyler run plan a patched MODEL holds (None when no run is active or the MODEL is not patched)."""
    state = model.get_attachment("diffstyler")
    return None if state is None else (state.run, state.call)


# ---------------------------------------------------------------------------------------------- UNet calls


class Interrupter:
    """Fires ``comfy.model_management.interrupt_current_processing(True)`` at the ``at``-th event it sees and counts
    how many UNet calls start afterwards (:attr:`calls_after`)."""

    def __init__(self, at: int):
        self.at = at
        self.events = 0
        self.fired = False
        self.calls_after = 0

    def event(self, *_args, **_kwargs) -> None:
        import comfy.model_management

        self.events += 1
        if self.events == self.at and not self.fired:
            self.fired = True
            comfy.model_management.interrupt_current_processing(True)

    def unet_call(self, _n: int) -> None:
        if self.fired:
            self.calls_after += 1


def clear_interrupt() -> None:
    import comfy.model_management

    comfy.model_management.interrupt_current_processing(False)


# ---------------------------------------------------------------------------------------------- process


@contextlib.contextmanager
def torch_threads(n: int = 1):
    """Run with ``n`` torch CPU threads, then restore the previous count.

    The tiny test models run hundreds of small ops per UNet call; on a busy 2-core machine every OpenMP barrier of a
    2-thread pool can wait for a descheduled thread (measured here under load: 7.1 s per tiny UNet call with 2
    threads, 0.036 s with 1).
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def peak_rss_growth(fn):
    """Run ``fn()``; return ``(its result, peak RSS growth in bytes over the RSS before)``, polled every 5 ms."""
    import threading
    import time

    import psutil

    proc = psutil.Process()
    gc.collect()
    start = proc.memory_info().rss
    peak = [start]
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.005)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        result = fn()
    finally:
        stop.set()
        thread.join()
    peak[0] = max(peak[0], proc.memory_info().rss)
    return result, peak[0] - start


class LogRecords(logging.Handler):
    """Collects the messages logged under ``logger_name`` while used as a context manager."""

    def __init__(self, logger_name: str = "comfyui_diffstyler", level: int = logging.WARNING):
        super().__init__(level)
        self.logger_name = logger_name
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())

    def __enter__(self) -> LogRecords:
        logging.getLogger(self.logger_name).addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger(self.logger_name).removeHandler(self)
