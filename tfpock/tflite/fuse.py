"""Fuse: local rewrites of the exported .tflite file that fold an op into its producer.

Why: every operator of a training step is a kernel launch and, for an activation-sized
output, a buffer the arena must hold until its reader has run. Where TFLite lets the producer
do the work itself (a fused activation clamp, a bias) or where two ops cancel, the step
loses an op and often an activation-sized tensor.

Each rule is a pattern around an anchor op, a check that returns why it declines (``None``:
it applies) and a rewrite; :data:`RULES` is the table, and each application is counted:

``activation``  ``P(..) -> RELU | RELU6 | RELU_N1_TO_1``, the intermediate read only by the
    activation and not a subgraph output, P one of ADD, SUB, MUL, DIV, CONV_2D,
    DEPTHWISE_CONV_2D, FULLY_CONNECTED, TRANSPOSE_CONV, AVERAGE_POOL_2D, MAX_POOL_2D with
    ``fusedActivationFunction == NONE`` -> P with that fused activation. ``relu(v)`` is the
    same clamp either way, so results are bit-identical. Not TANH, although
    ``ActivationFunctionType`` has it, and not CONCATENATION: measured on ai-edge-litert 2.3,
    every one of those kernels ignores a fused TANH (the kernels only clamp), FULLY_CONNECTED
    rejects it, and CONCATENATION rejects any fused activation without XNNPACK and silently
    ignores it with XNNPACK.
``bias``  ``CONV_2D | DEPTHWISE_CONV_2D | FULLY_CONNECTED`` with no bias (``-1``) or an
    all-zero constant one, followed by ``ADD(out, c)``, ``c`` a float constant of
    ``out_channels`` values (shape ``[C]`` or ``[1, .., 1, C]``) -> the producer with bias
    ``c`` and the ADD's fused activation. ``conv(x, W) + c`` is exact math, but the kernel
    starts its accumulator at the bias, so float rounding may differ in the last bit.
``select_mask``  ``MUL(g, CAST(m))``, ``m`` bool, the float mask read only by this MUL ->
    ``SELECT_V2(m, g, 0.0)``: how tfpock's lowered ReluGrad / Relu6Grad comes out of the
    converter (GREATER, or MINIMUM + GREATER for ``min(f, 6 - f) > 0``, -> CAST -> MUL). ``g * 0``
    is ``-0`` (or NaN for an infinite ``g``) where SELECT_V2 gives ``+0``, as TF's own ReluGrad (a
    select) does. **Off by default** (below).
``transpose_pair``  ``TRANSPOSE(TRANSPOSE(x, p1), p2)``, the first output read only by the
    second -> ``TRANSPOSE(x, p1[p2])``, or the readers of the second rewired to ``x`` when
    ``p1[p2]`` is the identity (never when the second's output is a subgraph output).

Rules run in table order, each sweeping the subgraph once in operator order (the rule driver
of :mod:`graph_passes.rewrite`); a rewrite keeps the op that stays at its position, so the
order stays a valid schedule. Tensors of removed ops stay in the tensor list, unreferenced:
the interpreter allocates only what operators and signatures use; cleanup is a separate
concern. Kill switch: ``Fuse(rules=())`` (or ``fuse(..., rules=())``) leaves the file as it is;
``rules=`` names any subset of :data:`RULES` (default :data:`DEFAULT_RULES`).

Decisions, measured by ``python -m bench.studies.fuse_rules --rules all --steps 3 --time 30``
(``bench/results/2026-12-03-x86_64-2core-fuse-rules.md``: the suite's MobileNetV2 and
ResNet-18-style, full and last:2, batch 8):

* The default rules fire nowhere there: the converter already fuses every activation and
  bias it can and composes transposes itself (``bias`` declines the residual ADDs). They serve
  files other tools wrote or rewrote; the tests make their patterns by splitting a converted
  op in two.
* ``select_mask`` replaces every lowered ReluGrad / Relu6Grad in ``train`` with a bit-identical
  state, and lowers full fine-tuning's timeline peak by a sixth (the float mask lived from the
  forward to the backward MUL; the bool mask is a quarter of it). It is opt-in because
  TFLite's broadcasting SELECT_V2 is slower than CAST + MUL: the step is 0-7% slower there.
* ``bias`` is exact math, but the kernel starts its accumulator at the bias, so a result may
  differ from the separate ADD in the last bit or two; ``activation`` and ``transpose_pair``
  are bit-identical.
"""
from __future__ import annotations

