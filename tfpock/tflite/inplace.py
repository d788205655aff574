"""Inplace: keep TFLite's in-place buffer sharing from overwriting a tensor still to be read.

The rule TFLite breaks. Since 2.14 the arena planner (``ArenaPlanner::IdentifyInPlaceTensors``
and ``InputTensorCanBeShared`` in ``tensorflow/lite/arena_planner.cc``, tag v2.14.0; the same
code is LiteRT's ``tflite/arena_planner.cc`` today) lets an operator registered as in-place
write its output into an input's buffer, and lets RESHAPE (also SQUEEZE, EXPAND_DIMS, BITCAST:
``kTfLiteInplaceOpDataUnmodified``) give its output its input's buffer. Sharing tensors form a
class with one buffer, named after its first tensor, the root. An in-place *writer* (ADD, SUB,
MUL, DIV on either input, SOFTMAX on its input: the kernels both runtimes were seen sharing)
may take input ``x`` when ``x`` has the output's bytes (more than 4), one reader
(``refcounts_[input_id] > 1`` declines), and the class root has at most one reader
(``refcounts_[actual_output_tensor_id] > 1`` declines). Those counts are of ``x``'s and the
root's own readers, not of the class's other tensors, and a RESHAPE's input joins the class
whatever its readers. So

    y = ADD(p, q)           # y takes p's buffer (p read once): the root is p, read once
    x = RESHAPE(y)          # x takes it too; y is still read later, by BATCH_MATMUL
    w = MUL(x, lr)          # x read once, root read once: w is written over y

and BATCH_MATMUL reads ``w``'s values as ``y``. It happens wherever the builtin kernels run
without a delegate: on tflite-runtime 2.14 (with or without its default XNNPACK, which does
not take the training subgraph there) and on ai-edge-litert 2.3 with
``BUILTIN_WITHOUT_DEFAULT_DELEGATES``; ai-edge-litert's default XNNPACK plans the operators it
takes itself. The plain decoder with LayerNormalization lost 3.373 instead of 3.421 on both
(the final norm's ``add_2``, read by the LM head after ``RESHAPE(add_2) * lr``, from SinkScale,
was overwritten).

What this pass does. :func:`plan` computes the sharing as the planner does, from the file's
static shapes (it equals the sharing both runtimes were measured doing, tensor for tensor, on
the suite's language models and CNNs); :func:`hazards` lists each in-place write over a class
that holds a tensor read after it. Each is rewritten by the first rule that takes it:

    ``defer``  the writer moves to just after the last read of the class's live tensors (none
        of the operators it passes reads its output). The planner shares exactly as before,
        but the write now comes after every read: the same operators, values and memory, a
        different order. The decoder's hazard is this one (the MUL moves past the LM head's
        BATCH_MATMUL).
    ``commute``  ``w = OP(RESHAPE(y), s)``, ``OP`` an elementwise ADD/SUB/MUL/DIV, ``s`` one
        element (a scalar learning rate, a constant) -> ``w = RESHAPE(OP(y, s))``. ``OP(y)``
        cannot take ``y``'s buffer (``y`` has other readers), so it gets its own, which the
        RESHAPE then shares: the same operators, bit-identical values, and the one buffer a
        correct plan needs anyway.

A hazard both decline is counted in the stats, left, and logged as a warning (none is known:
of the suite's models only the GELU + LayerNormalization decoder has one). The pass runs last
on the file, since operator order decides the plan, on every subgraph of the file. Measured
(``bench/results/2026-12-07-x86_64-2core-tflite-runtime-214-fix.md``: runtimes' plans and
results; ``...-inplace-cost.md``: memory and step time with the pass on and off).
"""
from __future__ import annotations

import collections
import dataclasses
import logging

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from graph_passes.pass_base import Pass, PassResult
from graph_passes.rewrite import Rule, apply_rule
from tfpock.tflite import model_file
from tfpock.tflite.flatbuffer import builtin, pack
from tfpock.tflite.ir import TfliteFile

