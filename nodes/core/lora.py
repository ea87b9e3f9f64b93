"""Per-row LoRA deltas (no ComfyUI): ``delta(x) = scale * up(down(x))`` or a full weight delta.

A style's LoRA is applied only to the batch rows of that style's branch (design Sec. 2), so the
UNet weights are never merged or copied: each patched layer keeps the low-rank factors of every
style and adds the delta on its own rows.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F  # noqa: N812


@dataclass
class LayerDelta:
    """The delta one style adds to one layer.

    Low-rank form: ``down`` ``[r, in(,k,k)]``, ``up`` ``[out, r(,1,1)]``, ``scale = strength*alpha/r``.
    Full form: ``weight`` of the layer's weight shape (LoHa, LoKr, DoRA, diff and LoCon-with-mid files),
    already multiplied by the strength. ``bias`` is an optional bias delta.

    ``out_slice``: ``(offset, size)`` when the delta acts on part of the layer's output features only (a Flux
    LoRA's ``to_q`` on the fused ``qkv`` Linear): ``up``/``weight``/``bias`` then have ``size`` output rows and the
    delta is added to ``out[..., offset:offset+size]``. None (every SD LoRA): the whole output.
    """

    down: torch.Tensor | None = None
    up: torch.Tensor | None = None
    scale: float = 1.0
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    out_slice: tuple[int, int] | None = None

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.down, self.up, self.weight, self.bias) if t is not None)

    def to(self, device, dtype) -> LayerDelta:
        def cv(t):
            return None if t is None else t.to(device=device, dtype=dtype)

        return LayerDelta(cv(self.down), cv(self.up), self.scale, cv(self.weight), cv(self.bias), self.out_slice)

    def folded(self, device, dtype) -> LayerDelta:
        """On ``device``/``dtype`` with the scale folded into ``up`` (one multiply fewer per call)."""
        if self.up is None or self.scale == 1.0:
            return self.to(device, dtype)
        up = (self.up.float() * self.scale).to(device=device, dtype=dtype)
        return LayerDelta(
            self.down.to(device=device, dtype=dtype),
            up,
            1.0,
            *(None if t is None else t.to(device=device, dtype=dtype) for t in (self.weight, self.bias)),
            self.out_slice,
        )

    def out_range(self, out_features: int) -> tuple[int, int]:
        """``(start, stop)`` of the output features this delta changes in a layer with ``out_features`` outputs."""
        if self.out_slice is None:
            return 0, int(out_features)
        offset, size = self.out_slice
        return int(offset), int(offset) + int(size)

    def without_rows(self, start: int, stop: int, out_features: int) -> LayerDelta | None:
        """This delta with the output features ``[start, stop)`` left out (what a bypassed q/k slice of a fused
        Linear needs), or None when nothing is left. Only a delta lying wholly inside or outside the range, or a
        whole-output one, can be cut; ValueError otherwise."""
        lo, hi = self.out_range(out_features)
        if hi <= start or lo >= stop:
            return self
        if start <= lo and hi <= stop:
            return None
        if self.out_slice is not None:
            raise ValueError(f"a delta on output features [{lo}, {hi}) cannot be cut at [{start}, {stop})")
        keep = [(a, b) for a, b in ((0, start), (stop, out_features)) if b > a]
        if len(keep) != 1:
            raise ValueError(f"cutting [{start}, {stop}) out of [0, {out_features}) leaves two parts")
        a, b = keep[0]

        def rows(t):
            return None if t is None else t[a:b]

        return replace(self, up=rows(self.up), weight=rows(self.weight), bias=rows(self.bias), out_slice=(a, b - a))


def combine(deltas: list[LayerDelta], out_features: int) -> LayerDelta:
    """One whole-output delta holding ``deltas`` (one style's deltas on slices of one fused Linear, as a Flux LoRA's
    ``to_q``/``to_k``/``to_v`` on ``qkv``), so a layer applies a style in one matmul pair. Low-rank deltas stack
    their factors (``down`` rows concatenated, each ``up`` placed on its output rows, scale folded); any full-weight
    or bias delta makes the result a full weight."""
    if len(deltas) == 1 and deltas[0].out_slice is None:
        return deltas[0]
    if all(d.down is not None and d.weight is None and d.bias is None for d in deltas):
        down = torch.cat([d.down.flatten(1).float() for d in deltas])
        up = torch.zeros(out_features, down.shape[0])
        col = 0
        for d in deltas:
            lo, hi = d.out_range(out_features)
            r = d.down.shape[0]
            up[lo:hi, col : col + r] = d.up.flatten(1).float() * d.scale
            col += r
        return LayerDelta(down=down, up=up, scale=1.0)
    in_features = next(d.down.flatten(1).shape[1] if d.weight is None else d.weight.shape[1] for d in deltas)
    weight = torch.zeros(out_features, in_features)
    bias = None
    for d in deltas:
        lo, hi = d.out_range(out_features)
        if d.weight is not None:
            weight[lo:hi] += d.weight.flatten(1).float()
        elif d.down is not None:
            weight[lo:hi] += (d.up.flatten(1).float() @ d.down.flatten(1).float()) * d.scale
        if d.bias is not None:
            bias = torch.zeros(out_features) if bias is None else bias
            bias[lo:hi] += d.bias.float()
    return LayerDelta(weight=weight, bias=bias)


def zero_rows(d: LayerDelta, start: int, stop: int) -> LayerDelta | None:
    """Whole-output delta ``d`` with output features ``[start, stop)`` left out (a bypassed q/k slice of a fused
    Linear), or None when nothing else is left."""
    if d.out_slice is not None:
        raise ValueError("zero_rows: combine the slices first")

    def cut(t):
        if t is None:
            return None
        t = t.clone()
        t[start:stop] = 0
        return t

    out = replace(d, up=cut(d.up), weight=cut(d.weight), bias=cut(d.bias))
    left = [t for t in (out.up, out.weight, out.bias) if t is not None]
    return out if any(bool(t.any()) for t in left) else None


def linear_delta(x: torch.Tensor, d: LayerDelta) -> torch.Tensor:
    """Delta output of a Linear layer for input ``x`` ``[..., in]``."""
    if d.weight is not None:
        out = F.linear(x, d.weight)
    else:
        out = F.linear(F.linear(x, d.down.flatten(1)), d.up.flatten(1))
        if d.scale != 1.0:
            out = out * d.scale
    if d.bias is not None:
        out = out + d.bias
    return out


def add_linear_delta_(out: torch.Tensor, x: torch.Tensor, d: LayerDelta) -> torch.Tensor:
    """``out`` (a Linear's output for ``x``, ``[..., out]``) plus the delta on its slice, in place; returns ``out``."""
    delta = linear_delta(x, d).to(out.dtype)
    if d.out_slice is None:
        return out.add_(delta)
    offset, size = d.out_slice
    out[..., offset : offset + size].add_(delta)
    return out


def conv2d_delta(x: torch.Tensor, d: LayerDelta, stride, padding, dilation, groups: int = 1) -> torch.Tensor:
    """Delta output of a Conv2d layer for input ``x`` ``[B,in,H,W]`` (same geometry as the layer)."""
    if d.weight is not None:
        out = F.conv2d(x, d.weight, None, stride, padding, dilation, groups)
    else:
        down = d.down if d.down.ndim == 4 else d.down[:, :, None, None]
        up = d.up if d.up.ndim == 4 else d.up[:, :, None, None]
        h = F.conv2d(x, down, None, stride, padding, dilation, groups)
        out = F.conv2d(h, up)
        if d.scale != 1.0:
            out = out * d.scale
    if d.bias is not None:
        out = out + d.bias.view(1, -1, 1, 1)
    return out


def dora_weight(weight: torch.Tensor, delta: torch.Tensor, magnitude: torch.Tensor, strength: float) -> torch.Tensor:
    """The DoRA weight ``W'`` (Liu et al., arXiv 2402.09353, eq. 5) at ``strength``, as the library that wrote the
    magnitude defines it. ``delta`` is the low-rank (or LoHa/LoKr) update at strength 1 with its alpha scaling,
    ``weight`` the layer's weight ``[out, in(, k, k)]``.

    The magnitude's layout says which library wrote it:

    - ``[out]`` (peft's ``lora_magnitude_vector``, flattened; or ``[1, out, 1, 1]`` where ``out != in``):
      ``W' = m * V / ||V||`` with ``V = W + strength*delta`` and the norm per output row, no epsilon;
      strength scales the LoRA inside the norm as peft's adapter weight does.
    - ``[out, 1(, 1, 1)]`` (LyCORIS, ``wd_on_output``) or ``[1, in(, 1, 1)]`` (LyCORIS, norm per input column):
      ``V = W + delta``, ``s = m / (||V|| + eps)``, ``W' = V * (strength*(s - 1) + 1)`` (LyCORIS's multiplier).

    ValueError for any other layout.
    """
    w = weight.to(torch.float32)
    d = delta.to(torch.float32)
    m = magnitude.to(torch.float32)
    out_dim, in_dim = w.shape[0], w.shape[1]
    ones = [1] * (w.ndim - 1)
    if m.ndim == w.ndim and m.shape[0] == 1 and m.numel() == out_dim and m.shape[1] == out_dim != in_dim:
        m = m.reshape(-1)  # peft's conv layout [1, out, 1, 1], told from LyCORIS's [1, in, 1, 1] by its size
    if m.ndim == 1 and m.shape[0] == out_dim:
        v = w + float(strength) * d
        norm = v.reshape(out_dim, -1).norm(dim=1)
        return v * (m / norm).reshape(out_dim, *ones)
    eps = torch.finfo(torch.float32).eps
    v = w + d
    if m.ndim == w.ndim and m.shape[0] == out_dim and m.numel() == out_dim:
        norm = v.reshape(out_dim, -1).norm(dim=1).reshape(out_dim, *ones)
    elif m.ndim == w.ndim and m.shape[1] == in_dim and m.numel() == in_dim:
        norm = v.transpose(0, 1).reshape(in_dim, -1).norm(dim=1).reshape(1, in_dim, *ones[1:])
    else:
        raise ValueError(
            f"DoRA magnitude of shape {list(m.shape)} fits neither peft's [out] nor LyCORIS's [out, 1...] / [1, in...] "
            f"layout for a weight of shape {list(w.shape)}"
        )
    scale = m.reshape(norm.shape) / (norm + eps)
    if strength != 1.0:
        scale = float(strength) * (scale - 1) + 1
    return v * scale
