"""Lowering of the depthwise convolution gradients (TFLite has neither as a builtin).

Notation (NHWC): input ``x`` [N, H, W, C], kernel ``w`` [kh, kw, C, M] (M = channel
multiplier), output gradient ``dy`` [N, Ho, Wo, C*M] whose channel ``c*M + m`` comes from input
channel c, strides (sh, sw), dilations (dh, dw), paddings (pt, pb) x (pl, pr), ``xp`` the padded
input. The forward depthwise convolution is

    y[n, p, q, c*M+m] = sum_{i, j} xp[n, p*sh + i*dh, q*sw + j*dw, c] * w[i, j, c, m].

**Filter gradient** (``DepthwiseConv2dNativeBackpropFilter``):

    dw[i, j, c, m] = sum_{n, p, q} xp[n, p*sh + i*dh, q*sw + j*dw, c] * dy[n, p, q, c*M+m].

* *slice form*: per kernel offset, the strided slice of ``xp`` reshaped [N*Ho*Wo, C, 1] times
  ``dy`` reshaped [N*Ho*Wo, C, M], summed over the first axis.
* *conv form*: fold the batch into the channels and read the sum over (p, q) as a depthwise
  convolution whose kernel is ``dy``: input ``xp`` as [1, Hp, Wp, N*C], kernel ``dy`` as
  [Ho, Wo, N*C, M] (stride -> dilation, dilation -> stride, VALID) gives [1, kh, kw, N*C*M];
  reshape [kh, kw, N, C*M] and sum over N. Needs a forward that is strided or dilated, not
  both (TF's depthwise kernels take a stride or a rate, never both).

**Input gradient** (``DepthwiseConv2dNativeBackpropInput``): with i' = kh-1-i the flipped tap,

    dx[n, h, w, c] = sum_{i', j', m} u[n, h + i'*dh, w + j'*dw, c*M+m] * w[kh-1-i', kw-1-j', c, m]

where ``u`` is ``dy`` upsampled by the stride (sh-1 zero rows after each row, likewise columns)
and shifted by (kh-1)*dh - pt rows and (kw-1)*dw - pl columns (padded or cropped so that it has
H + (kh-1)*dh rows). That is a VALID, stride-1, dilation-d depthwise convolution of ``u`` with
the flipped kernel reshaped [kh, kw, C*M, 1], then a sum over m. The upsampling is a reshape
to [N*Ho, 1, Wo, C*M], a pad to [N*Ho, sh, Wo, C*M] and a reshape back (then the same for W),
so every tensor stays within TFLite's 4-D PAD/RESHAPE limits.

Chosen (times: ``bench/results/2026-12-03-x86_64-2core-lowering-depthwise.md``, written by
``bench/studies/lowering_depthwise.py``):

* filter gradient: the conv form whenever it can express the case (:func:`use_conv_form`);
  the slice form pays a strided slice per tap (1.2-1.3x slower at stride 1 and M=1, 7-10x
  at stride 2 or M=2). The slice form when stride > 1 and dilation > 1 meet, or dilations
  differ per axis.
* every depthwise convolution goes through :func:`depthwise_valid`: TF's default CPU kernel
  refuses dilations and unequal strides, and this form runs on every TF CPU kernel.
* input gradient, stride 1 or dilated: the one form above. Strided (equal strides s > 1, no
  dilation) the *polyphase form* instead, because the form above convolves the zero-inserted
  gradient (s^2 times the positions, most of its products zeros): an input row h = q*s + r - pt
  is reached only by the taps i = r + s*j, so with J = ceil(k/s),

      D[n, q*s + rh, q'*s + rw, c]
          = sum_{j, j' < J} dy[n, q - j, q' - j', c] * w[rh + s*j, rw + s*j', c]

  (w zero beyond k, dy zero outside its range) is, per phase (rh, rw), a VALID JxJ depthwise
  convolution of ``dy`` padded by J-1 in front with that phase's flipped taps; the s^2 phases
  are concatenated phase-major on the channels and interleaved by DEPTH_TO_SPACE, and
  ``dx[h] = D[h + pt]``. MobileNetV2's block_1_depthwise at batch 8 (65x65 -> 32x32, 48
  channels): 4 convolutions of 2x2 taps over 34x34 against one of 3x3 over 67x67 (2.4 ms
  alone). MobileNetV2 0.35 @128 full fine-tuning at batch 8, same losses: 62.5 -> 60.1 ms
  and 61.2 -> 57.7 ms in two interleaved A/Bs at load 2, 64.5 -> 64.1 ms quiet
  (``bench/results/2026-12-07-x86_64-avx512-2core-ab-dw-polyphase.md``, ``...-forms.md``,
  ``...-ab-full8-quiet.md``): a small gain whichever figure holds, never a loss.

Both gradients are rearrangements of the same float32 products; only the summation order
differs from TF's kernels. TF 2.21's own gradient kernels cannot serve as references for
dilated cases: the default ones refuse dilations, the oneDNN ones are wrong with SAME padding
and fail with VALID, so the tests compare every case with float64 loops.
"""
from __future__ import annotations

