"""Trace: a Keras model, loss, optimizer and scheme become GraphDefs of one training step.

The step is a *pure* function (``model.stateless_call``): every model weight, every
optimizer slot and the step counter enter as placeholders (the graph's ``params``), and
everything a step changes comes out as an output, so that passes can freeze what is constant
and the exporter can turn the rest into variables:

    train(x, y, learning_rate, params...) -> loss, new value of every variable it changes
    infer(x, params...)                    -> model output

``x`` is the model's one input, or its several inputs one by one, each under its name
(:func:`input_specs`); with ``sample_weight=True`` the train graph also takes
``sample_weight`` (one weight per label, what Keras' ``fit`` takes), passed to the loss.

Parameter keys (also the checkpoint keys of the variables they become):

* ``<path>``: a model weight by Keras ``variable.path``. For a weight trained on its first k
  input channels only, ``<path>`` is the trained slice and ``<path>:frozen_channels`` the
  rest, joined with a concat at trace time; the narrow pass then makes the weight gradient
  produce k channels only.
* ``optimizer/<slot>/<path>``: an optimizer slot of a trained weight (its trained part);
* ``optimizer/iterations``: steps taken, for optimizers that need it (Adam).

Outputs are ``loss`` and ``new:<key>`` for each variable the step changes: trained weights,
their slots, the step counter and the moving statistics of trainable BatchNormalization layers
(which, as in Keras, train with batch statistics). Gradients are derived by ``GradientTape``
for every Keras-trainable weight; only the trained ones' updates are outputs, so the prune
pass can show what sparse training removes. Ops created while deriving gradients are recorded
as the graph's ``backward`` set.
"""
from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from graph_passes.ir import Graph
from tfpock import decode
from tfpock import layers as layer_table
from tfpock.errors import UnsupportedModelError
from tfpock.losses import label_spec
from tfpock.optimizers import CompiledOptimizer
from tfpock.scheme import TrainedWeight

FROZEN_CHANNELS = ":frozen_channels"
X = "x"   # the signature name of a single-input model's input
# Names the train signature gives its other inputs; a model input may not take one.
RESERVED_NAMES = ("y", "sample_weight", "learning_rate")
ITERATIONS = "optimizer/iterations"


def slot_key(slot: str, path: str) -> str:
    return f"optimizer/{slot}/{path}"


@dataclasses.dataclass(frozen=True)
class Weight:
    """One model variable as the compiler sees it."""
    path: str                  # keras variable.path, the checkpoint key
    layer: str                 # name of the leaf layer that owns it
    value: np.ndarray          # value at compile time
    trained: bool              # updated by the optimizer (all of it or its first channels)
    channels: int | None = None  # trained input channels, for a partial-channel weight
    axis: int | None = None      # the input-channel axis of that weight
    stateful: bool = False       # updated by the forward pass (BatchNorm moving statistics)

    @property
    def trained_value(self) -> np.ndarray:
        return self.value if self.channels is None else _take(self.value, self.axis, 0,
                                                                self.channels)

    @property
    def frozen_rest(self) -> np.ndarray:
        return _take(self.value, self.axis, self.channels, self.value.shape[self.axis])


@dataclasses.dataclass(frozen=True)
class Variable:
    """A variable of the exported model: its key, initial value and what it is."""
    key: str
    value: np.ndarray
    kind: str                  # "weight" (trained), "state" (BatchNorm statistics), "optimizer"


