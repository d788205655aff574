"""Depthwise convolution gradient lowerings: structure, numbers in TF and on ai-edge-litert,
declines."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from graph_passes.lower import LoweringError
from graph_passes.lowering.depthwise import DepthwiseBackpropFilterRule, DepthwiseBackpropInputRule
from tests.lowering.graph_helpers import as_function, graph_of, lower_all, run_tf
from tests.lowering.numpy_conv import conv_grads, geometry, output_hw
from tfpock.testing.litert import convert_builtins_only, run_on_litert
from tfpock.tflite import model_file

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


def arrays(config, seed=0, explicit=None):
    n, h, w, c, m, kh, kw, s, d, padding = config
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    kernel = rng.standard_normal((kh, kw, c, m)).astype(np.float32)
    ho, wo = output_hw((h, w), (kh, kw), *geometry(config, explicit))
    dy = rng.standard_normal((n, ho, wo, c * m)).astype(np.float32)
    return x, kernel, dy


def attrs(config, explicit=None):
    *_, s, d, padding = config
    extra = {"explicit_paddings": explicit} if explicit else {}
    return dict(strides=[1, s, s, 1], dilations=[1, d, d, 1],
                padding="EXPLICIT" if explicit else padding, **extra)


def filter_op(config, explicit=None):
    c, m, kh, kw = config[3], config[4], config[5], config[6]
    return lambda x, dy: tf.raw_ops.DepthwiseConv2dNativeBackpropFilter(
        input=x, filter_sizes=[kh, kw, c, m], out_backprop=dy, **attrs(config, explicit))


def input_op(config, explicit=None):
    return lambda w, dy: tf.raw_ops.DepthwiseConv2dNativeBackpropInput(
        input_sizes=list(config[:4]), filter=w, out_backprop=dy, **attrs(config, explicit))


def reference(config, x, kernel, dy, explicit=None):
    """(dw, dx) by float64 loops (tests/lowering/numpy_conv.py): TF's own depthwise gradient
    kernels refuse dilations without oneDNN and are wrong with them (SAME) with oneDNN, so
    they are no reference on every CPU."""
    return conv_grads(x, kernel, dy, *geometry(config, explicit), depthwise=True)


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


@pytest.mark.parametrize("name, explicit", [
    ("3x3_d2_same_m2", None), ("3x3_d2_valid_m1", None), ("3x3_s2_same_even_m2", None),
    ("3x3_s2_valid_m1", [0, 0, 1, 2, 2, 0, 0, 0])])
def test_numpy_reference_is_adjoint(name, explicit):
    """<conv(x, w), dy> = <w, dw> = <x, dx>: the loops are the forward op's true gradients.
    The forward is tf.nn.depthwise_conv2d over the zero-padded input (VALID), which every TF
    CPU kernel runs (a rate goes through space-to-batch)."""
    config = CONFIGS[name]
    x, kernel, dy = arrays(config, explicit=explicit)
    strides, dilations, ((pt, pb), (pl, pr)) = geometry(config, explicit)
    xp = np.pad(x, [(0, 0), (pt, pb), (pl, pr), (0, 0)])
    y = tf.nn.depthwise_conv2d(xp, kernel, [1, *strides, 1], "VALID",
                               dilations=list(dilations)).numpy()
    dw, dx = reference(config, x, kernel, dy, explicit)
    inner = float(np.sum(y.astype(np.float64) * dy))
    np.testing.assert_allclose(np.sum(kernel * dw), inner, rtol=1e-5)
    np.testing.assert_allclose(np.sum(x * dx), inner, rtol=1e-5)


def test_explicit_padding():
    config = (2, 7, 8, 3, 2, 3, 3, 2, 1, "EXPLICIT")
    explicit = [0, 0, 1, 2, 2, 0, 0, 0]
    x, kernel, dy = arrays(config, seed=4, explicit=explicit)
    dw, dx = reference(config, x, kernel, dy, explicit)
    graph = lowered(filter_op(config, explicit), DepthwiseBackpropFilterRule(), x, dy)
    assert_close(run_tf(graph, x, dy), dw, 1e-5)
    graph = lowered(input_op(config, explicit), DepthwiseBackpropInputRule(), kernel, dy)
    assert_close(run_tf(graph, kernel, dy), dx, 1e-5)


@pytest.mark.parametrize("name", ["3x3_s2_same_odd_m1", "3x3_d2_same_m2"])
def test_rates_convert_to_one_dilated_depthwise_op(name):
    """The host form of a rate (space-to-batch, which TF's default kernels run) is folded back
    by the converter: the file has one DEPTHWISE_CONV_2D per gradient and no space-to-batch."""
    config = CONFIGS[name]
    x, kernel, dy = arrays(config)
    fop, iop = filter_op(config), input_op(config)
    graph = graph_of(lambda a, w, b: tf.concat([tf.reshape(fop(a, b), [-1]),
                                                 tf.reshape(iop(w, b), [-1])], 0),
                     x, kernel, dy)
    lower_all(graph, DepthwiseBackpropFilterRule())
    lower_all(graph, DepthwiseBackpropInputRule())
    assert graph.op_histogram()["SpaceToBatchND"] >= 1  # the host form is there
    specs = [tf.TensorSpec(a.shape, tf.float32) for a in (x, kernel, dy)]
    ops = model_file.read(convert_builtins_only(as_function(graph), specs)).op_histogram()
    assert ops["DEPTHWISE_CONV_2D"] == 2
    assert ops["SPACE_TO_BATCH_ND"] == ops["BATCH_TO_SPACE_ND"] == 0


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
