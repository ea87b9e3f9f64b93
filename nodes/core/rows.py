"""Row layout of one DiffStyler UNet call (pure Python: no torch, no ComfyUI).

ComfyUI hands the model a batch of *chunks* (one per cond/uncond entry of the call, ``b`` rows each, in
``cond_or_uncond`` order). The guider assigns every chunk a *branch* (a style, the base model, or no DiffStyler
branch) and every branch that receives content features a *source*: the content latent evaluated with that branch's
own LoRA (``source = style index``, the released pipeline, design Sec. 5) or without any LoRA (``Source.SHARED``).

``plan_rows`` decides, from those roles and the injection windows open at the step, where each source's content row
goes (just before the first chunk it feeds), which rows get which style's LoRA, which rows' ResBlock residual and
self-attention Q/K are replaced by which content rows, and how to put the rows back in the caller's order. The
ComfyUI side (``nodes/adapters/injector/wrapper.py``) turns the plan into index tensors and runs the call.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NamedTuple


class Source(enum.IntEnum):
    """Content-row sources that are not a style: a style's own content row is that style's index (an int >= 0)."""

    SHARED = -1  # the content latent evaluated without any LoRA (the base branch's; every branch's when shared)


class Branch(enum.IntEnum):
    """Branches that are not a style (a style branch is the style's index; the base branch is ``len(styles)``)."""

    NONE = -1  # a chunk of no DiffStyler branch: no LoRA, no injection
    FUSED = 1000  # feature fusion: every style shares one cond/uncond pair


class SlotKind(enum.Enum):
    CONTENT = "content"  # a content row chunk (``b`` rows of the inverted latent), value = its source
    CHUNK = "chunk"  # one of the call's own chunks, value = its index in the call


class Slot(NamedTuple):
    kind: SlotKind
    value: int


class Group(NamedTuple):
    """Injected rows as ``groups`` equal, adjacent groups from row ``start``: each one content chunk of ``b`` rows
    followed by the ``m`` chunks it feeds (injection in place on one strided view)."""

    start: int
    groups: int
    m: int
    b: int


class Span(NamedTuple):
    """Feature cache: injected rows ``[start, start + chunks*b)``, row ``start + j*b + i`` reading batch item i."""

    start: int
    chunks: int
    b: int


class StyleSpan(NamedTuple):
    style: int
    start: int
    stop: int


class StyleBlock(NamedTuple):
    """Styles owning equal adjacent row blocks: ``per`` rows each from ``start``, in ``styles`` order."""

    start: int
    per: int
    styles: tuple[int, ...]


class LoraLayout(NamedTuple):
    """Hashable summary of the LoRA rows when every style's rows are contiguous (layers build their plan once)."""

    lora_in_injected_attention: bool
    spans: tuple[StyleSpan, ...]
    block: StyleBlock | None


class StoredRun(NamedTuple):
    """``chunks`` consecutive chunks of ``b`` rows from ``start`` that read ``source``'s stored features."""

    start: int
    chunks: int
    b: int
    source: int


class Record(NamedTuple):
    """Rows ``[start, start + b)`` are ``source``'s content row: record what they give the injected layers."""

    start: int
    b: int
    source: int


@dataclass
class Injection:
    """Where one kind of feature (ResBlock residual or Q/K) is injected in the call."""

    rows: list[int] = field(default_factory=list)  # injected rows
    src: list[int] = field(default_factory=list)  # the content row each reads (content rows of this call)
    group: Group | None = None
    stored: list[StoredRun] = field(default_factory=list)
    record: list[Record] = field(default_factory=list)
    batch_index: list[int] = field(default_factory=list)  # feature cache: the cached batch item of each row
    span: Span | None = None
    from_cache: bool = False

    @property
    def active(self) -> bool:
        return bool(self.rows or self.stored)


@dataclass
class RowLayout:
    order: list[Slot]
    b: int
    n_content: int  # content chunks this call adds
    take: list[int] | None  # rows of ``[content (b rows), the call's rows]`` in the layout's order (None: no content)
    lora_rows: dict[int, list[int]]  # style -> rows that get its LoRA
    lora_ranges: dict[int, tuple[int, int]]  # style -> (start, stop) when its rows are contiguous
    lora_layout: LoraLayout | None
    res: Injection
    qk: Injection
    fused_rows: list[int] = field(default_factory=list)
    fused_batch_index: list[int] = field(default_factory=list)
    fused_uncond: list[bool] = field(default_factory=list)
    keep_from: int | None = None  # the output in the caller's order is ``out[keep_from:]`` ...
    back: list[int] | None = None  # ... or ``out[back]``; both None: the output as it is


def inject_span(chunks: list[int], offset: int, b: int, items: int) -> Span | None:
    """The feature cache's in-place span for injected ``chunks`` (chunk j = rows ``offset + j*b ...``): None unless
    they are consecutive and the cached features hold ``items == b`` batch items."""
    if not chunks or chunks != list(range(chunks[0], chunks[0] + len(chunks))) or items != b:
        return None
    return Span(offset + chunks[0] * b, len(chunks), b)


def inject_group(pairs: dict[int, list[int]], b: int) -> Group | None:
    """The in-place group for ``pairs`` (content chunk position -> positions of the chunks it feeds): a Group when
    every content chunk is directly followed by its ``m`` chunks and the groups are equal and adjacent, else None
    (the general gather/scatter path)."""
    if not pairs:
        return None
    srcs = sorted(pairs)
    m = len(pairs[srcs[0]])
    for i, c in enumerate(srcs):
        if pairs[c] != list(range(c + 1, c + 1 + m)) or c != srcs[0] + i * (m + 1):
            return None
    return Group(srcs[0] * b, len(srcs), m, b)


def consecutive(values: list[int]) -> list[list[int]]:
    """``values`` (sorted) split into runs of consecutive integers."""
    runs: list[list[int]] = []
    for v in values:
        if runs and v == runs[-1][-1] + 1:
            runs[-1].append(v)
        else:
            runs.append([v])
    return runs


def plan_rows(
    roles: list[tuple[int, bool]],
    b: int,
    res_on: list[bool],
    qk_on: list[bool],
    branch_source: dict[int, int],
    lora_branch_to_style: dict[int, int],
    *,
    stored: frozenset | set = frozenset(),
    record: list[int] | tuple = (),
    cached_items: dict[str, int] | None = None,
    fused_branch: int | None = None,
    lora_in_injected_attention: bool = True,
) -> RowLayout:
    """The layout of one call.

    ``roles``: per chunk ``(branch, is_uncond)``; ``res_on``/``qk_on``: per chunk, is its branch's ResBlock / Q/K
    window open at this step. ``stored``: sources whose features at this step come from the per-source content
    cache (no content row); ``record``: sources whose content row this call runs and records. ``cached_items``:
    the feature cache recorded at inversion serves every injected chunk (``{"res": batch items, "qk": ...}`` of the
    kinds it holds), so no content row runs. ``fused_branch``: the feature-fusion branch, if any.
    """
    n = len(roles)
    injected = [j for j in range(n) if res_on[j] or qk_on[j]]
    from_cache = bool(injected) and cached_items is not None
    order: list[Slot] = []
    if injected and not from_cache and any(branch_source[roles[j][0]] not in stored for j in injected):
        by_branch: dict[int, list[int]] = {}
        for j, (branch, _u) in enumerate(roles):
            by_branch.setdefault(branch, []).append(j)
        placed = set(stored)
        for branch, js in by_branch.items():
            src = branch_source.get(branch)
            if src is not None and any(j in injected for j in js) and src not in placed:
                placed.add(src)
                order.append(Slot(SlotKind.CONTENT, src))
            order += [Slot(SlotKind.CHUNK, j) for j in js]
    else:
        order = [Slot(SlotKind.CHUNK, j) for j in range(n)]
    pos_of_chunk = {s.value: p for p, s in enumerate(order) if s.kind is SlotKind.CHUNK}
    pos_of_src = {s.value: p for p, s in enumerate(order) if s.kind is SlotKind.CONTENT}
    n_content = len(pos_of_src)

    take = None
    if n_content:
        take = []
        for s in order:  # the content rows are rows 0..b-1, the call's chunk j rows b + j*b ...
            first = 0 if s.kind is SlotKind.CONTENT else b + s.value * b
            take += list(range(first, first + b))

    lora_rows: dict[int, list[int]] = {}
    for p, s in enumerate(order):
        if s.kind is SlotKind.CONTENT:
            style = None if s.value == Source.SHARED else s.value
        else:
            style = lora_branch_to_style.get(roles[s.value][0])
        if style is not None:
            lora_rows.setdefault(style, []).extend(range(p * b, (p + 1) * b))

    fused_chunks = [j for j, (branch, _u) in enumerate(roles) if fused_branch is not None and branch == fused_branch]
    res, qk = Injection(), Injection()
    for kind_on, name, inj in ((res_on, "res", res), (qk_on, "qk", qk)):
        chunks = [j for j in injected if kind_on[j]]
        if not chunks:
            continue
        if from_cache:
            inj.from_cache = True
            inj.rows = [j * b + i for j in chunks for i in range(b)]
            inj.batch_index = [i for _j in chunks for i in range(b)]
            inj.span = inject_span(chunks, 0, b, cached_items.get(name, -1))
            continue
        pairs: dict[int, list[int]] = {}
        from_store: dict[int, list[int]] = {}
        for j in chunks:
            src = branch_source[roles[j][0]]
            if src in stored:
                from_store.setdefault(src, []).append(pos_of_chunk[j])
            else:
                pairs.setdefault(pos_of_src[src], []).append(pos_of_chunk[j])
        for src, cs in from_store.items():  # runs of consecutive chunks: one in-place copy each
            inj.stored += [StoredRun(run[0] * b, len(run), b, src) for run in consecutive(sorted(cs))]
        if pairs:
            inj.rows = [p * b + i for c in sorted(pairs) for p in pairs[c] for i in range(b)]
            inj.src = [c * b + i for c in sorted(pairs) for _p in pairs[c] for i in range(b)]
            inj.group = inject_group({c: sorted(v) for c, v in pairs.items()}, b)
        for src in record:  # what each recorded content row gives the rows it feeds
            if src in pos_of_src and any(branch_source[roles[j][0]] == src for j in chunks):
                inj.record.append(Record(pos_of_src[src] * b, b, src))

    ranges = {s: (r[0], r[-1] + 1) for s, r in lora_rows.items() if r and r == list(range(r[0], r[-1] + 1))}
    block = None
    if len(ranges) == len(lora_rows) and len(ranges) > 1:
        by_start = sorted(ranges, key=lambda s_: ranges[s_][0])
        per = ranges[by_start[0]][1] - ranges[by_start[0]][0]
        first = ranges[by_start[0]][0]
        if all(ranges[s_][1] - ranges[s_][0] == per for s_ in by_start) and all(
            ranges[s_][0] == first + i * per for i, s_ in enumerate(by_start)
        ):
            block = StyleBlock(first, per, tuple(by_start))
    lora_layout = None
    if len(ranges) == len(lora_rows) and not fused_chunks:
        spans = tuple(sorted((StyleSpan(s_, a_, e_) for s_, (a_, e_) in ranges.items()), key=lambda t_: t_.start))
        lora_layout = LoraLayout(lora_in_injected_attention, spans, block)

    layout = RowLayout(
        order=order,
        b=b,
        n_content=n_content,
        take=take,
        lora_rows=lora_rows,
        lora_ranges=ranges,
        lora_layout=lora_layout,
        res=res,
        qk=qk,
    )
    if fused_chunks:
        layout.fused_rows = [pos_of_chunk[j] * b + i for j in fused_chunks for i in range(b)]
        layout.fused_batch_index = [i for _j in fused_chunks for i in range(b)]
        layout.fused_uncond = [roles[j][1] for j in fused_chunks for _i in range(b)]
    if n_content or any(pos_of_chunk[j] != j for j in range(n)):
        back = [pos_of_chunk[j] * b + i for j in range(n) for i in range(b)]
        if back == list(range(n_content * b, (n_content + n) * b)):
            layout.keep_from = n_content * b
        else:
            layout.back = back
    return layout