@dataclasses.dataclass
class TracedStep:
    train: Graph
    infer: Graph
    weights: list[Weight]
    params: dict[str, np.ndarray]      # every param key -> its value at compile time
    variables: list[Variable]          # what the exported model holds as variables
    frozen: dict[str, np.ndarray]      # param key -> value, for the freeze pass
    inputs: dict[str, tf.TensorSpec]   # signature input name -> spec (input_specs)
    y_spec: tf.TensorSpec
    output_spec: tf.TensorSpec
    learning_rate: float
    sample_weight_spec: tf.TensorSpec | None = None   # None: the loss takes no weights
    decode: Graph | None = None                        # the kv-cache step (tfpock/decode.py)
    decode_inputs: dict[str, tf.TensorSpec] | None = None   # its input name -> spec

    @property
    def x_spec(self) -> tf.TensorSpec:
        """The spec of a single-input model's input."""
        if list(self.inputs) != [X]:
            raise AttributeError(f"the model has inputs {list(self.inputs)}, not one x")
        return self.inputs[X]

    def checkpoint_shape(self, variable: Variable) -> tuple[int, ...]:
        """A partial-channel weight is checkpointed whole, as Keras holds it."""
        if variable.kind == "weight":
            weight = next(w for w in self.weights if w.path == variable.key)
            return weight.value.shape
        return variable.value.shape


def _take(value: np.ndarray, axis: int, start: int, stop: int) -> np.ndarray:
    index = [slice(None)] * value.ndim
    index[axis] = slice(start, stop)
    return np.ascontiguousarray(value[tuple(index)])


def check_model(model: keras.Model) -> None:
    """Refuses what this version cannot compile, naming the layer or property at fault."""
    if len(model.outputs) != 1:
        raise UnsupportedModelError(
            f"model {model.name!r} has {len(model.outputs)} outputs; only single-output "
            "models are supported")
    for layer in layer_table.leaf_layers(model):
        dtype = getattr(layer, "compute_dtype", "float32")
        if dtype != "float32":
            raise UnsupportedModelError(f"layer {layer.name!r} computes in {dtype}; only "
                                        "float32 models are supported")
    paths = [v.path for v in model.variables]
    duplicates = sorted({p for p in paths if paths.count(p) > 1})
    if duplicates:
        raise UnsupportedModelError(f"model variables share paths {duplicates}; tfpock keys "
                                    "weights and checkpoints by variable.path")


def _owner_layers(model: keras.Model) -> dict[int, keras.layers.Layer]:
    owners = {}
    for layer in layer_table.leaf_layers(model):
        for var in layer.weights:
            owners[id(var)] = layer
    return owners


def _seed_states(model: keras.Model) -> set[int]:
    """ids of SeedGenerator state variables: advanced by dropout, safe to freeze because the
    lowering turns seeded random ops into stateful ones. Composite layers are searched
    through their sublayers (BERT's attention dropout sits in ``TransformerEncoder``'s
    ``MultiHeadAttention``)."""
    return {id(value.state) for layer in layer_table.all_layers(model)
            for value in vars(layer).values() if isinstance(value, keras.random.SeedGenerator)}


def _statistics(model: keras.Model) -> set[int]:
    """ids of the moving statistics a training step updates: those of trainable BatchNorms."""
    ids = set()
    for layer in layer_table.leaf_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable:
            ids.update({id(layer.moving_mean), id(layer.moving_variance)})
    return ids


@dataclasses.dataclass(frozen=True)
class ParamLayout:
    """Where every weight, slot and counter of a step sits among the graph's params.

    Kept apart from the traced function because the train graph, the inference graph, the
    exporter's variables and the checkpoint all read one flat order of the same keys; the
    layout is worked out once, from the model and the scheme, before anything is traced.
    """
    weights: list[Weight]              # model.trainable_variables, then the non-trainable
    n_trainable: int                   # the first n are Keras-trainable (stateless_call)
    params: dict[str, np.ndarray]      # param key -> compile-time value, in placeholder order
    variables: list[Variable]          # what the exported model holds as variables
    frozen: dict[str, np.ndarray]      # param key -> value, for the freeze pass

    @property
    def keys(self) -> list[str]:
        """Every param key, in the order the train graph's placeholders take them."""
        return list(self.params)

    @property
    def model_keys(self) -> list[str]:
        """The keys of model weights (no optimizer state): what inference reads."""
        return [k for k in self.params if not k.startswith("optimizer/")]

    def specs(self, keys: list[str]) -> list[tf.TensorSpec]:
        return [tf.TensorSpec(self.params[k].shape, tf.as_dtype(self.params[k].dtype))
                for k in keys]

    def weight_tensors(self, p: dict[str, tf.Tensor]) -> tuple[list, list]:
        """Model weights in stateless_call order (trainable, non-trainable), partial ones
        joined from their parts."""
        out = []
        for w in self.weights:
            if w.channels is None:
                out.append(p[w.path])
            else:
                out.append(tf.concat([p[w.path], p[w.path + FROZEN_CHANNELS]], axis=w.axis))
        return out[:self.n_trainable], out[self.n_trainable:]


