"""Which weights each Keras layer kind has, and which of them is its bias.

A table over layer classes (not variable names) so that schemes select weights by role:
``bias`` picks the additive bias of a layer. A layer with weights whose class is not here is
refused with the list of supported kinds, because a scheme could not say what its weights are.
Layers without weights need no entry: their ops are checked when the graph is lowered.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterable, Iterator

import keras


@dataclasses.dataclass(frozen=True)
class LayerKind:
    weights: tuple[str, ...]       # attribute names holding the layer's weights
    bias: tuple[str, ...] = ()     # the subset that is an additive bias
    kernels: tuple[str, ...] = ()  # the subset with input channels on axis -2


WEIGHTED_LAYERS: dict[type, LayerKind] = {
    keras.layers.Dense: LayerKind(("kernel", "bias"), ("bias",), ("kernel",)),
    keras.layers.Conv1D: LayerKind(("kernel", "bias"), ("bias",), ("kernel",)),
    keras.layers.Conv2D: LayerKind(("kernel", "bias"), ("bias",), ("kernel",)),
    keras.layers.DepthwiseConv2D: LayerKind(("kernel", "bias"), ("bias",), ("kernel",)),
    keras.layers.SeparableConv2D: LayerKind(("depthwise_kernel", "pointwise_kernel", "bias"),
                                            ("bias",), ("depthwise_kernel", "pointwise_kernel")),
    keras.layers.BatchNormalization: LayerKind(("gamma", "beta", "moving_mean",
                                                "moving_variance"), ("beta",)),
    keras.layers.LayerNormalization: LayerKind(("gamma", "beta"), ("beta",)),
}


# Layer kinds whose forward in training depends on ``trainable``: Keras' BatchNormalization
# normalises with its moving statistics (and leaves them alone) when it is not trainable.
FROZEN_FORWARD_LAYERS: tuple[type, ...] = (keras.layers.BatchNormalization,)


def kind_of(layer: keras.layers.Layer) -> LayerKind | None:
    """The table entry for ``layer``'s class (exact class first, then its bases)."""
    for cls in type(layer).__mro__:
        if cls in WEIGHTED_LAYERS:
            return WEIGHTED_LAYERS[cls]
    return None


def supported_names() -> str:
    return ", ".join(sorted(cls.__name__ for cls in WEIGHTED_LAYERS))


def kernel_layer_names() -> str:
    return ", ".join(sorted(cls.__name__ for cls, kind in WEIGHTED_LAYERS.items() if kind.kernels))


def leaf_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Layers in ``model.layers`` order, with nested models replaced by their own layers."""
    out: list[keras.layers.Layer] = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out.extend(leaf_layers(layer))
        else:
            out.append(layer)
    return out


def layer_weights(layer: keras.layers.Layer) -> dict[str, keras.Variable]:
    """Attribute name -> variable for the weights of ``layer`` that exist (bias may be off)."""
    kind = kind_of(layer)
    if kind is None:
        return {}
    found = {}
    for attr in kind.weights:
        var = getattr(layer, attr, None)
        if isinstance(var, keras.Variable):
            found[attr] = var
    return found


def frozen_forward_layers(model: keras.Model, trained_layers: Iterable[str]) -> list:
    """Layers that are trainable in Keras, whose forward changes when frozen, and of which the
    scheme trains nothing: they must run as Keras runs them with ``trainable=False``."""
    trained = set(trained_layers)
    return [l for l in leaf_layers(model) if isinstance(l, FROZEN_FORWARD_LAYERS)
            and l.trainable and l.name not in trained]


@contextlib.contextmanager
def frozen_in_keras(layers: list[keras.layers.Layer]) -> Iterator[None]:
    """Sets ``trainable = False`` on ``layers`` for the body and restores every flag after,
    even on an error. The one place tfpock touches the user's model: Keras' own switch is the
    only public way to give a layer its frozen forward (what the trace must record), and
    optimize returns with the model as it was."""
    saved = [(layer, layer.trainable) for layer in layers]
    try:
        for layer in layers:
            layer.trainable = False
        yield
    finally:
        for layer, trainable in saved:
            layer.trainable = trainable
