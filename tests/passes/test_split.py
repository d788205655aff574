"""Split: a partial-channel kernel is a constant part plus a small trained variable.

A tiny model with every reader the pass splits: a trained conv (so input gradients flow
through the partial layers) -> a depthwise conv on 2 of 4 channels -> a 1x1 conv on 2 of 8
-> a frozen BatchNorm (fold_bn puts its scale between the concat and the conv) -> a frozen
3x3 conv (its input gradient has a constant kernel: one convolution, lowering/conv.py) -> a
frozen Dense -> a Dense on 4 of 16 -> a trained Dense. One step on ai-edge-litert equals
GradientTape + the Keras optimizer with the same channel mask (``tests/reference.py``), SGD
and Adam, with and without the trained layer before; the exported file holds only the k
trained channels as variables, and no tensor of a whole partial kernel is left in ``train``.
"""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

import tfpock
from graph_passes.freeze import Freeze
from graph_passes.ir import Graph
from graph_passes.narrow import NarrowWeightGradients
from graph_passes.prune import Prune
from graph_passes.split import SplitPartialKernels
from tests.numerics import assert_close
from tests.passes import helpers
from tests.passes.helpers import traced
from tests.reference import OPTIMIZERS, Reference
from tfpock.pipeline import build_pipeline
from tfpock.runtime import Trainer
from tfpock.scheme import Scheme
from tfpock.tflite import model_file

BATCH = 2
PARTIAL = {"dw": {"weight_fraction": 0.5}, "pw": {"weight_channels": 2, "bias": False},
           "fc": {"weight_fraction": 0.25}}
SCHEMES = {
    "trained_before": {"default": "frozen", "layers": {"c0": "full", **PARTIAL,
                                                       "out": "full"}},
    "first_trained": {"default": "frozen", "layers": {**PARTIAL, "out": "full"}},
}
# what the pass splits: readers of the three partial kernels (an input gradient only where a
# layer before it trains: the depthwise one's only under "trained_before")
READERS = {
    "trained_before": {"Conv2D": 1, "Conv2DBackpropInput": 1, "DepthwiseConv2dNative": 1,
                       "DepthwiseConv2dNativeBackpropInput": 1, "MatMul": 2, "ShapeN": 1},
    "first_trained": {"Conv2D": 1, "Conv2DBackpropInput": 1, "DepthwiseConv2dNative": 1,
                      "MatMul": 2, "ShapeN": 1},
}


def model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((6, 6, 3)),
        layers.Conv2D(4, 3, padding="same", activation="relu", name="c0"),
        layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw"),  # 8 out
        layers.Conv2D(8, 1, name="pw"),
        layers.BatchNormalization(name="bn"),          # frozen: inference mode, folded
        layers.ReLU(),
        layers.Conv2D(8, 3, padding="same", name="c3"),   # frozen kxk between trained layers
        layers.GlobalAveragePooling2D(),
        layers.Dense(16, activation="tanh", name="hid"),
        layers.Dense(6, name="fc"),
        layers.Dense(3, name="out"),
    ], name="split_net")


def loss_fn():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def batch(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(-1, 1, (BATCH, 6, 6, 3)).astype(np.float32),
            rng.integers(0, 3, BATCH).astype(np.int32))


def partial_shapes(m: keras.Model) -> dict[str, tuple]:
    return {m.get_layer(n).kernel.path: tuple(m.get_layer(n).kernel.shape) for n in PARTIAL}


@pytest.mark.parametrize("scheme, optimizer", [("trained_before", "adam"),
                                               ("first_trained", "sgd")])