_OPS = schema.BuiltinOperator
_OP_NAMES = {v: k for k, v in vars(_OPS).items() if not k.startswith("_")}
logger = logging.getLogger(__name__)
# in-place writers -> the inputs they may share; kernels that leave the bytes as they are
WRITERS = {_OPS.ADD: (0, 1), _OPS.SUB: (0, 1), _OPS.MUL: (0, 1), _OPS.DIV: (0, 1),
           _OPS.SOFTMAX: (0,)}
UNMODIFIED = frozenset({_OPS.RESHAPE, _OPS.SQUEEZE, _OPS.EXPAND_DIMS, _OPS.BITCAST})
ELEMENTWISE = frozenset({_OPS.ADD, _OPS.SUB, _OPS.MUL, _OPS.DIV})
_SCALAR_BYTES = 4   # the planner never shares a tensor this small


def _ints(values) -> list[int]:
    return [int(v) for v in values] if values is not None else []


def _bytes(tensor: schema.TensorT) -> int:
    """The tensor's bytes as the planner counts them (its static shape)."""
    try:
        itemsize = np.dtype(model_file.type_name(tensor.type).lower()).itemsize
    except TypeError:   # RESOURCE, VARIANT, STRING: never shared
        return 0
    return int(np.prod(_ints(tensor.shape), dtype=np.int64)) * itemsize


@dataclasses.dataclass(frozen=True)
class Hazard:
    """Operator ``op`` (an index) writes ``output`` into the buffer of class ``root`` through
    its input ``shared``, while ``live`` of that class is read after it; the last read of a
    tensor of the class live at ``op`` is by operator ``until``."""
    op: int
    shared: int
    output: int
    root: int
    live: int
    until: int


def plan(model: schema.ModelT, sg: schema.SubGraphT) -> tuple[dict[int, int], list[tuple]]:
    """The planner's sharing (module docstring): output -> class root, and each in-place
    write as (op index, shared input, output)."""
    # the subgraph's inputs are never shared; constants live in the file and variable
    # tensors in the persistent arena, so neither is either
    unshareable = {t for t, tensor in enumerate(sg.tensors) if tensor.isVariable or (
        tensor.buffer and model.buffers[tensor.buffer].data is not None
        and len(model.buffers[tensor.buffer].data))} | set(_ints(sg.inputs))
    ends = set(_ints(sg.outputs))   # never written in place of something else
    variables = [t for t, tensor in enumerate(sg.tensors) if tensor.isVariable]
    refcount = collections.Counter(_ints(sg.inputs) + _ints(sg.outputs) + variables)
    for op in sg.operators:
        refcount.update(t for t in _ints(op.inputs) if t >= 0)
    root: dict[int, int] = {}
    writes = []
    for k, op in enumerate(sg.operators):
        outputs, inputs = _ints(op.outputs), _ints(op.inputs)
        kind = builtin(model, op)
        changed = kind in WRITERS
        if not outputs or not (changed or kind in UNMODIFIED):
            continue
        out = outputs[0]
        shareable = WRITERS[kind] if changed else (0,)
        chosen = None
        for position in shareable:
            if position >= len(inputs) or inputs[position] < 0:
                continue
            x = inputs[position]
            if x in unshareable or out in ends:
                continue
            if sg.tensors[x].type == schema.TensorType.RESOURCE:
                continue
            if changed and (_bytes(sg.tensors[x]) != _bytes(sg.tensors[out])
                            or _bytes(sg.tensors[x]) <= _SCALAR_BYTES or refcount[x] > 1):
                continue
            chosen = x
            break
        if chosen is None:
            continue
        r = root.get(chosen, chosen)
        if changed and refcount[r] > 1:
            continue
        root[out] = r
        if changed:
            writes.append((k, chosen, out))
    return root, writes


