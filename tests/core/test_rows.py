"""The row layout planner (nodes/core/rows.py): where content rows go, which rows get which LoRA and which features.

Pure Python: no ComfyUI. The layouts below are written out by hand from the rules in the module docstring.
"""

from __future__ import annotations

import pytest
from comfyui_diffstyler.nodes.core.rows import (
    Branch,
    Group,
    LoraLayout,
    Record,
    Slot,
    SlotKind,
    Source,
    Span,
    StoredRun,
    StyleBlock,
    StyleSpan,
    consecutive,
    inject_group,
    inject_span,
    plan_rows,
)

C, K = SlotKind.CONTENT, SlotKind.CHUNK


def two_styles(b=1, res=True, qk=True, **kw):
    """Two style branches with their own content rows, cond and uncond chunks in ComfyUI's order."""
    roles = [(0, False), (0, True), (1, False), (1, True)]
    return plan_rows(roles, b, [res] * 4, [qk] * 4, {0: 0, 1: 1}, {0: 0, 1: 1}, **kw)


def test_each_style_gets_its_own_content_row_just_before_its_chunks():
    lay = two_styles()
    assert lay.order == [Slot(C, 0), Slot(K, 0), Slot(K, 1), Slot(C, 1), Slot(K, 2), Slot(K, 3)]
    assert lay.n_content == 2
    # rows of [content, the call's 4 rows]: content 0, chunks 0 1, content 0 again, chunks 2 3
    assert lay.take == [0, 1, 2, 0, 3, 4]
    assert lay.lora_rows == {0: [0, 1, 2], 1: [3, 4, 5]}, "a style's content row carries its LoRA"
    assert lay.res.rows == [1, 2, 4, 5] and lay.res.src == [0, 0, 3, 3]
    assert lay.res.group == Group(0, 2, 2, 1) and lay.qk.group == Group(0, 2, 2, 1)
    assert lay.lora_layout == LoraLayout(True, (StyleSpan(0, 0, 3), StyleSpan(1, 3, 6)), StyleBlock(0, 3, (0, 1)))
    assert lay.keep_from is None and lay.back == [1, 2, 4, 5]


def test_rows_per_chunk_scale_with_the_batch():
    lay = two_styles(b=2)
    assert lay.take == [0, 1, 2, 3, 4, 5, 0, 1, 6, 7, 8, 9]
    assert lay.res.rows == [2, 3, 4, 5, 8, 9, 10, 11] and lay.res.src == [0, 1, 0, 1, 6, 7, 6, 7]
    assert lay.res.group == Group(0, 2, 2, 2)
    assert lay.back == [2, 3, 4, 5, 8, 9, 10, 11]


def test_closed_windows_add_no_content_row_and_keep_the_callers_order():
    lay = two_styles(res=False, qk=False)
    assert lay.n_content == 0 and lay.take is None
    assert lay.order == [Slot(K, j) for j in range(4)]
    assert lay.lora_rows == {0: [0, 1], 1: [2, 3]}
    assert not lay.res.active and not lay.qk.active
    assert lay.keep_from is None and lay.back is None


def test_only_the_open_window_is_injected():
    lay = two_styles(res=True, qk=False)
    assert lay.res.rows == [1, 2, 4, 5] and lay.qk.rows == [] and lay.qk.group is None


def test_shared_content_row_feeds_every_branch_without_lora():
    roles = [(0, False), (1, False), (2, False)]  # styles 0, 1 and the base branch 2 at cfg 1
    src = {0: Source.SHARED, 1: Source.SHARED, 2: Source.SHARED}
    lay = plan_rows(roles, 1, [True] * 3, [True] * 3, src, {0: 0, 1: 1})
    assert lay.order == [Slot(C, Source.SHARED), Slot(K, 0), Slot(K, 1), Slot(K, 2)]
    assert lay.lora_rows == {0: [1], 1: [2]}, "the shared content row and the base branch carry no LoRA"
    assert lay.res.rows == [1, 2, 3] and lay.res.src == [0, 0, 0]
    assert lay.res.group == Group(0, 1, 3, 1)
    assert lay.keep_from == 1 and lay.back is None, "dropping the leading content row restores the order"