def param_layout(model: keras.Model, trained: list[TrainedWeight],
                 optimizer: CompiledOptimizer) -> ParamLayout:
    """Which weights the scheme trains (whole or on their first channels), which are frozen
    and which are state, and the param keys they take (see the module docstring): each model
    weight in Keras order, a partial weight's frozen channels right after it, then each slot
    of each trained weight, then the step counter."""
    trainable = list(model.trainable_variables)
    owners = _owner_layers(model)
    chosen = {w.path: w for w in trained}
    stats = _statistics(model)
    weights = []
    for v in trainable + list(model.non_trainable_variables):
        spec = chosen.get(v.path)
        layer = owners.get(id(v))
        weights.append(Weight(v.path, layer.name if layer else "", np.array(v.numpy()),
                              spec is not None, spec.channels if spec else None,
                              spec.axis if spec else None, id(v) in stats))

    params: dict[str, np.ndarray] = {}
    variables: list[Variable] = []
    frozen: dict[str, np.ndarray] = {}
    for w in weights:
        params[w.path] = w.trained_value if w.trained else w.value
        if w.trained:
            variables.append(Variable(w.path, w.trained_value, "weight"))
            if w.channels is not None:
                params[w.path + FROZEN_CHANNELS] = frozen[w.path + FROZEN_CHANNELS] = w.frozen_rest
        elif w.stateful:
            variables.append(Variable(w.path, w.value, "state"))
        else:
            frozen[w.path] = w.value
    trained_weights = [w for w in weights if w.trained]
    for slot in optimizer.slot_names:
        for w in trained_weights:
            key = slot_key(slot, w.path)
            params[key] = np.zeros_like(w.trained_value)
            variables.append(Variable(key, params[key], "optimizer"))
    if optimizer.uses_step:
        params[ITERATIONS] = np.zeros((), np.float32)
        variables.append(Variable(ITERATIONS, params[ITERATIONS], "optimizer"))
    return ParamLayout(weights, len(trainable), params, variables, frozen)


def _input_structure(model: keras.Model):
    """``model.input`` (a tensor, a dict, a list); a Sequential model built from an
    ``Input`` but never called has none, only its list ``model.inputs``."""
    try:
        return model.input
    except AttributeError:
        return list(model.inputs)


def input_names(model: keras.Model) -> list[str]:
    """The signature names of the model's inputs, in ``keras.tree.flatten(model.input)``
    order: ``["x"]`` for one input; for several, the keys of a dict input (KerasHub's
    ``token_ids``, ``padding_mask``) or else the ``keras.Input`` names. A name that is not an
    identifier (TFLite signature names must be), repeats or is one of
    :data:`RESERVED_NAMES` is refused."""
    structure = _input_structure(model)
    flat = keras.tree.flatten(structure)
    if len(flat) == 1:
        return [X]
    if isinstance(structure, dict) and all(not isinstance(v, (dict, list, tuple))
                                           for v in structure.values()):
        names = sorted(structure)   # keras.tree flattens a dict in sorted key order
    else:
        names = [t.name for t in flat]
    bad = [n for n in names if not n.isidentifier() or n in RESERVED_NAMES]
    if bad or len(set(names)) != len(names):
        raise UnsupportedModelError(
            f"model {model.name!r} has inputs named {names}; tfpock names the signature's "
            f"inputs by them, so they must be distinct identifiers other than "
            f"{', '.join(RESERVED_NAMES)}")
    return names


