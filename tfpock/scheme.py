"""Update schemes: which weights of a model a training step updates.

A :class:`Scheme` is a per-layer policy table that the passes read (through the resolved set
of trained weights): ``"full"`` updates every trainable weight of the layer, ``"bias"`` only
its additive bias (see :mod:`tfpock.layers`), ``"frozen"`` nothing. Layers are addressed by
name; layers not named get ``default``. The strings users pass to ``tfpock.optimize`` map to
schemes:

* ``"full"``: what Keras would train (every weight of a layer whose ``trainable`` is true);
* ``"last:N"``: the last N layers (``model.layers`` order, nested models flattened) that have
  trainable weights;
* ``"bias"``: only the bias weights.

Only weights Keras considers trainable can be trained: a scheme never overrides a layer's
``trainable=False``.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
from typing import Mapping

import keras

from tfpock import layers as layer_table
from tfpock.errors import SchemeError, UnsupportedModelError

POLICIES = ("frozen", "full", "bias")
_SCHEME_STRINGS = '"full", "last:N" (N >= 1) or "bias"'


@dataclasses.dataclass(frozen=True)
class Scheme:
    """Per-layer update policies; see the module docstring.

    Example:
        >>> Scheme(layers={"dense_1": "full", "conv2d": "bias"})  # the rest frozen
    """

    layers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    default: str = "frozen"

    def __post_init__(self):
        for name, policy in [("default", self.default), *self.layers.items()]:
            if policy not in POLICIES:
                raise SchemeError(f"unknown policy {policy!r} for {name!r}; "
                                  f"policies are {', '.join(POLICIES)}")

    @classmethod
    def full(cls) -> "Scheme":
        return cls(default="full")

    @classmethod
    def bias(cls) -> "Scheme":
        return cls(default="bias")

    @classmethod
    def last(cls, model: keras.Model, n: int) -> "Scheme":
        """The last ``n`` layers with trainable weights train fully, the rest are frozen."""
        candidates = [l for l in layer_table.leaf_layers(model) if _trainable(l)]
        if n < 1:
            raise SchemeError(f"last:{n} must name at least one layer")
        if n > len(candidates):
            raise SchemeError(f"last:{n} asks for {n} layers but the model has only "
                              f"{len(candidates)} layers with trainable weights")
        return cls(layers={l.name: "full" for l in candidates[-n:]})

    @classmethod
    def parse(cls, spec: "str | Scheme", model: keras.Model) -> "Scheme":
        """A scheme from a ``Scheme`` or one of the strings in the module docstring."""
        if isinstance(spec, Scheme):
            return spec
        if not isinstance(spec, str):
            raise SchemeError(f"scheme must be a string or a tfpock.Scheme, got "
                              f"{type(spec).__name__}; strings are {_SCHEME_STRINGS}")
        if spec == "full":
            return cls.full()
        if spec == "bias":
            return cls.bias()
        match = re.fullmatch(r"last:(\d+)", spec)
        if match:
            return cls.last(model, int(match.group(1)))
        raise SchemeError(f"unknown scheme {spec!r}; use {_SCHEME_STRINGS} or a tfpock.Scheme")

    def trained_paths(self, model: keras.Model) -> list[str]:
        """Resolves the scheme on ``model``: paths of the weights a step updates, in
        ``model.trainable_variables`` order. Raises SchemeError if a named layer does not
        exist, a policy cannot apply, or nothing would be trained."""
        leaves = layer_table.leaf_layers(model)
        by_name = {l.name: l for l in leaves}
        for name, policy in self.layers.items():
            if name not in by_name:
                close = difflib.get_close_matches(name, list(by_name), n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise SchemeError(f"scheme names layer {name!r}, which the model does not "
                                  f"have{hint}")
        trained: set[int] = set()
        for layer in leaves:
            weights = layer_table.layer_weights(layer)
            if layer.trainable_weights and layer_table.kind_of(layer) is None:
                _raise_unsupported(layer)
            explicit = layer.name in self.layers
            policy = self.layers.get(layer.name, self.default)
            if policy == "frozen" or not weights:
                if explicit and policy != "frozen":
                    raise SchemeError(f"scheme sets {policy!r} on layer {layer.name!r}, "
                                      "which has no weights")
                continue
            if explicit and not _trainable(layer):
                raise SchemeError(f"scheme sets {policy!r} on layer {layer.name!r}, whose "
                                  "weights are not trainable (trainable=False in Keras)")
            roles = layer_table.kind_of(layer).bias if policy == "bias" else tuple(weights)
            chosen = [weights[r] for r in roles if r in weights and weights[r].trainable]
            if explicit and policy == "bias" and not chosen:
                raise SchemeError(f"scheme sets 'bias' on layer {layer.name!r} "
                                  f"({type(layer).__name__}), which has no trainable bias")
            trained.update(id(v) for v in chosen)
        paths = [v.path for v in model.trainable_variables if id(v) in trained]
        if not paths:
            raise SchemeError(f"scheme {self} leaves nothing to train in model "
                              f"{model.name!r}")
        return paths

    def __str__(self) -> str:
        named = ", ".join(f"{k}: {v}" for k, v in self.layers.items())
        return f"Scheme(default={self.default}" + (f"; {named})" if named else ")")


def _trainable(layer: keras.layers.Layer) -> bool:
    return bool(layer.trainable_weights)


def _raise_unsupported(layer: keras.layers.Layer) -> None:
    raise UnsupportedModelError(
        f"layer {layer.name!r} ({type(layer).__name__}) has weights tfpock does not know how "
        f"to train; supported layers with weights: {layer_table.supported_names()}")
