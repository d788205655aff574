"""Fuse: local rewrites of the .tflite file, counted per rule, results unchanged.

The converter already fuses what it sees (a RELU after an ADD, a bias ADD after a
convolution) and composes two TRANSPOSEs, so where a rule needs its pattern the tests convert a tiny
TF function and then split the op in two with :func:`insert_after` (flatbuffer object API).
"""
from __future__ import annotations

import copy

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter, OpResolverType

import tfpock
from tfpock.tflite.flatbuffer import add_constant, builtin, opcode_index, pack
from tfpock.tflite.fuse import FUSES_ACTIVATION, RULES, fuse
from tests.passes import helpers
from tfpock.tflite import memory, model_file
from tfpock.runtime import Trainer

OPS = schema.BuiltinOperator
ACT = schema.ActivationFunctionType
NAMES = {code: name for name, code in vars(OPS).items() if not name.startswith("_")}
SIGNATURE = "serving_default"
RESOLVERS = {"xnnpack": OpResolverType.BUILTIN,
             "builtin": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
_rng = np.random.default_rng(0)
KERNEL = _rng.normal(size=(3, 3, 2, 4)).astype(np.float32)
DEPTHWISE = _rng.normal(size=(3, 3, 2, 2)).astype(np.float32)       # 2 x 2 = 4 channels
DENSE = _rng.normal(size=(32, 4)).astype(np.float32)
UP = _rng.normal(size=(3, 3, 4, 2)).astype(np.float32)
BIAS = np.array([0.5, -1.0, 2.0, 0.25], np.float32)
IMAGE = (1, 4, 4, 2)


# ---- building and running tiny models --------------------------------------------------------
def convert(fn, *shapes, dtypes=None) -> bytes:
    module = tf.Module()
    dtypes = dtypes or [tf.float32] * len(shapes)
    module.f = tf.function(fn, input_signature=[tf.TensorSpec(s, d)
                                                for s, d in zip(shapes, dtypes)])
    return tf.lite.TFLiteConverter.from_concrete_functions(
        [module.f.get_concrete_function()], module).convert()


def op_names(content: bytes) -> list[str]:
    return [op.name for op in model_file.read(content).subgraph(SIGNATURE).operators]


def run(content: bytes, inputs: dict, resolver: str = "xnnpack") -> dict[str, np.ndarray]:
    interpreter = Interpreter(model_content=content, num_threads=1,
                              experimental_op_resolver_type=RESOLVERS[resolver])
    return interpreter.get_signature_runner(SIGNATURE)(**inputs)


def assert_same_results(a: bytes, b: bytes, inputs: dict) -> None:
    for resolver in RESOLVERS:
        ra, rb = run(a, inputs, resolver), run(b, inputs, resolver)
        assert sorted(ra) == sorted(rb)
        for key in ra:
            np.testing.assert_array_equal(ra[key], rb[key], err_msg=f"{key} ({resolver})")


_OPTIONS = {OPS.ADD: (schema.BuiltinOptions.AddOptions, schema.AddOptionsT),
            OPS.TRANSPOSE: (schema.BuiltinOptions.TransposeOptions, schema.TransposeOptionsT)}


def insert_after(content: bytes, kind: int, new_kind: int, constant: np.ndarray | None = None,
                 takes_output: bool = True, activation: int = ACT.NONE) -> bytes:
    """Splits the first ``kind`` op's output off through a new ``new_kind`` op reading it (and
    ``constant``). ``takes_output``: the new op writes the old output tensor (so it stays the
    subgraph output) and the old op a fresh one; else the new op writes a fresh tensor that
    every other reader reads instead."""
    model = schema.ModelT.InitFromPackedBuf(content, 0)
    sg = model.subgraphs[0]
    at = next(i for i, op in enumerate(sg.operators) if builtin(model, op) == kind)
    op = sg.operators[at]
    out = int(op.outputs[0])
    fresh = copy.copy(sg.tensors[out])
    fresh.name = b"inserted"
    sg.tensors.append(fresh)
    fresh_index = len(sg.tensors) - 1
    new = schema.OperatorT()
    new.opcodeIndex = opcode_index(model, new_kind)
    if new_kind in _OPTIONS:
        new.builtinOptionsType, options = _OPTIONS[new_kind]
        new.builtinOptions = options()
        if activation != ACT.NONE:
            new.builtinOptions.fusedActivationFunction = activation
    extra = [] if constant is None else [add_constant(model, sg, constant, "inserted_const")]
    if takes_output:
        op.outputs = [fresh_index]
        new.inputs, new.outputs = [fresh_index] + extra, [out]
    else:
        for reader in sg.operators[at + 1:]:
            reader.inputs = [fresh_index if t == out else int(t) for t in reader.inputs]
        new.inputs, new.outputs = [out] + extra, [fresh_index]
    sg.operators.insert(at + 1, new)
    return pack(model)


def fired(result, signature: str = SIGNATURE) -> dict[str, int]:
    return {name: r["fired"] for name, r in result.stats[signature]["rules"].items()}


def declined(result, rule: str, signature: str = SIGNATURE) -> dict[str, int]:
    return result.stats[signature]["rules"][rule]["declined"]


def image(*shape) -> np.ndarray:
    return _rng.uniform(-3, 3, shape or IMAGE).astype(np.float32)


# ---- activation into the producer ------------------------------------------------------------
PRODUCERS = {   # op -> a TF function that converts to that op without a fused activation
    OPS.ADD: lambda x: x + tf.reverse(x, [1]),
    OPS.SUB: lambda x: x - tf.reverse(x, [1]),
    OPS.MUL: lambda x: x * tf.reverse(x, [1]),
    OPS.DIV: lambda x: x / (tf.abs(tf.reverse(x, [1])) + 0.5),
    OPS.CONV_2D: lambda x: tf.nn.conv2d(x, KERNEL, 1, "SAME"),
    OPS.DEPTHWISE_CONV_2D: lambda x: tf.nn.depthwise_conv2d(x, DEPTHWISE, [1, 1, 1, 1], "SAME"),
    OPS.FULLY_CONNECTED: lambda x: tf.matmul(tf.reshape(x, (1, 32)), DENSE),
    OPS.TRANSPOSE_CONV: lambda x: tf.nn.conv2d_transpose(x, UP, (1, 8, 8, 4), 2, "SAME"),
    OPS.AVERAGE_POOL_2D: lambda x: tf.nn.avg_pool2d(x, 2, 2, "VALID"),
    OPS.MAX_POOL_2D: lambda x: tf.nn.max_pool2d(x, 2, 2, "VALID"),
}


def test_the_producer_table_is_what_is_tested():
    assert set(PRODUCERS) == set(FUSES_ACTIVATION)


@pytest.mark.parametrize("producer", sorted(PRODUCERS), ids=lambda k: NAMES[k])
def test_activation_folds_into_each_producer_bit_identically(producer):
    plain = convert(PRODUCERS[producer], IMAGE)
    name = NAMES[producer]
    assert name in op_names(plain)
    x = {"x": image()}
    for activation in (OPS.RELU, OPS.RELU6, OPS.RELU_N1_TO_1):
        split = insert_after(plain, producer, activation)
        assert op_names(split).count(NAMES[activation]) == 1
        fused, result = fuse(split, [SIGNATURE])
        assert fired(result)["activation"] == 1 and result.modified
        assert op_names(fused) == op_names(plain)          # the activation op is gone
        assert_same_results(split, fused, x)
        stats = result.stats[SIGNATURE]
        assert stats["ops_before"] - stats["ops_after"] == 1


def test_activation_declines_where_the_kernels_cannot_fuse():
    tanh = convert(lambda x: tf.tanh(x + 1.0), IMAGE)
    concat = convert(lambda x: tf.nn.relu(tf.concat([x, x * 2.0], -1)), IMAGE)
    assert op_names(tanh) == ["ADD", "TANH"] and op_names(concat)[-2:] == ["CONCATENATION", "RELU"]
    for content, reason in [(tanh, "TANH"), (concat, "CONCATENATION")]:
        same, result = fuse(content, [SIGNATURE])
        assert not result.modified and same is content
        [(why, count)] = declined(result, "activation").items()
        assert why.startswith(reason + ":") and count == 1


def test_a_fused_tanh_is_ignored_by_the_runtime():
    """Why TANH is not in the rule: ADD with a fused TANH computes a plain ADD."""
    plain = convert(lambda x: x + tf.reverse(x, [1]), IMAGE)
    model = schema.ModelT.InitFromPackedBuf(plain, 0)
    model.subgraphs[0].operators[-1].builtinOptions.fusedActivationFunction = ACT.TANH
    x = {"x": image()}
    expected = run(plain, x)["output_0"]
    for resolver in RESOLVERS:
        np.testing.assert_array_equal(run(pack(model), x, resolver)["output_0"], expected)


def test_activation_does_not_fire_on_a_shared_or_output_intermediate():
    shared = convert(lambda x: (lambda a: tf.nn.relu(a) * a)(x + 1.0), IMAGE)
    output = convert(lambda x: (lambda a: (tf.nn.relu(a), a))(x + 1.0), IMAGE)
    assert op_names(shared) == ["ADD", "RELU", "MUL"] and op_names(output) == ["ADD", "RELU"]
    for content, reason in [(shared, "intermediate has other readers"),
                            (output, "intermediate is a subgraph output")]:
        same, result = fuse(content, [SIGNATURE])
        assert not result.modified and same is content
        assert declined(result, "activation") == {reason: 1}


# ---- bias into the producer ------------------------------------------------------------------
BIASED = {OPS.CONV_2D: (PRODUCERS[OPS.CONV_2D], IMAGE),
          OPS.DEPTHWISE_CONV_2D: (PRODUCERS[OPS.DEPTHWISE_CONV_2D], IMAGE),
          OPS.FULLY_CONNECTED: (lambda x: tf.matmul(x, DENSE), (2, 32))}


@pytest.mark.parametrize("producer", sorted(BIASED), ids=lambda k: NAMES[k])
@pytest.mark.parametrize("shape", [(4,), (1, 4)], ids=["vector", "row"])
def test_bias_add_becomes_the_producers_bias(producer, shape):
    fn, in_shape = BIASED[producer]
    plain = convert(fn, in_shape)
    split = insert_after(plain, producer, OPS.ADD, BIAS.reshape(shape), activation=ACT.RELU6)
    assert op_names(split) == op_names(plain) + ["ADD"]
    fused, result = fuse(split, [SIGNATURE])
    assert fired(result)["bias"] == 1
    assert op_names(fused) == op_names(plain)
    model = model_file.read(fused).subgraph(SIGNATURE)
    conv = next(op for op in model.operators if op.name == NAMES[producer])
    np.testing.assert_array_equal(model.tensors[conv.inputs[2]].value(), BIAS)
    x = {"x": image(*in_shape)}
    for resolver in RESOLVERS:  # the kernel starts from the bias: rounding may differ
        a, b = run(split, x, resolver)["output_0"], run(fused, x, resolver)["output_0"]
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6 * np.abs(a).max())
        assert b.max() <= 6.0 and b.min() >= 0.0      # the ADD's RELU6 moved along


