"""Conv2D gradient lowerings: structure, numbers in TF and on ai-edge-litert, declines."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from graph_passes.lower import LoweringError
from graph_passes.lowering.conv import (
    FILTER_GRAD_FORMS, Conv2DBackpropFilterRule, Conv2DBackpropInputRule, WeightConv2DRule,
    filter_grad_form, window)
from tests.lowering.harness import graph_of, lower_all, lowered
from tests.lowering.numpy_conv import ConvConfig as Conv
from tests.lowering.numpy_conv import geometry
from tests.numerics import assert_close

# Conv(n, h, w, c, out, kh, kw, stride, dilation, padding): out is the output channels
CONFIGS = {
    "1x1_s1": Conv(2, 6, 6, 3, 4, 1, 1, 1, 1, "VALID"),
    "1x1_s2_odd": Conv(1, 7, 7, 5, 3, 1, 1, 2, 1, "SAME"),
    "3x3_s1_same": Conv(2, 8, 8, 3, 4, 3, 3, 1, 1, "SAME"),
    "3x3_s2_same_odd": Conv(2, 9, 9, 3, 4, 3, 3, 2, 1, "SAME"),
    "3x3_s2_same_even": Conv(1, 8, 10, 2, 3, 3, 3, 2, 1, "SAME"),
    "3x3_s2_valid": Conv(2, 10, 9, 3, 2, 3, 3, 2, 1, "VALID"),
    "3x3_d2_same": Conv(1, 9, 9, 2, 3, 3, 3, 1, 2, "SAME"),
    "3x3_s2_d2_same": Conv(2, 11, 11, 2, 3, 3, 3, 2, 2, "SAME"),
    "5x5_s1_valid": Conv(1, 9, 8, 2, 3, 5, 5, 1, 1, "VALID"),
    "5x5_s2_same": Conv(2, 10, 10, 2, 2, 5, 5, 2, 1, "SAME"),
    "conv1d_k5_same": Conv(3, 1, 20, 4, 5, 1, 5, 1, 1, "SAME"),
    "conv1d_k3_s2_valid": Conv(2, 1, 15, 3, 4, 1, 3, 2, 1, "VALID"),
    "conv1d_k3_d2_same": Conv(2, 1, 16, 3, 2, 1, 3, 1, 2, "SAME"),
    "3x3_deep_same": Conv(1, 3, 3, 8, 16, 3, 3, 1, 1, "SAME"),  # 9 positions <= 16 channels
    # batch above the channels: the conv form pads after its transpose (filter_grad_conv)
    "3x3_s2_same_batch4": Conv(4, 10, 10, 2, 3, 3, 3, 2, 1, "SAME"),
}
LITERT = ["1x1_s2_odd", "3x3_s2_same_odd", "3x3_d2_same", "3x3_s2_d2_same", "conv1d_k5_same",
          "3x3_deep_same", "3x3_s2_same_batch4"]


def filter_op(config: Conv, explicit=None):
    return lambda x, dy: tf.raw_ops.Conv2DBackpropFilter(
        input=x, filter_sizes=list(config.kernel_shape), out_backprop=dy,
        **config.attrs(explicit))


@pytest.mark.parametrize("name", CONFIGS)
def test_filter_grad_in_tf(name):
    config = CONFIGS[name]
    x, kernel, dy = config.arrays()
    result = lowered(filter_op(config), Conv2DBackpropFilterRule(), x, dy)
    assert (result.count, result.left) == (1, 0)
    if name == "3x3_deep_same":   # few positions: the matmul form, not the conv form
        histogram = result.graph.op_histogram()
        assert histogram["Conv2D"] == 0 and histogram["MatMul"] == 1
    assert_close(result.run_tf(), config.reference(x, kernel, dy)[0], peak_rtol=1e-5)


@pytest.mark.parametrize("name", LITERT)
def test_filter_grad_on_litert(name):
    config = CONFIGS[name]
    x, kernel, dy = config.arrays(seed=1)
    result = lowered(filter_op(config), Conv2DBackpropFilterRule(), x, dy)
    assert result.count == 1
    assert_close(result.run_litert(), config.reference(x, kernel, dy)[0], peak_rtol=1e-4)


def test_filter_grad_explicit_padding():
    config = Conv(2, 7, 8, 3, 2, 3, 3, 2, 1, "EXPLICIT")
    explicit = [0, 0, 1, 2, 0, 1, 0, 0]
    x, kernel, dy = config.arrays(seed=2, explicit=explicit)
    result = lowered(filter_op(config, explicit), Conv2DBackpropFilterRule(), x, dy)
    assert result.count == 1
    assert_close(result.run_tf(), config.reference(x, kernel, dy, explicit)[0],
                 peak_rtol=1e-5)


def test_filter_grad_reads_no_filter_sizes():
    """The replacement takes only input and out_backprop: filter_sizes' Const is left dead."""
    config = CONFIGS["3x3_s2_same_odd"]
    x, _, dy = config.arrays()
    graph = graph_of(filter_op(config), x, dy)
    node = graph.nodes_of(["Conv2DBackpropFilter"])[0]
    assert Conv2DBackpropFilterRule().inputs(graph, node) == [node.input[0], node.input[2]]