def hazards(model: schema.ModelT, sg: schema.SubGraphT) -> list[Hazard]:
    """In-place writes over a class that holds a tensor read after the write."""
    root, writes = plan(model, sg)
    last_read: dict[int, int] = {}
    written: dict[int, int] = {}
    for k, op in enumerate(sg.operators):
        for t in _ints(op.inputs):
            last_read[t] = k
        for t in _ints(op.outputs):
            written.setdefault(t, k)
    for t in _ints(sg.outputs):
        last_read[t] = len(sg.operators)
    members: dict[int, list[int]] = {}
    for t, r in root.items():
        members.setdefault(r, [r]).append(t)
    found = []
    for k, x, out in writes:
        r = root[out]
        live = [t for t in members[r]
                if t not in (x, out) and written.get(t, -1) < k < last_read.get(t, -1)]
        if live:
            found.append(Hazard(k, x, out, r, live[0], max(last_read[t] for t in live)))
    return found


@dataclasses.dataclass
class _Graph:
    model: schema.ModelT
    sg: schema.SubGraphT

    def producer(self, t: int) -> int | None:
        return next((k for k, op in enumerate(self.sg.operators) if t in _ints(op.outputs)),
                    None)


class _HazardRule(Rule):
    """Anchored at the hazards, in operator order; one an earlier rewrite removed (or moved)
    is passed over."""

    def anchors(self, g: _Graph) -> list[Hazard]:
        return hazards(g.model, g.sg)

    def alive(self, g: _Graph, hazard: Hazard) -> bool:
        return hazard in hazards(g.model, g.sg)


class Defer(_HazardRule):
    """The writer moves to just after the last read of the class's live tensors (module
    docstring)."""

    name = "defer"

    def check(self, g: _Graph, hazard: Hazard) -> str | None:
        outputs = set(_ints(g.sg.operators[hazard.op].outputs))
        between = g.sg.operators[hazard.op + 1:hazard.until + 1]
        if any(outputs & set(_ints(op.inputs)) for op in between):
            return "the writer's output is read before the live tensor's last read"
        return None

    def rewrite(self, g: _Graph, hazard: Hazard) -> str:
        ops = g.sg.operators
        writer = ops.pop(hazard.op)
        ops.insert(hazard.until, writer)   # right after the op that was at ``until``
        return (f"op {hazard.op} {_OP_NAMES.get(builtin(g.model, writer))} "
                f"after op {hazard.until}")


class CommuteReshape(_HazardRule):
    """``OP(RESHAPE(y), s..) -> RESHAPE(OP(y, s..))`` at a hazard (module docstring)."""

    name = "commute"

    def match(self, g: _Graph, hazard: Hazard):
        k = g.producer(hazard.shared)
        return (hazard, k) if k is not None else None

    def check(self, g: _Graph, m) -> str | None:
        hazard, k = m
        writer, reshape = g.sg.operators[hazard.op], g.sg.operators[k]
        if builtin(g.model, reshape) != _OPS.RESHAPE:
            return "the shared input is not a RESHAPE's output"
        kind = builtin(g.model, writer)
        if kind not in ELEMENTWISE:
            return "the writer is not an elementwise binary op"
        others = [t for t in _ints(writer.inputs) if t != hazard.shared]
        if len(others) != 1 or _ints(writer.inputs).count(hazard.shared) != 1:
            return "the writer reads the RESHAPE's output twice"
        other = g.sg.tensors[others[0]]
        source = g.sg.tensors[_ints(reshape.inputs)[0]]
        if int(np.prod(_ints(other.shape))) != 1 or len(_ints(other.shape)) > len(
                _ints(source.shape)):
            return "the writer's other operand has more than one element"
        if other.type != source.type:
            return "operand types differ"
        return None

    def rewrite(self, g: _Graph, m) -> str:
        hazard, k = m
        writer, reshape = g.sg.operators[hazard.op], g.sg.operators[k]
        y = _ints(reshape.inputs)[0]
        source, out = g.sg.tensors[y], g.sg.tensors[hazard.output]
        unshaped = schema.TensorT()
        unshaped.shape, unshaped.type = list(_ints(source.shape)), out.type
        unshaped.name = (out.name or b"") + b"/unreshaped"
        unshaped.buffer = 0
        g.sg.tensors.append(unshaped)
        z = len(g.sg.tensors) - 1
        writer.inputs = [y if t == hazard.shared else t for t in _ints(writer.inputs)]
        writer.outputs = [z]
        reshape.outputs = [hazard.output]
        reshape.inputs = [z] + _ints(reshape.inputs)[1:]
        ops = g.sg.operators
        ops.remove(reshape)
        ops.insert(ops.index(writer) + 1, reshape)
        return f"op {hazard.op} {_OP_NAMES.get(builtin(g.model, writer))}"


