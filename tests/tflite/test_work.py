"""Work counted from a file: multiply-accumulates per operator from shapes, variable copies."""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

import tfpock
from tfpock.testing.litert import convert_builtins_only
from tfpock.tflite import model_file, work


def macs_of(fn, *specs) -> dict[str, int]:
    return work.count(convert_builtins_only(fn, list(specs)), "serving_default").macs_by_op


def test_convolutions_count_output_elements_times_their_reduction():
    kernel = tf.constant(np.ones((3, 3, 4, 6), np.float32))       # kh, kw, Ci, Co
    depthwise = tf.constant(np.ones((3, 3, 6, 2), np.float32))    # kh, kw, C, multiplier
    got = macs_of(lambda x: tf.nn.depthwise_conv2d(
        tf.nn.conv2d(x, kernel, 2, "SAME"), depthwise, [1, 1, 1, 1], "VALID"),
        tf.TensorSpec((2, 8, 8, 4), tf.float32))
    # conv: output 2x4x4x6, each a 3*3*4 reduction; depthwise: output 2x2x2x12, each 3*3
    assert got == {"CONV_2D": 2 * 4 * 4 * 6 * 36, "DEPTHWISE_CONV_2D": 2 * 2 * 2 * 12 * 9}


def test_matmuls_count_the_shared_dimension_whichever_side_it_is_on():
    w = tf.constant(np.ones((5, 7), np.float32))
    dense = macs_of(lambda x: tf.matmul(x, w), tf.TensorSpec((3, 5), tf.float32))
    assert dense == {"FULLY_CONNECTED": 3 * 7 * 5}
    spec_a, spec_b = tf.TensorSpec((2, 3, 5), tf.float32), tf.TensorSpec((2, 5, 7), tf.float32)
    assert macs_of(tf.matmul, spec_a, spec_b) == {"BATCH_MATMUL": 2 * 3 * 7 * 5}
    transposed = macs_of(lambda a, b: tf.matmul(a, b, transpose_a=True),
                         tf.TensorSpec((2, 5, 3), tf.float32), spec_b)
    assert transposed == {"BATCH_MATMUL": 2 * 3 * 7 * 5}


def test_transpose_conv_scatters_every_input_element_into_a_kernel_of_outputs():
    kernel = tf.constant(np.ones((3, 3, 6, 4), np.float32))       # kh, kw, Co, Ci
    got = macs_of(lambda x: tf.nn.conv2d_transpose(x, kernel, (1, 8, 8, 6), 2, "SAME"),
                  tf.TensorSpec((1, 4, 4, 4), tf.float32))
    assert got == {"TRANSPOSE_CONV": 1 * 4 * 4 * 4 * 3 * 3 * 6}


def test_a_train_step_reads_and_assigns_what_it_trains(tmp_path):
    """SGD on the last Dense of an MLP: its kernel and bias are read once and assigned once,
    and the step's MACs are the forward's plus that layer's weight gradient."""
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, name="hidden"),
                              keras.layers.Dense(3, name="out")])
    program = tfpock.optimize(model, scheme="last:1", batch_size=2,
                              loss=keras.losses.MeanSquaredError(),
                              optimizer=keras.optimizers.SGD(0.1))
    parsed = model_file.read(program.to_tflite())
    train, infer = work.count(parsed, "train"), work.count(parsed, "infer")
    trained_bytes = (5 * 3 + 3) * 4
    assert train.variable_copy_bytes == 2 * trained_bytes
    assert infer.macs == 2 * (6 * 5 + 5 * 3)
    assert train.macs == infer.macs + 2 * 5 * 3   # + dW = h^T @ dy, [5, 2] @ [2, 3]
