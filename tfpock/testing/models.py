"""Small Keras models the tests and benchmarks compile: built with fixed seeds."""
from __future__ import annotations

import functools

import keras
import numpy as np
from keras import layers


def mlp(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((20,)),
        layers.Dense(32, activation="relu", name="hidden_1"),
        layers.Dense(16, activation="tanh", name="hidden_2"),
        layers.Dense(5, name="logits"),
    ], name="mlp")


def every_layer_cnn(seed: int = 0, dropout: float = 0.25) -> keras.Model:
    """A functional CNN that uses every layer kind the foundation issue lists."""
    keras.utils.set_random_seed(seed)
    gelu_tanh = functools.partial(keras.activations.gelu, approximate=True)
    inp = keras.Input((16, 16, 3))
    h = layers.Rescaling(1 / 2.0, offset=-0.25, name="rescale")(inp)
    h = layers.ZeroPadding2D(1)(h)                                       # 18x18x3
    a = layers.Conv2D(8, 3, strides=2, padding="valid", name="conv_s2")(h)  # 8x8x8
    a = layers.BatchNormalization(trainable=False, name="bn")(a)
    a = layers.ReLU()(a)
    b = layers.Conv2D(8, 3, dilation_rate=2, padding="same", activation="elu",
                      name="conv_dil")(a)
    c = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(a)  # 16 ch
    c = layers.ReLU(max_value=6.0)(c)
    c = layers.Conv2D(8, 1, name="conv_1x1")(c)
    h = layers.Add()([b, c])
    h = layers.LeakyReLU(negative_slope=0.1)(h)
    s = layers.SeparableConv2D(8, 3, padding="same", activation="tanh", name="sep")(h)
    g = layers.Activation("sigmoid")(layers.Conv2D(8, 1, name="gate")(h))
    h = layers.Multiply()([s, g])
    m = layers.MaxPooling2D(2)(h)                                         # 4x4x8
    v = layers.AveragePooling2D(3, strides=2, padding="same")(h)          # 4x4x8
    h = layers.Concatenate()([m, v])                                      # 4x4x16
    h = layers.Activation("silu")(h)
    h2d = layers.GlobalAveragePooling2D()(h)                              # 16
    seq = layers.Reshape((16, 16))(layers.Conv2D(16, 1, name="to_seq")(h))  # 16 steps x 16
    seq = layers.Conv1D(12, 3, padding="same", activation="gelu", name="conv1d")(seq)
    seq = layers.MaxPooling1D(2)(seq)                                     # 8 x 12
    seq = layers.Activation(gelu_tanh)(seq)
    seq = layers.GlobalAveragePooling1D()(seq)                            # 12
    f = layers.Flatten()(m)                                               # 128
    f = layers.Dense(16, activation="swish", name="fc_flat")(f)
    h = layers.Concatenate()([h2d, seq, f])
    if dropout:
        h = layers.Dropout(dropout)(h)
    h = layers.Dense(10, name="fc_mid")(h)
    h = layers.Multiply()([h, layers.Activation("softmax")(h)])
    out = layers.Dense(4, name="logits")(h)
    return keras.Model(inp, out, name="every_layer_cnn")


def mobilenet_v2(seed: int = 0, size: int = 96, classes: int = 10,
                 freeze_bn: bool = True) -> keras.Model:
    """MobileNetV2 alpha 0.35 with its BatchNormalization layers frozen (trainable=False;
    ``freeze_bn=False`` leaves them as Keras builds them, trainable), their statistics
    calibrated on random images like a trained network's (with the untrained identity
    statistics the activations vanish with depth and every gradient is ~1e-10, which would
    make equivalence tests vacuous)."""
    keras.utils.set_random_seed(seed)
    model = keras.applications.MobileNetV2(alpha=0.35, input_shape=(size, size, 3),
                                           weights=None, classes=classes,
                                           classifier_activation=None)
    calibrate_batchnorm(model, np.random.default_rng(seed).uniform(
        -1, 1, (16, size, size, 3)).astype(np.float32))
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = not freeze_bn
    return model