# Conv2DBackpropInput: dilated and EXPLICIT cases are rewritten to what TRANSPOSE_CONV takes.
INPUT_CASES = {
    "3x3_s1_same": (CONFIGS["3x3_s1_same"], None),            # patches + matmul
    "3x3_deep_same": (CONFIGS["3x3_deep_same"], None),        # per-offset, the kernel as is
    "5x3_deep_valid": (Conv(2, 4, 5, 3, 40, 5, 3, 1, 1, "VALID"), None),   # ditto, N*H*W<=Co
    "5x5_s1_valid": (CONFIGS["5x5_s1_valid"], None),          # patches + matmul
    "conv1d_k5_same": (CONFIGS["conv1d_k5_same"], None),      # patches + matmul
    "3x3_s1_explicit": (Conv(1, 7, 8, 2, 3, 3, 3, 1, 1, "EXPLICIT"), [0, 0, 0, 2, 1, 0, 0, 0]),
    "3x3_d2_same": (CONFIGS["3x3_d2_same"], None),
    "conv1d_k3_d2_same": (CONFIGS["conv1d_k3_d2_same"], None),
    "5x5_d2_valid": (Conv(2, 12, 11, 3, 2, 5, 5, 1, 2, "VALID"), None),
    "3x3_s2_explicit": (Conv(2, 9, 8, 3, 2, 3, 3, 2, 1, "EXPLICIT"), [0, 0, 1, 2, 2, 0, 0, 0]),
    "3x3_d2_explicit": (Conv(1, 9, 9, 2, 3, 3, 3, 1, 2, "EXPLICIT"), [0, 0, 2, 1, 1, 2, 0, 0]),
}


def input_case(name, seed=0):
    """(op, kernel, dy, dx reference) of an input-gradient case."""
    config, explicit = INPUT_CASES[name]
    x, kernel, dy = config.arrays(seed, explicit)
    op = lambda a, b: tf.raw_ops.Conv2DBackpropInput(
        input_sizes=list(x.shape), filter=a, out_backprop=b, **config.attrs(explicit))
    return op, kernel, dy, config.reference(x, kernel, dy, explicit)[1]


@pytest.mark.parametrize("name", INPUT_CASES)
def test_input_grad(name):
    op, kernel, dy, expected = input_case(name)
    result = lowered(op, Conv2DBackpropInputRule(), kernel, dy)
    assert result.count == 1
    graph = result.graph
    for node in graph.nodes_of(["Conv2DBackpropInput"]):
        assert graph.attr(node, "dilations", [1, 1, 1, 1]) == [1, 1, 1, 1]
        assert graph.attr(node, "padding") in ("SAME", "VALID")
    assert_close(result.run_tf(), expected, peak_rtol=1e-5)


@pytest.mark.parametrize("name", ["3x3_d2_same", "3x3_s2_explicit", "3x3_d2_explicit",
                                  "3x3_s1_same", "5x5_s1_valid", "3x3_s1_explicit",
                                  "3x3_deep_same", "5x3_deep_valid"])
def test_input_grad_on_litert(name):
    op, kernel, dy, expected = input_case(name, seed=3)
    result = lowered(op, Conv2DBackpropInputRule(), kernel, dy)
    assert result.count == 1
    assert_close(result.run_litert(), expected, peak_rtol=1e-4)