def input_specs(model: keras.Model, batch_size: int,
                shapes: dict | None = None) -> dict[str, tf.TensorSpec]:
    """Signature name -> static spec of each model input (:func:`input_names`). ``shapes``
    (name -> shape without the batch) fixes what the model leaves dynamic, e.g. the sequence
    length of KerasHub's ``(None,)`` token ids; it must agree with the static dimensions."""
    shapes = dict(shapes or {})
    names = input_names(model)
    unknown = sorted(set(shapes) - set(names))
    if unknown:
        raise UnsupportedModelError(f"input_shapes names {unknown}; the model's inputs are "
                                    f"{', '.join(names)}")
    specs = {}
    for name, tensor in zip(names, keras.tree.flatten(_input_structure(model))):
        shape = tuple(tensor.shape[1:])
        given = tuple(shapes.get(name, shape))
        if len(given) != len(shape) or any(d is not None and d != g
                                           for d, g in zip(shape, given)):
            raise UnsupportedModelError(f"input_shapes[{name!r}] = {given} does not fit the "
                                        f"model's input shape {shape}")
        if any(d is None for d in given):
            raise UnsupportedModelError(
                f"model {model.name!r} input {name!r} has dynamic dimensions {shape}; tfpock "
                f"compiles static shapes: pass input_shapes={{{name!r}: (...)}} without the "
                "batch dimension")
        specs[name] = tf.TensorSpec((batch_size, *given), tf.as_dtype(tensor.dtype), name=name)
    return specs


def output_shape(model: keras.Model, specs: dict[str, tf.TensorSpec]) -> tuple:
    """The model's output shape without the batch, at the static input ``specs``."""
    inputs = [keras.KerasTensor(s.shape, s.dtype.name) for s in specs.values()]
    return tuple(model.compute_output_spec(model_input(model, inputs)).shape[1:])


def model_input(model: keras.Model, inputs: list):
    """What the model is called with: the one tensor, or the flat list packed as
    ``model.input`` is structured (a dict, a list)."""
    if len(inputs) == 1:
        return inputs[0]
    return keras.tree.pack_sequence_as(_input_structure(model), inputs)


class TrainFunction:
    """The function traced as the train graph: forward, loss, tape, optimizer update.

    A class rather than a closure inside ``trace`` so that what the step computes reads on
    its own, and so that it can hold what tracing it records: ``backward``, the names of the
    ops the tape created (the prune pass deletes those no kept update needs).
    """

    def __init__(self, model: keras.Model, loss: keras.losses.Loss,
                 optimizer: CompiledOptimizer, layout: ParamLayout, nonfinite: str = "skip"):
        self.model, self.loss, self.optimizer, self.layout = model, loss, optimizer, layout
        self.nonfinite = nonfinite
        self.trainable = list(model.trainable_variables)
        self.others = list(model.non_trainable_variables)
        self.seed_states = _seed_states(model)
        self.backward: set[str] = set()

    def train_step(self, inputs: list, y, sample_weight, learning_rate,
                   *values) -> dict[str, tf.Tensor]:
        """``loss``, ``finite`` and ``new:<key>`` of every variable the step changes (held
        back by :func:`guard_nonfinite` where the step is not finite). ``inputs``: the model's
        inputs in :func:`input_names` order; ``sample_weight``: None or the loss's weights."""
        layout, optimizer = self.layout, self.optimizer
        weights, n_train = layout.weights, layout.n_trainable
        learning_rate = tf.reshape(learning_rate, [])
        p = dict(zip(layout.keys, values))
        sources = [p[w.path] for w in weights[:n_train]]  # what the tape differentiates
        with tf.GradientTape() as tape:
            tape.watch(sources)
            t, n = layout.weight_tensors(p)
            out, new_n, reg = self.model.stateless_call(
                t, n, model_input(self.model, inputs), training=True, return_losses=True)
            value = (self.loss(y, out) if sample_weight is None
                     else self.loss(y, out, sample_weight=sample_weight))
            if reg:
                value = value + tf.add_n(reg)
        graph = tf.compat.v1.get_default_graph()
        before = {op.name for op in graph.get_operations()}
        grads = tape.gradient(value, sources)
        self.backward.update(op.name for op in graph.get_operations() if op.name not in before)
        outputs = {"loss": value}
        step = p.get(ITERATIONS)
        for var, w, g in zip(self.trainable, weights[:n_train], grads):
            if not w.trained:
                continue
            if g is None:
                raise UnsupportedModelError(f"weight {var.path!r} gets no gradient from the "
                                            "loss; freeze its layer or remove it")
            slots = {s: p[slot_key(s, w.path)] for s in optimizer.slot_names}
            update = optimizer.apply(p[w.path], g, slots, learning_rate, step)
            outputs[f"new:{w.path}"] = update.weight
            for s, new in update.slots.items():
                outputs[f"new:{slot_key(s, w.path)}"] = new
        if optimizer.uses_step:
            outputs[f"new:{ITERATIONS}"] = step + 1.0
        for var, w, old, new in zip(self.others, weights[n_train:], n, new_n):
            if w.stateful:
                outputs[f"new:{w.path}"] = new
            elif new is not old and id(var) not in self.seed_states:
                raise UnsupportedModelError(
                    f"the training step updates non-trainable variable {var.path!r}; state "
                    "updated in training other than BatchNorm statistics and dropout seeds "
                    "is not supported yet")
        return guard_nonfinite(outputs, p, self.nonfinite)


