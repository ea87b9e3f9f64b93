"""Per-source content-feature cache (beyond the released design; it injects the same numbers).

A branch's content row is the inverted latent at the sampling timestep, with the inversion's content prompt,
evaluated with that branch's LoRA (or with none: the base branch, or the shared content row). What it feeds the
branch rows (the injected ResBlock residual and the decoder self-attention Q/K) therefore depends only on the
inversion, that LoRA and its strength, the sampling model and the patches on it: not on prompts, masks or cfg.
The APPLY_MODEL wrapper (``injector/wrapper.py``) records those features per *source* the first time a
content row runs at a step and, when a later call (a re-run that changed only prompts, masks or cfg, or another
call of the same step) needs that source at that step again, injects them from here instead of running the row.

The store lives on the ``InversionResult`` (``source_cache``): ComfyUI frees it with the DDIM Inversion node's
output. It is bounded (``content_cache_mb`` of that node) with least-recently-used eviction over entries; features
are kept on ComfyUI's intermediate device (the CPU unless ``--gpu-only``) in the dtype they were computed in, so
injecting them gives the bits the content row gives.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from ..core.rows import Source
from ..core.schedule import in_window
from .fingerprint import model_fingerprint
from .injector.state import WRAPPER_KEY

logger = logging.getLogger(__name__)

NO_LORA = "none"


class Same:
    """A strong reference that compares by identity: held in a key, the object stays alive, so its identity cannot
    pass to another object the way a bare ``id()`` can once the first is gone."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __eq__(self, other):
        return isinstance(other, Same) and other.obj is self.obj

    def __hash__(self):
        return id(self.obj)

    def __repr__(self):
        return f"Same({getattr(self.obj, '__qualname__', type(self.obj).__name__)})"


@dataclass
class Entry:
    """One source's features: ``res[step]`` ``[B,C,H,W]``; ``qk[step][(block, transformer index)] = (q, k)``."""

    label: str
    res: dict = field(default_factory=dict)
    qk: dict = field(default_factory=dict)
    nbytes: int = 0
    reserved: int = 0  # what the run that created it will store (its windows' steps), counted against the bound
    rejected: bool = False  # larger than the whole bound: never recorded

    @property
    def held(self) -> int:
        return max(self.nbytes, self.reserved)


def _bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def qk_bytes(layers: dict) -> int:
    return sum(_bytes(q) + _bytes(k) for q, k in layers.values())