import collections
from typing import Iterable

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from graph_passes.pass_base import Pass, PassResult, Sequential
from graph_passes.rewrite import Rule, apply_rule
from tfpock.tflite.flatbuffer import add_constant, builtin, constant_value, opcode_index
from tfpock.tflite.ir import TfliteFile, run_per_signature

_OPS = schema.BuiltinOperator
_ACT = schema.ActivationFunctionType
_FLOAT32 = schema.TensorType.FLOAT32
_OP_NAMES = {v: k for k, v in vars(_OPS).items() if not k.startswith("_")}

# ops whose float kernels apply a fused RELU / RELU6 / RELU_N1_TO_1 (checked by the tests)
FUSES_ACTIVATION = frozenset({
    _OPS.ADD, _OPS.SUB, _OPS.MUL, _OPS.DIV, _OPS.CONV_2D, _OPS.DEPTHWISE_CONV_2D,
    _OPS.FULLY_CONNECTED, _OPS.TRANSPOSE_CONV, _OPS.AVERAGE_POOL_2D, _OPS.MAX_POOL_2D})
_ACTIVATIONS = {_OPS.RELU: _ACT.RELU, _OPS.RELU6: _ACT.RELU6,
                _OPS.RELU_N1_TO_1: _ACT.RELU_N1_TO_1, _OPS.TANH: _ACT.TANH}
_ACTIVATION_DECLINES = {
    _ACT.TANH: "TANH: TFLite kernels only clamp, a fused TANH is ignored or rejected"}
_PRODUCER_DECLINES = {
    _OPS.CONCATENATION: "CONCATENATION: its kernels reject or ignore a fused activation"}
_BIASED = frozenset({_OPS.CONV_2D, _OPS.DEPTHWISE_CONV_2D, _OPS.FULLY_CONNECTED})


def _ints(values) -> list[int]:
    return [int(v) for v in values] if values is not None else []


class _Subgraph:
    """One subgraph with its producer and reader maps (refreshed after each rewrite)."""

    def __init__(self, model: schema.ModelT, sg: schema.SubGraphT, pinned: set[int]):
        self.model, self.sg = model, sg
        self.pinned = pinned | set(_ints(sg.outputs))   # tensors that must keep existing
        self._zero: int | None = None
        self.refresh()

    def refresh(self) -> None:
        self.alive = {id(op) for op in self.sg.operators}
        self.producer: dict[int, schema.OperatorT] = {}
        self.readers: dict[int, list[schema.OperatorT]] = collections.defaultdict(list)
        for op in self.sg.operators:
            for t in _ints(op.outputs):
                self.producer[t] = op
            for t in set(_ints(op.inputs)):
                if t >= 0:
                    self.readers[t].append(op)

    def kind(self, op: schema.OperatorT) -> int:
        return builtin(self.model, op)

    def name(self, op: schema.OperatorT) -> str:
        return _OP_NAMES.get(self.kind(op), str(self.kind(op)))

    def tensor(self, t: int) -> schema.TensorT:
        return self.sg.tensors[t]

    def producer_of(self, op: schema.OperatorT, position: int) -> schema.OperatorT | None:
        inputs = _ints(op.inputs)
        return self.producer.get(inputs[position]) if position < len(inputs) else None

    def only_reader(self, t: int, op: schema.OperatorT) -> str | None:
        """Why ``t`` cannot disappear into ``op`` (None: ``op`` is its only use)."""
        if t in self.pinned:
            return "intermediate is a subgraph output"
        if self.readers[t] != [op]:
            return "intermediate has other readers"
        return None

    def constant(self, t: int) -> np.ndarray | None:
        return constant_value(self.model, self.tensor(t))

    def add_constant(self, value: np.ndarray, name: str, buffer: int | None = None) -> int:
        return add_constant(self.model, self.sg, value, name, buffer)

    def zero(self) -> int:
        """A float scalar 0.0 constant, one per subgraph."""
        if self._zero is None:
            self._zero = self.add_constant(np.zeros((), np.float32), "tfpock_fuse/zero")
        return self._zero

    def remove(self, *ops: schema.OperatorT) -> None:
        gone = {id(op) for op in ops}
        self.sg.operators = [op for op in self.sg.operators if id(op) not in gone]
        self.refresh()

    def rewire(self, old: int, new: int) -> None:
        """Every reader of tensor ``old`` reads ``new`` instead."""
        for op in self.readers[old]:
            op.inputs = [new if t == old else t for t in _ints(op.inputs)]
        self.refresh()


class OperatorRule(Rule):
    """A fuse rule (:class:`graph_passes.rewrite.Rule`) anchored at the operators whose
    builtin is one of ``kinds``, swept in operator order."""

    kinds: frozenset[int] = frozenset()

    def anchors(self, g: "_Subgraph") -> list[schema.OperatorT]:
        return list(g.sg.operators)

    def alive(self, g: "_Subgraph", op: schema.OperatorT) -> bool:
        return id(op) in g.alive and g.kind(op) in self.kinds


