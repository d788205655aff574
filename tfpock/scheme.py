"""Update schemes: which weights of a model a training step updates, and how much of them.

A :class:`Scheme` is a per-layer policy table that the compiler reads. Layers are addressed
by name; layers not named get ``default``. A policy is one of:

* ``"frozen"``: nothing of the layer is updated;
* ``"full"``: every trainable weight of the layer;
* ``"bias"``: only its additive bias (see :mod:`tfpock.layers`);
* ``{"lora": {"rank": 4}}`` (and optionally ``"alpha"``) on a Dense or EinsumDense: LoRA as
  Keras' ``enable_lora(rank)`` adds it, on a copy of the model (``Scheme.lora_model``), and
  only its two factors train; ``Scheme.lora(model, rank, pattern)`` names the layers by a
  pattern (by default KerasHub's targets, the query and value projections). The trained
  model's weights merge back into a model without LoRA: ``Trainer.merged_weights()``;
* a partial-channel policy, ``{"weight_fraction": 0.25, "bias": true}`` or
  ``{"weight_channels": 16, "bias": false}``: only the weights of the first k *input* channels
  of the layer's kernels are updated (axis -2 of a Dense or Conv kernel ``[in, out]`` /
  ``[kh, kw, in, out]``, the channel axis of a depthwise kernel ``[kh, kw, channels, mult]``),
  as in PockEngine and MCUNetV3: the weight gradient then needs only those channels of the
  saved activation. ``bias`` (default true) says whether the bias is updated too (where the
  layer has one; ``"bias"`` alone on a layer without a bias is an error).

A layer made of sublayers (KerasHub's ``transformer_layer_0``, ``tfpock/layers.py``) takes
one policy for all of it by its name, or policies part by part by the parts' Keras paths:
``"transformer_layer_0/self_attention"`` (attention only),
``"transformer_layer_0/feedforward_layernorm"`` (a norm); a part takes the policy of the most
specific name the scheme gives it, else its layer's.

Schemes read and write JSON a person can edit::

    {"default": "frozen",
     "layers": {"dense": "full", "conv2d_3": "bias",
                "block_16_project": {"weight_fraction": 0.25, "bias": true}}}

Strings accepted by ``tfpock.optimize``: ``"full"`` (what Keras would train), ``"last:N"``
(the last N layers with trainable weights, ``model.layers`` order, nested models flattened),
``"bias"``; also a dict in the JSON form or the path of a ``.json`` file.

Only weights Keras considers trainable can be trained: a scheme never overrides a layer's
``trainable=False`` (that is also what puts a BatchNormalization in inference mode).

A layer the scheme leaves without trained weights is frozen as Keras freezes it: it runs as
if the user had set ``layer.trainable = False``. For a BatchNormalization that means
inference mode (moving statistics, constants the compiler folds into the convolution before
it), as Keras' fine-tuning guide, PockEngine and MCUNetV3 do: batch statistics of the 1-8
samples a device trains on hurt accuracy. ``"frozen_batchnorm": "batch_statistics"`` keeps
them in training mode instead (batch statistics, moving statistics updated as variables); a
BatchNormalization whose gamma or beta the scheme trains is in training mode either way.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
from typing import Any, Mapping

import keras

from tfpock import layers as layer_table
from tfpock.errors import SchemeError, UnsupportedModelError

_SCHEME_STRINGS = '"full", "last:N" (N >= 1), "bias", a dict or a .json path'
_NAMED = ("frozen", "full", "bias")
# How a trainable-in-Keras BatchNormalization that the scheme freezes runs (module doc).
FROZEN_BATCHNORM_MODES = ("inference", "batch_statistics")
# KerasHub's LoRA targets (``Backbone.get_lora_target_names``): query and value projections.
LORA_TARGETS = r"(^|/)(query|value)(_dense)?$"


@dataclasses.dataclass(frozen=True)
class Policy:
    """What of one layer is updated: ``kernels`` is "none", "all" or "channels"."""
    kernels: str = "none"           # or "lora": the layer's LoRA factors, nothing else
    bias: bool = False
    fraction: float | None = None   # for "channels": a fraction of the input channels ...
    channels: int | None = None     # ... or a count
    rank: int | None = None         # for "lora": the factors' rank ...
    alpha: float | None = None      # ... and Keras' lora_alpha (None: the rank, scale 1)

    @classmethod
    def parse(cls, spec: Any, where: str) -> "Policy":
        if isinstance(spec, Policy):
            return spec
        if spec == "frozen":
            return cls()
        if spec == "full":
            return cls("all", True)
        if spec == "bias":
            return cls("none", True)
        if isinstance(spec, Mapping) and "lora" in spec:
            return cls._parse_lora(spec, where)
        if isinstance(spec, Mapping):
            unknown = set(spec) - {"weight_fraction", "weight_channels", "bias"}
            if unknown:
                raise SchemeError(f"{where}: unknown keys {sorted(unknown)}; a partial policy "
                                  "has weight_fraction or weight_channels, and bias")
            if ("weight_fraction" in spec) == ("weight_channels" in spec):
                raise SchemeError(f"{where}: give exactly one of weight_fraction and "
                                  "weight_channels")
            bias = spec.get("bias", True)
            if not isinstance(bias, bool):
                raise SchemeError(f"{where}: bias must be true or false, got {bias!r}")
            if "weight_fraction" in spec:
                f = spec["weight_fraction"]
                if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
                    raise SchemeError(f"{where}: weight_fraction must be in (0, 1], got {f!r}")
                return cls("channels", bias, fraction=float(f))
            k = spec["weight_channels"]
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise SchemeError(f"{where}: weight_channels must be a positive integer, "
                                  f"got {k!r}")
            return cls("channels", bias, channels=k)
        raise SchemeError(f"{where}: unknown policy {spec!r}; policies are "
                          f"{', '.join(_NAMED)} or {{\"weight_fraction\": f, \"bias\": b}}")

    @classmethod
    def _parse_lora(cls, spec: Mapping, where: str) -> "Policy":
        lora = spec["lora"]
        if set(spec) != {"lora"} or not isinstance(lora, Mapping) or "rank" not in lora or (
                set(lora) - {"rank", "alpha"}):
            raise SchemeError(f"{where}: a LoRA policy is {{\"lora\": {{\"rank\": r}}}} "
                              f"(and optionally \"alpha\"), got {dict(spec)!r}")
        rank, alpha = lora["rank"], lora.get("alpha")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise SchemeError(f"{where}: LoRA rank must be a positive integer, got {rank!r}")
        if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))
                                  or alpha <= 0):
            raise SchemeError(f"{where}: LoRA alpha must be a positive number, got {alpha!r}")
        return cls("lora", False, rank=rank, alpha=None if alpha is None else float(alpha))

    def to_json(self):
        if self.kernels == "lora":
            return {"lora": {"rank": self.rank,
                             **({} if self.alpha is None else {"alpha": self.alpha})}}
        if self.kernels == "channels":
            key, value = (("weight_fraction", self.fraction) if self.fraction is not None
                          else ("weight_channels", self.channels))
            return {key: value, "bias": self.bias}
        return {("none", False): "frozen", ("all", True): "full",
                ("none", True): "bias"}[(self.kernels, self.bias)]

    def channels_of(self, total: int) -> int:
        """How many of ``total`` input channels are trained (at least one)."""
        if self.channels is not None:
            return self.channels
        return max(1, math.floor(self.fraction * total + 1e-9))


@dataclasses.dataclass(frozen=True)
class TrainedWeight:
    """One weight a scheme trains: all of it, or its first ``channels`` along ``axis``."""
    path: str
    layer: str
    channels: int | None = None
    axis: int | None = None


@dataclasses.dataclass(frozen=True)
class Scheme:
    """Per-layer update policies; see the module docstring.

    Example:
        >>> Scheme(layers={"dense_1": "full", "conv2d": "bias",
        ...                "conv2d_1": {"weight_fraction": 0.5, "bias": False}})
    """

    layers: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    default: Any = "frozen"
    frozen_batchnorm: str = "inference"

    def __post_init__(self):
        if self.frozen_batchnorm not in FROZEN_BATCHNORM_MODES:
            raise SchemeError(f"frozen_batchnorm must be one of {FROZEN_BATCHNORM_MODES}, "
                              f"got {self.frozen_batchnorm!r}")
        object.__setattr__(self, "default", Policy.parse(self.default, "default"))
        object.__setattr__(self, "layers", {
            name: Policy.parse(p, f"layer {name!r}") for name, p in dict(self.layers).items()})
        if self.default.kernels == "channels":
            raise SchemeError("default: a partial-channel policy must name its layers")
        if self.default.kernels == "lora":
            raise SchemeError("default: a LoRA policy must name its layers (Scheme.lora names "
                              "them by a pattern)")

    # ---- the common schemes --------------------------------------------------------------
    @classmethod
    def full(cls) -> "Scheme":
        return cls(default="full")

    @classmethod
    def bias(cls) -> "Scheme":
        return cls(default="bias")

    @classmethod
    def last(cls, model: keras.Model, n: int) -> "Scheme":
        """The last ``n`` layers with trainable weights train fully, the rest are frozen."""
        candidates = [l for l in layer_table.leaf_layers(model) if l.trainable_weights]
        if n < 1:
            raise SchemeError(f"last:{n} must name at least one layer")
        if n > len(candidates):
            raise SchemeError(f"last:{n} asks for {n} layers but the model has only "
                              f"{len(candidates)} layers with trainable weights")
        return cls(layers={l.name: "full" for l in candidates[-n:]})

    @classmethod
    def last_blocks(cls, model: keras.Model, n: int, pattern: str = r"block_\d+",
                    policy: Any = "full") -> "Scheme":
        """The layers of the last ``n`` blocks get ``policy``. A block is the set of layers
        whose names start with the same match of ``pattern`` (MobileNetV2: ``block_16_...``);
        layers after the last block (a classifier head) are trained with it."""
        blocks: list[str] = []
        members: dict[str, list[str]] = {}
        tail: list[str] = []
        for layer in layer_table.leaf_layers(model):
            match = re.match(pattern, layer.name)
            if match:
                if match.group(0) not in members:
                    blocks.append(match.group(0))
                    members[match.group(0)] = []
                if layer.weights:   # a residual Add or an activation has nothing to train
                    members[match.group(0)].append(layer.name)
                tail = []
            elif layer.trainable_weights and blocks:
                tail.append(layer.name)
        if not 1 <= n <= len(blocks):
            raise SchemeError(f"last_blocks: asked for {n} blocks, the model has {len(blocks)} "
                              f"matching {pattern!r}")
        chosen = [name for b in blocks[-n:] for name in members[b]] + tail
        return cls(layers={name: policy for name in chosen})

    @classmethod
    def lora(cls, model: keras.Model, rank: int, pattern: str = LORA_TARGETS,
             alpha: float | None = None, default: Any = "frozen") -> "Scheme":
        """``{"lora": {"rank": rank}}`` on every Dense and EinsumDense whose name or path
        (``transformer_layer_0/self_attention_layer/query``) ``pattern`` finds, ``default``
        on the rest. The default pattern is KerasHub's own LoRA targets (``enable_lora``:
        the query and value projections)."""
        names = [name for name, layer in lora_candidates(model).items()
                 if re.search(pattern, name)]
        if not names:
            raise SchemeError(f"Scheme.lora: no Dense or EinsumDense layer matches {pattern!r}")
        lora = {"lora": {"rank": rank, **({} if alpha is None else {"alpha": alpha})}}
        return cls(layers={name: lora for name in names}, default=default)

    def lora_model(self, model: keras.Model) -> keras.Model:
        """``model`` itself when no policy is LoRA; else a copy (same config, same weights,
        the same variable paths) whose named layers have ``enable_lora(rank, alpha)`` on, as
        Keras does it: the base kernel frozen, two factors ``lora_kernel_a`` (random) and
        ``lora_kernel_b`` (zeros). The user's model is not changed (Keras has no way to turn
        LoRA off again). The copy is ``from_config`` (KerasHub's task models keep their class
        and paths so; ``keras.models.clone_model`` does not keep Gemma's tied embedding), else
        ``clone_model`` (a Sequential's copy from its config loses the model prefix of its
        variable paths)."""
        wanted = {name: p for name, p in self.layers.items() if p.kernels == "lora"}
        if not wanted:
            return model
        clone = _copy(model)
        by_path = {v.path: v for v in clone.weights}
        for var in model.weights:
            by_path[var.path].assign(var)
        candidates = lora_candidates(clone)
        for name, policy in wanted.items():
            layer = candidates.get(name)
            if layer is None:
                raise SchemeError(f"scheme sets LoRA on {name!r}, which is not a Dense or "
                                  f"EinsumDense layer of model {model.name!r}")
            if getattr(layer, "lora_enabled", False):
                raise SchemeError(f"scheme sets LoRA on {name!r}, which has LoRA already "
                                  "(enable_lora); use \"full\" to train its factors")
            layer.enable_lora(policy.rank, lora_alpha=policy.alpha)
        return clone

    # ---- reading and writing ---------------------------------------------------------------
    @classmethod
    def from_dict(cls, spec: Mapping) -> "Scheme":
        unknown = set(spec) - {"default", "layers", "frozen_batchnorm"}
        if unknown:
            raise SchemeError(f"scheme has unknown keys {sorted(unknown)}; expected "
                              "'default', 'layers' and 'frozen_batchnorm'")
        layers = spec.get("layers", {})
        if not isinstance(layers, Mapping):
            raise SchemeError("scheme 'layers' must map layer names to policies")
        return cls(layers=layers, default=spec.get("default", "frozen"),
                   frozen_batchnorm=spec.get("frozen_batchnorm", "inference"))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Scheme":
        try:
            with open(path, encoding="utf-8") as f:
                spec = json.load(f)
        except FileNotFoundError as exc:
            raise SchemeError(f"scheme file {os.fspath(path)!r} does not exist") from exc
        except json.JSONDecodeError as exc:
            raise SchemeError(f"scheme file {os.fspath(path)!r} is not valid JSON: {exc}") from exc
        if not isinstance(spec, Mapping):
            raise SchemeError(f"scheme file {os.fspath(path)!r} must hold a JSON object")
        return cls.from_dict(spec)

    def to_dict(self) -> dict:
        out = {"default": self.default.to_json(),
               "layers": {k: p.to_json() for k, p in self.layers.items()}}
        if self.frozen_batchnorm != "inference":
            out["frozen_batchnorm"] = self.frozen_batchnorm
        return out

    def with_frozen_batchnorm(self, mode: str | None) -> "Scheme":
        """This scheme with ``frozen_batchnorm`` set (None: unchanged)."""
        return self if mode is None else dataclasses.replace(self, frozen_batchnorm=mode)

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")

    @classmethod
    def parse(cls, spec: Any, model: keras.Model) -> "Scheme":
        """A scheme from a Scheme, a dict, a .json path or one of the scheme strings."""
        if isinstance(spec, Scheme):
            return spec
        if isinstance(spec, Mapping):
            return cls.from_dict(spec)
        if isinstance(spec, os.PathLike) or (isinstance(spec, str) and spec.endswith(".json")):
            return cls.load(spec)
        if not isinstance(spec, str):
            raise SchemeError(f"scheme must be a string, dict or tfpock.Scheme, got "
                              f"{type(spec).__name__}; use {_SCHEME_STRINGS}")
        if spec == "full":
            return cls.full()
        if spec == "bias":
            return cls.bias()
        match = re.fullmatch(r"last:(\d+)", spec)
        if match:
            return cls.last(model, int(match.group(1)))
        raise SchemeError(f"unknown scheme {spec!r}; use {_SCHEME_STRINGS}")

    # ---- resolution ------------------------------------------------------------------------
    def resolve(self, model: keras.Model) -> list[TrainedWeight]:
        """The weights a step updates, in ``model.trainable_variables`` order. Raises
        SchemeError if a named layer does not exist, a policy cannot apply to its layer, or
        nothing would be trained."""
        leaves = layer_table.leaf_layers(model)
        by_name = {l.name: l for l in leaves}
        inner = {part.path: layer for layer in leaves if layer_table.table_kind(layer) is None
                 for part in layer_table.parts(layer)}   # composite layers' parts, by path
        lora_inside = {name: layer for name, layer in lora_candidates(model).items()
                       if name in self.layers and self.layers[name].kernels == "lora"
                       and name not in by_name and name not in inner}   # in an attention
        for name in self.layers:
            if name not in by_name and name not in inner and name not in lora_inside:
                close = difflib.get_close_matches(name, list(by_name) + list(inner), n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise SchemeError(f"scheme names layer {name!r}, which the model does not "
                                  f"have{hint}")
        chosen: dict[int, TrainedWeight] = {}
        for layer in leaves:
            if layer.trainable_weights and layer_table.kind_of(layer) is None:
                part = layer_table.unknown_part(layer)
                inside = (f" (in {layer.name!r}, {type(layer).__name__})"
                          if part is not layer else "")
                raise UnsupportedModelError(
                    f"layer {part.name!r} ({type(part).__name__}){inside} has weights tfpock "
                    f"does not know how to train; supported layers with weights: "
                    f"{layer_table.supported_names()}, and layers made of them")
            untracked = layer_table.untracked_weights(layer) if layer.trainable_weights else []
            if untracked:
                raise UnsupportedModelError(
                    f"layer {layer.name!r} ({type(layer).__name__}) has trainable weights "
                    f"{untracked} that tfpock does not know the role of")
            explicit = layer.name in self.layers
            policy = self.layers.get(layer.name, self.default)
            named_inside = [k for k, owner in inner.items() if owner is layer and k in self.layers]
            if not named_inside:
                picked = _apply(policy, layer, explicit)
            else:   # the scheme names parts of this composite layer: policies part by part
                picked = [(var, dataclasses.replace(trained, layer=layer.name))
                          for var, trained in self._apply_parts(layer, policy)]
            for var, trained in picked:
                chosen[id(var)] = trained
        for name, layer in lora_inside.items():   # e.g. BERT's MultiHeadAttention query
            for var, trained in _apply(self.layers[name], layer, True):
                chosen[id(var)] = dataclasses.replace(trained, layer=name.split("/")[0])
        result = [chosen[id(v)] for v in model.trainable_variables if id(v) in chosen]
        if not result:
            raise SchemeError(f"scheme {self} leaves nothing to train in model {model.name!r}")
        return result

    def _apply_parts(self, layer, policy: Policy):
        """Each table-known part of a composite ``layer`` with the policy of the most specific
        name the scheme gives it (its own path, a composite part around it, else ``layer``'s
        ``policy``); a named part that is a composite passes its policy to what it holds."""
        picked = []
        for part in layer_table.parts(layer):
            if layer_table.table_kind(part) is None:
                continue
            names = [k for k in self.layers if part.path == k or part.path.startswith(k + "/")]
            own = max(names, key=len, default=None)
            picked += _apply(self.layers[own] if own else policy, part, own == part.path)
        return picked

    def trained_paths(self, model: keras.Model) -> list[str]:
        return [w.path for w in self.resolve(model)]

    def __str__(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def _apply(policy: Policy, layer, explicit: bool):
    """(variable, TrainedWeight) pairs ``policy`` selects in ``layer``."""
    weights = layer_table.layer_weights(layer)
    where = f"layer {layer.name!r} ({type(layer).__name__})"
    if policy == Policy():
        return []
    if not weights:
        if explicit:
            raise SchemeError(f"scheme sets {policy.to_json()!r} on {where}, which has no weights")
        return []
    if explicit and not layer.trainable_weights:
        raise SchemeError(f"scheme sets {policy.to_json()!r} on {where}, whose weights are not "
                          "trainable (trainable=False in Keras)")
    kind = layer_table.kind_of(layer)
    if policy.kernels == "lora":   # Scheme.lora_model has enabled it
        return [(weights[r], TrainedWeight(weights[r].path, layer.name))
                for r in layer_table.LORA_FACTORS]
    picked = []
    if policy.bias:
        biases = [weights[r] for r in kind.bias if r in weights and weights[r].trainable]
        if explicit and not biases and policy.kernels == "none":
            raise SchemeError(f"scheme trains the bias of {where}, which has no trainable bias")
        picked += [(v, TrainedWeight(v.path, layer.name)) for v in biases]
    channel_kernels = layer_table.channel_kernels(layer, kind)
    kernels = [weights[r] for r in channel_kernels if r in weights and weights[r].trainable]
    if policy.kernels == "all":
        others = [weights[r] for r in weights if r not in kind.bias and r not in channel_kernels
                  and weights[r].trainable]
        picked += [(v, TrainedWeight(v.path, layer.name)) for v in kernels + others]
    elif policy.kernels == "channels":
        if not kernels:
            raise SchemeError(f"scheme sets a channel policy on {where}, which has no kernel "
                              "with input channels; channel policies apply to "
                              f"{layer_table.kernel_layer_names()}")
        for var in kernels:
            total = var.shape[-2]
            k = policy.channels_of(total)
            if k > total:
                raise SchemeError(f"scheme asks for {k} channels of {var.path!r}, which has "
                                  f"{total} input channels")
            picked.append((var, TrainedWeight(var.path, layer.name, k, len(var.shape) - 2)
                           if k < total else TrainedWeight(var.path, layer.name)))
    return picked



def _copy(model: keras.Model) -> keras.Model:
    """A copy of ``model`` with the same variable paths (``Scheme.lora_model``)."""
    paths = sorted(v.path for v in model.weights)
    for make in (lambda: type(model).from_config(_config_with_ties(model)),
                 lambda: keras.models.clone_model(model)):
        copy = make()
        if sorted(v.path for v in copy.weights) == paths:
            return copy
    raise UnsupportedModelError(f"model {model.name!r}: no copy of it has the same variable "
                                "paths (from its config, or keras.models.clone_model); LoRA "
                                "policies compile such a copy")


def _config_with_ties(model: keras.Model) -> dict:
    """``model.get_config()``, with its KerasHub backbone's ``tie_word_embeddings`` put back
    where the backbone's own config leaves it out (keras-hub 0.32's ``LlamaBackbone``: a copy
    from that config would have an untied output embedding, another variable)."""
    config = model.get_config()
    tie = getattr(getattr(model, "backbone", None), "tie_word_embeddings", None)
    backbone = config.get("backbone")
    if tie is not None and isinstance(backbone, dict) and isinstance(backbone.get("config"), dict):
        backbone["config"].setdefault("tie_word_embeddings", tie)
    return config


def lora_candidates(model: keras.Model) -> dict[str, keras.layers.Layer]:
    """Dense and EinsumDense layers a LoRA policy can name: leaf layers by name, layers
    inside them (the parts of a composite layer, the projections of a MultiHeadAttention)
    by path, ``transformer_layer_0/self_attention_layer/query``."""
    leaves = {id(layer) for layer in layer_table.leaf_layers(model)}
    return {layer.name if id(layer) in leaves else layer.path: layer
            for layer in layer_table.all_layers(model)
            if isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense))}