def test_bias_declines_a_nonzero_bias_a_variable_addend_and_a_shared_output():
    with_bias = insert_after(convert(lambda x: tf.nn.conv2d(x, KERNEL, 1, "SAME") + BIAS, IMAGE),
                             OPS.CONV_2D, OPS.ADD, BIAS)
    residual = convert(lambda x, y: tf.nn.conv2d(x, KERNEL, 1, "SAME") + y, IMAGE, (1, 4, 4, 4))
    shared = insert_after(convert(PRODUCERS[OPS.CONV_2D], IMAGE), OPS.CONV_2D, OPS.ADD, BIAS,
                          takes_output=False)
    scalar = insert_after(convert(PRODUCERS[OPS.CONV_2D], IMAGE), OPS.CONV_2D, OPS.ADD,
                          np.array(1.0, np.float32))
    for content, reason in [(with_bias, "producer already has a nonzero bias"),
                            (residual, "added tensor is not a constant"),
                            (shared, "intermediate is a subgraph output"),
                            (scalar, "added constant is not one value per output channel")]:
        same, result = fuse(content, [SIGNATURE])
        assert not result.modified and same is content, reason
        assert reason in declined(result, "bias")


# ---- MUL by a CAST bool mask -> SELECT_V2 ----------------------------------------------------
def test_select_mask_replaces_cast_and_mul():
    plain = convert(lambda x, g: g * tf.cast(x > 0, tf.float32), IMAGE, IMAGE)
    assert op_names(plain) == ["GREATER", "CAST", "MUL"]
    same, result = fuse(plain, [SIGNATURE])           # off by default (it is slower)
    assert not result.modified and "select_mask" not in result.stats[SIGNATURE]["rules"]
    fused, result = fuse(plain, [SIGNATURE], rules=["select_mask"])
    assert fired(result) == {"select_mask": 1}
    assert op_names(fused) == ["GREATER", "SELECT_V2"]
    x = image()
    x[0, 0, 0, :] = 0.0                                  # the boundary: relu'(0) = 0 as in TF
    assert_same_results(plain, fused, {"x": x, "g": image()})
    stats = result.stats[SIGNATURE]
    assert stats["peak_bytes_after"] < stats["peak_bytes_before"]   # no float mask


