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

from typing import NamedTuple

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


class ConvConfig(NamedTuple):
    """A convolution test case: input [n, h, w, c], a kh x kw kernel [kh, kw, c, out], one
    stride and one dilation for both spatial axes, TF's padding ("SAME", "VALID", or
    "EXPLICIT" with an 8-list given alongside). h=1 with kh=1 is Keras' Conv1D."""
    n: int
    h: int
    w: int
    c: int
    out: int                 # output channels, or the depthwise channel multiplier
    kh: int
    kw: int
    stride: int
    dilation: int
    padding: str
    depthwise: bool = False

    @property
    def kernel_shape(self) -> tuple[int, int, int, int]:
        return (self.kh, self.kw, self.c, self.out)

    def attrs(self, explicit=None) -> dict:
        """The raw gradient ops' strides, dilations and padding (``explicit``: TF's 8-list)."""
        s, d = self.stride, self.dilation
        extra = {"explicit_paddings": explicit} if explicit else {}
        return dict(strides=[1, s, s, 1], dilations=[1, d, d, 1],
                    padding="EXPLICIT" if explicit else self.padding, **extra)

    def arrays(self, seed=0, explicit=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Random float32 (x, kernel, dy), dy shaped like the forward's output."""
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((self.n, self.h, self.w, self.c)).astype(np.float32)
        kernel = rng.standard_normal(self.kernel_shape).astype(np.float32)
        ho, wo = output_hw((self.h, self.w), (self.kh, self.kw), *geometry(self, explicit))
        channels = self.c * self.out if self.depthwise else self.out
        dy = rng.standard_normal((self.n, ho, wo, channels)).astype(np.float32)
        return x, kernel, dy

    def reference(self, x, kernel, dy, explicit=None) -> tuple[np.ndarray, np.ndarray]:
        """(dw, dx) by the float64 loops below (the module docstring says why not TF's)."""
        return conv_grads(x, kernel, dy, *geometry(self, explicit), depthwise=self.depthwise)


def geometry(config: ConvConfig, explicit=None):
    """(strides, dilations, pads) of a test config; ``explicit``: TF's 8-list of paddings
    for EXPLICIT padding."""
    s, d = config.stride, config.dilation
    pads = pads_of("EXPLICIT" if explicit else config.padding, (config.h, config.w),
                   (config.kh, config.kw), (s, s), (d, d), explicit)
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

