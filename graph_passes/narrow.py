"""Narrow: make the weight gradient of a partial-channel weight compute its trained channels only.

A weight trained on its first k of K input channels (axis -2 of its kernel) is traced as
``w = concat([w_trained, w_frozen], axis=-2)``. GradientTape differentiates the loss in
``w_trained`` by computing the full kernel gradient ``dw`` [..., K, O] and then, through the
concat's gradient, ``Slice(dw, ConcatOffset:0, size)``: the first k channels. Output 0 of a
ConcatOffset is the offset of the concat's first input, all zeros by definition, so the slice
is ``dw[..., :k, :]`` whenever its static output shape equals ``dw``'s except on axis -2.

Each input channel c of the kernel gradient depends only on channel c of the forward input
``x`` (for a depthwise kernel also on the output-gradient channels ``c*M .. c*M+M-1``), so the
first k channels of ``dw`` are the gradient op applied to the first k channels of its inputs:

* Dense, ``dw = x^T dy`` (``MatMul(x, dy, transpose_a=True)``, x [B, K], dy [B, O]):
  ``dw[:k] = x[:, :k]^T dy``.
* Conv2D, ``dw[i, j, c, o] = sum_{n,p,q} xp[n, p*sh + i*dh, q*sw + j*dw, c] dy[n, p, q, o]``
  (``Conv2DBackpropFilter``): the same op on ``x[..., :k]`` with filter sizes [kh, kw, k, O]
  (strides, padding, explicit paddings and dilations unchanged: padding acts on H and W only).
* Depthwise, ``dw[i, j, c, m] = sum_{n,p,q} xp[n, p*sh + i*dh, q*sw + j*dw, c]
  dy[n, p, q, c*M + m]``: channels c < k read ``dy[..., :k*M]``, so the op runs on
  ``x[..., :k]`` and ``dy[..., :k*M]`` with filter sizes [kh, kw, k, M].
* Conv1D is Conv2D on ``ExpandDims`` tensors; its [1, kw, K, O] gradient is reshaped to
  [kw, K, O] before the slice. A reshape that keeps the last two axes and only regroups the
  leading ones commutes with slicing axis -2, so ``reshape(dw)[..., :k, :] =
  reshape(dw[..., :k, :], [..., k, O])``.

The saving is PockEngine's: the backward op reads k channels of the saved activation and does
k/K of the weight-gradient work. The rules are a table, op type of the slice's producer ->
rule (a :class:`graph_passes.rewrite.Rule` whose anchors are the channel slices: ``check``
says why it declines, ``rewrite`` splices in what ``build`` makes), like the lowering rules;
a narrowed Conv2DBackpropFilter or depthwise filter gradient is then lowered by those. A rule
applies only when the slice is the full gradient's only reader: if anything else (another
node or a signature output) reads it, the full gradient is computed anyway and the slice is
left alone. Dead producers (ConcatOffset, shape constants) are left to the DCE pass.

    NarrowWeightGradients()(graph): partial-channel weight gradients compute k input channels
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import tensorflow as tf

from graph_passes.ir import Graph, parse_ref, tensor_name
from graph_passes.pass_base import Pass, PassResult
from graph_passes.rewrite import Rule, RuleTable, apply_rule

KERNEL_IN_AXIS = -2   # input channels of a Dense / Conv / depthwise kernel (and its gradient)


# ---- the pattern: a slice of the first k input channels ---------------------------------------
@dataclasses.dataclass(frozen=True)
class ChannelSlice:
    """A ``Slice`` node that keeps the first ``k`` of ``total`` channels on axis -2."""
    node: tf.compat.v1.NodeDef
    k: int
    total: int

    @property
    def source(self) -> str:
        return self.node.input[0]


def _is_zero_offset(graph: Graph, ref: str) -> bool:
    """Whether a slice's ``begin`` is statically all zeros: output 0 of a ConcatOffset (the
    offset of the concat's first input, zero by definition) or a constant of zeros."""
    name, index = parse_ref(ref)
    node = graph.nodes[name]
    if node.op == "ConcatOffset":
        return index == 0
    if node.op == "Const":
        return not tf.make_ndarray(node.attr["value"].tensor).any()
    return False


