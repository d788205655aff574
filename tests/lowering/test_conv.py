"""Conv2D gradient lowerings: structure, numbers in TF and on ai-edge-litert, declines."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from graph_passes.lower import LoweringError
from graph_passes.lowering.conv import (
    FILTER_GRAD_FORMS, Conv2DBackpropFilterRule, Conv2DBackpropInputRule, filter_grad_form,
    window)
from tests.lowering.graph_helpers import as_function, graph_of, lower_all, run_tf
from tests.lowering.numpy_conv import conv_grads, geometry, output_hw
from tfpock.testing.litert import run_on_litert

# (N, H, W, Ci, Co, kh, kw, stride, dilation, padding); H=1 with kh=1 is Keras' Conv1D.
CONFIGS = {
    "1x1_s1": (2, 6, 6, 3, 4, 1, 1, 1, 1, "VALID"),
    "1x1_s2_odd": (1, 7, 7, 5, 3, 1, 1, 2, 1, "SAME"),
    "3x3_s1_same": (2, 8, 8, 3, 4, 3, 3, 1, 1, "SAME"),
    "3x3_s2_same_odd": (2, 9, 9, 3, 4, 3, 3, 2, 1, "SAME"),
    "3x3_s2_same_even": (1, 8, 10, 2, 3, 3, 3, 2, 1, "SAME"),
    "3x3_s2_valid": (2, 10, 9, 3, 2, 3, 3, 2, 1, "VALID"),
    "3x3_d2_same": (1, 9, 9, 2, 3, 3, 3, 1, 2, "SAME"),
    "3x3_s2_d2_same": (2, 11, 11, 2, 3, 3, 3, 2, 2, "SAME"),
    "5x5_s1_valid": (1, 9, 8, 2, 3, 5, 5, 1, 1, "VALID"),
    "5x5_s2_same": (2, 10, 10, 2, 2, 5, 5, 2, 1, "SAME"),
    "conv1d_k5_same": (3, 1, 20, 4, 5, 1, 5, 1, 1, "SAME"),
    "conv1d_k3_s2_valid": (2, 1, 15, 3, 4, 1, 3, 2, 1, "VALID"),
    "conv1d_k3_d2_same": (2, 1, 16, 3, 2, 1, 3, 1, 2, "SAME"),
    "3x3_deep_same": (1, 3, 3, 8, 16, 3, 3, 1, 1, "SAME"),  # 9 positions <= 16 channels
}
LITERT = ["1x1_s2_odd", "3x3_s2_same_odd", "3x3_d2_same", "3x3_s2_d2_same", "conv1d_k5_same",
          "3x3_deep_same"]


def arrays(config, seed=0, explicit=None):
    n, h, w, ci, co, kh, kw, s, d, padding = config
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, ci)).astype(np.float32)
    kernel = rng.standard_normal((kh, kw, ci, co)).astype(np.float32)
    ho, wo = output_hw((h, w), (kh, kw), *geometry(config, explicit))
    dy = rng.standard_normal((n, ho, wo, co)).astype(np.float32)
    return x, kernel, dy


def reference(config, x, kernel, dy, explicit=None):
    """(dw, dx) by float64 loops (tests/lowering/numpy_conv.py): TF's default CPU kernels
    refuse dilated Conv2DBackpropFilter/Input, so TF's ops are no reference on every CPU."""
    return conv_grads(x, kernel, dy, *geometry(config, explicit))


def attrs(config, explicit=None):
    *_, s, d, padding = config
    extra = {"explicit_paddings": explicit} if explicit else {}
    return dict(strides=[1, s, s, 1], dilations=[1, d, d, 1],
                padding="EXPLICIT" if explicit else padding, **extra)


def filter_op(config, **kw):
    kh, kw_, ci, co = config[5], config[6], config[3], config[4]
    return lambda x, dy: tf.raw_ops.Conv2DBackpropFilter(
        input=x, filter_sizes=[kh, kw_, ci, co], out_backprop=dy, **(attrs(config) | kw))


def assert_close(actual, expected, rtol):
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * scale)


def lowered(op, rule, *inputs):
    graph = graph_of(op, *inputs)
    assert lower_all(graph, rule) == 1
    return graph


@pytest.mark.parametrize("name", CONFIGS)
def test_filter_grad_in_tf(name):
    config = CONFIGS[name]
    x, kernel, dy = arrays(config)
    graph = lowered(filter_op(config), Conv2DBackpropFilterRule(), x, dy)
    assert graph.op_histogram()["Conv2DBackpropFilter"] == 0
    if name == "3x3_deep_same":   # few positions: the matmul form, not the conv form
        assert graph.op_histogram()["Conv2D"] == 0 and graph.op_histogram()["MatMul"] == 1
    assert_close(run_tf(graph, x, dy), reference(config, x, kernel, dy)[0], 1e-5)


