"""Training for 200 steps on the device runtime lowers the loss exactly like Keras does."""
from __future__ import annotations

import numpy as np

from examples import digits
from tests.numerics import assert_close


def test_200_steps_on_device_track_keras(tmp_path):
    train, test = digits.load_splits()
    path = str(tmp_path / "digits.tflite")
    digits.compile_and_export(path, learning_rate=0.1)
    device, trainer = digits.train_on_device(path, train, steps=200)
    keras_losses, keras_model = digits.train_with_keras(train, 200, 0.1, "full")
    device, keras_losses = np.array(device), np.array(keras_losses)
    # same trajectory, step by step (float32 rounding may drift a little over 200 steps)
    assert_close(device, keras_losses, atol=2e-3, where="losses")
    # and it is real learning: the loss falls well below chance (ln 10 = 2.30)
    assert device[:10].mean() > 2.0
    assert device[-20:].mean() < 0.5
    assert digits.accuracy(trainer.infer, *test) > 0.9
