"""Memory analysis: the per-operator live-bytes timeline and the measured allocation."""
from __future__ import annotations

import tensorflow as tf

from tfpock.testing.litert import convert_builtins_only
from tfpock.tflite import memory, model_file


def chain_model() -> bytes:
    # x (4, 8) float32 = 128 bytes; y1 = 2x, y2 = y1 + 1, out = y2 * y1
    def fn(x):
        y1 = x * 2.0
        y2 = y1 + 1.0
        return y2 * y1
    return convert_builtins_only(fn, [tf.TensorSpec((4, 8), tf.float32)])


def test_timeline_follows_tensor_lifetimes():
    parsed = model_file.read(chain_model())
    t = memory.timeline(parsed, "serving_default")
    assert [o.op for o in t.ops] == ["MUL", "ADD", "MUL"]
    # op0: x, y1 | op1: y1, y2 (x is dead) | op2: y1, y2, out
    assert [o.live_bytes for o in t.ops] == [256, 256, 384]
    assert t.peak_bytes == 384 and t.peak_op.index == 2


def test_constants_and_variables_are_not_activations():
    content = convert_builtins_only(lambda x: tf.matmul(x, tf.ones((8, 1000))),
                                    [tf.TensorSpec((1, 8), tf.float32)])
    t = memory.timeline(content, "serving_default")
    # input (32 bytes) + output (4000 bytes); the 32,000-byte constant is not counted
    assert t.peak_bytes == 32 + 4000


def test_measured_arena_grows_with_the_activations(tmp_path):
    small, large = tmp_path / "small.tflite", tmp_path / "large.tflite"
    fn = lambda x: tf.nn.relu(x * 3.0) + x
    small.write_bytes(convert_builtins_only(fn, [tf.TensorSpec((1, 1000), tf.float32)]))
    large.write_bytes(convert_builtins_only(fn, [tf.TensorSpec((1, 4_000_000), tf.float32)]))
    # at least the input and the output (16 MB each); a runtime that keeps the intermediate
    # apart (ai-edge-litert 2.3 does) needs more, one that fuses the elementwise ops no more
    assert memory.measured_arena(large, "serving_default") > 2 * 16_000_000 * 0.9
    assert memory.measured_arena(small, "serving_default") < 16_000_000