class ContentCache:
    """The features of every source one inversion has fed, bounded by ``limit`` bytes (LRU over entries)."""

    def __init__(self, limit_bytes: int, device=None):
        self.limit = int(limit_bytes)
        self.device = device  # None: ComfyUI's intermediate device, looked up when storing
        self.entries: OrderedDict = OrderedDict()
        self.hits = 0  # (source, step) lookups answered from here
        self.misses = 0
        self.evicted = 0
        self._lock = threading.Lock()
        self._logged: set = set()

    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries.values())

    def held(self) -> int:
        return sum(e.held for e in self.entries.values())

    def lookup(self, key: tuple, step: int, res: bool, qk: bool):
        """``(residual or None, Q/K layers or None)`` of ``step`` when the entry holds every part asked for, else
        None (the caller runs the content row and records it)."""
        with self._lock:
            e = self.entries.get(key)
            if e is None or e.rejected or (res and step not in e.res) or (qk and step not in e.qk):
                self.misses += 1
                return None
            self.entries.move_to_end(key)
            self.hits += 1
            return (e.res[step] if res else None), (e.qk[step] if qk else None)

    def commit(
        self, key: tuple, label: str, step: int, res, qk, in_use: set, latent_hw, expect=(0, 0), refused=None
    ) -> None:
        """Store what a content row gave at ``step`` (``res`` tensor, ``qk`` layers; either may be None), evicting
        least-recently-used entries that the current run does not use (``in_use``) to stay within the bound.

        A new entry is stored whole or not at all: it reserves what ``expect`` (the number of ResBlock and Q/K steps
        the run's windows need from this source) times this step's sizes come to; one larger than the bound is
        refused (logged once with its size), one that does not fit beside the entries in use is not stored."""
        refused = set() if refused is None else refused
        with self._lock:
            e = self.entries.get(key)
            fresh = e is None
            if fresh:
                e = Entry(label)
            if e.rejected or key in refused:
                return
            res = res if (res is not None and step not in e.res) else None
            qk = qk if (qk and step not in e.qk) else None
            new = (_bytes(res) if res is not None else 0) + (qk_bytes(qk) if qk else 0)
            if new == 0:
                return
            if fresh:
                per_res = _bytes(res) if res is not None else 0
                per_qk = qk_bytes(qk) if qk else 0
                e.reserved = max(new, per_res * int(expect[0]) + per_qk * int(expect[1]))
            grow = max(e.nbytes + new, e.reserved) - (0 if fresh else e.held)
            if max(e.nbytes + new, e.reserved) > self.limit:
                e.res.clear(), e.qk.clear()
                self.entries[key] = Entry(label, rejected=True)
                self._log_once(
                    ("big", key),
                    logging.WARNING,
                    "DiffStyler: content cache: %s needs %.1f MB (%.2f MB per step for a %dx%d latent), more than "
                    "content_cache_mb = %.0f MB: not cached; raise content_cache_mb on DDIM Inversion to cache it",
                    label,
                    max(e.nbytes + new, e.reserved) / 2**20,
                    new / 2**20,
                    *latent_hw,
                    self.limit / 2**20,
                )
                return
            total = self.held()
            for old in list(self.entries):
                if total + grow <= self.limit:
                    break
                if old in in_use or old == key or self.entries[old].rejected:
                    continue
                total -= self.entries.pop(old).held
                self.evicted += 1
            if total + grow > self.limit:
                refused.add(key)  # not again in this run: a run stores an entry whole or not at all
                self._log_once(
                    ("full", key),
                    logging.INFO,
                    "DiffStyler: content cache full (%.0f MB, the styles of this run hold it): %s not cached from "
                    "step %d; raise content_cache_mb on DDIM Inversion to cache every style",
                    self.limit / 2**20,
                    label,
                    step,
                )
                return
            device = self.device
            if device is None:
                import comfy.model_management

                device = comfy.model_management.intermediate_device()
            first = not e.res and not e.qk
            if res is not None:
                e.res[step] = res.to(device)
            if qk:
                e.qk[step] = {name: (q.to(device), k.to(device)) for name, (q, k) in qk.items()}
            e.nbytes += new
            self.entries[key] = e
            self.entries.move_to_end(key)
            if first:
                h, w = latent_hw
                logger.info(
                    "DiffStyler: content cache: %s, %.2f MB per step (ResBlock %.2f MB, Q/K %.2f MB) for a %dx%d "
                    "latent (%dx%d px), %s, on %s; bound %.0f MB",
                    label,
                    new / 2**20,
                    (_bytes(res) if res is not None else 0) / 2**20,
                    (qk_bytes(qk) if qk else 0) / 2**20,
                    h,
                    w,
                    8 * h,
                    8 * w,
                    str((res if res is not None else next(iter(qk.values()))[0]).dtype).replace("torch.", ""),
                    device,
                    self.limit / 2**20,
                )

    def _log_once(self, what, level, msg, *args):
        if what not in self._logged:
            self._logged.add(what)
            logger.log(level, msg, *args)


def lora_digest(state, style: int) -> str:
    """A strong digest of everything style ``style``'s LoRA adds to the model (every layer's factors or weight
    delta, bytes and all, with the strength folded in as the Injector applies it), computed once per Injector."""
    digests = state.lora_digests
    if style not in digests:
        deltas = state.style_deltas[style] if style < len(state.style_deltas) else {}
        if not deltas:
            digests[style] = NO_LORA
        else:
            h = hashlib.blake2b(digest_size=32)
            styles = state.styles or []
            if style < len(styles):
                h.update(float(styles[style].strength).hex().encode())
            for path in sorted(deltas):
                d = deltas[path]
                h.update(path.encode())
                h.update(float(d.scale).hex().encode())
                for name in ("down", "up", "weight", "bias"):
                    t = getattr(d, name)
                    h.update(name.encode())
                    if t is None:
                        continue
                    t = t.detach().to("cpu").contiguous()
                    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
                    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
            digests[style] = h.hexdigest()
    return digests[style]


def owned(obj, state) -> bool:
    """Is ``obj`` one of the object patches this Injector installed (a class-swapped view carrying its state)?"""
    return getattr(type(obj), "_ds_state", None) is state


def object_refs(model_patcher, state) -> tuple:
    """The object patches on the sampling model that are not this Injector's (e.g. a ModelSamplingDiscrete's
    ``model_sampling``), and those its own views wrap, as identity references."""
    refs = [("object", path, Same(obj)) for path, obj in model_patcher.object_patches.items() if not owned(obj, state)]
    refs += [("wrapped", path, Same(obj)) for path, obj in state.wrapped_patches.items()]
    return tuple(sorted(refs, key=lambda r: (r[0], r[1])))


