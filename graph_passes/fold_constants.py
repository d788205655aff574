"""Fold constants: ops computed from constants only are evaluated once, at compile time.

After :mod:`~graph_passes.freeze` the frozen weights are Const nodes, and part of what the
step computes from them is the same at every step: a frozen BatchNorm's
``s = gamma * rsqrt(var + eps)`` and ``b = beta - mean * s``, the reshaped scale ``fold_bn``
multiplies into a kernel, the reversed filter of a frozen depthwise convolution that the
input-gradient lowering builds, the shape arithmetic of the loss gradient. This pass
evaluates those ops with TensorFlow's own kernels and puts Consts in their place.

What folds. Walking the graph in topological order, a node folds when
* it has data inputs and every one is a Const or a node this pass folds (a node without
  data inputs is a source: a Placeholder, a Const), or it is one of :data:`SHAPE_OPS`
  (Shape, ShapeN, Size, Rank) and the shapes of its inputs are fully known, whatever
  computes them (Grappler's shape materialisation: the lowered ``Conv2DBackpropInput``
  reads ``ShapeN(x, W)``, which alone keeps a frozen kernel ``W`` alive beside ``W * s``);
* its control inputs, if any, come from such nodes too (reason ``control_input``; a Const
  waiting on a computed op is no constant either);
* TF's op registry says it is stateless (``OpDef.is_stateful``: variables, assignments,
  stateful random ops, Print, Assert: reason ``stateful``) and it is none of
  :data:`EXCLUDED_OPS` (feed points; stateless random draws, which the lowering turns into a
  fresh draw per step);
* every output has a fully known static shape (``unknown_shape``) and a numeric or bool
  dtype (``dtype``);
* it is under the size cap (``size_cap``, below).
Declined nodes are counted per reason and op type in ``stats["declined"]``. All foldable
nodes are evaluated in one Session run with Grappler off, so each value is what the op's TF
kernel computes (a shape op's value is its static shape, fed to that run). A node is
replaced in place by a Const of the same name holding output 0 (its readers stay wired);
other outputs get new Consts and their readers move to them. Consts no longer read are left
for the dce pass. Kill switch: leave the pass out of the pipeline's list.

The cap: ``max_growth_bytes`` (default 256) declines a node whose outputs are larger than its
data inputs combined by more than that many bytes. The folds worth having do not grow
anything (a transpose, reverse or reshape of a kernel is the kernel's size, ``W * s`` too)
or grow by a few bytes (shape arithmetic: at most 24 bytes, a Tile in the loss gradient, in
every model below), while materialising a broadcast (Fill, Tile, BroadcastTo, ZerosLike of
such) turns a few bytes into an activation-sized constant that the file would store and each
step would read from memory, where a builtin would write it: the smallest such Fill measured
(a bool 8x4x4x8 mask of the max-pool gradient lowering) grows by 1,007 bytes, the others by
4-8 KB. 256 bytes is ten times the largest growth of a fold worth having and a quarter of
the smallest broadcast. TF's MLIR constant folder,
which the TFLite converter runs, is looser (in its ``constant_fold.cc``: results up to 1 MB,
or up to twice the operands), so what is declined here may still be folded there.

Stats: ``folded`` and ``folded_by_op``; ``bytes_created`` (new Consts something reads) and
``bytes_unreferenced`` (Consts read before, unread after); two before/after figures for
``Program.report()``: ``computed_ops``, the live non-constant ops a step runs, and
``const_bytes``, the bytes of the Consts something reads. A Const read both by a folded node
and by another op stays, so folding can raise ``const_bytes`` (a reversed copy beside a
kernel); the figure shows it.

What it buys (``python -m bench.studies.fold_constants``,
``bench/results/2026-12-03-x86_64-2core-fold-constants.md``): on MobileNetV2 0.35 and
``every_layer_cnn`` the exported file has the same train op count with and without the pass
(the converter folds these constants itself) and bit-identical train outputs. Kept because the
folding is then ours (TF-kernel values, a kill switch, a figure), graph-level analyses see the
ops a step really runs (MobileNetV2 last:2: 617 -> 198 live ops), and shape materialisation
lets dce drop a frozen kernel that only a ShapeN still read.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Callable

import numpy as np
import tensorflow as tf

from graph_passes.dce import live_nodes
from graph_passes.ir import Graph, parse_ref
from graph_passes.lowering import random_ops
from graph_passes.pass_base import Pass, PassResult

logger = logging.getLogger(__name__)

DEFAULT_MAX_GROWTH_BYTES = 256

# Op types that never fold although the registry calls them stateless: op -> reason.
EXCLUDED_OPS: dict[str, str] = {
    "PlaceholderWithDefault": "feed_point",
    # the lowering makes these a fresh draw per step (graph_passes.lowering.random_ops);
    # folding would bake one draw into the file
    **{rule.op_type: "random" for rule in random_ops.RULES},
    **{op: "random" for op in (
        "StatelessRandomGetKeyCounter", "StatelessRandomGetKeyCounterAlg",
        "StatelessRandomGetAlg", "StatelessRandomUniformIntV2", "StatelessRandomUniformInt",
        "StatelessRandomUniformFullIntV2", "StatelessRandomUniformFullInt",
        "StatelessTruncatedNormalV2", "StatelessTruncatedNormal", "StatelessMultinomial",
        "StatelessRandomBinomial", "StatelessRandomGammaV2", "StatelessRandomPoisson",
        "StatelessParameterizedTruncatedNormal", "StatelessShuffle")},
}


# Ops whose value is the static shape of their inputs (Grappler's "materialize shapes"): they
# fold once the input shapes are fully known, whatever computes the inputs. op -> the values
# of its outputs from the input shapes.
SHAPE_OPS: dict[str, Callable[[list[list[int]]], list]] = {
    "Shape": lambda shapes: [shapes[0]],
    "ShapeN": lambda shapes: list(shapes),
    "Size": lambda shapes: [int(np.prod(shapes[0], dtype=np.int64))],
    "Rank": lambda shapes: [len(shapes[0])],
}


@dataclasses.dataclass
class FoldPlan:
    """Which nodes fold (topological order) and, for the other nodes whose data inputs are
    all constant, why not."""
    fold: list[str]
    declined: dict[str, str]


def _nbytes(shape, dtype: tf.DType) -> int:
    return int(np.prod(shape, dtype=np.int64)) * dtype.size


def _numeric(dtype: tf.DType) -> bool:
    return dtype.is_floating or dtype.is_integer or dtype.is_bool or dtype.is_complex


def _decline_reason(op: tf.Operation, control_ok: bool, max_growth_bytes: int) -> str | None:
    """Why ``op`` (whose data inputs are constant, or a shape op of static shapes) must not
    fold, or None."""
    if op.type in EXCLUDED_OPS:
        return EXCLUDED_OPS[op.type]
    if op.op_def.is_stateful:
        return "stateful"
    if not op.outputs:
        return "no_outputs"
    if not control_ok:
        return "control_input"
    if any(not _numeric(t.dtype) for t in op.outputs):
        return "dtype"
    if any(not t.shape.is_fully_defined() for t in [*op.inputs, *op.outputs]):
        return "unknown_shape"
    grown = (sum(_nbytes(t.shape, t.dtype) for t in op.outputs)
             - sum(_nbytes(t.shape, t.dtype) for t in {t.name: t for t in op.inputs}.values()))
    if grown > max_growth_bytes:
        return "size_cap"
    return None


def _static_shape_op(op: tf.Operation) -> bool:
    return op.type in SHAPE_OPS and all(t.shape.is_fully_defined() and _numeric(t.dtype)
                                        for t in op.inputs)


def plan_folds(graph: Graph, scratch: tf.Graph,
               max_growth_bytes: int = DEFAULT_MAX_GROWTH_BYTES) -> FoldPlan:
    """Decides, without evaluating anything, which nodes fold; ``scratch`` is ``graph``
    imported into a tf.Graph (for op definitions and static shapes)."""
    constant: set[str] = set()
    plan = FoldPlan([], {})
    for name in graph.topological_order():
        node = graph.nodes[name]
        refs = [parse_ref(r) for r in node.input]
        control_ok = all(src in constant for src, index in refs if index < 0)
        if node.op == "Const":
            if control_ok:  # else evaluating it would run what it waits for
                constant.add(name)
            continue
        data = [src for src, index in refs if index >= 0]
        op = scratch.get_operation_by_name(name)
        if not data or not (all(src in constant for src in data) or _static_shape_op(op)):
            continue
        reason = _decline_reason(op, control_ok, max_growth_bytes)
        if reason is None:
            constant.add(name)
            plan.fold.append(name)
        else:
            plan.declined[name] = reason
    return plan


def _grappler_off() -> tf.compat.v1.ConfigProto:
    """Evaluate each op with its own kernel: no Grappler rewrite of the folded subgraph."""
    config = tf.compat.v1.ConfigProto()
    config.graph_options.rewrite_options.disable_meta_optimizer = True
    config.graph_options.optimizer_options.opt_level = tf.compat.v1.OptimizerOptions.L0
    return config


def evaluate(scratch: tf.Graph, names: list[str]) -> dict[str, list[np.ndarray]]:
    """Every output of the named ops: shape ops from their static input shapes, the others
    in one Session run (fed with those shapes)."""
    ops = [scratch.get_operation_by_name(n) for n in names]
    values = {op.name: [np.asarray(v, out.dtype.as_numpy_dtype) for v, out in zip(
        SHAPE_OPS[op.type]([t.shape.as_list() for t in op.inputs]), op.outputs)]
        for op in ops if op.type in SHAPE_OPS}
    computed = [op for op in ops if op.name not in values]
    fetches = [out for op in computed for out in op.outputs]
    if fetches:
        feeds = {out: v for op in ops if op.name in values
                 for out, v in zip(op.outputs, values[op.name])}
        with tf.compat.v1.Session(graph=scratch, config=_grappler_off()) as session:
            results = iter(session.run(fetches, feeds))
        values.update({op.name: [next(results) for _ in op.outputs] for op in computed})
    return values


def const_node(name: str, value: np.ndarray, dtype: tf.DType,
               like: tf.compat.v1.NodeDef | None = None) -> tf.compat.v1.NodeDef:
    """A Const NodeDef holding ``value``; keeps ``like``'s device."""
    node = tf.compat.v1.NodeDef(name=name, op="Const")
    node.attr["dtype"].type = dtype.as_datatype_enum
    node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value, dtype=dtype))
    if like is not None:
        node.device = like.device
    return node


