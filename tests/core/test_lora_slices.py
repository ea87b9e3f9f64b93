"""LayerDelta on a slice of a fused Linear's output (Flux's qkv / linear1, design Sec. 6), no ComfyUI."""

from __future__ import annotations

import pytest
import torch
from comfyui_diffstyler.nodes.core.lora import LayerDelta, add_linear_delta_, linear_delta


def factors(out: int, rank: int = 3, inp: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rank, inp, generator=g), torch.randn(out, rank, generator=g)


def test_whole_output_delta_is_unchanged():
    down, up = factors(12)
    d = LayerDelta(down, up, 0.5)  # positional construction as before: no slice
    assert d.out_slice is None and d.out_range(12) == (0, 12)
    x = torch.randn(2, 5, 8)
    base = torch.randn(2, 5, 12)
    want = base + 0.5 * (x @ down.t() @ up.t())
    assert torch.allclose(add_linear_delta_(base.clone(), x, d), want, atol=1e-6)
    assert torch.allclose(linear_delta(x, d), want - base, atol=1e-6)


def test_slice_delta_adds_to_its_rows_only_and_survives_casts():
    down, up = factors(4)
    d = LayerDelta(down, up, 2.0, out_slice=(4, 4))
    assert d.out_range(12) == (4, 8)
    x = torch.randn(3, 8)
    out = add_linear_delta_(torch.zeros(3, 12), x, d)
    assert torch.all(out[:, :4] == 0) and torch.all(out[:, 8:] == 0)
    assert torch.allclose(out[:, 4:8], 2.0 * (x @ down.t() @ up.t()), atol=1e-5)
    for moved in (d.to("cpu", torch.float64), d.folded("cpu", torch.float64)):
        assert moved.out_slice == (4, 4)
        assert torch.allclose(
            add_linear_delta_(torch.zeros(3, 12, dtype=torch.float64), x.double(), moved), out.double()
        )
    full = LayerDelta(weight=torch.randn(4, 8), bias=torch.randn(4), out_slice=(8, 4))
    got = add_linear_delta_(torch.zeros(3, 12), x, full)
    assert torch.allclose(got[:, 8:], x @ full.weight.t() + full.bias) and torch.all(got[:, :8] == 0)


def test_without_rows_cuts_the_bypassed_q_k_rows():
    h = 4
    x = torch.randn(2, 8)
    q, k, v = (LayerDelta(*factors(h, seed=i), 1.5, out_slice=(i * h, h)) for i in range(3))
    assert q.without_rows(0, 2 * h, 3 * h) is None and k.without_rows(0, 2 * h, 3 * h) is None
    assert v.without_rows(0, 2 * h, 3 * h) is v
    down, up = factors(3 * h, seed=5)
    whole = LayerDelta(down, up, 0.7)
    cut = whole.without_rows(0, 2 * h, 3 * h)
    assert cut.out_slice == (2 * h, h) and cut.up.shape == (h, 3) and torch.equal(cut.down, down)
    full = add_linear_delta_(torch.zeros(2, 3 * h), x, whole)
    kept = add_linear_delta_(torch.zeros(2, 3 * h), x, cut)
    assert torch.all(kept[:, : 2 * h] == 0) and torch.allclose(kept[:, 2 * h :], full[:, 2 * h :])
    w = LayerDelta(weight=torch.randn(7 * h, 8))
    assert w.without_rows(0, 2 * h, 7 * h).weight.shape == (5 * h, 8)
    with pytest.raises(ValueError, match="cannot be cut"):
        LayerDelta(*factors(2 * h), out_slice=(h, 2 * h)).without_rows(0, 2 * h, 3 * h)
    with pytest.raises(ValueError, match="leaves two parts"):
        whole.without_rows(h, 2 * h, 3 * h)