# What a train step does when its loss or an updated value is not finite (NONFINITE_MODES).
NONFINITE_MODES = ("skip", "apply")


def guard_nonfinite(outputs: dict[str, tf.Tensor], params: dict[str, tf.Tensor],
                    mode: str) -> dict[str, tf.Tensor]:
    """Adds ``finite`` (bool [1]) to the step's outputs: whether the loss and every value
    the step writes (weights, optimizer slots, BatchNorm statistics, the step counter) are
    finite. With ``mode="skip"`` each ``new:<key>`` becomes ``where(finite, new, old)``, so a
    step that is not finite changes nothing.

    The updated values, not the gradients, are checked: a NaN or inf gradient reaches every
    update it feeds (``w - lr * g``; Adam's ``m / sqrt(v)`` is inf / inf), an exploding
    learning rate shows only there, and the gradients keep their one reader (sink_scale needs
    that). One sum per value: a sum is finite exactly when its terms are, unless finite terms
    overflow float32, which only values near 3e38 do (a step worth skipping too). Finite but
    huge values pass: the guard is about NaN and inf, not magnitude.

    The price: every new value waits for the verdict on the whole step, so the updates cannot
    be applied (and their buffers freed) one by one as their gradients appear; the step holds
    its updates' bytes at once, and the reorder pass finds little to move. A dropout layer's
    random state advances in a skipped step too."""
    total = tf.reshape(outputs["loss"], [])
    for key, value in outputs.items():
        if key.startswith("new:"):
            total = total + tf.reduce_sum(tf.cast(value, tf.float32))
    finite = tf.math.is_finite(total)
    if mode == "skip":
        outputs = {key: tf.where(finite, value, params[key.removeprefix("new:")])
                   if key.startswith("new:") else value for key, value in outputs.items()}
    return {**outputs, "finite": tf.reshape(finite, [1])}