def _const_bytes(node: tf.compat.v1.NodeDef) -> int:
    tensor = node.attr["value"].tensor
    return _nbytes(tf.TensorShape(tensor.tensor_shape).as_list(), tf.DType(tensor.dtype))


def _read_consts(graph: Graph) -> dict[str, int]:
    """Const nodes a data edge or the signature reads -> their bytes."""
    read = {parse_ref(r)[0] for r in graph.outputs.values()}
    read.update(parse_ref(r)[0] for n in graph.nodes.values() for r in n.input
                if not r.startswith("^"))
    return {name: _const_bytes(graph.nodes[name]) for name in read
            if graph.nodes[name].op == "Const"}


def _computed_ops(graph: Graph) -> int:
    """Live ops the step computes (not Consts, not Placeholders)."""
    return sum(graph.nodes[n].op not in ("Const", "Placeholder") for n in live_nodes(graph))


def fold(graph: Graph, max_growth_bytes: int = DEFAULT_MAX_GROWTH_BYTES
         ) -> tuple[FoldPlan, collections.Counter]:
    """Replaces every foldable node by Consts of its values; returns the plan and the op
    types folded."""
    scratch = graph.to_tf_graph()
    plan = plan_folds(graph, scratch, max_growth_bytes)
    values = evaluate(scratch, plan.fold)
    op_types = collections.Counter()
    for name in plan.fold:
        old = graph.nodes[name]
        op_types[old.op] += 1
        outputs = scratch.get_operation_by_name(name).outputs
        for index, (value, out) in enumerate(zip(values[name], outputs)):
            if index:
                extra = graph.fresh_name(f"{name}/folded_output")
                graph.add_node(const_node(extra, value, out.dtype, like=old))
                graph.replace_uses(f"{name}:{index}", extra)
                if name in graph.backward:
                    graph.backward.add(extra)
        graph.nodes[name] = const_node(name, values[name][0], outputs[0].dtype, like=old)
    for name, reason in plan.declined.items():
        logger.debug("fold_constants: %s %r declined: %s", graph.nodes[name].op, name, reason)
    return plan, op_types


