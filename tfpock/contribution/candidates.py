"""Candidates of the search: per layer with weights, the options a scheme can give it.

Options (PockEngine's and MCUNetV3's sparse update space): ``bias`` (only the additive bias);
the kernels' first k input channels with the bias, for k = 1/8, 1/4 and 1/2 of them; ``full``.
Fractions that give the same channel counts as a smaller one, or all of them, are dropped, so
each option is a distinct set of trained weights. BatchNormalization layers are not
candidates: training their gamma/beta switches their forward to batch statistics, which the
one-trace probe (inference-mode forward) cannot express; they stay frozen (moving statistics).
The base layers (default: the last layer with weights, the fresh head) are always trained fully.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import keras

from tfpock import layers as layer_table
from tfpock.errors import TfpockError
from tfpock.scheme import Policy, Scheme

FRACTIONS = (0.125, 0.25, 0.5)


@dataclasses.dataclass(frozen=True)
class Option:
    """One way to train one layer: its policy (JSON form) and a short label for tables."""
    layer: str
    label: str           # "bias", "1/8", "1/4", "1/2", "full"
    policy: Any          # the Scheme policy, JSON form

    @property
    def key(self) -> str:
        return f"{self.layer}:{self.label}"


def candidate_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Leaf layers with Keras-trainable weights that tfpock can train, BatchNorm excluded."""
    return [l for l in layer_table.leaf_layers(model)
            if l.trainable_weights and layer_table.kind_of(l) is not None
            and not isinstance(l, layer_table.FROZEN_FORWARD_LAYERS)]


def resolve_base(model: keras.Model, base: str | Sequence[str] | None) -> tuple[str, ...]:
    """The names of the always-trained layers: ``None`` means the last candidate layer."""
    layers = candidate_layers(model)
    if not layers:
        raise TfpockError(f"model {model.name!r} has no layer the search can train")
    if base is None:
        return (layers[-1].name,)
    names = (base,) if isinstance(base, str) else tuple(base)
    known = {l.name for l in layer_table.leaf_layers(model) if l.trainable_weights}
    for name in names:
        if name not in known:
            raise TfpockError(f"base names layer {name!r}, which has no trainable weights in "
                              f"model {model.name!r}; layers with weights: {sorted(known)}")
    return names


def layer_options(layer: keras.layers.Layer, fractions=FRACTIONS) -> list[Option]:
    """The distinct options of one layer, cheapest first (see the module docstring)."""
    kind = layer_table.kind_of(layer)
    weights = layer_table.layer_weights(layer)
    out = []
    if any(r in weights and weights[r].trainable for r in kind.bias):
        out.append(Option(layer.name, "bias", "bias"))
    kernels = [weights[r] for r in layer_table.channel_kernels(layer, kind)
               if r in weights and weights[r].trainable]
    seen = set()
    for f in fractions:
        counts = tuple(Policy("channels", True, fraction=f).channels_of(v.shape[-2])
                       for v in kernels)
        if not kernels or counts in seen or all(c >= v.shape[-2] for c, v in zip(counts, kernels)):
            continue
        seen.add(counts)
        out.append(Option(layer.name, _fraction_label(f), {"weight_fraction": f, "bias": True}))
    out.append(Option(layer.name, "full", "full"))
    return out


def _fraction_label(f: float) -> str:
    return f"1/{round(1 / f)}" if abs(1 / f - round(1 / f)) < 1e-9 else f"{f:g}"


def scheme_of(base: Sequence[str], choice: dict[str, Option]) -> Scheme:
    """The tfpock Scheme that trains the base fully and each chosen option."""
    layers = {name: "full" for name in base}
    layers.update({layer: o.policy for layer, o in choice.items() if o is not None})
    return Scheme(layers=layers)


def choice_key(choice: dict[str, Option]) -> str:
    """A canonical text for a combination of options (cache and table key)."""
    return ",".join(sorted(o.key for o in choice.values() if o is not None)) or "base"