@pytest.mark.parametrize("name", LITERT)
def test_filter_grad_on_litert(name):
    config = CONFIGS[name]
    x, kernel, dy = arrays(config, seed=1)
    graph = lowered(filter_op(config), Conv2DBackpropFilterRule(), x, dy)
    [out] = run_on_litert(as_function(graph), x, dy)
    assert_close(out, reference(config, x, kernel, dy)[0], 1e-4)


def test_filter_grad_explicit_padding():
    config = (2, 7, 8, 3, 2, 3, 3, 2, 1, "EXPLICIT")
    explicit = [0, 0, 1, 2, 0, 1, 0, 0]
    x, kernel, dy = arrays(config, seed=2, explicit=explicit)
    op = lambda a, b: tf.raw_ops.Conv2DBackpropFilter(
        input=a, filter_sizes=[3, 3, 3, 2], out_backprop=b, **attrs(config, explicit))
    graph = lowered(op, Conv2DBackpropFilterRule(), x, dy)
    assert_close(run_tf(graph, x, dy), reference(config, x, kernel, dy, explicit)[0], 1e-5)


def test_filter_grad_reads_no_filter_sizes():
    """The replacement takes only input and out_backprop: filter_sizes' Const is left dead."""
    config = CONFIGS["3x3_s2_same_odd"]
    x, _, dy = arrays(config)
    graph = graph_of(filter_op(config), x, dy)
    node = graph.nodes_of(["Conv2DBackpropFilter"])[0]
    assert Conv2DBackpropFilterRule().inputs(graph, node) == [node.input[0], node.input[2]]


# Conv2DBackpropInput: dilated and EXPLICIT cases are rewritten to what TRANSPOSE_CONV takes.
INPUT_CASES = {
    "3x3_s1_same": (CONFIGS["3x3_s1_same"], None),            # patches + matmul
    "5x5_s1_valid": (CONFIGS["5x5_s1_valid"], None),          # patches + matmul
    "conv1d_k5_same": (CONFIGS["conv1d_k5_same"], None),      # patches + matmul
    "3x3_s1_explicit": ((1, 7, 8, 2, 3, 3, 3, 1, 1, "EXPLICIT"), [0, 0, 0, 2, 1, 0, 0, 0]),
    "3x3_d2_same": (CONFIGS["3x3_d2_same"], None),
    "conv1d_k3_d2_same": (CONFIGS["conv1d_k3_d2_same"], None),
    "5x5_d2_valid": ((2, 12, 11, 3, 2, 5, 5, 1, 2, "VALID"), None),
    "3x3_s2_explicit": ((2, 9, 8, 3, 2, 3, 3, 2, 1, "EXPLICIT"), [0, 0, 1, 2, 2, 0, 0, 0]),
    "3x3_d2_explicit": ((1, 9, 9, 2, 3, 3, 3, 1, 2, "EXPLICIT"), [0, 0, 2, 1, 1, 2, 0, 0]),
}


def input_case(name, seed=0):
    """(op, kernel, dy, dx reference) of an input-gradient case."""
    config, explicit = INPUT_CASES[name]
    x, kernel, dy = arrays(config, seed, explicit)
    op = lambda a, b: tf.raw_ops.Conv2DBackpropInput(
        input_sizes=list(x.shape), filter=a, out_backprop=b, **attrs(config, explicit))
    return op, kernel, dy, reference(config, x, kernel, dy, explicit)[1]


@pytest.mark.parametrize("name", INPUT_CASES)
def test_input_grad(name):
    op, kernel, dy, expected = input_case(name)
    graph = lowered(op, Conv2DBackpropInputRule(), kernel, dy)
    for node in graph.nodes_of(["Conv2DBackpropInput"]):
        assert graph.attr(node, "dilations", [1, 1, 1, 1]) == [1, 1, 1, 1]
        assert graph.attr(node, "padding") in ("SAME", "VALID")
    assert_close(run_tf(graph, kernel, dy), expected, 1e-5)


@pytest.mark.parametrize("name", ["3x3_d2_same", "3x3_s2_explicit", "3x3_d2_explicit",
                                  "3x3_s1_same", "5x5_s1_valid", "3x3_s1_explicit"])