def match_channel_slice(graph: Graph, node: tf.compat.v1.NodeDef) -> ChannelSlice | None:
    """``node`` as a first-channels slice of a gradient, or None if it is not one."""
    if node.op != "Slice" or node.name not in graph.backward:
        return None
    if not _is_zero_offset(graph, node.input[1]):
        return None
    full, kept = graph.spec(node.input[0]).shape, graph.spec(node.name).shape
    if full is None or kept is None or len(full) < 2 or None in full or None in kept:
        return None
    axis = len(full) + KERNEL_IN_AXIS
    others_full = all(a == b for i, (a, b) in enumerate(zip(full, kept)) if i != axis)
    if not others_full or kept[axis] >= full[axis]:
        return None
    return ChannelSlice(node, kept[axis], full[axis])


def weight_key(graph: Graph, match: ChannelSlice) -> str | None:
    """The param key of the weight whose trained part this slice is the gradient of.

    Follows the structure TF's concat gradient builds: the ConcatOffset's ``concat_dim`` is
    ``FloorMod(axis, rank)`` of the forward concat's axis tensor; the one ConcatV2 that reads
    that axis tensor has the trained part, a param placeholder, as its first input. None when
    any step is not so (then stats name the gradient node instead)."""
    offset = graph.nodes[parse_ref(match.node.input[1])[0]]
    if offset.op != "ConcatOffset":
        return None
    dim = graph.nodes[parse_ref(offset.input[0])[0]]
    axis = tensor_name(dim.input[0]) if dim.op == "FloorMod" else tensor_name(offset.input[0])
    concats = [n for n in graph.nodes_of(["ConcatV2"]) if tensor_name(n.input[-1]) == axis]
    if len(concats) != 1:
        return None
    first = tensor_name(concats[0].input[0])
    keys = [key for key, ref in graph.params.items() if ref == first]
    return keys[0] if len(keys) == 1 else None


# ---- rules: the slice's producer -> its narrowed form -----------------------------------------
def first_channels(t: tf.Tensor, k: int, axis: int = -1) -> tf.Tensor:
    """``t`` restricted to indices [0, k) of ``axis`` (a static Slice, a TFLite builtin)."""
    axis %= t.shape.rank
    size = list(t.shape)
    size[axis] = k
    return tf.slice(t, [0] * t.shape.rank, size)


def copy_attrs(node: tf.compat.v1.NodeDef, keys: Sequence[str]) -> dict:
    """Attributes of ``node`` as raw-op keyword arguments (lists, strings, bools)."""
    out = {}
    for key in keys:
        if key not in node.attr:
            continue
        value = node.attr[key]
        kind = value.WhichOneof("value")
        if kind == "list":
            out[key] = list(value.list.i)
        elif kind == "s":
            out[key] = value.s.decode()
        else:
            out[key] = getattr(value, kind)
    return out


def _require_nhwc_float32(graph: Graph, node: tf.compat.v1.NodeDef) -> str | None:
    fmt = graph.attr(node, "data_format", "NHWC")
    if fmt != "NHWC":
        return f"data_format {fmt} (only NHWC, where input channels are the last axis)"
    if graph.attr(node, "T") not in (None, tf.float32):
        return f"dtype {graph.attr(node, 'T').name} (only float32)"
    return None


class NarrowingRule(Rule):
    """One gradient op type -> the same gradient for the first k input channels.

    Anchored at a :class:`ChannelSlice` whose source that op produces (the pass's
    :class:`RuleTable` hands each slice to the rule of its producer's op). ``check`` says why
    a node cannot be narrowed (None if it can); ``inputs`` are the tensors the replacement
    reads; ``build(graph, node, k, *inputs)`` runs inside a scratch ``tf.Graph`` on
    placeholders of those tensors and returns the narrowed gradient, whose axis -2 has k
    entries; ``replaced`` lists the nodes the replacement makes unread.
    """

    op_type: str = ""

    @property
    def name(self) -> str:
        return self.op_type

    def check(self, graph: Graph, match: "ChannelSlice") -> str | None:
        return (sole_reader(graph, match.source, match.node.name)
                or self.check_node(graph, producer_of(graph, match), match.k))

    def check_node(self, graph: Graph, node: tf.compat.v1.NodeDef, k: int) -> str | None:
        return None

    def inputs(self, graph: Graph, node: tf.compat.v1.NodeDef) -> list[str]:
        raise NotImplementedError

    def build(self, graph: Graph, node: tf.compat.v1.NodeDef, k: int,
              *inputs: tf.Tensor) -> tf.Tensor:
        raise NotImplementedError

    def replaced(self, graph: Graph, node: tf.compat.v1.NodeDef) -> list[str]:
        return [node.name]

    def describe(self, graph: Graph, node: tf.compat.v1.NodeDef) -> str:
        """The pattern matched, for stats: the op type (and what it wraps)."""
        return node.op

    def rewrite(self, graph: Graph, match: "ChannelSlice") -> str:
        """Replaces the slice and the full gradient by the narrowed gradient; returns the
        pattern it narrowed (:meth:`describe`)."""
        producer = producer_of(graph, match)
        pattern = self.describe(graph, producer)
        before = set(graph.nodes)
        [out] = graph.splice(lambda *ins: self.build(graph, producer, match.k, *ins),
                             self.inputs(graph, producer), scope=f"{producer.name}/narrowed")
        graph.backward |= set(graph.nodes) - before   # the new ops are gradient ops too
        graph.replace_uses(match.node.name, out)
        graph.remove([match.node.name, *self.replaced(graph, producer)])
        return pattern


