"""Slice gradients, concatenations of an unstack and slices of more than 5 axes: op gone,
numbers in TF and on LiteRT (exact: the lowerings only copy), declines named."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from graph_passes.lower import LoweringError
from graph_passes.lowering.slicing import (ConcatOfUnstackRule, HighRankStridedSliceRule,
                                           StridedSliceGradRule)
from tests.lowering.harness import graph_of, lowered
from tests.numerics import assert_close


def _slice_grad(shape, begin, end, strides, **masks):
    return lambda dy: tf.raw_ops.StridedSliceGrad(shape=shape, begin=begin, end=end,
                                                  strides=strides, dy=dy, **masks)


SLICES = {   # name -> (the slice's gradient, dy's shape)
    "first_token": (_slice_grad([2, 8, 32], [0, 0, 0], [0, 1, 0], [1, 1, 1], begin_mask=5,
                                end_mask=5, shrink_axis_mask=2), (2, 32)),   # x[:, 0, :]
    "box": (_slice_grad([3, 4, 5], [1, 2], [3, 5], [1, 1],
                        begin_mask=0, end_mask=0), (2, 2, 5)),   # x[1:3, 2:5]
    "new_axis": (_slice_grad([4, 6], [0, 1, 0], [0, 3, 0], [1, 1, 1], begin_mask=5,
                             end_mask=5, new_axis_mask=1), (1, 2, 6)),        # x[None, 1:3]
}


@pytest.mark.parametrize("name", SLICES)
def test_slice_gradient_is_a_pad(name):
    make, shape = SLICES[name]
    dy = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    result = lowered(make, StridedSliceGradRule(), dy)
    assert (result.count, result.left) == (1, 0)
    assert_close(result.run_tf(), result.reference())
    assert_close(result.run_litert(), result.reference())


def test_strided_slice_gradient_is_declined():
    dy = np.ones((2, 4), np.float32)
    with pytest.raises(LoweringError, match="unit strides"):
        lowered(_slice_grad([4, 4], [0, 0], [4, 4], [2, 1]), StridedSliceGradRule(), dy)


@pytest.mark.parametrize("unstack_axis, concat_axis", [(-1, -1), (4, 3), (0, 0), (2, 0)])
def test_concat_of_unstack_is_a_transpose(unstack_axis, concat_axis):
    """The gradient of Gemma's ``stack(split(x, 2, -1), -1)``: TF 2.21's converter folds the
    (-1, -1) pair into a RESHAPE alone and is off by up to 5 (the rule's docstring)."""
    g = np.random.default_rng(1).standard_normal((2, 8, 2, 8, 2)).astype(np.float32)
    result = lowered(lambda t: tf.concat(tf.unstack(t, axis=unstack_axis), concat_axis),
                     ConcatOfUnstackRule(), g)
    assert (result.count, result.left) == (1, 0)   # the Unpack is left dead, for the DCE
    assert_close(result.run_tf(), result.reference())
    assert_close(result.run_litert(), result.reference())


HIGH_RANK = {   # name -> the slice of a [2, 3, 2, 4, 1, 5] input (a decode cache's layout)
    "layer": lambda c: c[:, 1, ...],               # call_with_cache: one layer's cache
    "box": lambda c: c[1:, :2, :, 1:3],            # runs on several axes
    "inner": lambda c: c[:, :, 0, :, 0, 2:4],      # shrinks in the middle
}


@pytest.mark.parametrize("name", HIGH_RANK)
def test_slice_of_six_axes_is_a_slice_of_fewer(name):
    """tflite-runtime 2.14's STRIDED_SLICE refuses more than 5 axes (the rule's docstring);
    the lowered form slices the input with its whole-read axes merged."""
    cache = np.random.default_rng(2).standard_normal((2, 3, 2, 4, 1, 5)).astype(np.float32)
    result = lowered(HIGH_RANK[name], HighRankStridedSliceRule(), cache)
    assert (result.count, result.left) == (1, 0)
    [sliced] = result.graph.nodes_of(["Slice"])
    assert len(result.graph.spec(sliced.input[0]).shape) <= 5
    assert_close(result.run_tf(), result.reference())
    assert_close(result.run_litert(), result.reference())


def test_slice_of_six_axes_with_steps_is_declined_and_five_axes_are_left():
    rule = HighRankStridedSliceRule()
    with pytest.raises(LoweringError, match="box-shaped read"):
        lowered(lambda c: c[:, ::2], rule, np.ones((2, 4, 1, 1, 1, 3), np.float32))
    five = graph_of(lambda c: c[:, 1], np.ones((2, 3, 2, 4, 5), np.float32))
    [node] = five.nodes_of(["StridedSlice"])
    assert not rule.applies(five, node)