@pytest.mark.parametrize("name", ["3x3_s1_same", "5x5_s1_valid", "3x3_deep_same"])
def test_stride_1_input_grad_of_a_constant_kernel_is_one_conv(name):
    """A frozen kxk kernel between trained layers: the full correlation as one VALID Conv2D
    of the padded dy with the flipped kernel (constant after folding: XNNPACK's), no
    patches, no matmul; equal to the raw op in TF and on ai-edge-litert."""
    op, kernel, dy, expected = input_case(name, seed=5)
    result = lowered(lambda g: op(tf.constant(kernel), g), Conv2DBackpropInputRule(), dy)
    assert result.count == 1
    histogram = result.graph.op_histogram()
    assert histogram["Conv2D"] == 1 and not {"ConcatV2", "MatMul", "BatchMatMulV2"} & {
        op for op, n in histogram.items() if n}
    assert_close(result.run_tf(), expected, peak_rtol=1e-5)
    assert_close(result.run_litert(), expected, peak_rtol=1e-4)


def test_declines_nchw():
    x = np.zeros((1, 3, 8, 8), np.float32)
    dy = np.zeros((1, 4, 8, 8), np.float32)
    op = lambda a, b: tf.raw_ops.Conv2DBackpropFilter(
        input=a, filter_sizes=[3, 3, 3, 4], out_backprop=b, strides=[1, 1, 1, 1],
        padding="SAME", data_format="NCHW")
    with pytest.raises(LoweringError, match="data_format NCHW"):
        lower_all(graph_of(op, x, dy), Conv2DBackpropFilterRule())


def test_declines_float16():
    kernel = np.zeros((3, 3, 3, 4), np.float16)
    op = lambda w, b: tf.raw_ops.Conv2DBackpropInput(
        input_sizes=[1, 8, 8, 3], filter=w, out_backprop=b, strides=[1, 1, 1, 1],
        padding="SAME")
    with pytest.raises(LoweringError, match="dtype float16"):
        lower_all(graph_of(op, kernel, np.zeros((1, 8, 8, 4), np.float16)),
                  Conv2DBackpropInputRule())


@pytest.mark.parametrize("k, stride, dilation, padding, constant, fires", [
    (3, 2, 1, "SAME", False, False), (3, 2, 1, "VALID", False, False),
    (1, 1, 1, "SAME", True, False), (1, 2, 1, "SAME", False, False),
    (1, 1, 1, "SAME", False, True), (3, 1, 1, "SAME", False, True),
    (3, 1, 1, "VALID", False, True), (3, 1, 2, "SAME", False, True),
    (3, 1, 1, "SAME", True, True)])
def test_lower_pass_leaves_strided_and_constant_1x1_input_grads_to_the_converter(
        k, stride, dilation, padding, constant, fires):
    """Strided SAME/VALID Conv2DBackpropInput and 1x1 ones with a constant (frozen) kernel
    convert to TRANSPOSE_CONV as they are; stride-1 kxk ones become patches + matmul (one
    convolution where the kernel is constant), 1x1 ones with a runtime (trained) kernel one
    batch matmul, dilated ones the undilated form."""
    from graph_passes.lower import Lower
    kernel = np.ones((k, k, 2, 4), np.float32)
    x = np.zeros((1, 8, 8, 2), np.float32)
    dy = np.ones(tf.nn.conv2d(x, kernel, stride, padding, dilations=dilation).shape, np.float32)
    op = lambda w, g: tf.raw_ops.Conv2DBackpropInput(
        input_sizes=[1, 8, 8, 2], filter=w, out_backprop=g, strides=[1, stride, stride, 1],
        padding=padding, dilations=[1, dilation, dilation, 1])
    graph = (graph_of(lambda g: op(tf.constant(kernel), g), dy) if constant
             else graph_of(op, kernel, dy))
    result = Lower().run(graph)
    assert result.modified == fires
    key = "lowered" if fires else "left_to_converter"
    assert result.stats[key] == {"Conv2DBackpropInput": 1}


@pytest.mark.parametrize("n, h, ci, co", [(1, 4, 6, 20), (3, 5, 16, 4)])
def test_1x1_input_grad_with_a_runtime_kernel_is_one_batch_matmul(n, h, ci, co):
    config = Conv(n, h, h, ci, co, 1, 1, 1, 1, "SAME")
    x, kernel, dy = config.arrays(seed=6)
    op = lambda w, g: tf.raw_ops.Conv2DBackpropInput(
        input_sizes=list(x.shape), filter=w, out_backprop=g, strides=[1, 1, 1, 1],
        padding="SAME")
    result = lowered(op, Conv2DBackpropInputRule(), kernel, dy)
    assert result.count == 1
    histogram = result.graph.op_histogram()
    assert histogram["Conv2DBackpropInput"] == 0 and histogram["BatchMatMulV2"] == 1
    assert histogram["Reshape"] == 2 and histogram["Transpose"] == 0  # the kernel as it is
    expected = config.reference(x, kernel, dy)[1]
    assert_close(result.run_tf(), expected, peak_rtol=1e-5)
    assert_close(result.run_litert(), expected, peak_rtol=1e-4)