def test_select_mask_declines_a_shared_or_non_bool_mask():
    shared = convert(lambda x: (lambda m: x * m + m)(tf.cast(x > 0, tf.float32)), IMAGE)
    not_bool = convert(lambda x, i: x * tf.cast(i, tf.float32), IMAGE, IMAGE,
                       dtypes=[tf.float32, tf.int32])
    squared = convert(lambda x: (lambda m: m * m)(tf.cast(x > 0, tf.float32)), IMAGE)
    assert op_names(squared) == ["GREATER", "CAST", "MUL"]
    for content, reason in [(shared, "intermediate has other readers"),
                            (not_bool, "CAST is not from bool"),
                            (squared, "MUL squares the mask")]:
        same, result = fuse(content, [SIGNATURE], rules=["select_mask"])
        assert not result.modified and same is content
        assert declined(result, "select_mask") == {reason: 1}


# ---- TRANSPOSE of a TRANSPOSE ----------------------------------------------------------------
P1 = np.array([1, 2, 0], np.int32)
INVERSE = np.argsort(P1).astype(np.int32)
CUBE = (3, 3, 3)


def test_transposes_that_cancel_disappear():
    plain = convert(lambda x: tf.reshape(tf.transpose(x, P1), (27,)), CUBE)
    split = insert_after(plain, OPS.TRANSPOSE, OPS.TRANSPOSE, INVERSE)
    assert op_names(split) == ["TRANSPOSE", "TRANSPOSE", "RESHAPE"]
    fused, result = fuse(split, [SIGNATURE])
    assert fired(result)["transpose_pair"] == 1
    assert op_names(fused) == ["RESHAPE"]
    stats = result.stats[SIGNATURE]
    assert (stats["ops_before"], stats["ops_after"]) == (3, 1)
    x = image(*CUBE)
    assert_same_results(split, fused, {"x": x})
    np.testing.assert_array_equal(run(fused, {"x": x})["output_0"], x.reshape(-1))


