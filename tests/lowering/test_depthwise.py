"""Depthwise convolution gradient lowerings: structure, numbers in TF and on ai-edge-litert,
declines."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from graph_passes.lower import LoweringError
from graph_passes.lowering.depthwise import DepthwiseBackpropFilterRule, DepthwiseBackpropInputRule
from tfpock.testing.litert import convert_builtins_only
from tests.lowering.harness import function_of, graph_of, lower_all, lowered, run_litert
from tests.lowering.numpy_conv import ConvConfig, geometry
from tests.numerics import assert_close
from tfpock.tflite import model_file


def Depthwise(n, h, w, c, m, kh, kw, stride, dilation, padding) -> ConvConfig:
    """A depthwise case: input [n, h, w, c], channel multiplier m."""
    return ConvConfig(n, h, w, c, m, kh, kw, stride, dilation, padding, depthwise=True)


CONFIGS = {
    "1x1_s1_m1": Depthwise(2, 5, 5, 3, 1, 1, 1, 1, 1, "VALID"),
    "3x3_s1_same_m1": Depthwise(2, 8, 8, 4, 1, 3, 3, 1, 1, "SAME"),
    "3x3_s1_valid_m2": Depthwise(1, 7, 9, 3, 2, 3, 3, 1, 1, "VALID"),
    "3x3_s2_same_odd_m1": Depthwise(2, 9, 9, 4, 1, 3, 3, 2, 1, "SAME"),
    "3x3_s2_same_even_m2": Depthwise(1, 10, 8, 3, 2, 3, 3, 2, 1, "SAME"),
    "3x3_s2_valid_m1": Depthwise(2, 10, 11, 2, 1, 3, 3, 2, 1, "VALID"),
    "3x3_d2_same_m2": Depthwise(1, 9, 10, 3, 2, 3, 3, 1, 2, "SAME"),
    "3x3_d2_valid_m1": Depthwise(2, 11, 11, 2, 1, 3, 3, 1, 2, "VALID"),
    "5x5_s2_same_m1": Depthwise(2, 11, 10, 3, 1, 5, 5, 2, 1, "SAME"),
    "5x5_s1_same_m2": Depthwise(1, 8, 8, 2, 2, 5, 5, 1, 1, "SAME"),
    "1x3_s1_same_m1": Depthwise(3, 1, 16, 4, 1, 1, 3, 1, 1, "SAME"),
    # polyphase input gradient: phases with no tap (1x1), one tap each (stride = kernel)
    "1x1_s2_valid_m2": Depthwise(2, 7, 8, 3, 2, 1, 1, 2, 1, "VALID"),
    "3x3_s3_same_m1": Depthwise(1, 10, 11, 2, 1, 3, 3, 3, 1, "SAME"),
}
LITERT = ["3x3_s1_valid_m2", "3x3_s2_same_odd_m1", "3x3_d2_same_m2", "5x5_s2_same_m1",
          "3x3_s2_same_even_m2"]


def filter_op(config: ConvConfig, explicit=None):
    return lambda x, dy: tf.raw_ops.DepthwiseConv2dNativeBackpropFilter(
        input=x, filter_sizes=list(config.kernel_shape), out_backprop=dy,
        **config.attrs(explicit))


def input_op(config: ConvConfig, explicit=None):
    return lambda w, dy: tf.raw_ops.DepthwiseConv2dNativeBackpropInput(
        input_sizes=[config.n, config.h, config.w, config.c], filter=w, out_backprop=dy,
        **config.attrs(explicit))


def both_grads(config: ConvConfig):
    """Filter and input gradient as one output, flattened and concatenated."""
    fop, iop = filter_op(config), input_op(config)
    return lambda a, w, b: tf.concat([tf.reshape(fop(a, b), [-1]),
                                      tf.reshape(iop(w, b), [-1])], 0)


def lowered_both(config: ConvConfig, x, kernel, dy):
    """``both_grads`` with both rules applied, each to its one node."""
    graph = graph_of(both_grads(config), x, kernel, dy)
    assert lower_all(graph, DepthwiseBackpropFilterRule()) == 1
    assert lower_all(graph, DepthwiseBackpropInputRule()) == 1
    return graph


@pytest.mark.parametrize("name", CONFIGS)
def test_filter_grad_in_tf(name):
    config = CONFIGS[name]
    x, kernel, dy = config.arrays()
    result = lowered(filter_op(config), DepthwiseBackpropFilterRule(), x, dy)
    assert (result.count, result.left) == (1, 0)
    assert_close(result.run_tf(), config.reference(x, kernel, dy)[0], peak_rtol=1e-5)


@pytest.mark.parametrize("name", CONFIGS)
def test_input_grad_in_tf(name):
    config = CONFIGS[name]
    x, kernel, dy = config.arrays()
    result = lowered(input_op(config), DepthwiseBackpropInputRule(), kernel, dy)
    assert (result.count, result.left) == (1, 0)
    assert_close(result.run_tf(), config.reference(x, kernel, dy)[1], peak_rtol=1e-5)


@pytest.mark.parametrize("name", LITERT)
def test_both_grads_on_litert(name):
    """Filter and input gradient in one model: one conversion per config."""
    config = CONFIGS[name]
    x, kernel, dy = config.arrays(seed=1)
    out = run_litert(lowered_both(config, x, kernel, dy), x, kernel, dy)
    dw, dx = config.reference(x, kernel, dy)
    assert_close(out[:kernel.size], dw.ravel(), peak_rtol=1e-4, where="dw")
    assert_close(out[kernel.size:], dx.ravel(), peak_rtol=1e-4, where="dx")


@pytest.mark.parametrize("name, explicit", [
    ("3x3_d2_same_m2", None), ("3x3_d2_valid_m1", None), ("3x3_s2_same_even_m2", None),
    ("3x3_s2_valid_m1", [0, 0, 1, 2, 2, 0, 0, 0])])
def test_numpy_reference_is_adjoint(name, explicit):
    """<conv(x, w), dy> = <w, dw> = <x, dx>: the loops are the forward op's true gradients.
    The forward is tf.nn.depthwise_conv2d over the zero-padded input (VALID), which every TF
    CPU kernel runs (a rate goes through space-to-batch)."""
    config = CONFIGS[name]
    x, kernel, dy = config.arrays(explicit=explicit)
    strides, dilations, ((pt, pb), (pl, pr)) = geometry(config, explicit)
    xp = np.pad(x, [(0, 0), (pt, pb), (pl, pr), (0, 0)])
    y = tf.nn.depthwise_conv2d(xp, kernel, [1, *strides, 1], "VALID",
                               dilations=list(dilations)).numpy()
    dw, dx = config.reference(x, kernel, dy, explicit)
    inner = float(np.sum(y.astype(np.float64) * dy))
    assert_close(np.sum(kernel * dw), inner, rtol=1e-5, where="<w, dw>")
    assert_close(np.sum(x * dx), inner, rtol=1e-5, where="<x, dx>")


def test_explicit_padding():
    config = Depthwise(2, 7, 8, 3, 2, 3, 3, 2, 1, "EXPLICIT")
    explicit = [0, 0, 1, 2, 2, 0, 0, 0]
    x, kernel, dy = config.arrays(seed=4, explicit=explicit)
    dw, dx = config.reference(x, kernel, dy, explicit)
    result = lowered(filter_op(config, explicit), DepthwiseBackpropFilterRule(), x, dy)
    assert (result.count, result.left) == (1, 0)
    assert_close(result.run_tf(), dw, peak_rtol=1e-5)
    result = lowered(input_op(config, explicit), DepthwiseBackpropInputRule(), kernel, dy)
    assert (result.count, result.left) == (1, 0)
    assert_close(result.run_tf(), dx, peak_rtol=1e-5)


@pytest.mark.parametrize("name", ["3x3_s2_same_odd_m1", "3x3_d2_same_m2"])
def test_rates_convert_to_one_dilated_depthwise_op(name):
    """The host form of a rate (space-to-batch, which TF's default kernels run) is folded back
    by the converter: the file has one DEPTHWISE_CONV_2D for the filter gradient, one per
    output phase (stride^2) for the input gradient, and no space-to-batch."""
    config = CONFIGS[name]
    x, kernel, dy = config.arrays()
    graph = lowered_both(config, x, kernel, dy)
    assert graph.op_histogram()["SpaceToBatchND"] >= 1  # the host form is there
    specs = [tf.TensorSpec(a.shape, tf.float32) for a in (x, kernel, dy)]
    ops = model_file.read(convert_builtins_only(function_of(graph), specs)).op_histogram()
    assert ops["DEPTHWISE_CONV_2D"] == 1 + config.stride ** 2
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