import tensorflow as tf

from graph_passes.lowering.base import LoweringRule
from graph_passes.lowering.conv import (
    Window, check_conv, flip_spatial, pad_spatial, window)


def _fold_batch_into_channels(t: tf.Tensor) -> tf.Tensor:
    """[N, H, W, K] -> [H, W, N*K] (batch-major channels) through one 3-D transpose."""
    n, h, w, k = t.shape
    t = tf.transpose(tf.reshape(t, [n, h * w, k]), [1, 0, 2])
    return tf.reshape(t, [h, w, n * k])


def depthwise_valid(x: tf.Tensor, w: tf.Tensor, strides: tuple[int, int],
                    dilations: tuple[int, int]) -> tf.Tensor:
    """A VALID depthwise convolution in a form every TF CPU kernel runs, strided or dilated.

    TF's default CPU kernel (oneDNN off: CPUs without AVX-512-class features, or
    ``TF_ENABLE_ONEDNN_OPTS=0``) refuses ``DepthwiseConv2dNative`` with dilations and with
    unequal strides. A rate goes through ``tf.nn.depthwise_conv2d``'s space-to-batch, which
    the TFLite converter folds back into one dilated DEPTHWISE_CONV_2D
    (tests/lowering/test_depthwise.py checks the file), so the host runs everywhere and the
    device keeps the fast op."""
    if dilations != (1, 1):
        if strides != (1, 1):
            raise ValueError(f"strides {strides} with dilations {dilations}: TF has no depthwise "
                             "kernel for both")
        return tf.nn.depthwise_conv2d(x, w, [1, 1, 1, 1], "VALID", dilations=list(dilations))
    if strides[0] != strides[1]:
        raise ValueError(f"unequal strides {strides}: TF's default depthwise kernel refuses them")
    return tf.raw_ops.DepthwiseConv2dNative(input=x, filter=w, strides=[1, *strides, 1],
                                            padding="VALID")


def filter_grad_conv(x: tf.Tensor, dy: tf.Tensor, win: Window, multiplier: int) -> tf.Tensor:
    """dw as one depthwise convolution with the batch folded into channels (module doc)."""
    n, ho, wo, cm = dy.shape
    c = x.shape[3]
    (sh, sw), (dh, dw) = win.strides, win.dilations
    need_h = (win.kernel[0] - 1) * dh + (ho - 1) * sh + 1
    need_w = (win.kernel[1] - 1) * dw + (wo - 1) * sw + 1
    xp = pad_spatial(x, win.pads)[:, :need_h, :need_w, :]
    image = tf.expand_dims(_fold_batch_into_channels(xp), 0)
    kernel = tf.reshape(_fold_batch_into_channels(dy), [ho, wo, n * c, multiplier])
    grad = depthwise_valid(image, kernel, strides=(dh, dw), dilations=(sh, sw))
    grad = tf.reduce_sum(tf.reshape(grad, [win.kernel[0] * win.kernel[1], n, cm]), axis=1)
    return tf.reshape(grad, [win.kernel[0], win.kernel[1], c, multiplier])


