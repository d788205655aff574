"""Which weights each Keras layer kind has, and which of them is its bias.

A table over layer classes (not variable names) so that schemes select weights by role:
``bias`` picks the additive bias of a layer. A layer with weights whose class is not here is
refused with the list of supported kinds, because a scheme could not say what its weights are.
Layers without weights need no entry: their ops are checked when the graph is lowered.

A *composite* layer (a layer, not a model, made of sublayers: KerasHub's
``LlamaTransformerDecoder``, its ``LlamaAttention``) needs no entry either when every
sublayer with weights has one: its weights are its sublayers' (keyed
``<sublayer>.<attribute>``), its biases their biases, and a scheme treats it as one layer.
KerasHub's own weighted layers join the table once ``keras_hub`` has been imported (a
KerasHub model exists only then; :func:`_with_keras_hub`), so tfpock itself never imports it.
LoRA factors (``enable_lora``) are weights of Dense and EinsumDense: once LoRA is on, Keras
makes the base kernel non-trainable, so ``full`` trains the two factors only.
"""
from __future__ import annotations

import contextlib
import dataclasses
import sys
from typing import Iterable, Iterator

import keras


@dataclasses.dataclass(frozen=True)
class LayerKind:
    weights: tuple[str, ...]       # attribute names (dotted for a sublayer's) of its weights
    bias: tuple[str, ...] = ()     # the subset that is an additive bias
    kernels: tuple[str, ...] = ()  # the subset with input channels on axis -2


LORA_FACTORS = ("lora_kernel_a", "lora_kernel_b")

WEIGHTED_LAYERS: dict[type, LayerKind] = {
    keras.layers.Dense: LayerKind(("kernel", "bias", *LORA_FACTORS), ("bias",), ("kernel",)),
    keras.layers.Conv1D: LayerKind(("kernel", "bias"), ("bias",), ("kernel",)),
    keras.layers.Conv2D: LayerKind(("kernel", "bias"), ("bias",), ("kernel",)),
    keras.layers.DepthwiseConv2D: LayerKind(("kernel", "bias"), ("bias",), ("kernel",)),
    keras.layers.SeparableConv2D: LayerKind(("depthwise_kernel", "pointwise_kernel", "bias"),
                                            ("bias",), ("depthwise_kernel", "pointwise_kernel")),
    keras.layers.BatchNormalization: LayerKind(("gamma", "beta", "moving_mean",
                                                "moving_variance"), ("beta",)),
    keras.layers.LayerNormalization: LayerKind(("gamma", "beta"), ("beta",)),
    keras.layers.RMSNormalization: LayerKind(("scale",)),
    keras.layers.Embedding: LayerKind(("embeddings",)),
    # Keras' own (KerasHub's Mistral uses it): the output projection is the embedding itself
    # when tied, else ``reverse_embeddings``; before this entry it passed for an Embedding
    keras.layers.ReversibleEmbedding: LayerKind(("embeddings", "reverse_embeddings")),
    keras.layers.EinsumDense: LayerKind(("kernel", "bias", *LORA_FACTORS), ("bias",)),
    # its projections are EinsumDense sublayers, reached through Keras' public properties
    keras.layers.MultiHeadAttention: LayerKind(
        tuple(f"{p}_dense.{w}" for p in ("query", "key", "value", "output")
              for w in ("kernel", "bias", *LORA_FACTORS)),
        tuple(f"{p}_dense.bias" for p in ("query", "key", "value", "output"))),
}




def _with_keras_hub() -> dict[type, LayerKind]:
    """:data:`WEIGHTED_LAYERS` plus KerasHub's weighted layers once ``keras_hub`` is
    imported (an optional dependency, the ``lm`` extra; importing it costs seconds, and a
    KerasHub model cannot exist before it is): ``ReversibleEmbedding`` (the output
    projection is the embedding itself when tied, else ``reverse_embeddings``), BERT's
    ``PositionEmbedding`` and the RMS norms of Llama and Gemma (classes KerasHub exports
    under ``src`` only; Gemma's scales by ``1 + scale``)."""
    if "keras_hub" not in sys.modules:
        return WEIGHTED_LAYERS
    from keras_hub.layers import PositionEmbedding, ReversibleEmbedding
    from keras_hub.src.models.gemma.rms_normalization import RMSNormalization as GemmaNorm
    from keras_hub.src.models.llama.llama_layernorm import LlamaLayerNorm
    return {**WEIGHTED_LAYERS,
            ReversibleEmbedding: LayerKind(("embeddings", "reverse_embeddings")),
            PositionEmbedding: LayerKind(("position_embeddings",)),
            LlamaLayerNorm: LayerKind(("scale",)),
            GemmaNorm: LayerKind(("scale",))}


# Layer kinds whose forward in training depends on ``trainable``: Keras' BatchNormalization
# normalises with its moving statistics (and leaves them alone) when it is not trainable.
FROZEN_FORWARD_LAYERS: tuple[type, ...] = (keras.layers.BatchNormalization,)


def table_kind(layer: keras.layers.Layer) -> LayerKind | None:
    """The table's entry for ``layer``'s class itself (None for a composite layer)."""
    table = _with_keras_hub()
    for cls in type(layer).__mro__:   # exact class first, then its bases
        if cls in table:
            return table[cls]
    return None


def sublayers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    """The layers ``layer`` holds directly. Keras has no public accessor for a layer's
    sublayers; ``_flatten_layers`` is what its own ``Layer.weights`` walks, and this is the
    one place tfpock calls it."""
    return list(layer._flatten_layers(include_self=False, recursive=False))