def test_a_chunk_of_no_branch_gets_nothing():
    lay = plan_rows([(Branch.NONE, False)], 1, [False], [False], {}, {})
    assert lay.lora_rows == {} and lay.n_content == 0 and lay.back is None


def test_stored_features_replace_the_content_row():
    lay = two_styles(stored={0})
    assert lay.order == [Slot(K, 0), Slot(K, 1), Slot(C, 1), Slot(K, 2), Slot(K, 3)]
    assert lay.res.stored == [StoredRun(0, 2, 1, 0)] and lay.qk.stored == [StoredRun(0, 2, 1, 0)]
    assert lay.res.rows == [3, 4] and lay.res.src == [2, 2]
    assert lay.back == [0, 1, 3, 4]


def test_every_source_stored_runs_no_content_row():
    lay = two_styles(stored={0, 1})
    assert lay.n_content == 0 and lay.back is None
    assert lay.res.stored == [StoredRun(0, 2, 1, 0), StoredRun(2, 2, 1, 1)]


def test_recorded_sources_are_their_content_rows():
    lay = two_styles(record=[0, 1])
    assert lay.res.record == [Record(0, 1, 0), Record(3, 1, 1)] and lay.qk.record == lay.res.record


def test_feature_cache_serves_every_injected_chunk_in_place():
    lay = two_styles(b=2, cached_items={"res": 2, "qk": 2})
    assert lay.n_content == 0 and lay.res.from_cache
    assert lay.res.rows == list(range(8)) and lay.res.batch_index == [0, 1] * 4
    assert lay.res.span == Span(0, 4, 2)
    other = two_styles(b=2, cached_items={"res": 1, "qk": 1})
    assert other.res.span is None, "a cache of another batch size takes the gather path"


def test_fused_rows_have_no_lora_layout():
    roles = [(Branch.FUSED, False), (Branch.FUSED, True)]
    lay = plan_rows(roles, 1, [True, True], [True, True], {Branch.FUSED: Source.SHARED}, {}, fused_branch=Branch.FUSED)
    assert lay.fused_rows == [1, 2] and lay.fused_uncond == [False, True] and lay.fused_batch_index == [0, 0]
    assert lay.lora_layout is None, "fused rows take every layer's general path"


def test_rows_that_are_not_contiguous_take_the_general_lora_path():
    roles = [(0, False), (1, False), (0, True)]  # a call whose chunks interleave two styles
    lay = plan_rows(roles, 1, [False] * 3, [False] * 3, {}, {0: 0, 1: 1})
    assert lay.lora_rows == {0: [0, 2], 1: [1]}
    assert lay.lora_ranges == {1: (1, 2)} and lay.lora_layout is None


def test_interleaved_chunks_are_grouped_by_branch():
    roles = [(0, False), (1, False), (0, True), (1, True)]
    lay = plan_rows(roles, 1, [True] * 4, [True] * 4, {0: 0, 1: 1}, {0: 0, 1: 1})
    assert lay.order == [Slot(C, 0), Slot(K, 0), Slot(K, 2), Slot(C, 1), Slot(K, 1), Slot(K, 3)]
    assert lay.back == [1, 4, 2, 5], "rows come back in the caller's order"


@pytest.mark.parametrize(
    "pairs,b,expect",
    [
        ({0: [1, 2], 3: [4, 5]}, 1, Group(0, 2, 2, 1)),
        ({0: [1], 2: [3]}, 4, Group(0, 2, 1, 4)),
        ({0: [2]}, 1, None),  # not directly after its content chunk
        ({0: [1, 2], 3: [4]}, 1, None),  # unequal groups
        ({}, 1, None),
    ],
)
def test_inject_group(pairs, b, expect):
    assert inject_group(pairs, b) == expect


def test_inject_span_and_consecutive():
    assert inject_span([1, 2, 3], 0, 2, 2) == Span(2, 3, 2)
    assert inject_span([1, 3], 0, 2, 2) is None
    assert inject_span([], 0, 2, 2) is None
    assert consecutive([1, 2, 4, 5, 7]) == [[1, 2], [4, 5], [7]]