def _float32(g: _Subgraph, t: int) -> str | None:
    return None if g.tensor(t).type == _FLOAT32 else "not float32"


def _fused(op: schema.OperatorT) -> int | None:
    """The op's fused activation (None: its options are missing, so there is nothing to set)."""
    return getattr(op.builtinOptions, "fusedActivationFunction", None)


# ---- activation into producer --------------------------------------------------------------
class ActivationRule(OperatorRule):
    """``P(x) -> RELU | RELU6 | RELU_N1_TO_1`` -> P with that fused activation."""

    name = "activation"
    kinds = frozenset(_ACTIVATIONS)

    def match(self, g, act):
        producer = g.producer_of(act, 0)
        return (producer, act) if producer is not None else None


    def check(self, g, m):
        producer, act = m
        kind, code = g.kind(producer), _ACTIVATIONS[g.kind(act)]
        if kind not in FUSES_ACTIVATION:
            return _PRODUCER_DECLINES.get(kind, f"{g.name(producer)} has no fused activation")
        if code in _ACTIVATION_DECLINES:
            return _ACTIVATION_DECLINES[code]
        if _fused(producer) != _ACT.NONE:
            return "producer already has a fused activation or no options"
        out = _ints(producer.outputs)[0]
        return _float32(g, out) or g.only_reader(out, act)


    def rewrite(self, g, m):
        producer, act = m
        producer.builtinOptions.fusedActivationFunction = _ACTIVATIONS[g.kind(act)]
        producer.outputs = _ints(act.outputs)
        g.remove(act)


# ---- bias into producer --------------------------------------------------------------------
class BiasRule(OperatorRule):
    """``ADD(conv | depthwise | fully_connected, c)`` -> the producer with bias ``c``."""

    name = "bias"
    kinds = frozenset({_OPS.ADD})

    def match(self, g, add):
        for position in (0, 1):
            producer = g.producer_of(add, position)
            if producer is not None and g.kind(producer) in _BIASED:
                return producer, add, _ints(add.inputs)[1 - position]
        return None


    def check(self, g, m):
        producer, add, added = m
        out = _ints(producer.outputs)[0]
        if _float32(g, out):
            return "not float32"
        value = g.constant(added)
        if value is None:
            return "added tensor is not a constant"
        shape = _ints(g.tensor(out).shape)
        if not 1 <= value.ndim <= len(shape) or not value.size == value.shape[-1] == shape[-1]:
            return "added constant is not one value per output channel"
        if _fused(producer) != _ACT.NONE:
            return "producer has a fused activation before the add, or no options"
        inputs = _ints(producer.inputs)
        if len(inputs) > 2 and inputs[2] >= 0:
            bias = g.constant(inputs[2])
            if bias is None:
                return "producer's bias is not a constant"
            if np.any(bias != 0):
                return "producer already has a nonzero bias"
        return g.only_reader(out, add)


    def rewrite(self, g, m):
        producer, add, added = m
        tensor = g.tensor(added)
        bias = added
        if len(_ints(tensor.shape)) != 1:  # [1, .., 1, C]: a [C] view of the same buffer
            bias = g.add_constant(g.constant(added).reshape(-1), tensor.name.decode() + "/bias",
                                  buffer=tensor.buffer)
        producer.inputs = _ints(producer.inputs)[:2] + [bias]
        producer.builtinOptions.fusedActivationFunction = _fused(add) or _ACT.NONE
        producer.outputs = _ints(add.outputs)
        g.remove(add)


# ---- MUL by a CAST bool mask -> SELECT_V2 --------------------------------------------------
class SelectMaskRule(OperatorRule):
    """``MUL(g, CAST(m))`` -> ``SELECT_V2(m, g, 0.0)``."""

    name = "select_mask"
    kinds = frozenset({_OPS.MUL})

    def match(self, g, mul):
        for position in (0, 1):
            cast = g.producer_of(mul, position)
            if cast is not None and g.kind(cast) == _OPS.CAST:
                return cast, mul, _ints(mul.inputs)[1 - position]
        return None


    def check(self, g, m):
        cast, mul, other = m
        if g.tensor(_ints(cast.inputs)[0]).type != schema.TensorType.BOOL:
            return "CAST is not from bool"
        mask = _ints(cast.outputs)[0]
        if _float32(g, mask) or _float32(g, _ints(mul.outputs)[0]):
            return "not float32"
        if (_fused(mul) or _ACT.NONE) != _ACT.NONE:
            return "MUL has a fused activation"
        if other == mask:
            return "MUL squares the mask"
        return g.only_reader(mask, mul)


    def rewrite(self, g, m):
        cast, mul, other = m
        mul.opcodeIndex = opcode_index(g.model, _OPS.SELECT_V2)
        mul.builtinOptionsType = schema.BuiltinOptions.SelectV2Options
        mul.builtinOptions = schema.SelectV2OptionsT()
        mul.inputs = [_ints(cast.inputs)[0], other, g.zero()]
        g.remove(cast)


