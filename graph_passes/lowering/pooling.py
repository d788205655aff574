"""Pooling gradients (MaxPoolGrad, AvgPoolGrad) as slices, selects, pads and reshapes.

Notation: input X of shape [N, H, W, C], window kh x kw, strides sh x sw, output grid
Ho x Wo, incoming gradient G of shape [N, Ho, Wo, C]. With SAME padding the input is padded by
``top = pad_h // 2`` rows (``pad_h = max((Ho-1)*sh + kh - H, 0)``), likewise ``left``; window
(a, b) then covers padded rows ``a*sh + i`` and columns ``b*sw + j`` for the offsets
0 <= i < kh, 0 <= j < kw.

Both gradients have the form "each window sends a share of G[a, b] to each of its positions":

    dX[a*sh + i - top, b*sw + j - left] += S_ij[a, b]

with the share S_ij:

* AvgPoolGrad: ``S_ij = G * (1 / count)`` for every offset. ``count`` is kh*kw for VALID and, for
  SAME, the number of window positions inside the input (TF excludes the padding); it is a
  numpy constant computed here from the static shapes.
* MaxPoolGrad: ``S_ij = G`` where offset (i, j) is the window's *first* maximum in row-major
  order, else 0. That is TF's CPU kernel (it keeps the first position whose value is strictly
  greater than the running max): with ``M`` the pool output and ``X_ij`` the strided slice of
  the padded input at offset (i, j), walking the offsets in row-major order,

      take_ij = (X_ij == M) and valid_ij and not taken_before,    taken |= take_ij

  where ``valid_ij`` (a constant) masks window positions that fall in the padding, so the
  padding value never matters. Overlapping windows (e.g. 3x3 stride 2) add up.

The scatter is done without 6-D tensors or a scatter op. Write the padded row as
``r = p + sh*q`` with phase ``p = i % sh`` and ``q = a + i // sh``: all offsets of one phase
(p, pq) land on one low-resolution grid of size Qh x Qw (Qh = Ho + (kh-1)//sh), each shifted
by (i // sh, j // sw), i.e. a PAD and an ADD at the resolution of G. The sh*sw phase grids are
then interleaved: concatenating the sw phases of a row along channels and reshaping
[N, Qh, Qw, sw*C] -> [N, Qh, Qw*sw, C] interleaves columns; concatenating the sh results along
axis 2 and reshaping [N, Qh, sh*Qw*sw, C] -> [N, Qh*sh, Qw*sw, C] interleaves rows. A final
pad/slice crops the padded frame back to H x W. For ksize == strides this is exactly
DEPTH_TO_SPACE; every tensor stays 4-D.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from graph_passes.lowering.base import LoweringRule, require_float32, require_nhwc


@dataclasses.dataclass(frozen=True)
class _Window:
    """The static geometry of a 2-D pooling along H and W."""
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    ksize: tuple[int, int]
    strides: tuple[int, int]
    pad_before: tuple[int, int]

    def offsets(self):
        """(i, j) window offsets in row-major order (TF's tie-breaking order)."""
        return [(i, j) for i in range(self.ksize[0]) for j in range(self.ksize[1])]

    def valid(self, i: int, j: int) -> np.ndarray:
        """[Ho, Wo] booleans: window position (i, j) lies inside the unpadded input."""
        axes = []
        for d, offset in enumerate((i, j)):
            pos = np.arange(self.out_hw[d]) * self.strides[d] + offset - self.pad_before[d]
            axes.append((pos >= 0) & (pos < self.in_hw[d]))
        return axes[0][:, None] & axes[1][None, :]

    def counts(self) -> np.ndarray:
        """[Ho, Wo] number of window positions inside the input (AvgPool's divisor)."""
        return sum(self.valid(i, j).astype(np.float32) for i, j in self.offsets())


def _window(graph, node, in_shape, out_shape) -> _Window:
    ksize, strides = graph.attr(node, "ksize"), graph.attr(node, "strides")
    pads = []
    for d in range(2):
        total = (out_shape[1 + d] - 1) * strides[1 + d] + ksize[1 + d] - in_shape[1 + d]
        same = graph.attr(node, "padding") == "SAME"
        pads.append(max(total, 0) // 2 if same else 0)
    return _Window(tuple(in_shape[1:3]), tuple(out_shape[1:3]), tuple(ksize[1:3]),
                   tuple(strides[1:3]), tuple(pads))


def _check_pool(graph, node, shapes) -> str | None:
    """Shared check: NHWC float32, static 4-D shapes, SAME/VALID, no pooling over N or C."""
    reason = require_nhwc(graph, node) or require_float32(graph, node)
    if reason:
        return reason
    if graph.attr(node, "padding") not in ("SAME", "VALID"):
        return f"padding {graph.attr(node, 'padding')} is not supported (only SAME and VALID)"
    for key in ("ksize", "strides"):
        value = graph.attr(node, key)
        if len(value) != 4 or value[0] != 1 or value[3] != 1:
            return f"{key} {value} pools over batch or channels (only [1, kh, kw, 1])"
    for shape in shapes:
        if shape is None or len(shape) != 4 or any(d is None for d in shape):
            return f"needs static 4-D shapes, got {shape}"
    return None


def _scatter_windows(shares: dict, window: _Window) -> tf.Tensor:
    """Sums ``shares[(i, j)]`` ([N, Ho, Wo, C]) into [N, H, W, C] at rows a*sh + i - top and
    columns b*sw + j - left (the phase interleave of the module docstring)."""
    (kh, kw), (sh, sw), (ho, wo) = window.ksize, window.strides, window.out_hw
    qh, qw = ho + (kh - 1) // sh, wo + (kw - 1) // sw
    some = next(iter(shares.values()))
    n, c = some.shape[0], some.shape[3]
    rows = []
    for p in range(sh):
        phases = []
        for pq in range(sw):
            grid = tf.zeros([n, qh, qw, c], some.dtype)
            for (i, j), share in shares.items():
                if i % sh == p and j % sw == pq:
                    di, dj = i // sh, j // sw
                    grid += tf.pad(share, [[0, 0], [di, qh - ho - di], [dj, qw - wo - dj], [0, 0]])
            phases.append(grid)
        rows.append(tf.reshape(tf.concat(phases, axis=3), [n, qh, qw * sw, c]))
    full = tf.reshape(tf.concat(rows, axis=2), [n, qh * sh, qw * sw, c])
    return _crop(full, window)


def _crop(full: tf.Tensor, window: _Window) -> tf.Tensor:
    """Cuts the padded frame [N, Qh*sh, Qw*sw, C] down to the input's [N, H, W, C]; rows past
    the last window (VALID with a remainder) get zeros."""
    (top, left), (h, w) = window.pad_before, window.in_hw
    extra_h, extra_w = max(top + h - full.shape[1], 0), max(left + w - full.shape[2], 0)
    if extra_h or extra_w:
        full = tf.pad(full, [[0, 0], [0, extra_h], [0, extra_w], [0, 0]])
    return full[:, top:top + h, left:left + w, :]


class MaxPoolGradRule(LoweringRule):
    """MaxPoolGrad(orig_input, orig_output, grad): first-maximum routing (module docstring)."""
    op_type = "MaxPoolGrad"

    def check(self, graph, node):
        return _check_pool(graph, node, [graph.spec(r).shape for r in node.input[:3]])

    def build(self, graph, node, orig_input, orig_output, grad):
        window = _window(graph, node, orig_input.shape, orig_output.shape)
        padded = self._pad_input(orig_input, window)
        taken = tf.zeros(grad.shape, tf.bool)
        zeros = tf.zeros_like(grad)
        shares = {}
        for i, j in window.offsets():
            take = tf.equal(self._slice(padded, window, i, j), orig_output)
            valid = window.valid(i, j)
            if not valid.all():
                take = tf.logical_and(take, tf.constant(valid[None, :, :, None]))
            take = tf.logical_and(take, tf.logical_not(taken))
            taken = tf.logical_or(taken, take)
            shares[(i, j)] = tf.where(take, grad, zeros)
        return [_scatter_windows(shares, window)]

    @staticmethod
    def _pad_input(x: tf.Tensor, window: _Window) -> tf.Tensor:
        """Pads so every window lies inside; the padded values are masked by ``valid``."""
        pads = [[0, 0]]
        for d in range(2):
            covered = (window.out_hw[d] - 1) * window.strides[d] + window.ksize[d]
            before = window.pad_before[d]
            pads.append([before, max(covered - before - window.in_hw[d], 0)])
        pads.append([0, 0])
        return tf.pad(x, pads) if any(p for pair in pads for p in pair) else x

    @staticmethod
    def _slice(padded: tf.Tensor, window: _Window, i: int, j: int) -> tf.Tensor:
        """X_ij: the value at offset (i, j) of every window, [N, Ho, Wo, C]."""
        (sh, sw), (ho, wo) = window.strides, window.out_hw
        return padded[:, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw, :]


class AvgPoolGradRule(LoweringRule):
    """AvgPoolGrad(orig_input_shape, grad): G / count spread over each window."""
    op_type = "AvgPoolGrad"

    def check(self, graph, node):
        return _check_pool(graph, node, [graph.spec(node.name).shape,
                                         graph.spec(node.input[1]).shape])

    def inputs(self, graph, node):
        """Only the gradient: the input shape is static (read from the node's output spec)."""
        return [node.input[1]]

    def build(self, graph, node, grad):
        window = _window(graph, node, graph.spec(node.name).shape, grad.shape)
        # TF's kernel multiplies by the float32 reciprocal of the count; so does this.
        scale = (1.0 / window.counts()).astype(np.float32)
        share = grad * tf.constant(scale[None, :, :, None])
        return [_scatter_windows({offset: share for offset in window.offsets()}, window)]


RULES = [MaxPoolGradRule(), AvgPoolGradRule()]