def call_refs(transformer_options: dict, state) -> tuple:
    """What of this UNet call could change a content row: every ``transformer_options['patches']`` function, every
    attention replace that is not this Injector's (those ours chain to included), and every wrapper and callback
    of other nodes (held by identity: another pack that swaps its wrapper between two runs makes a new key). A
    wrapper or callback that only observes (a row counter, a progress hook) may say so with the attribute
    ``diffstyler_cache_neutral = True``; it then stays out of the key."""
    refs = []
    for kind in ("wrappers", "callbacks"):
        for where, by_key in (transformer_options.get(kind) or {}).items():
            for key, fns in (by_key or {}).items():
                if key != WRAPPER_KEY:
                    refs += [
                        (kind, f"{where}:{key}", i, Same(fn))
                        for i, fn in enumerate(fns)
                        if not getattr(fn, "diffstyler_cache_neutral", False)
                    ]
    for name, fns in (transformer_options.get("patches") or {}).items():
        refs += [("patch", str(name), i, Same(fn)) for i, fn in enumerate(fns)]
    for kind, table in (transformer_options.get("patches_replace") or {}).items():
        for slot, fn in table.items():
            f = fn
            while f is not None and getattr(f, "diffstyler_owner", None) is state:
                f = getattr(f, "diffstyler_previous", None)
            if f is not None:
                refs.append(("replace", str(kind), repr(slot), Same(f)))
    return tuple(sorted(refs, key=lambda r: r[:3]))


class RunCache:
    """One sampling run's view of an inversion's ``ContentCache``: the key of each source (LoRA digest and strength,
    ``lora_in_injected_attention``, the sampling model's fingerprint and dtype, device, the patches above)."""

    def __init__(self, cache: ContentCache, model_patcher, state):
        self.cache = cache
        self.state = state
        base = model_patcher.model
        self.base = (
            model_fingerprint(model_patcher),
            state.settings.lora_in_injected_attention,
            str(base.get_dtype()),
            str(getattr(base, "manual_cast_dtype", None)),
            object_refs(model_patcher, state),
        )
        self.in_use: set = set()
        self._labels: dict = {}
        self._expect: dict = {}
        self.refused: set = set()  # keys that found the cache full in this run
        self._said_refs = False

    def key(self, source: int, x: torch.Tensor, refs: tuple) -> tuple:
        if not self._said_refs:
            self._said_refs = True
            foreign = sorted({r[1] for r in refs if r[0] in ("wrappers", "callbacks")})
            if foreign:
                logger.info(
                    "DiffStyler: content cache: keyed on other nodes' wrappers/callbacks (%s): a re-run reuses the "
                    "cached content features only while the same objects are installed",
                    ", ".join(foreign),
                )
        digest = NO_LORA if source == Source.SHARED else lora_digest(self.state, source)
        key = (digest, *self.base, str(x.device), str(x.dtype), refs)
        self.in_use.add(key)
        return key

    def expect(self, source: int, run) -> tuple[int, int]:
        """(ResBlock steps, Q/K steps) at which ``run``'s windows need ``source``'s content features."""
        if source not in self._expect:
            steps = int(run.sample_sigmas.shape[0]) - 1
            wins = [w for br, w in run.branch_windows.items() if run.branch_source.get(br) == source]
            self._expect[source] = tuple(
                sum(1 for i in range(steps) if any(in_window(i, w[part], steps) for w in wins)) for part in (0, 1)
            )
        return self._expect[source]

    def label(self, source: int) -> str:
        if source not in self._labels:
            styles = self.state.styles or []
            if source == Source.SHARED or lora_digest(self.state, source) == NO_LORA:
                self._labels[source] = "the LoRA-free content row"
            else:
                name = styles[source].name if source < len(styles) else "?"
                self._labels[source] = f"style {source + 1} ({name})'s content row"
        return self._labels[source]


def run_cache(inversion, model_patcher, state) -> RunCache | None:
    """The run's view of ``inversion.source_cache``; None when it has none (``content_cache_mb`` 0, or an
    inversion made outside the node) or the run uses an option it does not serve (feature fusion, the feature
    cache recorded at inversion)."""
    cache = getattr(inversion, "source_cache", None)
    if state.family.flow:  # the Flux family does not record its content features yet
        return None
    if cache is None or state.settings.feature_fusion or inversion.feature_cache is not None:
        return None
    return RunCache(cache, model_patcher, state)