def producer_of(graph: Graph, match: "ChannelSlice") -> tf.compat.v1.NodeDef:
    """The node whose output the slice reads: the full gradient."""
    return graph.nodes[parse_ref(match.source)[0]]


class DenseKernelGradRule(NarrowingRule):
    """``MatMul(x, dy, transpose_a=True)`` -> ``MatMul(x[:, :k], dy, transpose_a=True)``."""

    op_type = "MatMul"

    def check_node(self, graph, node, k):
        if not graph.attr(node, "transpose_a", False) or graph.attr(node, "transpose_b", False):
            return ("not a kernel gradient x^T dy (needs transpose_a=True, transpose_b=False; "
                    f"has {graph.attr(node, 'transpose_a', False)}, "
                    f"{graph.attr(node, 'transpose_b', False)})")
        return None

    def inputs(self, graph, node):
        return [node.input[0], node.input[1]]

    def build(self, graph, node, k, x, dy):
        return tf.matmul(first_channels(x, k), dy, transpose_a=True)


class _FilterGradRule(NarrowingRule):
    """A TF filter-gradient op ``(input, filter_sizes, out_backprop)``: NHWC float32 only;
    filter_sizes is not read, the static output shape gives it."""

    def check_node(self, graph, node, k):
        return _require_nhwc_float32(graph, node)

    def inputs(self, graph, node):
        return [node.input[0], node.input[2]]


class ConvKernelGradRule(_FilterGradRule):
    """``Conv2DBackpropFilter(x, [kh, kw, K, O], dy)`` -> the same op on ``x[..., :k]`` with
    filter sizes [kh, kw, k, O]."""

    op_type = "Conv2DBackpropFilter"
    _attrs = ("strides", "padding", "explicit_paddings", "dilations", "data_format",
              "use_cudnn_on_gpu")

    def build(self, graph, node, k, x, dy):
        kh, kw, _, co = graph.spec(node.name).shape
        return tf.raw_ops.Conv2DBackpropFilter(
            input=first_channels(x, k), filter_sizes=tf.constant([kh, kw, k, co], tf.int32),
            out_backprop=dy, **copy_attrs(node, self._attrs))


class DepthwiseKernelGradRule(_FilterGradRule):
    """``DepthwiseConv2dNativeBackpropFilter(x, [kh, kw, C, M], dy)`` -> the same op on
    ``x[..., :k]`` and ``dy[..., :k*M]`` with filter sizes [kh, kw, k, M]."""

    op_type = "DepthwiseConv2dNativeBackpropFilter"
    _attrs = ("strides", "padding", "explicit_paddings", "dilations", "data_format")

    def build(self, graph, node, k, x, dy):
        kh, kw, _, multiplier = graph.spec(node.name).shape
        return tf.raw_ops.DepthwiseConv2dNativeBackpropFilter(
            input=first_channels(x, k),
            filter_sizes=tf.constant([kh, kw, k, multiplier], tf.int32),
            out_backprop=first_channels(dy, k * multiplier), **copy_attrs(node, self._attrs))