def test_transposes_compose_into_one():
    swap = np.array([1, 0, 2], np.int32)
    plain = convert(lambda x: (lambda t: (t, t * 2.0))(tf.transpose(x, P1)), CUBE)
    split = insert_after(plain, OPS.TRANSPOSE, OPS.TRANSPOSE, swap)   # writes the output
    fused, result = fuse(split, [SIGNATURE])
    assert fired(result)["transpose_pair"] == 1
    assert op_names(fused) == ["TRANSPOSE", "MUL"]
    x = image(*CUBE)
    assert_same_results(split, fused, {"x": x})
    out = run(fused, {"x": x})
    assert any(np.array_equal(v, np.transpose(np.transpose(x, P1), swap)) for v in out.values())


def test_transposes_keep_subgraph_outputs():
    identity_out = insert_after(convert(lambda x: tf.transpose(x, P1), CUBE),
                                OPS.TRANSPOSE, OPS.TRANSPOSE, INVERSE)
    first_out = insert_after(convert(lambda x: (lambda t: (t, t * 2.0))(tf.transpose(x, P1)),
                                     CUBE), OPS.TRANSPOSE, OPS.TRANSPOSE, INVERSE,
                             takes_output=False)
    for content, reason in [(identity_out, "identity, and the result is a subgraph output"),
                            (first_out, "intermediate is a subgraph output")]:
        same, result = fuse(content, [SIGNATURE])
        assert not result.modified and same is content
        assert declined(result, "transpose_pair") == {reason: 1}


