"""fold_bn: a frozen BatchNorm's scale moves into the trained kernel before it."""
from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers

from graph_passes.dce import live_nodes
from graph_passes.fold_batchnorm import FoldBatchNorm
from graph_passes.ir import parse_ref
from graph_passes.freeze import Freeze
from graph_passes.pass_base import Sequential
from graph_passes.prune import Prune
from tests.passes import helpers
from tests.passes.helpers import traced


def conv_bn_model(bn_trainable=False, depthwise=False, seed=0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    conv = (layers.DepthwiseConv2D(3, depth_multiplier=2, use_bias=False, name="conv")
            if depthwise else layers.Conv2D(4, 3, use_bias=False, name="conv"))
    model = keras.Sequential([
        keras.Input((8, 8, 2)), conv,
        layers.BatchNormalization(trainable=bn_trainable, name="bn"), layers.ReLU(6.0),
        layers.Conv2D(3, 1, use_bias=False, name="head_conv"),
        layers.BatchNormalization(trainable=bn_trainable, name="head_bn"),
        layers.Flatten(), layers.Dense(2, name="logits")])
    for bn in (model.get_layer("bn"), model.get_layer("head_bn")):  # non-trivial statistics
        bn.moving_mean.assign(np.linspace(-0.5, 0.5, bn.moving_mean.shape[0]))
        bn.moving_variance.assign(np.linspace(0.5, 2.0, bn.moving_variance.shape[0]))
        bn.gamma.assign(np.linspace(0.7, 1.3, bn.gamma.shape[0]))
    return model


def prepared(model, scheme="full"):
    step = traced(model, scheme)
    graph, _ = Sequential([Freeze(step.frozen), Prune()])(step.train)
    return step, graph


def bn_scale_muls(graph):
    """Live forward multiplies of a convolution's output (what folding removes)."""
    live = live_nodes(graph)
    return [n for n in graph.nodes.values() if n.op == "Mul" and n.name in live
            and n.name not in graph.backward
            and any(graph.nodes[parse_ref(r)[0]].op in ("Conv2D", "DepthwiseConv2dNative")
                    for r in n.input)]


@pytest.mark.parametrize("depthwise", [False, True])
def test_folds_forward_and_backward_with_the_same_numbers(depthwise):
    step, graph = prepared(conv_bn_model(depthwise=depthwise))
    assert len(bn_scale_muls(graph)) == 2
    result, graph = helpers.check_pass(FoldBatchNorm(), graph, helpers.feeds(step),
                                       peak_rtol=1e-5)
    assert result.modified and result.stats["folded"] == 2
    # the first conv's filter grad and the head conv's filter and input grads read dy
    assert result.stats["backward_rewrites"] == 3
    assert bn_scale_muls(graph) == []


def test_does_not_fold_batchnorm_that_trains_with_batch_statistics():
    step, graph = prepared(conv_bn_model(bn_trainable=True))
    result, _ = helpers.check_pass(FoldBatchNorm(), graph)
    assert not result.modified and result.stats["folded"] == 0


def test_frozen_conv_and_frozen_batchnorm_fold_too():
    """With the kernel frozen as well, W * s is constant: the converter folds it."""
    model = conv_bn_model()
    step, graph = prepared(model, "last:1")
    result, _ = helpers.check_pass(FoldBatchNorm(), graph, helpers.feeds(step), peak_rtol=1e-5)
    assert result.stats["folded"] == 2


def test_declines_a_trained_kernel_larger_than_its_activation():
    """A wide 1x1 conv on a 2x2 map (MobileNetV2's last conv at batch 1 in small): W * s
    would cost more than the activation-sized multiply it replaces, so it stays unfolded."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((2, 2, 16)), layers.Conv2D(64, 1, use_bias=False, name="wide"),
        layers.BatchNormalization(trainable=False, name="bn"), layers.ReLU(6.0),
        layers.Flatten(), layers.Dense(2, name="logits")])
    step, graph = prepared(model)
    result, graph = helpers.check_pass(FoldBatchNorm(), graph, helpers.feeds(step),
                                       peak_rtol=1e-5)
    assert result.stats["folded"] == 0
    assert result.stats["declined"] == {"kernel larger than the activation it scales": 1}
    assert len(bn_scale_muls(graph)) == 1
    # frozen, the same kernel folds: W * s is a constant the converter computes once
    step, graph = prepared(model, "last:1")
    assert FoldBatchNorm().run(graph).stats["folded"] == 1