def trace(model: keras.Model, loss: keras.losses.Loss, optimizer: CompiledOptimizer,
          batch_size: int, trained: list[TrainedWeight],
          nonfinite: str = "skip", sample_weight: bool = False,
          input_shapes: dict | None = None, kv_cache: bool = False) -> TracedStep:
    """Traces the training and inference steps of ``model`` at a fixed ``batch_size``;
    ``nonfinite`` says what a step whose loss or updates are not finite does
    (:func:`guard_nonfinite`); ``sample_weight`` whether the train step takes per-label
    weights for the loss (shaped like the labels' loss, ``[batch, *output[1:-1]]``);
    ``input_shapes`` fixes dynamic input dimensions (:func:`input_specs`); ``kv_cache``
    traces the key/value-cache decode step too, its cache as long as ``infer``'s window
    (:mod:`tfpock.decode`)."""
    if nonfinite not in NONFINITE_MODES:
        raise ValueError(f"nonfinite must be one of {NONFINITE_MODES}, got {nonfinite!r}")
    check_model(model)
    layout = param_layout(model, trained, optimizer)

    specs = input_specs(model, batch_size, input_shapes)
    out_shape = output_shape(model, specs)
    if any(d is None for d in out_shape):
        raise UnsupportedModelError(f"model {model.name!r} has dynamic dimensions (output "
                                    f"{out_shape}); tfpock compiles static shapes")
    y_spec = label_spec(loss, batch_size, out_shape)
    sw_spec = (tf.TensorSpec((batch_size, *out_shape[:-1]), tf.float32, name="sample_weight")
               if sample_weight else None)
    # shape [1], not a scalar: the aarch64 ai-edge-litert wheels crash resizing a signature
    # input to an empty shape (memset of -4 bytes; found by tests/portability/aarch64_check.py)
    lr_spec = tf.TensorSpec((1,), tf.float32, name="learning_rate")
    output_spec = tf.TensorSpec((batch_size, *out_shape), tf.float32, name="output")

    def infer_step(inputs, *values):
        t, n = layout.weight_tensors(dict(zip(layout.model_keys, values)))
        out, _ = model.stateless_call(t, n, model_input(model, inputs), training=False)
        return {"output": out}

    train = TrainFunction(model, loss, optimizer, layout, nonfinite)
    x_specs = list(specs.values())
    train_fn = tf.function(train.train_step, autograph=False).get_concrete_function(
        x_specs, y_spec, sw_spec, lr_spec, *layout.specs(layout.keys))
    infer_fn = tf.function(infer_step, autograph=False).get_concrete_function(
        x_specs, *layout.specs(layout.model_keys))
    train_inputs = [*specs, "y", *(["sample_weight"] if sample_weight else []), "learning_rate"]
    train_graph = _graph_of(train_fn, train_inputs, layout.keys, train.backward)
    infer_graph = _graph_of(infer_fn, list(specs), layout.model_keys, ())
    decode_graph = decode_specs = None
    if kv_cache:
        decode.check_decodable(model)
        tokens = specs.get(decode.TOKENS)
        if tokens is None or tokens.shape.rank != 2:
            raise UnsupportedModelError(
                f"kv_cache=True: model {model.name!r} takes {', '.join(specs)}; the decode "
                f"signature needs {decode.TOKENS!r} [batch, seq] (KerasHub's causal LMs)")
        decode_fn, decode_specs = decode.decode_function(model, layout, batch_size,
                                                         tokens.shape[1], tokens.dtype)
        decode_graph = _graph_of(decode_fn, list(decode_specs), layout.model_keys, ())
    return TracedStep(train_graph, infer_graph, layout.weights, layout.params, layout.variables,
                      layout.frozen, specs, y_spec, output_spec, optimizer.learning_rate,
                      sw_spec, decode_graph, decode_specs)


def _graph_of(concrete, input_names, keys, backward) -> Graph:
    """The IR of a traced function: positional inputs by name, then params by key; outputs
    by the keys of the dict the function returned."""
    inputs = [t.name for t in concrete.graph.inputs]
    n = len(input_names)
    # graph.outputs follow tf.nest's flattening of the returned dict
    names = tf.nest.flatten({k: k for k in concrete.structured_outputs})
    outputs = {k: o.name for k, o in zip(names, concrete.graph.outputs)}
    graph_def = concrete.graph.as_graph_def(add_shapes=True)
    for node in graph_def.node:
        # the step is differentiated already: drop tf.custom_gradient markers (SiLU's, for
        # one), which SavedModel would otherwise try to trace and warn about
        if "_gradient_op_type" in node.attr:
            del node.attr["_gradient_op_type"]
    return Graph(graph_def,
                 inputs=dict(zip(input_names, inputs[:n])),
                 outputs=outputs, params=dict(zip(keys, inputs[n:])), backward=backward)