def filter_grad_slices(x: tf.Tensor, dy: tf.Tensor, win: Window, multiplier: int) -> tf.Tensor:
    """dw per kernel offset: strided slice of xp times dy, summed over positions."""
    _, ho, wo, _ = dy.shape
    c = x.shape[3]
    (sh, sw), (dh, dw) = win.strides, win.dilations
    xp = pad_spatial(x, win.pads)
    grads_dy = tf.reshape(dy, [-1, c, multiplier])
    taps = []
    for i in range(win.kernel[0]):
        for j in range(win.kernel[1]):
            begin = [0, i * dh, j * dw, 0]
            end = [0, i * dh + (ho - 1) * sh + 1, j * dw + (wo - 1) * sw + 1, 0]
            patch = tf.strided_slice(xp, begin, end, [1, sh, sw, 1],
                                     begin_mask=0b1001, end_mask=0b1001)
            taps.append(tf.reduce_sum(tf.reshape(patch, [-1, c, 1]) * grads_dy, axis=0))
    return tf.reshape(tf.stack(taps), [win.kernel[0], win.kernel[1], c, multiplier])


def upsample(t: tf.Tensor, strides: tuple[int, int]) -> tf.Tensor:
    """Inserts s-1 zeros after every row (column) of an NHWC tensor: [N, H*sh, W*sw, K],
    with the original values at multiples of the stride. Stays 4-D (TFLite PAD/RESHAPE)."""
    n, h, w, k = t.shape
    sh, sw = strides
    if sh > 1:
        t = tf.pad(tf.reshape(t, [n * h, 1, w, k]), [[0, 0], [0, sh - 1], [0, 0], [0, 0]])
        h *= sh
        t = tf.reshape(t, [n, h, w, k])
    if sw > 1:
        t = tf.pad(tf.reshape(t, [n * h, w, 1, k]), [[0, 0], [0, 0], [0, sw - 1], [0, 0]])
        w *= sw
        t = tf.reshape(t, [n, h, w, k])
    return t


def _shift(t: tf.Tensor, axis: int, before: int, length: int) -> tf.Tensor:
    """Pads (positive) or crops (negative) ``before`` at the start of spatial ``axis`` and
    pads or crops the end so that the axis has ``length`` entries."""
    size = t.shape[axis]
    after = length - size - before
    pads = [[0, 0]] * 4
    pads[axis] = [max(before, 0), max(after, 0)]
    if max(before, 0) or max(after, 0):
        t = tf.pad(t, pads)
    start, stop = max(-before, 0), max(-before, 0) + length
    if start or stop != t.shape[axis]:
        begin, end = [0, 0, 0, 0], list(t.shape)
        begin[axis], end[axis] = start, stop
        t = tf.slice(t, begin, [e - b for b, e in zip(begin, end)])
    return t


def input_grad(w: tf.Tensor, dy: tf.Tensor, win: Window, in_shape) -> tf.Tensor:
    """dx by upsampling, shifting and a depthwise convolution with the flipped kernel."""
    n, h, wd, c = in_shape
    kh, kw, _, multiplier = w.shape
    u = upsample(dy, win.strides)
    for axis, size in ((1, h), (2, wd)):
        reach = (win.kernel[axis - 1] - 1) * win.dilations[axis - 1]
        u = _shift(u, axis, reach - win.pads[axis - 1][0], size + reach)
    flipped = tf.reshape(flip_spatial(w), [kh, kw, c * multiplier, 1])
    dx = depthwise_valid(u, flipped, strides=(1, 1), dilations=win.dilations)
    if multiplier == 1:
        return dx
    return tf.reshape(tf.reduce_sum(tf.reshape(dx, [n, h, wd * c, multiplier]), axis=3),
                      [n, h, wd, c])


def use_polyphase(win: Window) -> bool:
    """The polyphase input gradient: equal strides above 1 (one DEPTH_TO_SPACE block), no
    dilation (module doc)."""
    return win.strides[0] == win.strides[1] > 1 and win.dilations == (1, 1)