KERNEL_COPIES = ("Transpose", "ReverseV2", "Reshape")


def ops_reading(graph, ref: str) -> list[str]:
    """The op types that read ``ref`` directly."""
    return [node.op for node, _ in graph.readers(ref)]


@pytest.mark.parametrize("name, kernel_as_is", [
    ("3x3_deep_same", True), ("5x3_deep_valid", True), ("3x3_s1_same", False),
    ("5x5_s1_valid", False)])
def test_stride_1_input_grad_reads_a_few_position_runtime_kernel_as_it_is(name, kernel_as_is):
    """With no more input positions than output channels, a trained kernel goes straight into
    the batch matmul (no transpose, reverse or reshape copy of it each step); elsewhere each
    kernel offset's slice of it goes into that offset's matmul (no copy of the whole kernel,
    no patches: no concatenation or stack of the kh*kw slices of dy)."""
    op, kernel, dy, expected = input_case(name)
    result = lowered(op, Conv2DBackpropInputRule(), kernel, dy)
    readers = ops_reading(result.graph, "x0")   # the kernel: input_case's first placeholder
    if kernel_as_is:
        assert readers == ["BatchMatMulV2"]
    else:
        kh, kw = kernel.shape[:2]
        assert readers == ["StridedSlice"] * (kh * kw)
        assert not set(KERNEL_COPIES) & set(readers)
        ops = [node.op for node in result.graph.nodes.values()]
        assert "ConcatV2" not in ops and "Pack" not in ops
        assert ops.count("MatMul") + ops.count("BatchMatMulV2") == kh * kw
    assert_close(result.run_tf(), expected, peak_rtol=1e-5)


def test_few_position_weight_conv_reads_the_kernel_as_it_is():
    config = CONFIGS["3x3_deep_same"]
    x, kernel, _ = config.arrays(seed=5)
    result = weight_conv(config, x, kernel)
    graph = result.graph
    assert ops_reading(graph, "x1") == ["BatchMatMulV2"]   # the kernel, a param
    expected = tf.nn.conv2d(x, kernel, 1, "SAME").numpy()
    assert_close(result.run_tf(), expected, peak_rtol=1e-5)
    assert_close(result.run_litert(), expected, peak_rtol=1e-4)


# Conv2D whose kernel is a weight (not a signature input): im2col patches and one matmul.
def forward(config: Conv):
    return lambda x, w: tf.nn.conv2d(x, w, config.stride, config.padding,
                                     dilations=config.dilation)


def weight_conv(config: Conv, x, kernel):
    """The forward lowered with x the signature input and the kernel a weight fed as a
    param (as the trace feeds a trained kernel)."""
    return lowered(forward(config), WeightConv2DRule(), x, kernel, n_params=1)


@pytest.mark.parametrize("name", ["1x1_s1", "1x1_s2_odd", "3x3_s1_same", "3x3_s2_same_even",
                                  "3x3_d2_same", "5x5_s2_same", "conv1d_k3_s2_valid"])
def test_weight_conv_becomes_patches_and_matmul(name):
    """The rewrite is right for every geometry (the pass applies it to 1x1 kernels only)."""
    config = CONFIGS[name]
    x, kernel, _ = config.arrays(seed=3)
    result = weight_conv(config, x, kernel)
    assert result.count == 1
    histogram = result.graph.op_histogram()
    assert histogram["Conv2D"] == 0
    assert histogram["MatMul"] + histogram["BatchMatMulV2"] == 1  # 1x1: the 4-D kernel as is
    if name == "1x1_s1":  # no patches at all: reshape, matmul, reshape
        assert histogram["StridedSlice"] == 0 and histogram["ConcatV2"] == 0
    assert_close(result.run_tf(), forward(config)(x, kernel).numpy(), peak_rtol=1e-5)