def test_input_grad_on_litert(name):
    op, kernel, dy, expected = input_case(name, seed=3)
    graph = lowered(op, Conv2DBackpropInputRule(), kernel, dy)
    [out] = run_on_litert(as_function(graph), kernel, dy)
    assert_close(out, expected, 1e-4)


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
    (3, 1, 1, "VALID", False, True), (3, 1, 2, "SAME", False, True)])
def test_lower_pass_leaves_strided_and_constant_1x1_input_grads_to_the_converter(
        k, stride, dilation, padding, constant, fires):
    """Strided SAME/VALID Conv2DBackpropInput and 1x1 ones with a constant (frozen) kernel
    convert to TRANSPOSE_CONV as they are; stride-1 kxk ones become patches + matmul, 1x1
    ones with a runtime (trained) kernel one batch matmul, dilated ones the undilated form."""
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
    config = (n, h, h, ci, co, 1, 1, 1, 1, "SAME")
    x, kernel, dy = arrays(config, seed=6)
    op = lambda w, g: tf.raw_ops.Conv2DBackpropInput(
        input_sizes=list(x.shape), filter=w, out_backprop=g, strides=[1, 1, 1, 1],
        padding="SAME")
    graph = lowered(op, Conv2DBackpropInputRule(), kernel, dy)
    histogram = graph.op_histogram()
    assert histogram["Conv2DBackpropInput"] == 0 and histogram["BatchMatMulV2"] == 1
    assert histogram["Reshape"] == 2 and histogram["Transpose"] == 0  # the kernel as it is
    expected = reference(config, x, kernel, dy)[1]
    assert_close(run_tf(graph, kernel, dy), expected, 1e-5)
    [out] = run_on_litert(as_function(graph), kernel, dy)
    assert_close(out, expected, 1e-4)


# Conv2D whose kernel is a weight (not a signature input): im2col patches and one matmul.
def weight_conv_graph(config, x, kernel):
    """x is the signature input, the kernel a weight fed as a param (as the trace feeds a
    trained kernel)."""
    from graph_passes.ir import Graph
    *_, s, d, padding = config
    scratch = tf.Graph()
    with scratch.as_default():
        xp = tf.compat.v1.placeholder(tf.float32, x.shape, name="x")
        wp = tf.compat.v1.placeholder(tf.float32, kernel.shape, name="w")
        out = tf.identity(tf.nn.conv2d(xp, wp, s, padding, dilations=d), name="out")
    return Graph(scratch.as_graph_def(), inputs={"x": xp.name}, outputs={"out": out.name},
                 params={"kernel": wp.name})


def run_weight_conv(graph, x, kernel):
    session = tf.compat.v1.Session(graph=graph.to_tf_graph())
    return session.run("out:0", {"x:0": x, "w:0": kernel})


@pytest.mark.parametrize("name", ["1x1_s1", "1x1_s2_odd", "3x3_s1_same", "3x3_s2_same_even",
                                  "3x3_d2_same", "5x5_s2_same", "conv1d_k3_s2_valid"])
def test_weight_conv_becomes_patches_and_matmul(name):
    """The rewrite is right for every geometry (the pass applies it to 1x1 kernels only)."""
    from graph_passes.lowering.conv import WeightConv2DRule
    config = CONFIGS[name]
    x, kernel, _ = arrays(config, seed=3)
    graph = weight_conv_graph(config, x, kernel)
    assert lower_all(graph, WeightConv2DRule()) == 1
    histogram = graph.op_histogram()
    assert histogram["Conv2D"] == 0
    assert histogram["MatMul"] + histogram["BatchMatMulV2"] == 1  # 1x1: the 4-D kernel as is
    if name == "1x1_s1":  # no patches at all: reshape, matmul, reshape
        assert histogram["StridedSlice"] == 0 and histogram["ConcatV2"] == 0
    *_, s, d, padding = config
    assert_close(run_weight_conv(graph, x, kernel),
                 tf.nn.conv2d(x, kernel, s, padding, dilations=d).numpy(), 1e-5)


@pytest.mark.parametrize("x_shape, kernel_shape, applies", [
    ((1, 2, 2, 4), (1, 1, 4, 32), True),    # a head conv: kernel larger than its input
    ((2, 6, 6, 3), (1, 1, 3, 4), False),    # an early conv: the reshapes would copy more
    ((1, 2, 2, 4), (3, 3, 4, 32), True),    # kxk, 4 positions <= 32 channels: small patches
    ((2, 6, 6, 8), (3, 3, 8, 16), False),   # kxk, 72 positions > 16 channels: large patches
])
def test_weight_conv_applies_where_patches_are_no_larger_than_the_kernel(x_shape, kernel_shape,
                                                                         applies):
    from graph_passes.lowering.conv import WeightConv2DRule
    x, kernel = np.zeros(x_shape, np.float32), np.zeros(kernel_shape, np.float32)
    graph = weight_conv_graph((1, 1, 1, 1, 1, 1, 1, 1, 1, "SAME"), x, kernel)
    assert WeightConv2DRule().applies(graph, graph.nodes_of(["Conv2D"])[0]) == applies


