"""Lowering of the Conv2D gradients that TFLite has no builtin for.

Notation (NHWC): input ``x`` [N, H, W, Ci], kernel ``w`` [kh, kw, Ci, Co], output gradient
``dy`` [N, Ho, Wo, Co], strides (sh, sw), dilations (dh, dw), and ``xp`` the input padded by the
forward convolution's padding (pt, pb) x (pl, pr). The forward convolution is

    y[n, p, q, o] = sum_{i, j, c} xp[n, p*sh + i*dh, q*sw + j*dw, c] * w[i, j, c, o].

``Conv2DBackpropFilter`` (no TFLite builtin) is its derivative in ``w``:

    dw[i, j, c, o] = sum_{n, p, q} xp[n, p*sh + i*dh, q*sw + j*dw, c] * dy[n, p, q, o].

For one kernel offset (i, j) the sum is a matrix product: the strided slice
``xp[:, i*dh :: sh, j*dw :: sw, :]`` reshaped [N*Ho*Wo, Ci], transposed, times ``dy`` reshaped
[N*Ho*Wo, Co]. Forms in builtins:

* **matmul form** (im2col): the kh*kw slices are concatenated along channels into patches
  [N*Ho*Wo, kh*kw*Ci] and one matmul ``patches^T @ dy`` gives [kh*kw*Ci, Co], reshaped to
  the kernel. A 1x1 kernel is the case kh*kw = 1: one (strided) slice and one matmul.
  *Channel-major* (:func:`filter_grad_channel_major`) is the same with positions as the last
  axis (a FULLY_CONNECTED).
* **conv form**: read the sum over (n, p, q) as a VALID convolution whose *batch* is Ci, whose
  *channels* are N and whose *kernel* is dy: ``conv2d(transpose(xp, [3, 1, 2, 0]),
  transpose(dy, [1, 2, 0, 3]), strides=(dh, dw), dilations=(sh, sw))`` is [Ci, kh, kw, Co];
  the forward stride becomes the dilation and the forward dilation the stride.

Chosen by :func:`filter_grad_form`, first match wins (per-form times:
``bench/results/2026-12-03-x86_64-2core-lowering-conv-filter.md``):

* 1x1 kernel: matmul form; one slice and one matmul, 2-2.5x faster than the conv form.
* N*Ho*Wo <= Co (deep layers, small batches): matmul form; its patches are then no larger
  than the kernel, and the conv form a tiny convolution (whole steps:
  ``bench/results/2026-12-03-x86_64-2core-depth.md`` before, ``...-kxk-matmul-depth.md``
  after).
* stride > 1 and dilation > 1 on one axis: matmul form; the conv form cannot express it.
* otherwise: conv form; strided it is 2.3-3x faster (the slice forms are dominated by PAD and
  STRIDED_SLICE on narrow channels), at stride 1 it builds no kh*kw-fold patches (on the one
  stride-1 case measured the slice forms are ahead: to revisit).
* channel-major: never; the converter schedules its patches (forward activations only)
  early, so on whole models they live across the forward/backward boundary and raise the
  peak; not until a schedule keeps them short-lived (reorder, or a per-layer choice).

``Conv2DBackpropInput`` becomes TRANSPOSE_CONV in the converter, except with dilations > 1 or
EXPLICIT padding (converting the raw op with builtins only refuses both). Chosen (op times:
``bench/results/2026-12-03-x86_64-2core-lowering-weight-conv.md``, parts 2 and 3):

* stride-1 1x1, trained (runtime) kernel: one batch matmul (:func:`takes_1x1_matmul`);
  TRANSPOSE_CONV with a runtime kernel runs on TFLite's slow builtin kernel.
* stride-1 kxk: the "full" correlation of ``dy`` with the flipped kernel,

      dx[n, p, q, c] = sum_{i, j, o} dyp[n, p + i, q + j, o] * w[kh-1-i, kw-1-j, c, o],

  ``dyp`` = ``dy`` padded by k-1 minus the forward padding per side, as one matmul per kernel
  offset accumulated (:func:`input_grad_offsets`): no patches. TRANSPOSE_CONV with a runtime
  kernel is 1.8-2.8x slower and keeps a col2im scratch buffer (not in the timeline; whole
  models: ``bench/results/2026-11-25-x86_64-2core-memory.md``). Until 12-07 the offsets were
  concatenated into patches for one matmul (:func:`input_grad_matmul`): the kh*kw slices and
  their kh*kw-fold concatenation, all alive at the CONCATENATION, were the step's peak when a
  kxk layer trained below another (digits CNN conv2 + conv3: 184,568 -> 79,096 bytes of
  activations, full fine-tuning 229,816 -> 124,344, steps 0.92-1.12x;
  ``bench/results/2026-12-07-x86_64-2core-kxk-input-grad.md``, ResNet-18 half:
  ``...-ab-kxk-resnet.md``). A CONV_2D with the runtime kernel as its filter (the converter and
  ai-edge-litert accept it) measured lower still in the timeline and no slower, but its
  kernel may allocate an im2col buffer of the patches' size outside the graph, which the
  timeline (what the search budgets) would not see: not chosen.
* stride-1 kxk with a runtime kernel and no more input positions than output channels (deep
  layers, small batches; :func:`takes_kernel_as_is`): the same correlation as one batch matmul
  per kernel offset with the kernel as it is, summed, the flip done by listing the patches in
  reverse (:func:`input_grad_kernel_as_is`). The flipped, transposed, reshaped kernel of the
  form above was three copies of a variable read each step (constant kernels fold them).
* stride-1 kxk with a constant kernel (a frozen layer between trained ones): the same
  correlation as a VALID CONV_2D of the padded ``dy`` with the flipped, transposed kernel
  folded to a constant (:func:`input_grad_conv`): XNNPACK's, and no patches.
* strided, or a constant 1x1 kernel (a frozen layer's, which XNNPACK takes): TRANSPOSE_CONV.
* EXPLICIT padding: the VALID transposed convolution onto the padded input size, then a crop
  (the forward convolution over ``xp`` with VALID padding is the EXPLICIT one).
* dilation d: the undilated convolution with a kernel of size (k-1)*d+1 that has d-1 zero
  rows/columns between its taps (SAME padding is unchanged: same effective kernel size).

Plain nodes (``applies`` is False) are left to the converter.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from graph_passes.constants import is_constant
from graph_passes.ir import Graph, parse_ref
from graph_passes.lowering.base import LoweringRule, require_float32, require_nhwc


@dataclasses.dataclass(frozen=True)
class Window:
    """Static geometry of one 2-D convolution: what every form of its gradients needs."""

    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilations: tuple[int, int]
    pads: tuple[tuple[int, int], tuple[int, int]]  # (before, after) for H and W


def window(graph: Graph, node: tf.compat.v1.NodeDef, kernel: tuple[int, int],
           in_hw: tuple[int, int], out_hw: tuple[int, int]) -> Window:
    """Reads strides, dilations and padding from ``node`` and resolves SAME/VALID/EXPLICIT
    into explicit per-side paddings, using TF's SAME rule (the extra row goes after)."""
    strides = tuple(graph.attr(node, "strides")[1:3])
    dilations = tuple(graph.attr(node, "dilations", [1, 1, 1, 1])[1:3])
    padding = graph.attr(node, "padding")
    pads = []
    for axis in range(2):
        if padding == "EXPLICIT":
            explicit = graph.attr(node, "explicit_paddings")
            pads.append((explicit[2 + 2 * axis], explicit[3 + 2 * axis]))
        elif padding == "SAME":
            extent = (kernel[axis] - 1) * dilations[axis] + 1
            total = max((out_hw[axis] - 1) * strides[axis] + extent - in_hw[axis], 0)
            pads.append((total // 2, total - total // 2))
        else:
            pads.append((0, 0))
    return Window(kernel, strides, dilations, tuple(pads))


def check_conv(graph: Graph, node: tf.compat.v1.NodeDef, tensors: list[str]) -> str | None:
    """Shared check: NHWC, float32, 4-D tensors with static shapes, strides/dilations only on
    the spatial axes."""
    reason = require_nhwc(graph, node) or require_float32(graph, node)
    if reason:
        return reason
    for ref in tensors:
        shape = graph.spec(ref).shape
        if shape is None or len(shape) != 4 or any(d is None for d in shape):
            return f"tensor {ref} has no static 4-D shape ({shape}); static shapes are needed"
    for key in ("strides", "dilations"):
        values = graph.attr(node, key, [1, 1, 1, 1])
        if values[0] != 1 or values[3] != 1:
            return f"{key} {values} act on batch or channels (only spatial ones are supported)"
    return None


def pad_spatial(x: tf.Tensor, pads) -> tf.Tensor:
    """Zero-pads the H and W axes of an NHWC tensor (no op when every padding is 0)."""
    if not any(any(p) for p in pads):
        return x
    return tf.pad(x, [[0, 0], list(pads[0]), list(pads[1]), [0, 0]])


def offset_slices(xp: tf.Tensor, win: Window, out_hw: tuple[int, int]) -> list[tf.Tensor]:
    """For each kernel offset (i, j), offsets major, the strided slice of the padded input
    that meets output position (p, q): kh*kw tensors [N, Ho, Wo, C]."""
    (sh, sw), (dh, dw), (ho, wo) = win.strides, win.dilations, out_hw
    slices = []
    for i in range(win.kernel[0]):
        for j in range(win.kernel[1]):
            begin = [0, i * dh, j * dw, 0]
            end = [0, i * dh + (ho - 1) * sh + 1, j * dw + (wo - 1) * sw + 1, 0]
            if begin[1:3] == [0, 0] and end[1:3] == list(xp.shape[1:3]) and (sh, sw) == (1, 1):
                slices.append(xp)  # the whole tensor: a STRIDED_SLICE would only copy it
                continue
            slices.append(tf.strided_slice(xp, begin, end, [1, sh, sw, 1],
                                           begin_mask=0b1001, end_mask=0b1001))
    return slices


def filter_patches(xp: tf.Tensor, win: Window, out_hw: tuple[int, int]) -> tf.Tensor:
    """The offset slices concatenated along channels: [N, Ho, Wo, kh*kw*C], offsets major,
    channels minor."""
    slices = offset_slices(xp, win, out_hw)
    return slices[0] if len(slices) == 1 else tf.concat(slices, axis=3)


def offset_patches(xp: tf.Tensor, win: Window, out_hw: tuple[int, int],
                   flipped: bool = False) -> tf.Tensor:
    """The offset slices stacked on two leading axes instead of concatenated along channels:
    [kh, kw, N*Ho*Wo, C], slice (i, j) at [i, j]; with ``flipped`` at [kh-1-i, kw-1-j], the
    spatial flip of a kernel done on the patches (free: the slices are listed in reverse)
    instead of on the kernel (two REVERSE_V2 of it per step)."""
    c = xp.shape[3]
    slices = [tf.reshape(s, [-1, c]) for s in offset_slices(xp, win, out_hw)]
    if flipped:
        slices.reverse()
    return tf.reshape(tf.stack(slices), [win.kernel[0], win.kernel[1], -1, c])


def kernel_as_is_matmul(patches: tf.Tensor, w: tf.Tensor, transpose_b: bool) -> tf.Tensor:
    """sum over the kernel offsets (i, j) of patches[i, j] @ w[i, j] (``w[i, j]^T`` with
    ``transpose_b``): one BATCH_MATMUL with batch dims [kh, kw] and a SUM over them. The
    runtime kernel is read as it is: no RESHAPE (a copy of a variable read each step: TFLite
    reshapes a dynamic tensor by copying), no TRANSPOSE, no REVERSE_V2 of it."""
    return tf.reduce_sum(tf.matmul(patches, w, transpose_b=transpose_b), axis=[0, 1])


def filter_grad_matmul(x: tf.Tensor, dy: tf.Tensor, win: Window) -> tf.Tensor:
    """dw = patches^T @ dy over all N*Ho*Wo positions; [kh, kw, Ci, Co] (see module doc)."""
    _, ho, wo, co = dy.shape
    ci = x.shape[3]
    patches = filter_patches(pad_spatial(x, win.pads), win, (ho, wo))
    if win.kernel == (1, 1):  # [1, 1, Ci, Co] straight from a batch matmul: no reshape copy
        return tf.matmul(tf.reshape(patches, [1, 1, -1, ci]), tf.reshape(dy, [1, 1, -1, co]),
                         transpose_a=True)
    grad = tf.matmul(tf.reshape(patches, [-1, win.kernel[0] * win.kernel[1] * ci]),
                     tf.reshape(dy, [-1, co]), transpose_a=True)
    return tf.reshape(grad, [win.kernel[0], win.kernel[1], ci, co])


def filter_grad_channel_major(x: tf.Tensor, dy: tf.Tensor, win: Window) -> tf.Tensor:
    """The matmul form with positions last: x transposed to [Ci, N, H, W] and dy to
    [Co, N*Ho*Wo] once, slices on the last two axes, so the matmul is patches [K*Ci, M] @
    dy^T (see module doc)."""
    _, ho, wo, co = dy.shape
    ci = x.shape[3]
    xt = tf.transpose(pad_spatial(x, win.pads), [3, 0, 1, 2])
    (sh, sw), (dh, dw) = win.strides, win.dilations
    sl = []
    for i in range(win.kernel[0]):
        for j in range(win.kernel[1]):
            sl.append(tf.reshape(tf.strided_slice(
                xt, [0, 0, i * dh, j * dw],
                [0, 0, i * dh + (ho - 1) * sh + 1, j * dw + (wo - 1) * sw + 1],
                [1, 1, sh, sw], begin_mask=3, end_mask=3), [ci, -1]))
    patches = sl[0] if len(sl) == 1 else tf.concat(sl, 0)
    dyt = tf.transpose(tf.reshape(dy, [-1, co]))
    grad = tf.matmul(patches, dyt, transpose_b=True)
    return tf.reshape(grad, [win.kernel[0], win.kernel[1], ci, co])


def filter_grad_conv(x: tf.Tensor, dy: tf.Tensor, win: Window) -> tf.Tensor:
    """dw as one convolution over transposed tensors (see module doc).

    Needs stride 1 or dilation 1 per axis. The padded input is cropped to exactly the rows
    the kernel reaches, so the VALID convolution's output is exactly [Ci, kh, kw, Co].

    The zero padding is applied in whichever layout has the longer innermost axis (the
    transposed one, [Ci, H, W, N], when N > Ci): TFLite's PAD copies one innermost run at a
    time. MobileNetV2's 3-channel image at batch 8: transpose then pad 0.78 ms, pad then
    transpose 1.59 ms; at batch 1 0.49 against 0.18, and [8, 64, 64, 16] 1.11 against 0.74
    (``python -m bench.studies.pad_order``,
    ``bench/results/2026-12-07-x86_64-avx512-2core-pad-order.md``). The whole MobileNetV2
    full batch-8 step: 64.1 -> 60.9 ms quiet (``...-ab-full8-quiet.md``), no change
    measurable at load 2.9 (``...-ab-pad-order-full8.md``)."""
    _, ho, wo, _ = dy.shape
    (sh, sw), (dh, dw) = win.strides, win.dilations
    need_h = (win.kernel[0] - 1) * dh + (ho - 1) * sh + 1
    need_w = (win.kernel[1] - 1) * dw + (wo - 1) * sw + 1
    if x.shape[0] > x.shape[3]:
        xt = pad_spatial(tf.transpose(x, [3, 1, 2, 0]), win.pads)[:, :need_h, :need_w, :]
    else:
        xt = tf.transpose(pad_spatial(x, win.pads)[:, :need_h, :need_w, :], [3, 1, 2, 0])
    grad = tf.nn.conv2d(xt, tf.transpose(dy, [1, 2, 0, 3]),
                        strides=[1, dh, dw, 1], padding="VALID", dilations=[1, sh, sw, 1])
    return tf.transpose(grad, [1, 2, 0, 3])


class Conv2DBackpropFilterRule(LoweringRule):
    """Conv2DBackpropFilter -> the conv form, or the matmul form for 1x1 kernels and for
    stride and dilation both > 1 (module doc)."""

    op_type = "Conv2DBackpropFilter"

    def check(self, graph, node):
        return check_conv(graph, node, [node.input[0], node.input[2], node.name])

    def inputs(self, graph, node):
        # filter_sizes is not read: the kernel shape is this node's static output shape.
        return [node.input[0], node.input[2]]

    def build(self, graph, node, x, dy):
        kernel = graph.spec(node.name).shape
        win = window(graph, node, tuple(kernel[:2]), tuple(x.shape[1:3]), tuple(dy.shape[1:3]))
        positions = int(np.prod(dy.shape[:3]))
        return [FILTER_GRAD_FORMS[filter_grad_form(win, positions, dy.shape[3])](x, dy, win)]


def filter_grad_form(win: Window, positions: int | None = None,
                     out_channels: int | None = None) -> str:
    """The measured choice (module doc): matmul for 1x1 kernels and where the output has no
    more positions (N*Ho*Wo) than channels, the conv form for every other kernel it can
    express (per axis, stride 1 or dilation 1), else matmul. Channel-major is faster at stride
    1 but its patches cost memory on whole models (module doc).

    Few positions (deep layers, small batches) make the conv form a convolution over a tiny
    image: ResNet-18-style layer4 at batch 1 (3x3 256->256 over 3x3) is a CONV_2D of
    [256, 5, 5, 1] by a [3, 3, 1, 256] kernel, against a [2304, 9] @ [9, 256] matmul whose
    patches are no larger than the kernel (whole steps:
    ``bench/results/2026-12-03-x86_64-2core-depth.md`` before, ``...-kxk-matmul-depth.md``
    after)."""
    if win.kernel == (1, 1):
        return "matmul"
    if positions is not None and out_channels is not None and positions <= out_channels:
        return "matmul"
    if all(s == 1 or d == 1 for s, d in zip(win.strides, win.dilations)):
        return "conv"
    return "matmul"


FILTER_GRAD_FORMS = {"matmul": filter_grad_matmul, "channel_major": filter_grad_channel_major,
                     "conv": filter_grad_conv}


def dilate_kernel(w: tf.Tensor, dilations: tuple[int, int]) -> tf.Tensor:
    """Inserts d-1 zero taps between a [kh, kw, A, B] kernel's taps along H and W, giving
    [(kh-1)*dh+1, (kw-1)*dw+1, A, B]: the undilated kernel equivalent to the dilated one."""
    kh, kw, a, b = w.shape
    dh, dw = dilations
    if dh > 1:
        w = tf.reshape(w, [kh, 1, kw * a * b])
        w = tf.pad(w, [[0, 0], [0, dh - 1], [0, 0]])
        w = tf.reshape(w, [kh * dh, kw, a, b])[: (kh - 1) * dh + 1]
    if dw > 1:
        rows = w.shape[0]
        w = tf.reshape(w, [rows * kw, 1, a * b])
        w = tf.pad(w, [[0, 0], [0, dw - 1], [0, 0]])
        w = tf.reshape(w, [rows, kw * dw, a, b])[:, : (kw - 1) * dw + 1]
    return w


# bench/studies/kxk_input_grad.py: one form for every stride-1 kxk input gradient of a
# runtime kernel (to measure the forms against each other); None: the rules above
FORCED_INPUT_GRAD_FORM = None


class Conv2DBackpropInputRule(LoweringRule):
    """Conv2DBackpropInput with dilations or EXPLICIT padding -> the undilated, VALID/SAME
    form that the converter turns into TRANSPOSE_CONV (module doc)."""

    op_type = "Conv2DBackpropInput"

    def applies(self, graph, node):
        # strided SAME/VALID cases convert to TRANSPOSE_CONV as they are
        dilated = any(d != 1 for d in graph.attr(node, "dilations", [1, 1, 1, 1]))
        return (dilated or graph.attr(node, "padding") == "EXPLICIT"
                or input_grad_matmul_window(graph, node) is not None
                or takes_1x1_matmul(graph, node))

    def check(self, graph, node):
        return check_conv(graph, node, [node.input[1], node.input[2], node.name])

    def inputs(self, graph, node):
        # input_sizes is not read: the input shape is this node's static output shape.
        return [node.input[1], node.input[2]]

    def build(self, graph, node, w, dy):
        shape = list(graph.spec(node.name).shape)
        if takes_1x1_matmul(graph, node):
            return [input_grad_1x1(w, dy, shape)]
        full = input_grad_matmul_window(graph, node)
        if full is not None and is_constant(graph, node.input[1]):
            return [input_grad_conv(w, dy, full, shape)]
        if full is not None and FORCED_INPUT_GRAD_FORM is not None:
            return [FORCED_INPUT_GRAD_FORM(w, dy, full, shape)]
        if full is not None and takes_kernel_as_is(graph, node):
            return [input_grad_kernel_as_is(w, dy, full, shape)]
        if full is not None:
            return [input_grad_offsets(w, dy, full, shape)]
        win = window(graph, node, tuple(w.shape[:2]), tuple(shape[1:3]), tuple(dy.shape[1:3]))
        padding = graph.attr(node, "padding")
        if win.dilations != (1, 1):
            w = dilate_kernel(w, win.dilations)
        if padding == "EXPLICIT":
            (pt, pb), (pl, pr) = win.pads
            padded = [shape[0], shape[1] + pt + pb, shape[2] + pl + pr, shape[3]]
            dx = self._transpose_conv(padded, w, dy, win, "VALID")
            return [dx[:, pt:pt + shape[1], pl:pl + shape[2], :]]
        return [self._transpose_conv(shape, w, dy, win, padding)]

    @staticmethod
    def _transpose_conv(shape, w, dy, win, padding):
        return tf.raw_ops.Conv2DBackpropInput(
            input_sizes=tf.constant(shape, tf.int32), filter=w, out_backprop=dy,
            strides=[1, *win.strides, 1], padding=padding)


def flip_spatial(w: tf.Tensor) -> tf.Tensor:
    """``w`` with its first two (spatial) axes reversed, one axis per reverse:
    tflite-runtime 2.14's REVERSE_V2 silently reverses only the first axis of a multi-axis
    reverse (tests/portability/test_runtime_portability.py found it; export refuses such
    reverses)."""
    return tf.reverse(tf.reverse(w, [0]), [1])


def input_grad_matmul_window(graph: Graph, node) -> Window | None:
    """For a stride-1, undilated kxk input gradient, the window of the "full" correlation
    that computes it (dy padded by k-1 minus the forward padding on each side), else None:
    strided and dilated cases stay TRANSPOSE_CONV, and so do 1x1 kernels (no patches to
    save: the transposed convolution is already one matmul)."""
    if graph.attr(node, "data_format", "NHWC") != "NHWC":
        return None
    kernel_shape = graph.spec(node.input[1]).shape
    shape, dy_shape = graph.spec(node.name).shape, graph.spec(node.input[2]).shape
    if None in (kernel_shape, shape, dy_shape) or tuple(kernel_shape[:2]) == (1, 1):
        return None
    if any(v != 1 for v in graph.attr(node, "strides") + graph.attr(node, "dilations",
                                                                    [1, 1, 1, 1])):
        return None
    kernel = tuple(kernel_shape[:2])
    win = window(graph, node, kernel, tuple(shape[1:3]), tuple(dy_shape[1:3]))
    pads = tuple((k - 1 - before, k - 1 - after) for k, (before, after) in zip(kernel, win.pads))
    if any(p < 0 for pair in pads for p in pair):
        return None  # padding wider than the kernel: leave it to the general form
    return Window(kernel, (1, 1), (1, 1), pads)


def input_grad_matmul(w: tf.Tensor, dy: tf.Tensor, full: Window, shape) -> tf.Tensor:
    """dx = patches(dy padded) @ flipped kernel: dx[n, p, q, c] = sum_{i, j, o}
    dyp[n, p + i, q + j, o] * w[kh-1-i, kw-1-j, c, o] (stride 1)."""
    kh, kw, ci, co = w.shape
    flipped = flip_spatial(tf.transpose(w, [0, 1, 3, 2]))   # [kh, kw, Co, Ci]
    patches = filter_patches(pad_spatial(dy, full.pads), full, tuple(shape[1:3]))
    dx = tf.matmul(tf.reshape(patches, [-1, kh * kw * co]), tf.reshape(flipped, [kh * kw * co, ci]))
    return tf.reshape(dx, shape)


def input_grad_conv(w: tf.Tensor, dy: tf.Tensor, full: Window, shape) -> tf.Tensor:
    """The correlation of :func:`input_grad_matmul` as a VALID convolution of the padded
    ``dy`` with the flipped, transposed kernel, for a constant (frozen) kernel: the flip and
    transpose fold at compile time, and a CONV_2D with a constant filter is XNNPACK's, with no
    patches (kh*kw times ``dy``) in the arena. Between two trained layers of the digits CNN
    (bench/studies/search_tasks.py) the patches of the frozen conv3's input gradient were the
    step's peak: ``bench/results/2026-12-06-x86_64-2core-split.md``."""
    flipped = flip_spatial(tf.transpose(w, [0, 1, 3, 2]))   # [kh, kw, Co, Ci]
    dx = tf.nn.conv2d(pad_spatial(dy, full.pads), flipped, 1, "VALID")
    return tf.reshape(dx, shape)


def takes_kernel_as_is(graph: Graph, node) -> bool:
    """A stride-1 kxk input gradient of a trained (runtime) kernel whose per-offset products
    ([kh, kw, N*H*W, Ci]) are no larger than the kernel, N*H*W <= Co, as in
    :func:`filter_grad_form` (deep layers, small batches). A constant kernel's flip and
    transpose are folded at compile time; a runtime one's were a TRANSPOSE, two REVERSE_V2 and
    a RESHAPE copy of the whole kernel every step."""
    kernel, shape = graph.spec(node.input[1]).shape, graph.spec(node.name).shape
    if is_constant(graph, node.input[1]) or None in (kernel, shape) or None in shape:
        return False
    return int(np.prod(shape[:3])) <= kernel[3]


def input_grad_kernel_as_is(w: tf.Tensor, dy: tf.Tensor, full: Window, shape) -> tf.Tensor:
    """dx[n, p, q, c] = sum_{i, j} sum_o dyp[n, p + kh-1-i, q + kw-1-j, o] * w[i, j, c, o]: the
    full correlation of :func:`input_grad_matmul` with the flip moved onto the patches
    (``offset_patches(flipped=True)``) and the kernel read as it is, transposed by the matmul."""
    patches = offset_patches(pad_spatial(dy, full.pads), full, tuple(shape[1:3]), flipped=True)
    return tf.reshape(kernel_as_is_matmul(patches, w, transpose_b=True), shape)


def input_grad_offsets(w: tf.Tensor, dy: tf.Tensor, full: Window, shape) -> tf.Tensor:
    """The correlation of :func:`input_grad_matmul` as kh*kw matmuls accumulated, one per
    kernel offset, with no patches: ``dx = sum_{i, j} dyp[:, i:i+H, j:j+W, :] @
    w[kh-1-i, kw-1-j]^T`` (the kernel's slice read as it is, transposed by the matmul).
    Only one offset's slice of ``dyp`` and the running sum are needed at a time, against
    kh*kw slices plus their kh*kw-fold concatenation for the patches."""
    kh, kw, ci, co = w.shape
    dyp = pad_spatial(dy, full.pads)
    slices = offset_slices(dyp, full, tuple(shape[1:3]))
    dx = None
    for k, piece in enumerate(slices):
        i, j = divmod(k, kw)
        # 4-D operands: a BATCH_MATMUL, which XNNPACK takes with a runtime right-hand side;
        # a 2-D matmul of a runtime kernel converts to FULLY_CONNECTED, which it does not
        # (ResNet-18 half @96, full, batch 8: 169.4 ms a step that way against 150.8 with
        # the patches, bench/results/2026-12-07-x86_64-2core-ab-kxk-resnet-full.md)
        term = tf.matmul(tf.reshape(piece, [1, 1, -1, co]),
                         w[kh - 1 - i:kh - i, kw - 1 - j:kw - j], transpose_b=True)
        dx = term if dx is None else dx + term
    return tf.reshape(dx, shape)


def takes_1x1_matmul(graph: Graph, node) -> bool:
    """A stride-1 1x1 input gradient whose kernel is a runtime tensor (a trained weight):
    TFLite runs TRANSPOSE_CONV with a runtime kernel on its slow builtin kernel, a batch
    matmul of the kernel as it is takes half the time or less (MobileNetV2's Conv_1 and
    block_16_project: ``bench/results/2026-12-03-x86_64-2core-lowering-weight-conv.md``, part
    3; whole steps with it: ``bench/results/2026-12-03-x86_64-2core-depth.md``). A constant
    kernel (a frozen layer's) stays TRANSPOSE_CONV, which XNNPACK takes."""
    kernel = graph.spec(node.input[1]).shape
    if kernel is None or tuple(kernel[:2]) != (1, 1) or is_constant(graph, node.input[1]):
        return False
    return (graph.attr(node, "data_format", "NHWC") == "NHWC"
            and graph.attr(node, "padding") in ("SAME", "VALID")
            and all(v == 1 for v in graph.attr(node, "strides")))


def input_grad_1x1(w: tf.Tensor, dy: tf.Tensor, shape) -> tf.Tensor:
    """The stride-1 input gradient of a 1x1 convolution, dx = dy @ w^T per position, as one
    batch matmul with the kernel as it is ([1, 1, Ci, Co], batch dims broadcast): no reshape
    copy of the variable read, and no TRANSPOSE_CONV with a runtime kernel."""
    co = w.shape[3]
    dx = tf.matmul(tf.reshape(dy, [1, 1, -1, co]), w, transpose_b=True)
    return tf.reshape(dx, shape)


def reads_signature_inputs(graph: Graph, ref: str) -> bool:
    """Whether ``ref`` depends on a signature input (x, y, the learning rate): true of a
    gradient, false of a kernel computed from weights and constants only."""
    feeds = set(graph.inputs.values())
    seen, stack = set(), [ref]
    while stack:
        name = parse_ref(stack.pop())[0]
        if name in seen:
            continue
        seen.add(name)
        if f"{name}:0" in feeds or name in feeds:
            return True
        stack.extend(graph.nodes[name].input)
    return False


class WeightConv2DRule(LoweringRule):
    """Conv2D whose kernel is a trained weight -> im2col patches and one matmul.

    TFLite runs a CONV_2D whose filter is not a constant on its builtin kernel (XNNPACK only
    takes static filters) with a filter transpose each call, 3.4-4x slower than the same
    convolution with constant weights; a BATCH_MATMUL of two runtime tensors is delegated, and
    patches + matmul take 1.5-2.6x less time than that CONV_2D
    (``bench/results/2026-12-03-x86_64-2core-lowering-weight-conv.md``, part 1). Taken only where
    the patches pay on whole models:

    * 1x1 kernels at least as large as their input activation (trained layers near the head:
      MobileNetV2's last conv has a 112*1280 = 143,360-element kernel and a 4*4*112 =
      1,792-element input at batch 1). They need no patches at stride 1 (a reshape) and one
      strided slice otherwise; over large activations the reshapes are copies (the backward
      still reads the input) that ate the gain on whole models.
    * kxk kernels whose patches ([N*Ho*Wo, kh*kw*Ci], kh*kw times the input) are no larger than
      the kernel, i.e. N*Ho*Wo <= Co as in :func:`filter_grad_form` (deep layers at small
      batches): taking every kxk kernel lost on whole models, the STRIDED_SLICEs over narrow
      early layers eating the matmul's gain. With this rule and the filter gradient's matmul
      form at few positions the ResNet-18-style steps went, BN frozen: last:2 4.52 -> 3.68 ms
      and last:4 10.96 -> 8.47 ms at batch 1, last:4 37.9 -> 28.3 ms at batch 8
      (``bench/results/2026-12-03-x86_64-2core-depth.md`` before, ``...-kxk-matmul-depth.md``
      after); the cost is memory at batch 8, where the patches of layer4 live across the step.
    * never a "kernel" that is a gradient (the conv form of a filter gradient): it reads
      signature inputs.

    A 1x1 kernel is used as it is, [1, 1, Ci, Co], by a batch matmul whose batch dims
    broadcast: reshaping it to [Ci, Co] copied the variable read every step (112*1280*4 B =
    573 KB for MobileNetV2's last conv). A kxk kernel likewise, [kh, kw, Ci, Co], against
    patches stacked per offset, [kh, kw, N*Ho*Wo, Ci], the products summed over the offsets
    (:func:`kernel_as_is_matmul`; TFLite reshapes a variable read by copying it)."""

    op_type = "Conv2D"

    def applies(self, graph, node):
        kernel = node.input[1]
        shape = graph.spec(kernel).shape
        x_shape = graph.spec(node.input[0]).shape
        out_shape = graph.spec(node.name).shape
        if any(s is None or None in s for s in (shape, x_shape, out_shape)):
            return False
        if tuple(shape[:2]) == (1, 1):
            large = np.prod(shape) < np.prod(x_shape)
        else:   # kxk: patches no larger than the kernel, N*Ho*Wo <= Co (docstring), as in
            large = np.prod(out_shape[:3]) > shape[3]   # filter_grad_form
        if large:
            return False  # large activations: the reshapes' copies eat the gain (docstring)
        return not is_constant(graph, kernel) and not reads_signature_inputs(graph, kernel)

    def check(self, graph, node):
        return check_conv(graph, node, [node.input[0], node.input[1], node.name])

    def build(self, graph, node, x, w):
        n, ho, wo, co = graph.spec(node.name).shape
        kh, kw, ci, _ = w.shape
        win = window(graph, node, (kh, kw), tuple(x.shape[1:3]), (ho, wo))
        xp = pad_spatial(x, win.pads)
        if (kh, kw) == (1, 1):  # the kernel as it is, [1, 1, Ci, Co]: batch dims broadcast
            y = tf.matmul(tf.reshape(filter_patches(xp, win, (ho, wo)), [1, 1, -1, ci]), w)
        else:   # the kernel as it is too: one batch matmul per offset, summed
            y = kernel_as_is_matmul(offset_patches(xp, win, (ho, wo)), w, transpose_b=False)
        return [tf.reshape(y, [n, ho, wo, co])]


RULES = [Conv2DBackpropFilterRule(), Conv2DBackpropInputRule(), WeightConv2DRule()]
