"""Depthwise convolution gradient lowerings: structure, numbers in TF and on ai-edge-litert,
declines."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from graph_passes.lower import LoweringError
from graph_passes.lowering.depthwise import DepthwiseBackpropFilterRule, DepthwiseBackpropInputRule
from tests.litert_helpers import run_on_litert
from tests.lowering.graph_helpers import as_function, graph_of, lower_all, run_tf

# (N, H, W, C, M, kh, kw, stride, dilation, padding)
CONFIGS = {
    "1x1_s1_m1": (2, 5, 5, 3, 1, 1, 1, 1, 1, "VALID"),
    "3x3_s1_same_m1": (2, 8, 8, 4, 1, 3, 3, 1, 1, "SAME"),
    "3x3_s1_valid_m2": (1, 7, 9, 3, 2, 3, 3, 1, 1, "VALID"),
    "3x3_s2_same_odd_m1": (2, 9, 9, 4, 1, 3, 3, 2, 1, "SAME"),
    "3x3_s2_same_even_m2": (1, 10, 8, 3, 2, 3, 3, 2, 1, "SAME"),
    "3x3_s2_valid_m1": (2, 10, 11, 2, 1, 3, 3, 2, 1, "VALID"),
    "3x3_d2_same_m2": (1, 9, 10, 3, 2, 3, 3, 1, 2, "SAME"),
    "3x3_d2_valid_m1": (2, 11, 11, 2, 1, 3, 3, 1, 2, "VALID"),
    "5x5_s2_same_m1": (2, 11, 10, 3, 1, 5, 5, 2, 1, "SAME"),
    "5x5_s1_same_m2": (1, 8, 8, 2, 2, 5, 5, 1, 1, "SAME"),
    "1x3_s1_same_m1": (3, 1, 16, 4, 1, 1, 3, 1, 1, "SAME"),
}
LITERT = ["3x3_s1_valid_m2", "3x3_s2_same_odd_m1", "3x3_d2_same_m2", "5x5_s2_same_m1"]


def arrays(config, seed=0):
    n, h, w, c, m, kh, kw, s, d, padding = config
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    kernel = rng.standard_normal((kh, kw, c, m)).astype(np.float32)
    out = tf.raw_ops.DepthwiseConv2dNative(input=x, filter=kernel, **attrs(config))
    dy = rng.standard_normal(out.shape).astype(np.float32)
    return x, kernel, dy


def attrs(config):
    *_, s, d, padding = config
    return dict(strides=[1, s, s, 1], dilations=[1, d, d, 1], padding=padding)


def filter_op(config):
    c, m, kh, kw = config[3], config[4], config[5], config[6]
    return lambda x, dy: tf.raw_ops.DepthwiseConv2dNativeBackpropFilter(
        input=x, filter_sizes=[kh, kw, c, m], out_backprop=dy, **attrs(config))


def input_op(config):
    return lambda w, dy: tf.raw_ops.DepthwiseConv2dNativeBackpropInput(
        input_sizes=list(config[:4]), filter=w, out_backprop=dy, **attrs(config))


def same_pads(size, k, s, d):
    out = -(-size // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2

def depthwise_grads_numpy(x, w, dy, s, d, padding):
    """(dw, dx) of the depthwise conv by direct loops over kernel offsets, in float64."""
    n, h, wd, c = x.shape
    kh, kw, _, m = w.shape
    ho, wo = dy.shape[1:3]
    (pt, pb), (pl, pr) = ((same_pads(h, kh, s, d), same_pads(wd, kw, s, d))
                          if padding == "SAME" else ((0, 0), (0, 0)))
    xp = np.pad(x.astype(np.float64), [(0, 0), (pt, pb), (pl, pr), (0, 0)])
    g = dy.astype(np.float64).reshape(n, ho, wo, c, m)
    dw = np.zeros((kh, kw, c, m))
    dxp = np.zeros_like(xp)
    for i in range(kh):
        for j in range(kw):
            rows = slice(i * d, i * d + (ho - 1) * s + 1, s)
            cols = slice(j * d, j * d + (wo - 1) * s + 1, s)
            dw[i, j] = np.einsum("npqc,npqcm->cm", xp[:, rows, cols], g)
            dxp[:, rows, cols] += np.einsum("npqcm,cm->npqc", g, w[i, j])
    return dw, dxp[:, pt:pt + h, pl:pl + wd]


def reference(config, x, kernel, dy):
    """(dw, dx): TF's raw ops where they are right; for dilation > 1 the numpy loops, because
    TF 2.21's CPU (oneDNN) depthwise backprop kernels return wrong values with SAME padding
    and fail with VALID padding when dilated (checked against the loops, which
    test_numpy_reference_is_adjoint checks against the forward op)."""
    *_, s, d, padding = config
    if d > 1:
        return depthwise_grads_numpy(x, kernel, dy, s, d, padding)
    return (filter_op(config)(x, dy).numpy(), input_op(config)(kernel, dy).numpy())


def assert_close(actual, expected, rtol):
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * scale)


def lowered(op, rule, *inputs):
    graph = graph_of(op, *inputs)
    assert lower_all(graph, rule) == 1
    assert graph.op_histogram()[rule.op_type] == 0
    return graph


@pytest.mark.parametrize("name", CONFIGS)
def test_filter_grad_in_tf(name):
    op = filter_op(CONFIGS[name])
    x, kernel, dy = arrays(CONFIGS[name])
    graph = lowered(op, DepthwiseBackpropFilterRule(), x, dy)
    assert_close(run_tf(graph, x, dy), reference(CONFIGS[name], x, kernel, dy)[0], 1e-5)


@pytest.mark.parametrize("name", CONFIGS)
def test_input_grad_in_tf(name):
    x, kernel, dy = arrays(CONFIGS[name])
    op = input_op(CONFIGS[name])
    graph = lowered(op, DepthwiseBackpropInputRule(), kernel, dy)
    assert_close(run_tf(graph, kernel, dy), reference(CONFIGS[name], x, kernel, dy)[1], 1e-5)


@pytest.mark.parametrize("name", LITERT)
def test_both_grads_on_litert(name):
    """Filter and input gradient in one model: one conversion per config."""
    config = CONFIGS[name]
    x, kernel, dy = arrays(config, seed=1)
    fop, iop = filter_op(config), input_op(config)
    graph = graph_of(lambda a, w, b: tf.concat([tf.reshape(fop(a, b), [-1]),
                                                 tf.reshape(iop(w, b), [-1])], 0),
                     x, kernel, dy)
    assert lower_all(graph, DepthwiseBackpropFilterRule()) == 1
    assert lower_all(graph, DepthwiseBackpropInputRule()) == 1
    [out] = run_on_litert(as_function(graph), x, kernel, dy)
    dw, dx = reference(config, x, kernel, dy)
    assert_close(out[:kernel.size], dw.ravel(), 1e-4)
    assert_close(out[kernel.size:], dx.ravel(), 1e-4)


@pytest.mark.parametrize("name", ["3x3_d2_same_m2", "3x3_d2_valid_m1"])
def test_numpy_reference_is_adjoint(name):
    """<conv(x, w), dy> = <w, dw> = <x, dx>: the loops are the forward op's true gradients."""
    config = CONFIGS[name]
    x, kernel, dy = arrays(config)
    y = tf.raw_ops.DepthwiseConv2dNative(input=x, filter=kernel, **attrs(config)).numpy()
    dw, dx = depthwise_grads_numpy(x, kernel, dy, config[7], config[8], config[9])
    inner = float(np.sum(y.astype(np.float64) * dy))
    np.testing.assert_allclose(np.sum(kernel * dw), inner, rtol=1e-5)
    np.testing.assert_allclose(np.sum(x * dx), inner, rtol=1e-5)