def test_weight_conv_on_litert_has_no_conv():
    from graph_passes.lowering.conv import WeightConv2DRule
    config = CONFIGS["1x1_s2_odd"]
    x, kernel, _ = arrays(config, seed=4)
    graph = weight_conv_graph(config, x, kernel)
    lower_all(graph, WeightConv2DRule())
    assert graph.op_histogram()["Conv2D"] == 0
    graph.inputs["w"] = graph.params.pop("kernel")  # feed the kernel to run it on its own
    [out] = run_on_litert(as_function(graph), x, kernel)
    assert_close(out, tf.nn.conv2d(x, kernel, 2, "SAME").numpy(), 1e-4)


def test_weight_conv_leaves_constant_and_gradient_kernels():
    """A constant kernel is XNNPACK's; a kernel computed from signature inputs (the conv
    form of a filter gradient) would need huge patches: both stay CONV_2D."""
    from graph_passes.lowering.conv import WeightConv2DRule
    config = (1, 2, 2, 4, 32, 1, 1, 1, 1, "VALID")  # large enough to apply as a weight
    x, kernel, _ = arrays(config)
    rule = WeightConv2DRule()
    constant = graph_of(lambda a: tf.nn.conv2d(a, tf.constant(kernel), 1, "VALID"), x)
    assert not rule.applies(constant, constant.nodes_of(["Conv2D"])[0])
    from_inputs = graph_of(lambda a, w: tf.nn.conv2d(a, w, 1, "VALID"), x, kernel)
    assert not rule.applies(from_inputs, from_inputs.nodes_of(["Conv2D"])[0])


@pytest.mark.parametrize("name", CONFIGS)
def test_every_filter_grad_form_it_can_express(name):
    """Each form, not only the chosen one, against the float64 loops; and the choice."""
    config = CONFIGS[name]
    x, kernel, dy = arrays(config, seed=5)
    expected = reference(config, x, kernel, dy)[0]
    graph = graph_of(filter_op(config), x, dy)
    node = graph.nodes_of(["Conv2DBackpropFilter"])[0]
    win = window(graph, node, config[5:7], x.shape[1:3], dy.shape[1:3])
    s, d = config[7], config[8]
    assert filter_grad_form(win) == ("matmul" if config[5:7] == (1, 1) or (s > 1 and d > 1)
                                     else "conv")
    positions, channels = int(np.prod(dy.shape[:3])), dy.shape[3]
    assert filter_grad_form(win, positions, channels) == (
        "matmul" if positions <= channels else filter_grad_form(win))
    for form, fn in FILTER_GRAD_FORMS.items():
        if form == "conv" and s > 1 and d > 1:
            continue  # the conv form cannot express stride and dilation together
        assert_close(fn(tf.constant(x), tf.constant(dy), win).numpy(), expected, 1e-5)


@pytest.mark.parametrize("name, explicit", [
    ("3x3_d2_same", None), ("3x3_s2_d2_same", None), ("conv1d_k3_d2_same", None),
    ("5x5_s2_same", None), ("3x3_d2_same", [0, 0, 2, 1, 1, 2, 0, 0])])
def test_numpy_reference_is_adjoint(name, explicit):
    """<conv(x, w), dy> = <w, dw> = <x, dx>: the loops are the forward op's true gradients.
    The forward is tf.nn.conv2d over the zero-padded input (VALID), which every TF CPU kernel
    runs, dilated or not."""
    config = CONFIGS[name]
    x, kernel, dy = arrays(config, explicit=explicit)
    strides, dilations, ((pt, pb), (pl, pr)) = geometry(config, explicit)
    xp = np.pad(x, [(0, 0), (pt, pb), (pl, pr), (0, 0)])
    y = tf.nn.conv2d(xp, kernel, strides, "VALID", dilations=dilations).numpy()
    dw, dx = reference(config, x, kernel, dy, explicit)
    inner = float(np.sum(y.astype(np.float64) * dy))
    np.testing.assert_allclose(np.sum(kernel * dw), inner, rtol=1e-5)
    np.testing.assert_allclose(np.sum(x * dx), inner, rtol=1e-5)