class FoldConstants(Pass):
    """Evaluates ops whose inputs are all constant (and shape ops of static shapes) and
    replaces them by Consts.

    Args:
        max_growth_bytes: a node whose outputs exceed its data inputs by more than this many
            bytes is left alone (a materialised broadcast would store an activation-sized
            constant in the file); see the module docstring for the default.

    Example:
        >>> graph, records = Sequential([Freeze(frozen), FoldConstants()])(step.train)
        >>> records[-1].stats["folded_by_op"]
        {'Mul': 104, 'AddV2': 52, 'Rsqrt': 52, 'Sub': 52, ...}
    """

    name = "fold_constants"

    def __init__(self, max_growth_bytes: int = DEFAULT_MAX_GROWTH_BYTES):
        if max_growth_bytes < 0:
            raise ValueError(f"max_growth_bytes must be >= 0, got {max_growth_bytes}")
        self.max_growth_bytes = max_growth_bytes

    def run(self, graph: Graph) -> PassResult:
        consts_before, computed_before = _read_consts(graph), _computed_ops(graph)
        plan, op_types = fold(graph, self.max_growth_bytes)
        consts_after = _read_consts(graph)
        declined: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        for name, reason in plan.declined.items():
            declined[reason][graph.nodes[name].op] += 1
        before, after = sum(consts_before.values()), sum(consts_after.values())
        stats = {
            "folded": len(plan.fold),
            "folded_by_op": dict(op_types.most_common()),
            "declined": {r: dict(c.most_common()) for r, c in sorted(declined.items())},
            "bytes_created": sum(b for n, b in consts_after.items() if n not in consts_before),
            "bytes_unreferenced": sum(b for n, b in consts_before.items()
                                      if n not in consts_after),
            "computed_ops": f"{computed_before} -> {_computed_ops(graph)}",
            "const_bytes": f"{before:,} -> {after:,}",
        }
        return PassResult(bool(plan.fold), stats)

    def postcondition(self, graph: Graph) -> None:
        left = plan_folds(graph, graph.to_tf_graph(), self.max_growth_bytes).fold
        if left:
            raise AssertionError(f"fold_constants left {len(left)} foldable nodes: "
                                 + ", ".join(f"{graph.nodes[n].op} {n!r}" for n in left[:5]))