def test_step_matches_gradient_tape_and_variables_are_the_slice(scheme, optimizer, tmp_path):
    m = model()
    program = tfpock.optimize(m, loss=loss_fn(), optimizer=OPTIMIZERS[optimizer](),
                              scheme=SCHEMES[scheme], batch_size=BATCH)
    split = next(r for r in program.pass_records["train"] if r.name == "split")
    assert split.stats["readers"] == READERS[scheme]
    assert "declined" not in split.stats
    path = program.export(tmp_path / "model.tflite")
    ref = Reference(model(), SCHEMES[scheme], OPTIMIZERS[optimizer](), loss_fn())
    trainer = Trainer(path)
    assert trainer.runtime == "ai-edge-litert"
    for i in range(2):
        x, y = batch(i)
        assert_close(trainer.train(x, y)["loss"], ref.step(x, y), rtol=1e-5,
                     where=f"loss step {i}")
    weights, expected = trainer.weights(), ref.weights()
    for key, value in weights.items():     # partial kernels whole: trained ++ frozen
        assert_close(value, expected[key], atol=1e-6, rtol=1e-5, where=key)
    state = trainer.state()
    for key, value in ref.slots().items():
        assert_close(state[key], value, atol=1e-6, rtol=1e-5, where=key)

    # the file: each partial kernel's variable and slots are its trained channels, and no
    # tensor of the train signature has a whole partial kernel's shape
    shapes = partial_shapes(m)
    with open(path, "rb") as f:
        parsed = model_file.read(f.read())
    train = parsed.subgraph("train")
    variables = {v["name"]: v for v in program.metadata["variables"]}
    for key, shape in shapes.items():
        k = ref.trained[key]
        assert variables[key]["slice"] == {"axis": len(shape) - 2, "channels": [0, k]}
        assert program.state()[key].shape == shape      # weights() / checkpoints: whole
        assert trainer.trained_slice()[key].shape == (*shape[:-2], k, shape[-1])
    stored = {t.shape for op in train.operators if op.name == "READ_VARIABLE"
              for t in [train.tensors[op.outputs[0]]]}
    assert not stored & set(shapes.values())
    assert {(*s[:-2], ref.trained[p], s[-1]) for p, s in shapes.items()} <= stored
    assert not [t for t in train.tensors if t.shape in set(shapes.values())]


# ---- the pass on the GraphDef ---------------------------------------------------------------
@pytest.fixture(scope="module")
def step():
    return traced(model(), Scheme.from_dict(SCHEMES["trained_before"]))


def test_pipeline_with_split_leaves_no_concat_of_a_partial_kernel(step):
    """With the pass, the whole kernels are gone; without it, each is a concat (the test
    would see the difference); the numbers are the same."""
    values = helpers.feeds(step)
    split, records = build_pipeline(step.frozen, debug=True)(step.train)
    plain, _ = build_pipeline(step.frozen, passes={"split": False})(step.train)
    shapes = set(partial_shapes(model()).values())

    def whole_kernels(graph):
        return [n for n in graph.nodes_of(["ConcatV2"]) if graph.spec(n.name).shape in shapes]
    assert len(whole_kernels(plain)) == 3 and not whole_kernels(split)
    assert_close(helpers.run(split, values), helpers.run(plain, values), peak_rtol=1e-5)
    stats = next(r for r in records if r.name == "split").stats
    assert sorted(stats["split"].values()) == [[2, 4], [2, 8], [4, 16]]
    assert stats["slices_shared"] >= 2      # x[:k] of the forward and the weight gradient


def test_numbers_and_signature_unchanged(step):
    graph = step.train.copy()
    for p in (Freeze(step.frozen), Prune(), NarrowWeightGradients()):
        p.run(graph)
    helpers.check_pass(SplitPartialKernels(), graph, helpers.feeds(step), peak_rtol=1e-6)


def test_declines_a_kernel_read_by_an_op_without_a_rule():
    """A hand-made ``concat(param, constant)`` kernel also read by a Transpose: the pass
    leaves it whole and says why."""
    scratch = tf.Graph()
    with scratch.as_default():
        x = tf.compat.v1.placeholder(tf.float32, (2, 4), name="x")
        w_t = tf.compat.v1.placeholder(tf.float32, (1, 3), name="w_t")
        w = tf.concat([w_t, tf.constant(np.ones((3, 3), np.float32))], axis=0)
        tf.identity(tf.matmul(x, w) + tf.reduce_sum(tf.transpose(w)), name="out")
    graph = Graph(scratch.as_graph_def(add_shapes=True), {"x": "x"}, {"out": "out"},
                  params={"w": "w_t"})
    result, after = helpers.check_pass(SplitPartialKernels(), graph)
    assert not result.modified
    assert "read by Transpose" in result.stats["declined"]["w"]
    assert helpers.serialized(after) == helpers.serialized(graph)