def input_grad_polyphase(w: tf.Tensor, dy: tf.Tensor, win: Window, in_shape) -> tf.Tensor:
    """dx as one small depthwise convolution per output phase, interleaved (module doc)."""
    n, h, wd, c = in_shape
    kh, kw, _, multiplier = w.shape
    s = win.strides[0]
    jh, jw = -(-kh // s), -(-kw // s)
    # w zero-padded to J*s taps per axis, as [J, s, J, s, C*M]: taps (j, r) = w[r + s*j]
    taps = tf.pad(tf.reshape(w, [kh, kw, c * multiplier]),
                  [[0, jh * s - kh], [0, jw * s - kw], [0, 0]])
    taps = tf.reshape(taps, [jh, s, jw, s, c * multiplier])
    (pt, _), (pl, _) = win.pads
    qh, qw = -(-(h + pt) // s), -(-(wd + pl) // s)   # phase rows/columns D needs
    # dy with J-1 zero rows (columns) in front and as many after as the phases read
    pads = ((jh - 1, qh - dy.shape[1]), (jw - 1, qw - dy.shape[2]))
    if min(pads[0] + pads[1]) >= 0:
        dyp = pad_spatial(dy, pads)      # one PAD (the usual case)
    else:
        dyp = _shift(_shift(dy, 1, jh - 1, qh + jh - 1), 2, jw - 1, qw + jw - 1)
    # one convolution per phase, concatenated phase-major as DEPTH_TO_SPACE reads them (one
    # convolution with the phases as a channel multiplier, then a 5-D transpose, ran the
    # whole MobileNetV2 batch-8 step no faster than the zero-inserted form:
    # bench/results/2026-12-07-x86_64-avx512-2core-ab-dw-polyphase-forms.md)
    phases = []
    for rh in range(s):
        for rw in range(s):
            kernel = flip_spatial(tf.reshape(taps[:, rh, :, rw, :], [jh, jw, c * multiplier, 1]))
            phases.append(depthwise_valid(dyp, kernel, strides=(1, 1), dilations=(1, 1)))
    dx = tf.nn.depth_to_space(tf.concat(phases, axis=3), s)   # [N, qh*s, qw*s, C*M]
    if (pt, pl) != (0, 0) or (qh * s, qw * s) != (h, wd):    # D[h + pt], one slice
        dx = tf.slice(dx, [0, pt, pl, 0], [n, h, wd, c * multiplier])
    if multiplier == 1:
        return dx
    return tf.reshape(tf.reduce_sum(tf.reshape(dx, [n, h, wd * c, multiplier]), axis=3),
                      [n, h, wd, c])


class DepthwiseBackpropFilterRule(LoweringRule):
    """DepthwiseConv2dNativeBackpropFilter -> the form chosen by :func:`use_conv_form`."""

    op_type = "DepthwiseConv2dNativeBackpropFilter"

    def check(self, graph, node):
        return check_conv(graph, node, [node.input[0], node.input[2], node.name])

    def inputs(self, graph, node):
        # filter_sizes is not read: the kernel shape is this node's static output shape.
        return [node.input[0], node.input[2]]

    def build(self, graph, node, x, dy):
        kh, kw, _, multiplier = graph.spec(node.name).shape
        win = window(graph, node, (kh, kw), tuple(x.shape[1:3]), tuple(dy.shape[1:3]))
        if use_conv_form(win):
            return [filter_grad_conv(x, dy, win, multiplier)]
        return [filter_grad_slices(x, dy, win, multiplier)]


def use_conv_form(win: Window) -> bool:
    """The measured choice (module doc): the conv form whenever :func:`depthwise_valid` can
    express its convolution, whose strides are the forward dilations and whose dilations are
    the forward strides: a strided or a dilated forward, not both, and no unequal dilations
    (they would become unequal strides, which TF's default depthwise kernel refuses)."""
    strided, dilated = win.strides != (1, 1), win.dilations != (1, 1)
    return not (strided and dilated) and win.dilations[0] == win.dilations[1]


class DepthwiseBackpropInputRule(LoweringRule):
    """DepthwiseConv2dNativeBackpropInput -> the polyphase form when strided, else upsample
    (a no-op at stride 1), shift, flipped depthwise conv."""

    op_type = "DepthwiseConv2dNativeBackpropInput"

    def check(self, graph, node):
        return check_conv(graph, node, [node.input[1], node.input[2], node.name])

    def inputs(self, graph, node):
        # input_sizes is not read: the input shape is this node's static output shape.
        return [node.input[1], node.input[2]]

    def build(self, graph, node, w, dy):
        shape = graph.spec(node.name).shape
        win = window(graph, node, tuple(w.shape[:2]), tuple(shape[1:3]), tuple(dy.shape[1:3]))
        if use_polyphase(win):
            return [input_grad_polyphase(w, dy, win, shape)]
        return [input_grad(w, dy, win, shape)]


RULES = [DepthwiseBackpropFilterRule(), DepthwiseBackpropInputRule()]