def kind_of(layer: keras.layers.Layer) -> LayerKind | None:
    """The table entry for ``layer``'s class, or for a composite layer the kind its
    sublayers make (module docstring); None if some weight has no known role
    (:func:`unknown_part` names which)."""
    kind = table_kind(layer)
    if kind is not None or not layer.weights:
        return kind
    parts = [(sub.name, kind_of(sub)) for sub in sublayers(layer) if sub.weights]
    if not parts or any(k is None for _, k in parts):
        return None
    return LayerKind(tuple(f"{name}.{w}" for name, k in parts for w in k.weights),
                     tuple(f"{name}.{b}" for name, k in parts for b in k.bias))


def parts(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    """The table-known layers a composite layer is made of (the deepest with a kind of their
    own, each addressed by its ``layer.path``, e.g. ``transformer_layer_0/self_attention/
    query``), and the composite layers between them: what a scheme can name inside it."""
    found = []
    for sub in sublayers(layer):
        if sub.weights:
            found.append(sub)
            if table_kind(sub) is None:
                found.extend(parts(sub))
    return found


def unknown_part(layer: keras.layers.Layer) -> keras.layers.Layer:
    """The innermost layer whose weights have no kind: ``layer`` itself, or the sublayer of a
    composite layer at fault (what an error names)."""
    if table_kind(layer) is None:
        for sub in sublayers(layer):
            if sub.weights and kind_of(sub) is None:
                return unknown_part(sub)
    return layer


def untracked_weights(layer: keras.layers.Layer) -> list[str]:
    """Paths of trainable weights of ``layer`` that its kind does not name: a scheme could
    neither train nor freeze them knowingly, so a model with any is refused."""
    known = {id(v) for v in layer_weights(layer).values()}
    return [v.path for v in layer.trainable_weights if id(v) not in known]


def supported_names() -> str:
    return ", ".join(sorted(cls.__name__ for cls in _with_keras_hub()))


def kernel_layer_names() -> str:
    return ", ".join(sorted(cls.__name__ for cls, kind in WEIGHTED_LAYERS.items() if kind.kernels)
                     + ["EinsumDense in Dense form ('btd,df->btf')"])


def channel_kernels(layer: keras.layers.Layer, kind: LayerKind) -> tuple[str, ...]:
    """The weights of ``layer`` with input channels on axis -2, which channel policies cut:
    the table's, and an EinsumDense's kernel when the layer is a Dense written as an einsum
    (a 2-D kernel ``df`` whose first axis is the input's last, contracted, the output the
    input's other axes then ``f``: ``"btd,df->btf"``, the MLP projections of KerasHub's
    Gemma and of plain Keras decoders). Its kernel is then laid out as a Dense's, so the
    partial update (the first ``k`` rows trained, the rest a constant) is the same."""
    if isinstance(layer, keras.layers.EinsumDense) and _dense_form(layer.equation):
        return ("kernel",)
    return kind.kernels


def _dense_form(equation: str) -> bool:
    inputs, _, output = equation.replace(" ", "").partition("->")
    x, _, kernel = inputs.partition(",")
    return (len(kernel) == 2 and "." not in x and x[-1:] == kernel[0]
            and output == x[:-1] + kernel[1])


def leaf_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Layers in ``model.layers`` order, with nested models replaced by their own layers."""
    out: list[keras.layers.Layer] = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out.extend(leaf_layers(layer))
        else:
            out.append(layer)
    # a layer a model calls twice or shares with a nested model (KerasHub's CausalLM calls
    # its backbone's token embedding again as the output projection) counts once
    unique = {id(layer): layer for layer in out}
    return list(unique.values())


def all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every layer of ``model``: its leaf layers and, recursively, what they hold."""
    found, stack = [], list(leaf_layers(model))
    while stack:
        layer = stack.pop(0)
        found.append(layer)
        stack.extend(sublayers(layer))
    return found


def lora_merges(model: keras.Model) -> list[dict]:
    """For each Dense and EinsumDense with LoRA on: the paths of its base kernel and of its
    two factors, and Keras' scale ``lora_alpha / lora_rank``. The merged kernel, as Keras'
    ``kernel`` property computes it, is ``kernel + scale * (lora_kernel_a @ lora_kernel_b)``
    (the matmul over the rank axis: A is ``kernel.shape[:-1] + (r,)``, B ``(r, out)``).
    ``_kernel`` is the base kernel: with LoRA on, Keras' public ``kernel`` is the merged one."""
    return [{"kernel": layer._kernel.path, "a": layer.lora_kernel_a.path,
             "b": layer.lora_kernel_b.path, "scale": layer.lora_alpha / layer.lora_rank}
            for layer in all_layers(model)
            if isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense))
            and getattr(layer, "lora_enabled", False)]


def layer_weights(layer: keras.layers.Layer) -> dict[str, keras.Variable]:
    """Attribute name -> variable for the weights of ``layer`` that exist (bias may be off)."""
    kind = table_kind(layer)
    if kind is None:   # a composite layer: its sublayers' weights (module docstring)
        return {f"{sub.name}.{key}": var for sub in sublayers(layer)
                for key, var in layer_weights(sub).items()}
    found = {}
    for attr in kind.weights:
        var = layer
        for part in attr.split("."):   # "query_dense.kernel": a sublayer's weight
            var = getattr(var, part, None)
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