class RegroupReshapeRule(NarrowingRule):
    """``Reshape(dw)`` that keeps the last two axes (Conv1D's [1, kw, K, O] -> [kw, K, O]) ->
    the reshape of the narrowed ``dw``; ``dw``'s own rule does the narrowing."""

    op_type = "Reshape"

    def __init__(self, table: dict[str, NarrowingRule]):
        self.table = table

    def _inner(self, graph, node):
        producer = graph.nodes[parse_ref(node.input[0])[0]]
        return producer, self.table.get(producer.op)

    def check_node(self, graph, node, k):
        before, after = graph.spec(node.input[0]).shape, graph.spec(node.name).shape
        if before is None or after is None or None in before or None in after:
            return f"reshape {before} -> {after} is not static"
        if len(before) < 2 or len(after) < 2 or before[-2:] != after[-2:]:
            return f"reshape {before} -> {after} does not keep the last two axes"
        producer, rule = self._inner(graph, node)
        if rule is None or rule is self:
            return f"reshape of {producer.op}, which has no narrowing rule"
        return (sole_reader(graph, node.input[0], node.name)
                or rule.check_node(graph, producer, k))

    def inputs(self, graph, node):
        producer, rule = self._inner(graph, node)
        return rule.inputs(graph, producer)

    def build(self, graph, node, k, *inputs):
        producer, rule = self._inner(graph, node)
        after = graph.spec(node.name).shape
        return tf.reshape(rule.build(graph, producer, k, *inputs), [*after[:-2], k, after[-1]])

    def replaced(self, graph, node):
        producer, rule = self._inner(graph, node)
        return [node.name, *rule.replaced(graph, producer)]

    def describe(self, graph, node):
        producer, rule = self._inner(graph, node)
        return f"Reshape({rule.describe(graph, producer)})"


def default_rules() -> dict[str, NarrowingRule]:
    """Op type of the sliced gradient -> its rule."""
    table: dict[str, NarrowingRule] = {}
    for rule in (DenseKernelGradRule(), ConvKernelGradRule(), DepthwiseKernelGradRule(),
                 RegroupReshapeRule(table)):
        table[rule.op_type] = rule
    return table


def sole_reader(graph: Graph, ref: str, reader: str) -> str | None:
    """None if node ``reader`` is the only reader of tensor ``ref``'s node (no other node, no
    other output of it, no signature output); else why the full tensor is needed anyway."""
    name, index = parse_ref(ref)
    if index != 0:
        return f"the gradient is output {index} of {name}, not its only output"
    others = sorted(set(graph.consumers().get(name, [])) - {reader})
    if others:
        return f"the full gradient {name} is also read by {others}"
    outputs = sorted(k for k, r in graph.outputs.items() if parse_ref(r)[0] == name)
    if outputs:
        return f"the full gradient {name} is also the signature output {outputs}"
    return None


# ---- the pass --------------------------------------------------------------------------------
class NarrowWeightGradients(Pass):
    """Rewrites every first-channels slice of a kernel gradient (module doc). In place."""

    name = "narrow"

    def __init__(self, rules: dict[str, NarrowingRule] | None = None):
        self.rules = default_rules() if rules is None else rules
        self.table = RuleTable(
            "narrow", self.rules, key=lambda graph, match: producer_of(graph, match).op,
            anchors=lambda graph, _: list(filter(None, (match_channel_slice(graph, n)
                                                        for n in graph.nodes_of(["Slice"])))),
            missing=lambda op: (f"no narrowing rule for {op} (rules exist for "
                                f"{', '.join(sorted(self.rules))})"))

    def run(self, graph: Graph) -> PassResult:
        # the weight each slice trains (else its gradient node), for stats: read before any
        # rewrite changes the graph
        labels = {m.node.name: weight_key(graph, m) or producer_of(graph, m).name
                  for m in self.table.anchors(graph)}
        outcome = apply_rule(graph, self.table)
        narrowed: dict[str, int] = {}
        for _, pattern in outcome.fired:
            narrowed[pattern] = narrowed.get(pattern, 0) + 1
        stats = {"narrowed": dict(sorted(narrowed.items())),
                 "channels": {labels[m.match.node.name]: [m.match.k, m.match.total]
                              for m, _ in outcome.fired}}
        declined = {labels[m.match.node.name]: reason for m, reason in outcome.declined}
        if declined:
            stats["declined"] = declined
        return PassResult(bool(narrowed), stats)