def bn_cnn(seed: int = 0) -> keras.Model:
    """A small CNN with trainable BatchNormalization layers (batch statistics in training,
    moving statistics updated with each layer's momentum)."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((12, 12, 3))
    # no bias before a BatchNorm in training mode: its gradient is zero up to rounding, which
    # Adam's normalisation would turn into updates of size lr (noise, not a test)
    h = layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv_a")(inp)
    h = layers.BatchNormalization(momentum=0.9, name="bn_a")(h)
    h = layers.ReLU()(h)
    h = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="conv_b")(h)
    h = layers.BatchNormalization(momentum=0.8, name="bn_b")(h)
    h = layers.ReLU()(h)
    h = layers.Conv2D(8, 3, padding="same", name="conv_c")(h)
    h = layers.BatchNormalization(name="bn_c")(h)
    h = layers.ReLU()(h)
    h = layers.GlobalAveragePooling2D()(h)
    out = layers.Dense(4, name="logits")(h)
    model = keras.Model(inp, out, name="bn_cnn")
    calibrate_batchnorm(model, np.random.default_rng(seed).uniform(
        -1, 1, (16, 12, 12, 3)).astype(np.float32))
    return model


def deep_head_cnn(seed: int = 0) -> keras.Model:
    """The deep end of a CNN at batch 1: a 3x3 convolution over 3x3 positions with more output
    channels than positions and a 1x1 convolution whose kernel is larger than its input, the
    geometry in which trained kernels are lowered to batch matmuls that read them as they are
    (ResNet's layer4, MobileNetV2's Conv_1)."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((6, 6, 4))
    h = layers.Conv2D(12, 3, strides=2, padding="same", activation="relu", name="stem")(inp)
    h = layers.Conv2D(16, 3, padding="same", activation="relu", name="deep_3x3")(h)
    h = layers.Conv2D(32, 1, activation="relu", name="head_1x1")(h)
    h = layers.GlobalAveragePooling2D()(h)
    out = layers.Dense(5, name="logits")(h)
    return keras.Model(inp, out, name="deep_head_cnn")


def calibrate_batchnorm(model: keras.Model, x: np.ndarray) -> None:
    """Sets every BatchNormalization's moving statistics to its batch statistics on ``x``
    (one training-mode forward with momentum 0), and gives beta a little noise."""
    bns = [l for l in model.layers if isinstance(l, layers.BatchNormalization)]
    saved = [(l.trainable, l.momentum) for l in bns]
    for l in bns:
        l.trainable, l.momentum = True, 0.0
    model(x, training=True)
    rng = np.random.default_rng(1)
    for l, (trainable, momentum) in zip(bns, saved):
        l.trainable, l.momentum = trainable, momentum
        l.beta.assign(rng.normal(0, 0.1, l.beta.shape).astype(np.float32))


def decoder(seed: int = 0, vocab: int = 64, seq: int = 8, hidden: int = 16, heads: int = 2,
            blocks: int = 2, mlp: str = "gelu", norm: str = "layer") -> keras.Model:
    """A plain Keras causal language model: ``{"token_ids", "padding_mask"}`` (int32
    ``[batch, seq]``) -> next-token logits ``[batch, seq, vocab]``.

    Pre-norm blocks ``block_<i>_...``: a norm, causal ``MultiHeadAttention`` whose mask also
    hides padding, a residual, a norm, an MLP, a residual; then a final norm and a Dense head.
    ``mlp``: ``"gelu"`` (Dense -> GELU -> Dense) or ``"swiglu"`` (an EinsumDense gate through
    SiLU times a Dense up projection, then Dense down); ``norm``: ``"layer"``
    (LayerNormalization) or ``"rms"`` (RMSNormalization)."""
    keras.utils.set_random_seed(seed)
    ids = keras.Input((seq,), dtype="int32", name="token_ids")
    mask = keras.Input((seq,), dtype="int32", name="padding_mask")
    norms = {"layer": lambda name: layers.LayerNormalization(epsilon=1e-5, name=name),
             "rms": lambda name: layers.RMSNormalization(epsilon=1e-5, name=name)}
    attention_mask = keras.ops.expand_dims(keras.ops.cast(mask, "bool"), 1)  # [b, 1, seq]
    h = layers.Embedding(vocab, hidden, name="token_embedding")(ids)
    for i in range(blocks):
        x = norms[norm](f"block_{i}_attention_norm")(h)
        x = layers.MultiHeadAttention(heads, hidden // heads, name=f"block_{i}_attention")(
            x, x, attention_mask=attention_mask, use_causal_mask=True)
        h = layers.Add(name=f"block_{i}_attention_residual")([h, x])
        x = norms[norm](f"block_{i}_mlp_norm")(h)
        if mlp == "gelu":
            x = layers.Dense(2 * hidden, activation="gelu", name=f"block_{i}_mlp_up")(x)
        else:
            gate = layers.EinsumDense("btd,df->btf", (seq, 2 * hidden), activation="silu",
                                      name=f"block_{i}_mlp_gate")(x)
            x = layers.Multiply(name=f"block_{i}_mlp_glu")(
                [gate, layers.Dense(2 * hidden, use_bias=False, name=f"block_{i}_mlp_up")(x)])
        x = layers.Dense(hidden, name=f"block_{i}_mlp_down")(x)
        h = layers.Add(name=f"block_{i}_mlp_residual")([h, x])
    h = norms[norm]("final_norm")(h)
    logits = layers.Dense(vocab, name="lm_head")(h)
    return keras.Model({"token_ids": ids, "padding_mask": mask}, logits,
                       name=f"decoder_{mlp}_{norm}")
