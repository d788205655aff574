"""Slice gradients and concatenations of an unstack: op gone, numbers in TF and on LiteRT
(exact: both lowerings only copy), declines named."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from graph_passes.lower import LoweringError
from graph_passes.lowering.slicing import ConcatOfUnstackRule, StridedSliceGradRule
from tests.lowering.harness import lowered
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
