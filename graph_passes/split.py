"""Split: a partial-channel kernel's readers use its trained and frozen parts apart.

A weight trained on its first k of C input channels is traced as ``W = concat([W_t, W_f],
axis=-2)``: ``W_t`` [..., k, O] a variable, ``W_f`` [..., C-k, O] the frozen constant (after
freeze). Every op that reads ``W`` then reads a runtime tensor of the whole kernel, so the
step copies the kernel (CONCATENATION) and runs the op with a runtime weight, outside
XNNPACK's packed-constant path. Each reader is linear in ``W`` and its input channels are
independent, so it splits into an op on the trained part and one on the frozen part (x the
input, dy the gradient arriving at the output, ``[:k]`` the first k channels of the last axis):

* Conv2D / Dense (``MatMul(x, W)``): ``y = op(x[:k], W_t) + op(x[k:], W_f)``: output
  channels sum over input channels, so the two partial sums ADD.
* Depthwise ``[kh, kw, C, M]``: output channel ``c*M + m`` reads input channel c only, so
  ``y = concat(dw(x[:k], W_t), dw(x[k:], W_f))`` along the last axis.
* Input gradients: ``dx[:k]`` reads ``W_t`` only, ``dx[k:]`` ``W_f`` only:
  ``dx = concat(input_grad(dy, W_t), input_grad(dy, W_f))`` (Conv2DBackpropInput with
  input sizes [..., k] and [..., C-k]; ``MatMul(dy, W, transpose_b=True)``; the depthwise
  one reads ``dy[:k*M]`` and ``dy[k*M:]``).

Between the concat and its reader may sit views that commute with cutting axis -2, rebuilt on
each part: ``Mul`` by a constant (fold_bn's per-output-channel scale; a scale over input
channels is cut the same way) and a Reshape or ExpandDims that keeps the last two axes
(Conv1D's ``[kw, C, O] -> [1, kw, C, O]``).

The frozen op then has a constant weight (XNNPACK packs it once), the trained op a weight of
k/C the size, and no op of the step reads a whole-kernel runtime tensor; the variable and
its optimizer slots were k channels already (tracing). The weight gradient is narrow's.
Static slices of one tensor that this pass and narrow both make (``x[:k]`` forward and for
the weight gradient) are merged into one. A partial kernel declines as a whole, with the
reason in stats, when any reader or view is not one of the above: then the concat stays.
Measured: ``bench/results/2026-12-06-x86_64-2core-split.md``.

    SplitPartialKernels()(graph): partial-channel kernels are read as two parts
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from graph_passes.constants import is_constant, constant_value
from graph_passes.ir import Graph, parse_ref, tensor_name
from graph_passes.narrow import copy_attrs, first_channels
from graph_passes.pass_base import Pass, PassResult
from graph_passes.rewrite import NodeRule, apply_rule


# ---- the pattern: concat([trained param, frozen constant], axis=-2) and its readers ---------
@dataclasses.dataclass(frozen=True)
class Use:
    """One reader of the kernel: the views between the concat and it (node name, which
    input is the kernel), outermost last."""
    views: tuple[tuple[str, int], ...]
    reader: str


@dataclasses.dataclass(frozen=True)
class PartialKernel:
    concat: tf.compat.v1.NodeDef
    k: int
    total: int
    uses: tuple[Use, ...]
    shapes: tuple[str, ...]        # Shape / ShapeN nodes that read the kernel's static shape
    problem: str | None = None     # why a reader or view cannot be split (None: all can)

    @property
    def trained(self) -> str:
        return self.concat.input[0]

    @property
    def frozen(self) -> str:
        return self.concat.input[1]


VIEW_OPS = ("Mul", "Reshape", "ExpandDims")


def match_partial_kernel(graph: Graph, node: tf.compat.v1.NodeDef) -> PartialKernel | None:
    """``node`` as the concat of a partial-channel kernel (trained param ++ frozen constant on
    axis -2), with its readers; None if it is not one."""
    if node.op != "ConcatV2" or graph.attr(node, "N") != 2:
        return None
    trained, frozen, axis = node.input
    if tensor_name(trained) not in graph.params.values():
        return None
    if graph.nodes[parse_ref(frozen)[0]].op != "Const" or not is_constant(graph, axis):
        return None
    shape = graph.spec(node.name).shape
    if shape is None or None in shape or len(shape) < 2:
        return None
    if int(constant_value(graph, axis)) % len(shape) != len(shape) - 2:
        return None
    k = graph.spec(trained).shape[-2]
    uses, shapes, problems = [], [], []
    _collect(graph, node.name, (), uses, shapes, problems)
    if any(parse_ref(ref)[0] == node.name for ref in graph.outputs.values()):
        problems.append("the whole kernel is a signature output")
    return PartialKernel(node, k, shape[-2], tuple(uses), tuple(dict.fromkeys(shapes)),
                         problems[0] if problems else None)


def _collect(graph: Graph, name: str, views: tuple, uses: list, shapes: list,
             problems: list) -> None:
    """Walks the readers of ``name`` through views to the ops that consume the kernel."""
    for reader, index in graph.readers(name):
        if reader.op in VIEW_OPS:
            why = _view_problem(graph, reader, index)
            if why is None:
                _collect(graph, reader.name, (*views, (reader.name, index)), uses, shapes,
                         problems)
            else:
                problems.append(why)
            continue
        if reader.op in ("Shape", "ShapeN"):
            static = all(s is not None and None not in s
                         for s in (graph.spec(r).shape for r in reader.input
                                   if not r.startswith("^")))
            if static:
                shapes.append(reader.name)
            else:
                problems.append(f"{reader.op} {reader.name} reads a shape that is not static")
            continue
        rule = READERS.get(reader.op)
        why = (f"read by {reader.op} {reader.name}, which has no split rule (rules exist for "
               f"{', '.join(sorted(READERS))})" if rule is None
               else rule.problem(graph, reader, index))
        if why is None:
            uses.append(Use(views, reader.name))
        else:
            problems.append(why)


def _view_problem(graph: Graph, node, index: int) -> str | None:
    before, after = graph.spec(node.input[index]).shape, graph.spec(node.name).shape
    if node.op == "Mul":
        other = node.input[1 - index]
        if not is_constant(graph, other):
            return f"multiplied by a runtime tensor in {node.name}"
        if after != before:
            return f"Mul {node.name} broadcasts the kernel {before} to {after}"
        return None
    if index != 0 or after is None or None in after or after[-2:] != before[-2:]:
        return f"{node.op} {node.name} {before} -> {after} does not keep the last two axes"
    return None


def _rebuild_view(graph: Graph, node, index: int, part: tf.Tensor, start: int,
                  stop: int) -> tf.Tensor:
    """View ``node`` (its kernel is input ``index``) applied to channels [start, stop) of axis
    -2 of the kernel."""
    if node.op == "Mul":
        scale = np.asarray(constant_value(graph, node.input[1 - index]))
        if scale.ndim >= 2 and scale.shape[-2] != 1:
            scale = np.take(scale, range(start, stop), axis=-2)
        return part * tf.constant(scale, part.dtype)
    after = list(graph.spec(node.name).shape)
    return tf.reshape(part, [*after[:-2], stop - start, after[-1]])


# ---- reader rules: op -> its two-part form ---------------------------------------------------
def last_channels(t: tf.Tensor, k: int) -> tf.Tensor:
    """``t`` restricted to indices [k, end) of its last axis (a static Slice)."""
    size = list(t.shape)
    size[-1] -= k
    return tf.slice(t, [0] * (t.shape.rank - 1) + [k], size)


class ReaderRule:
    """How one op type that reads a kernel (at ``kernel_input``) splits. ``build(graph,
    node, k, inputs, w_t, w_f)`` makes its replacement from the node's inputs (tensors) and
    the two parts (views applied); ``problem`` says why a node cannot be split."""

    kernel_input = 1

    def problem(self, graph: Graph, node, index: int) -> str | None:
        if index != self.kernel_input:
            return f"{node.op} {node.name} reads the kernel as input {index}"
        fmt = graph.attr(node, "data_format", "NHWC")
        if fmt != "NHWC":
            return f"{node.op} {node.name} has data_format {fmt} (only NHWC)"
        return None

    def build(self, graph, node, k, inputs, w_t, w_f):
        raise NotImplementedError


_CONV_ATTRS = ("strides", "padding", "explicit_paddings", "dilations", "data_format")


class ConvRule(ReaderRule):
    """``Conv2D(x, W) = Conv2D(x[:k], W_t) + Conv2D(x[k:], W_f)``."""

    def build(self, graph, node, k, inputs, w_t, w_f):
        x = inputs[0]
        attrs = copy_attrs(node, _CONV_ATTRS)
        return (tf.raw_ops.Conv2D(input=first_channels(x, k), filter=w_t, **attrs)
                + tf.raw_ops.Conv2D(input=last_channels(x, k), filter=w_f, **attrs))


class ConvInputGradRule(ReaderRule):
    """``Conv2DBackpropInput(sizes, W, dy) = concat(...(sizes[:k], W_t, dy),
    ...(sizes[k:], W_f, dy))``."""

    def build(self, graph, node, k, inputs, w_t, w_f):
        *lead, c = graph.spec(node.name).shape
        attrs = copy_attrs(node, _CONV_ATTRS)
        return tf.concat([
            tf.raw_ops.Conv2DBackpropInput(input_sizes=[*lead, k], filter=w_t,
                                           out_backprop=inputs[2], **attrs),
            tf.raw_ops.Conv2DBackpropInput(input_sizes=[*lead, c - k], filter=w_f,
                                           out_backprop=inputs[2], **attrs)], axis=-1)


class DepthwiseRule(ReaderRule):
    """``dw(x, W) = concat(dw(x[:k], W_t), dw(x[k:], W_f))``."""

    def build(self, graph, node, k, inputs, w_t, w_f):
        x = inputs[0]
        attrs = copy_attrs(node, _CONV_ATTRS)
        return tf.concat([
            tf.raw_ops.DepthwiseConv2dNative(input=first_channels(x, k), filter=w_t, **attrs),
            tf.raw_ops.DepthwiseConv2dNative(input=last_channels(x, k), filter=w_f, **attrs)],
            axis=-1)


class DepthwiseInputGradRule(ReaderRule):
    """``dw_input_grad(sizes, W, dy) = concat(...(sizes[:k], W_t, dy[:k*M]),
    ...(sizes[k:], W_f, dy[k*M:]))``."""

    def build(self, graph, node, k, inputs, w_t, w_f):
        *lead, c = graph.spec(node.name).shape
        km = k * int(w_t.shape[-1])
        dy = inputs[2]
        attrs = copy_attrs(node, _CONV_ATTRS)
        return tf.concat([
            tf.raw_ops.DepthwiseConv2dNativeBackpropInput(
                input_sizes=[*lead, k], filter=w_t, out_backprop=first_channels(dy, km),
                **attrs),
            tf.raw_ops.DepthwiseConv2dNativeBackpropInput(
                input_sizes=[*lead, c - k], filter=w_f, out_backprop=last_channels(dy, km),
                **attrs)], axis=-1)


class MatMulRule(ReaderRule):
    """Dense forward ``x @ W = x[:, :k] @ W_t + x[:, k:] @ W_f``; its input gradient
    ``dy @ W^T = concat(dy @ W_t^T, dy @ W_f^T)``."""

    def problem(self, graph, node, index):
        ta = graph.attr(node, "transpose_a", False)
        if index != 1 or ta:
            return (f"MatMul {node.name} reads the kernel as input {index} with transpose_a="
                    f"{ta} (splits x @ W and dy @ W^T only)")
        return None

    def build(self, graph, node, k, inputs, w_t, w_f):
        a = inputs[0]
        if graph.attr(node, "transpose_b", False):
            return tf.concat([tf.matmul(a, w_t, transpose_b=True),
                              tf.matmul(a, w_f, transpose_b=True)], axis=-1)
        return (tf.matmul(first_channels(a, k), w_t) + tf.matmul(last_channels(a, k), w_f))


READERS: dict[str, ReaderRule] = {
    "Conv2D": ConvRule(),
    "Conv2DBackpropInput": ConvInputGradRule(),
    "DepthwiseConv2dNative": DepthwiseRule(),
    "DepthwiseConv2dNativeBackpropInput": DepthwiseInputGradRule(),
    "MatMul": MatMulRule(),
}


# ---- the rule and the pass -------------------------------------------------------------------
class SplitRule(NodeRule):
    """Anchored at each ConcatV2: a partial kernel whose every reader splits is replaced,
    reader by reader; the concat and views are left unread (DCE removes them)."""

    name = "split"
    op_types = ("ConcatV2",)

    def match(self, graph, node):
        return match_partial_kernel(graph, node)

    def check(self, graph, match):
        if match.problem:
            return match.problem
        if not match.uses:
            return "the kernel has no reader"
        return None

    def rewrite(self, graph, match: PartialKernel) -> dict[str, int]:
        fired: dict[str, int] = {}
        for name in match.shapes:
            fired[graph.nodes[name].op] = fired.get(graph.nodes[name].op, 0) + 1
            static_shapes(graph, graph.nodes[name])
        for use in match.uses:
            reader = graph.nodes[use.reader]
            rule = READERS[reader.op]
            data = [r for r in reader.input if not r.startswith("^")]
            n = len(data)

            def build(*ts, reader=reader, rule=rule, use=use, n=n):
                parts = []
                for part, (start, stop) in ((ts[n], (0, match.k)),
                                             (ts[n + 1], (match.k, match.total))):
                    for view, index in use.views:
                        part = _rebuild_view(graph, graph.nodes[view], index, part, start, stop)
                    parts.append(part)
                return rule.build(graph, reader, match.k, list(ts[:n]), *parts)

            backward = reader.name in graph.backward
            before = set(graph.nodes)
            [out] = graph.splice(build, [*data, match.trained, match.frozen],
                                 scope=f"{reader.name}/split")
            if backward:
                graph.backward |= set(graph.nodes) - before
            graph.replace_uses(reader.name, out)
            graph.remove([reader.name])
            fired[reader.op] = fired.get(reader.op, 0) + 1
        return fired


def static_shapes(graph: Graph, node) -> None:
    """Replaces a Shape or ShapeN of static tensors (an input gradient's input sizes) by
    constants, so that it no longer reads the whole kernel."""
    dtype = graph.attr(node, "out_type", tf.int32)
    refs = [r for r in node.input if not r.startswith("^")]
    shapes = [graph.spec(r).shape for r in refs]
    outs = graph.splice(lambda: [tf.constant(s, dtype) for s in shapes], [],
                        scope=f"{node.name}/static")
    for index, out in enumerate(outs):
        graph.replace_uses(f"{node.name}:{index}", out)
    graph.remove([node.name])


def share_static_slices(graph: Graph) -> int:
    """Merges Slice nodes of one tensor with the same constant begin and size (narrow's
    ``x[:k]`` for the weight gradient and this pass's for the forward); returns how many
    were merged away."""
    seen: dict[tuple, str] = {}
    merged = []
    for name in graph.topological_order():
        node = graph.nodes[name]
        if node.op != "Slice":
            continue
        begin, size = (graph.nodes[parse_ref(r)[0]] for r in node.input[1:3])
        if begin.op != "Const" or size.op != "Const":
            continue
        key = (tensor_name(node.input[0]), tf.make_ndarray(begin.attr["value"].tensor).tobytes(),
               tf.make_ndarray(size.attr["value"].tensor).tobytes())
        if key in seen:
            graph.replace_uses(name, seen[key])
            merged.append(name)
        else:
            seen[key] = name
    graph.remove(merged)
    return len(merged)


class SplitPartialKernels(Pass):
    """Rewrites every partial-channel kernel's readers into trained and frozen parts (module
    doc). In place."""

    name = "split"

    def run(self, graph: Graph) -> PassResult:
        params = {tensor_name(ref): key for key, ref in graph.params.items()}
        outcome = apply_rule(graph, SplitRule())
        readers: dict[str, int] = {}
        for _, fired in outcome.fired:
            for op, count in fired.items():
                readers[op] = readers.get(op, 0) + count
        merged = share_static_slices(graph) if outcome.fired else 0
        stats = {"split": {params[tensor_name(m.trained)]: [m.k, m.total]
                           for m, _ in outcome.fired},
                 "readers": dict(sorted(readers.items())), "slices_shared": merged}
        declined = {params[tensor_name(m.trained)]: reason for m, reason in outcome.declined}
        if declined:
            stats["declined"] = declined
        return PassResult(bool(outcome.fired), stats)