@pytest.mark.parametrize("x_shape, kernel_shape, applies", [
    ((1, 2, 2, 4), (1, 1, 4, 32), True),    # a head conv: kernel larger than its input
    ((2, 6, 6, 3), (1, 1, 3, 4), False),    # an early conv: the reshapes would copy more
    ((1, 2, 2, 4), (3, 3, 4, 32), True),    # kxk, 4 positions <= 32 channels: small patches
    ((2, 6, 6, 8), (3, 3, 8, 16), False),   # kxk, 72 positions > 16 channels: large patches
])
def test_weight_conv_applies_where_patches_are_no_larger_than_the_kernel(x_shape, kernel_shape,
                                                                         applies):
    x, kernel = np.zeros(x_shape, np.float32), np.zeros(kernel_shape, np.float32)
    graph = graph_of(lambda a, w: tf.nn.conv2d(a, w, 1, "SAME"), x, kernel, n_params=1)
    assert WeightConv2DRule().applies(graph, graph.nodes_of(["Conv2D"])[0]) == applies


def test_weight_conv_on_litert_has_no_conv():
    config = CONFIGS["1x1_s2_odd"]
    x, kernel, _ = config.arrays(seed=4)
    result = weight_conv(config, x, kernel)
    assert result.graph.op_histogram()["Conv2D"] == 0
    assert_close(result.run_litert(), tf.nn.conv2d(x, kernel, 2, "SAME").numpy(),
                 peak_rtol=1e-4)


def test_weight_conv_leaves_constant_and_gradient_kernels():
    """A constant kernel is XNNPACK's; a kernel computed from signature inputs (the conv
    form of a filter gradient) would need huge patches: both stay CONV_2D."""
    config = Conv(1, 2, 2, 4, 32, 1, 1, 1, 1, "VALID")  # large enough to apply as a weight
    x, kernel, _ = config.arrays()
    rule = WeightConv2DRule()
    constant = graph_of(lambda a: tf.nn.conv2d(a, tf.constant(kernel), 1, "VALID"), x)
    assert not rule.applies(constant, constant.nodes_of(["Conv2D"])[0])
    from_inputs = graph_of(lambda a, w: tf.nn.conv2d(a, w, 1, "VALID"), x, kernel)
    assert not rule.applies(from_inputs, from_inputs.nodes_of(["Conv2D"])[0])


@pytest.mark.parametrize("name", CONFIGS)
def test_every_filter_grad_form_it_can_express(name):
    """Each form, not only the chosen one, against the float64 loops; and the choice."""
    config = CONFIGS[name]
    x, kernel, dy = config.arrays(seed=5)
    expected = config.reference(x, kernel, dy)[0]
    graph = graph_of(filter_op(config), x, dy)
    node = graph.nodes_of(["Conv2DBackpropFilter"])[0]
    kernel_hw = (config.kh, config.kw)
    win = window(graph, node, kernel_hw, x.shape[1:3], dy.shape[1:3])
    s, d = config.stride, config.dilation
    assert filter_grad_form(win) == ("matmul" if kernel_hw == (1, 1) or (s > 1 and d > 1)
                                     else "conv")
    positions, channels = int(np.prod(dy.shape[:3])), dy.shape[3]
    assert filter_grad_form(win, positions, channels) == (
        "matmul" if positions <= channels else filter_grad_form(win))
    for form, fn in FILTER_GRAD_FORMS.items():
        if form == "conv" and s > 1 and d > 1:
            continue  # the conv form cannot express stride and dilation together
        assert_close(fn(tf.constant(x), tf.constant(dy), win).numpy(), expected,
                     peak_rtol=1e-5, where=form)


@pytest.mark.parametrize("name, explicit", [
    ("3x3_d2_same", None), ("3x3_s2_d2_same", None), ("conv1d_k3_d2_same", None),
    ("5x5_s2_same", None), ("3x3_d2_same", [0, 0, 2, 1, 1, 2, 0, 0])])
def test_numpy_reference_is_adjoint(name, explicit):
    """<conv(x, w), dy> = <w, dw> = <x, dx>: the loops are the forward op's true gradients.
    The forward is tf.nn.conv2d over the zero-padded input (VALID), which every TF CPU kernel
    runs, dilated or not."""
    config = CONFIGS[name]
    x, kernel, dy = config.arrays(explicit=explicit)
    strides, dilations, ((pt, pb), (pl, pr)) = geometry(config, explicit)
    xp = np.pad(x, [(0, 0), (pt, pb), (pl, pr), (0, 0)])
    y = tf.nn.conv2d(xp, kernel, strides, "VALID", dilations=dilations).numpy()
    dw, dx = config.reference(x, kernel, dy, explicit)
    inner = float(np.sum(y.astype(np.float64) * dy))
    assert_close(np.sum(kernel * dw), inner, rtol=1e-5, where="<w, dw>")
    assert_close(np.sum(x * dx), inner, rtol=1e-5, where="<x, dx>")