# ---- TRANSPOSE of a TRANSPOSE --------------------------------------------------------------
class TransposePairRule(OperatorRule):
    """``TRANSPOSE(TRANSPOSE(x, p1), p2)`` -> one TRANSPOSE, or none."""

    name = "transpose_pair"
    kinds = frozenset({_OPS.TRANSPOSE})

    def match(self, g, second):
        first = g.producer_of(second, 0)
        return (first, second) if first is not None and g.kind(first) == _OPS.TRANSPOSE else None


    def _composed(self, g, m) -> np.ndarray | None:
        first, second = m
        p1, p2 = (g.constant(_ints(op.inputs)[1]) for op in (first, second))
        return None if p1 is None or p2 is None else p1.astype(np.int32)[p2]


    def check(self, g, m):
        first, second = m
        perm = self._composed(g, m)
        if perm is None:
            return "permutation is not a constant"
        reason = g.only_reader(_ints(first.outputs)[0], second)
        if reason:
            return reason
        if np.array_equal(perm, np.arange(perm.size)) and _ints(second.outputs)[0] in g.pinned:
            return "identity, and the result is a subgraph output"
        return None


    def rewrite(self, g, m):
        first, second = m
        source, perm = _ints(first.inputs)[0], self._composed(g, m)
        g.remove(first)
        if np.array_equal(perm, np.arange(perm.size)):
            g.remove(second)
            g.rewire(_ints(second.outputs)[0], source)
        else:
            second.inputs = [source, g.add_constant(perm, "tfpock_fuse/perm")]


RULES: dict[str, OperatorRule] = {rule.name: rule for rule in [
    TransposePairRule(), SelectMaskRule(), BiasRule(), ActivationRule()]}
DEFAULT_RULES = ("transpose_pair", "bias", "activation")


class Fuse(Pass):
    """Applies ``rules`` (names in :data:`RULES`; ``()`` is the kill switch) to the file's
    subgraph, each rule in one sweep in table order; stats: per rule how often it fired and
    why it declined."""

    name = "fuse"

    def __init__(self, rules: Iterable[str] = DEFAULT_RULES):
        rules = list(rules)
        if set(rules) - set(RULES):
            raise ValueError(f"fuse: unknown rules {sorted(set(rules) - set(RULES))}; the "
                             f"rules are {list(RULES)}")
        self.rules = [RULES[name] for name in rules]

    def run(self, ir: TfliteFile) -> PassResult:
        model = ir.unpack()
        index = ir.subgraph_index(model)
        pinned = {int(t.tensorIndex) for s in model.signatureDefs
                  if s.subgraphIndex == index for t in s.outputs or []}
        g = _Subgraph(model, model.subgraphs[index], pinned)
        per_rule = {rule.name: apply_rule(g, rule).counts() for rule in self.rules}
        changed = any(r["fired"] for r in per_rule.values())
        if changed:
            ir.update(model)
        return PassResult(changed, {"rules": per_rule})


def fuse(content: bytes, signatures: list[str],
         rules: Iterable[str] = DEFAULT_RULES) -> tuple[bytes, PassResult]:
    """:class:`Fuse` on the subgraphs of ``signatures`` of any .tflite file; returns the new
    file (``content`` itself when nothing fired) and, per signature, ops and peak live
    activation bytes before and after and, per rule, how often it fired and why it declined.

    Example:
        >>> content, result = fuse(open("model.tflite", "rb").read(), ["train", "infer"])
        >>> result.stats["train"]["rules"]["bias"]          # MobileNetV2, full
        {'fired': 0, 'declined': {'added tensor is not a constant': 10}}
    """
    content, records = run_per_signature(Sequential([Fuse(rules)]), content, signatures)
    stats = {name: {"ops_before": r.ops_before, "ops_after": r.ops_after,
                    "peak_bytes_before": r.peak_live_before,
                    "peak_bytes_after": r.peak_live_after, "rules": r.stats["rules"]}
             for name, [r] in records.items()}
    return content, PassResult(any(r.modified for [r] in records.values()), stats)
