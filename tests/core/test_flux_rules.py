"""Pure pieces of the Flux family (no ComfyUI): block choices as text, the token-grid mask, one style's slice deltas
combined into one delta and its q/k rows left out."""

from __future__ import annotations

import pytest
import torch
from comfyui_diffstyler.nodes.core.blocks import format_blocks, parse_blocks
from comfyui_diffstyler.nodes.core.lora import LayerDelta, combine, linear_delta, zero_rows
from comfyui_diffstyler.nodes.core.masks import to_patch_grid

DEPTHS = {"double": 19, "single": 38}


def test_block_choices_are_read_and_checked_against_the_depth():
    assert parse_blocks("double:18", DEPTHS, "feature_blocks") == (("double", 18),)
    assert parse_blocks(" single:36-37, double:0 ", DEPTHS, "qk_blocks") == (
        ("double", 0),
        ("single", 36),
        ("single", 37),
    )
    assert parse_blocks("none", DEPTHS, "qk_blocks") == ()
    assert format_blocks(parse_blocks("single:19-37,double:17-18", DEPTHS, "x")) == "double:17-18, single:19-37"
    for text, message in (
        ("single:38", r"qk_blocks: 'single:38' is outside this model's 38 single blocks \(0-37\)"),
        ("single:5-3", r"outside this model's 38 single blocks"),
        ("output:4", r"'output:4' does not name a block: .*double:0-18, single:0-37"),
        ("double", r"'double' does not name a block"),
        ("double:x", r"'double:x' has no block index"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_blocks(text, DEPTHS, "qk_blocks")


def test_a_token_is_in_when_any_of_its_cells_is():
    m = torch.zeros(1, 1, 5, 6)
    m[0, 0, 2, 3] = 1.0  # token (1, 1): cells rows 2-3, columns 2-3
    m[0, 0, 4, 0] = 0.25  # the last row's token (2, 0): cells row 4 (odd height), columns 0-1
    t = to_patch_grid(m, 2)
    expected = torch.zeros(1, 1, 5, 6)
    expected[0, 0, 2:4, 2:4] = 1.0
    expected[0, 0, 4, 0:2] = 0.25
    assert torch.equal(t, expected)
    assert to_patch_grid(m, 1) is m


def test_slice_deltas_combine_into_one_delta_and_drop_their_q_k_rows():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 8, generator=g)
    q = LayerDelta(down=torch.randn(2, 8, generator=g), up=torch.randn(4, 2, generator=g), scale=0.5, out_slice=(0, 4))
    v = LayerDelta(down=torch.randn(3, 8, generator=g), up=torch.randn(4, 3, generator=g), scale=2.0, out_slice=(8, 4))
    expected = torch.zeros(3, 5, 12)
    expected[..., 0:4] = linear_delta(x, q)
    expected[..., 8:12] = linear_delta(x, v)
    both = combine([q, v], 12)
    assert both.out_slice is None and both.down.shape == (5, 8) and both.up.shape == (12, 5)
    torch.testing.assert_close(linear_delta(x, both), expected, rtol=1e-6, atol=1e-6)
    kept = zero_rows(both, 0, 8)  # the q and k rows bypassed: only v's change is left
    only_v = expected.clone()
    only_v[..., :8] = 0
    assert torch.equal(linear_delta(x, kept)[..., :8], torch.zeros(3, 5, 8))
    torch.testing.assert_close(linear_delta(x, kept), only_v, rtol=1e-6, atol=1e-6)
    assert zero_rows(combine([q], 12), 0, 8) is None, "nothing left: no delta"
    full = LayerDelta(weight=torch.randn(4, 8, generator=g), out_slice=(4, 4))
    mixed = combine([q, full], 12)  # a full-weight slice makes the whole a full weight
    assert mixed.weight.shape == (12, 8)
    want = torch.zeros(3, 5, 12)
    want[..., 0:4] = linear_delta(x, q)
    want[..., 4:8] = linear_delta(x, full)
    torch.testing.assert_close(linear_delta(x, mixed), want, rtol=1e-5, atol=1e-5)