# ---- the pass on a tfpock training model -----------------------------------------------------
@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    program = tfpock.optimize(helpers.small_cnn(),
                              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                              optimizer=keras.optimizers.SGD(0.1), scheme="full", batch_size=4)
    folder = tmp_path_factory.mktemp("fuse")
    plain = folder / "plain.tflite"
    plain.write_bytes(program.to_tflite())
    content, result = fuse(plain.read_bytes(), ["train", "infer"], rules=list(RULES))
    fused = folder / "fused.tflite"
    fused.write_bytes(content)
    return plain, fused, result


def test_on_a_training_model_the_relu_grads_become_selects(cnn):
    plain, fused, result = cnn
    before, after = model_file.read(plain.read_bytes()), model_file.read(fused.read_bytes())
    n = fired(result, "train")["select_mask"]
    assert n == 2                                   # the ReluGrads of conv_a and conv_b
    assert fired(result, "infer") == dict.fromkeys(RULES, 0)
    hist_a, hist_b = before.op_histogram(), after.op_histogram()
    assert hist_b["SELECT_V2"] - hist_a["SELECT_V2"] == n
    assert (hist_a["CAST"] - hist_b["CAST"], hist_a["MUL"] - hist_b["MUL"]) == (n, n)
    assert before.signatures == after.signatures
    assert (Interpreter(model_path=str(plain)).get_signature_list()
            == Interpreter(model_path=str(fused)).get_signature_list())
    stats = result.stats["train"]
    assert stats["ops_before"] - stats["ops_after"] == n
    assert stats["peak_bytes_after"] == memory.timeline(after, "train").peak_bytes
    assert stats["peak_bytes_after"] <= stats["peak_bytes_before"]


def test_on_a_training_model_the_results_are_bit_identical(cnn):
    """Bit for bit (the float bits, so a -0 against a +0 would count)."""
    trainers = [Trainer(path, num_threads=1) for path in cnn[:2]]
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = rng.uniform(-1, 1, (4, 8, 8, 2)).astype(np.float32)
        y = rng.integers(0, 3, 4).astype(np.int32)
        plain_loss, fused_loss = (t.train(x, y)["loss"] for t in trainers)
        assert plain_loss == fused_loss
    (plain, plain_out), (fused, fused_out) = ((t.state(), t.infer(x)) for t in trainers)
    assert sorted(plain) == sorted(fused)
    for key, value in plain.items():
        assert value.tobytes() == fused[key].tobytes(), key
    assert plain_out.tobytes() == fused_out.tobytes()


def test_kill_switch_and_unknown_signature(cnn):
    plain, _, _ = cnn
    content = plain.read_bytes()
    same, result = fuse(content, ["train"], rules=())
    assert same is content and not result.modified
    with pytest.raises(ValueError, match="no signature"):
        fuse(content, ["training"])
    with pytest.raises(ValueError, match="unknown rules"):
        fuse(content, ["train"], rules=["relu"])