RULES = (Defer(), CommuteReshape())


def make_safe(model: schema.ModelT) -> dict[int, dict]:
    """Rewrites the hazards of every subgraph of ``model`` in place, each by the first of
    :data:`RULES` that takes it (sweeps repeat while one fires: a rewrite changes the plan);
    returns, per subgraph that had any, the hazards found, the rewrites per rule, the hazards
    left and why the rules declined them."""
    stats = {}
    for index, sg in enumerate(model.subgraphs):
        g = _Graph(model, sg)
        before = len(hazards(model, sg))
        fired: dict[str, list] = {rule.name: [] for rule in RULES}
        declined: list[str] = []
        for _ in range(len(sg.operators) if before else 0):
            outcomes = [(rule, apply_rule(g, rule)) for rule in RULES]
            for rule, outcome in outcomes:
                fired[rule.name] += [detail for _, detail in outcome.fired]
            if not any(outcome.fired for _, outcome in outcomes):
                declined = [f"{rule.name}: {reason}" for rule, outcome in outcomes
                            for _, reason in outcome.declined]
                break
        if before:
            left = len(hazards(model, sg))
            stats[index] = {"hazards": before, **fired, "left": left,
                            "declined": declined if left else []}
            if left:
                logger.warning("subgraph %d keeps %d operator(s) that TFLite's in-place "
                               "buffer sharing lets write over a tensor still read (%s): it "
                               "may train wrong on tflite-runtime 2.14 and on ai-edge-litert "
                               "without a delegate (tfpock/tflite/inplace.py)", index, left,
                               "; ".join(sorted(set(declined))))
    return stats


def inplace(content: bytes) -> tuple[bytes, dict[int, dict]]:
    """:func:`make_safe` on any .tflite file; returns the new file (``content`` itself when
    no subgraph had a hazard) and the stats."""
    model = schema.ModelT.InitFromPackedBuf(content, 0)
    stats = make_safe(model)
    changed = any(s["hazards"] > s["left"] for s in stats.values())
    return (pack(model) if changed else content), stats


class Inplace(Pass):
    """:func:`make_safe` on the file (every subgraph, whatever the signature); stats: per
    subgraph with hazards, what was found, rewritten and left."""

    name = "inplace"

    def run(self, ir: TfliteFile) -> PassResult:
        model = ir.unpack()
        stats = make_safe(model)
        changed = any(s["hazards"] > s["left"] for s in stats.values())
        if changed:
            ir.update(model)
        return PassResult(changed, {"subgraphs": stats})

    def postcondition(self, ir: TfliteFile) -> None:
        """No hazard is left that one of :data:`RULES` would have taken."""
        model = ir.unpack()
        for sg in model.subgraphs:
            g = _Graph(model, sg)
            takeable = [h for h in hazards(model, sg) for rule in RULES
                        if (m := rule.match(g, h)) is not None and rule.check(g, m) is None]
            if takeable:
                raise AssertionError(f"inplace: hazards left that commute takes: {takeable}")
