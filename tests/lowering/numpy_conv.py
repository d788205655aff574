"""Float64 numpy references for the 2-D convolution gradients, ordinary and depthwise.

TF's own gradient ops cannot be the reference everywhere: its default CPU kernels (no
oneDNN: CPUs without AVX-512-class features, or ``TF_ENABLE_ONEDNN_OPTS=0``) refuse
dilations in ``Conv2DBackpropFilter``/``Conv2DBackpropInput`` and in every depthwise op, and
its oneDNN depthwise gradients are wrong with dilation and SAME padding. These loops run
everywhere and compute the same sums in float64, so a test's verdict does not depend on the
CPU. ``test_numpy_reference_is_adjoint`` (in test_conv.py and test_depthwise.py) checks them
against TF's forward ops (which run everywhere) through <conv(x, w), dy> = <w, dw> = <x, dx>.

Notation as in ``graph_passes/lowering/conv.py``: x [N, H, W, C], w [kh, kw, C, O] (depthwise:
[kh, kw, C, M], output channel c*M + m), dy [N, Ho, Wo, O or C*M].
"""
from __future__ import annotations

import numpy as np


def same_pads(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    """TF's SAME padding (before, after) of one spatial axis."""
    out = -(-size // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


def pads_of(padding: str, in_hw, kernel_hw, strides, dilations, explicit=None):
    """((pt, pb), (pl, pr)) for SAME, VALID, or EXPLICIT (``explicit``: TF's 8-list)."""
    if padding == "EXPLICIT":
        return (tuple(explicit[2:4]), tuple(explicit[4:6]))
    if padding == "VALID":
        return ((0, 0), (0, 0))
    return tuple(same_pads(n, k, s, d)
                 for n, k, s, d in zip(in_hw, kernel_hw, strides, dilations))


def geometry(config, explicit=None):
    """(strides, dilations, pads) of a test config ``(N, H, W, C, X, kh, kw, stride,
    dilation, padding)`` (X: output channels or depthwise multiplier); ``explicit``: TF's
    8-list of paddings for EXPLICIT padding."""
    _, h, w, _, _, kh, kw, s, d, padding = config
    pads = pads_of("EXPLICIT" if explicit else padding, (h, w), (kh, kw), (s, s), (d, d),
                   explicit)
    return (s, s), (d, d), pads


def output_hw(in_hw, kernel_hw, strides, dilations, pads) -> tuple[int, int]:
    """Spatial size of the forward convolution's output."""
    return tuple((n + p0 + p1 - (k - 1) * d - 1) // s + 1
                 for n, k, s, d, (p0, p1) in zip(in_hw, kernel_hw, strides, dilations, pads))


def conv_grads(x, w, dy, strides, dilations, pads, depthwise: bool = False):
    """(dw, dx) in float64 by direct loops over kernel offsets: for each (i, j) the strided
    window of the padded input that meets the output positions."""
    n, h, wd, c = x.shape
    kh, kw = w.shape[:2]
    (sh, sw), (dh, dw_), ((pt, pb), (pl, pr)) = strides, dilations, pads
    ho, wo = dy.shape[1:3]
    xp = np.pad(x.astype(np.float64), [(0, 0), (pt, pb), (pl, pr), (0, 0)])
    g = dy.astype(np.float64)
    wt = w.astype(np.float64)
    if depthwise:
        g = g.reshape(n, ho, wo, c, w.shape[3])
    grad_w = np.zeros(w.shape)
    grad_xp = np.zeros_like(xp)
    for i in range(kh):
        for j in range(kw):
            rows = slice(i * dh, i * dh + (ho - 1) * sh + 1, sh)
            cols = slice(j * dw_, j * dw_ + (wo - 1) * sw + 1, sw)
            if depthwise:
                grad_w[i, j] = np.einsum("npqc,npqcm->cm", xp[:, rows, cols], g)
                grad_xp[:, rows, cols] += np.einsum("npqcm,cm->npqc", g, wt[i, j])
            else:
                grad_w[i, j] = np.einsum("npqc,npqo->co", xp[:, rows, cols], g)
                grad_xp[:, rows, cols] += np.einsum("npqo,co->npqc", g, wt[i, j])
    return grad_w, grad_xp[:, pt:pt + h, pl:pl + wd]