def test_explicit_padding():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 7, 8, 3)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 3, 2)).astype(np.float32)
    kw = dict(strides=[1, 2, 2, 1], padding="EXPLICIT", explicit_paddings=[0, 0, 1, 2, 2, 0, 0, 0])
    dy = rng.standard_normal(
        tf.raw_ops.DepthwiseConv2dNative(input=x, filter=kernel, **kw).shape).astype(np.float32)
    fop = lambda a, b: tf.raw_ops.DepthwiseConv2dNativeBackpropFilter(
        input=a, filter_sizes=[3, 3, 3, 2], out_backprop=b, **kw)
    iop = lambda w, b: tf.raw_ops.DepthwiseConv2dNativeBackpropInput(
        input_sizes=[2, 7, 8, 3], filter=w, out_backprop=b, **kw)
    graph = lowered(fop, DepthwiseBackpropFilterRule(), x, dy)
    assert_close(run_tf(graph, x, dy), fop(x, dy).numpy(), 1e-5)
    graph = lowered(iop, DepthwiseBackpropInputRule(), kernel, dy)
    assert_close(run_tf(graph, kernel, dy), iop(kernel, dy).numpy(), 1e-5)


def test_declines_nchw():
    x = np.zeros((1, 3, 8, 8), np.float32)
    dy = np.zeros((1, 3, 8, 8), np.float32)
    op = lambda a, b: tf.raw_ops.DepthwiseConv2dNativeBackpropFilter(
        input=a, filter_sizes=[3, 3, 3, 1], out_backprop=b, strides=[1, 1, 1, 1],
        padding="SAME", data_format="NCHW")
    with pytest.raises(LoweringError, match="data_format NCHW"):
        lower_all(graph_of(op, x, dy), DepthwiseBackpropFilterRule())


def test_declines_float64():
    kernel = np.zeros((3, 3, 3, 1), np.float64)
    dy = np.zeros((1, 8, 8, 3), np.float64)
    op = lambda w, b: tf.raw_ops.DepthwiseConv2dNativeBackpropInput(
        input_sizes=[1, 8, 8, 3], filter=w, out_backprop=b, strides=[1, 1, 1, 1],
        padding="SAME")
    with pytest.raises(LoweringError, match="dtype float64"):
        lower_all(graph_of(op, kernel, dy), DepthwiseBackpropInputRule())
