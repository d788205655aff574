"""Reorder: schedule a TFLite subgraph's operators to lower its peak of live activations.

TFLite runs a subgraph's operators in file order and its arena planner gives each activation
tensor memory from its producer to its last reader, so operator order decides peak memory.
The converter emits a training step as the trace wrote it: forward, all gradients, then every
optimizer update and ASSIGN_VARIABLE at the end, which keeps every weight gradient and every
new weight alive until the last operator. PockEngine instead applies each update as soon as
its gradient exists, so the gradient buffer dies at once.

This pass is a list scheduler over the operator dependency graph:

* data edges: an operator follows the producers of its non-constant inputs;
* state edges: operators touching the same resource variable (VAR_HANDLE identity
  ``container/shared_name``) keep their original relative order, so every read of a weight
  precedes its assignment; CALL_ONCE (variable initialisation) stays first; operators without
  outputs other than ASSIGN_VARIABLE keep their place relative to each other;
* choice: among ready operators, ASSIGN_VARIABLE first (it frees the new value), then the one
  whose outputs add the fewest bytes net of the inputs it frees, ties by original position.

A new order is kept only where it lowers the subgraph's peak. Only the order changes: every
operator computes exactly what it did, so results are bit-identical (tests check this on the
interpreter). Works on the flatbuffer object API of the schema that ships with ai-edge-litert.

With the non-finite guard (``nonfinite="skip"``, the default; ``tfpock.tracing.
guard_nonfinite``) every update waits for the guard's verdict on the whole step, so there is no
update to apply early and reorder usually keeps the converter's order; it pays with
``nonfinite="apply"``.

Kept opt-in (``passes={"reorder": True}``): it lowers the timeline peak, but under the default
XNNPACK delegate the allocation does not follow, because the delegate's clustering regroups
operators into partitions and plans their memory itself. ``python -m bench.studies.memory``
measures it (``bench/results/2026-11-25-x86_64-2core-memory.md``: MobileNetV2 full batch 8,
timeline -33%, arena with XNNPACK -0%, without clustering -26%; ResNet-18-style -1%). It
becomes a default once it plans with the delegate's partitions.
"""
from __future__ import annotations

import dataclasses
import heapq

from ai_edge_litert import schema_py_generated as schema

from graph_passes.pass_base import Pass, PassResult, Sequential
from tfpock.tflite import memory, model_file  # the memory analysis any pass can call
from tfpock.tflite.flatbuffer import builtin as _builtin, pack
from tfpock.tflite.ir import TfliteFile, run_per_signature

_OPS = schema.BuiltinOperator
# Schedules tried, the lowest peak kept: a greedy list scheduler can lose to the converter's
# order on one graph and win on the next, so both it and a conservative one are tried.
POLICIES = ("greedy", "eager_free")


@dataclasses.dataclass
class _Subgraph:
    """What scheduling needs of one subgraph."""
    sizes: dict[int, int]            # activation tensor -> bytes (constants excluded)
    producer: dict[int, int]         # tensor -> op index
    consumers: dict[int, list[int]]  # tensor -> op indices
    deps: list[set[int]]             # op -> ops it must follow
    assigns: set[int]
    pinned_outputs: set[int]         # subgraph outputs: alive to the end


def _analyse(model: schema.ModelT, sg: schema.SubGraphT) -> _Subgraph:
    def is_constant(t):
        buffer = model.buffers[sg.tensors[t].buffer] if sg.tensors[t].buffer else None
        return buffer is not None and (buffer.data is not None and len(buffer.data) > 0)

    sizes, producer, consumers = {}, {}, {}
    for t, tensor in enumerate(sg.tensors):
        size = memory.activation_bytes(tensor.shape if tensor.shape is not None else [],
                                       model_file.type_name(tensor.type))
        if size and not is_constant(t):
            sizes[t] = size
    deps: list[set[int]] = [set() for _ in sg.operators]
    handle_var: dict[int, bytes] = {}   # resource tensor -> variable identity
    last_touch: dict[bytes, int] = {}
    barrier_ops: list[int] = []
    assigns = set()
    first_ops = []
    for i, op in enumerate(sg.operators):
        kind = _builtin(model, op)
        outputs = [t for t in (op.outputs if op.outputs is not None else []) if t >= 0]
        inputs = [t for t in (op.inputs if op.inputs is not None else []) if t >= 0]
        if kind == _OPS.CALL_ONCE:
            first_ops.append(i)
        elif first_ops:
            deps[i].update(first_ops)
        if kind == _OPS.VAR_HANDLE:
            options = op.builtinOptions
            handle_var[outputs[0]] = (options.container or b"") + b"/" + (options.sharedName or b"")
        for t in inputs:
            if t in producer:
                deps[i].add(producer[t])
            consumers.setdefault(t, []).append(i)
            if t in handle_var:  # a variable access: keep order among its accesses
                var = handle_var[t]
                if var in last_touch:
                    deps[i].add(last_touch[var])
                last_touch[var] = i
        if kind == _OPS.ASSIGN_VARIABLE:
            assigns.add(i)
        elif not outputs and kind != _OPS.CALL_ONCE:
            if barrier_ops:
                deps[i].add(barrier_ops[-1])
            barrier_ops.append(i)
        for t in outputs:
            producer[t] = i
    pinned = set(int(t) for t in (sg.outputs if sg.outputs is not None else []))
    return _Subgraph(sizes, producer, consumers, deps, assigns, pinned)


def schedule(model: schema.ModelT, sg: schema.SubGraphT, policy: str = "greedy") -> list[int]:
    """A new operator order for ``sg`` (a permutation of its indices). ``policy`` picks
    among ready operators: "greedy" the one that adds the fewest bytes; "eager_free" keeps
    the file's order except that an operator freeing at least what it allocates runs as soon
    as it is ready (updates right after their gradients, PockEngine's order)."""
    info = _analyse(model, sg)
    n = len(sg.operators)
    waiting = [len(d) for d in info.deps]
    users: list[list[int]] = [[] for _ in range(n)]
    for i, d in enumerate(info.deps):
        for j in d:
            users[j].append(i)
    uses_left = {t: len(set(c)) for t, c in info.consumers.items()}

    def score(i):
        op = sg.operators[i]
        outs = [t for t in (op.outputs if op.outputs is not None else []) if t >= 0]
        ins = {t for t in (op.inputs if op.inputs is not None else []) if t >= 0}
        grow = sum(info.sizes.get(t, 0) for t in outs)
        freed = sum(info.sizes.get(t, 0) for t in ins
                    if uses_left.get(t) == 1 and t not in info.pinned_outputs)
        if policy == "eager_free":
            return (0 if i in info.assigns else (1 if grow <= freed else 2), 0, i)
        return (0 if i in info.assigns else 1, grow - freed, i)

    ready = [score(i) for i in range(n) if waiting[i] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, _, i = heapq.heappop(ready)
        order.append(i)
        op = sg.operators[i]
        for t in set(t for t in (op.inputs if op.inputs is not None else []) if t >= 0):
            if t in uses_left:
                uses_left[t] -= 1
        for j in users[i]:
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, score(j))
        # scores of ready ops may change as inputs get freed; refresh the cheap way
        ready = [score(e[2]) for e in ready]
        heapq.heapify(ready)
    if len(order) != n:
        raise ValueError("operator dependencies have a cycle; the subgraph is malformed")
    return order


class Reorder(Pass):
    """Reschedules the file's subgraph (module docstring); stats: its peak live activation
    bytes before and after and, when a new order is kept, the policy that made it."""

    name = "reorder"

    def run(self, ir: TfliteFile) -> PassResult:
        self._before = _operators(ir)   # for the postcondition (debug switch)
        model = ir.unpack()
        sg = model.subgraphs[ir.subgraph_index(model)]
        peak = memory.timeline(ir.parsed, ir.signature_key).peak_bytes
        stats = {"peak_bytes_before": peak, "peak_bytes_after": peak}
        original = best_ops = sg.operators
        best_peak, best_policy = peak, None  # a new order is kept only if it lowers the peak
        for policy in POLICIES:
            order = schedule(model, sg, policy)
            if order == list(range(len(order))):
                continue
            sg.operators = [original[i] for i in order]
            candidate = memory.timeline(model_file.read(pack(model)),
                                        ir.signature_key).peak_bytes
            if candidate < best_peak:
                best_peak, best_policy, best_ops = candidate, policy, sg.operators
        sg.operators = best_ops
        if best_policy is None:
            return PassResult(False, stats)
        stats.update(peak_bytes_after=best_peak, policy=best_policy)
        ir.update(model)
        return PassResult(True, stats)

    def postcondition(self, ir: TfliteFile) -> None:
        """Only the order changed: the same operators (kind, inputs, outputs) as before the
        run; the pipeline's signature check proves the new order is a valid schedule."""
        if _operators(ir) != self._before:
            raise AssertionError("reorder changed operators, not only their order")


def _operators(ir: TfliteFile) -> list[tuple]:
    return sorted((op.name, op.inputs, op.outputs)
                  for op in ir.parsed.subgraph(ir.signature_key).operators)


def reorder(content: bytes, signatures: list[str]) -> tuple[bytes, PassResult]:
    """:class:`Reorder` on the subgraphs of ``signatures`` of any .tflite file; returns the
    new file (``content`` itself when no order was kept) and, per signature, the stats."""
    content, records = run_per_signature(Sequential([Reorder()]), content, signatures)
    return content, PassResult(any(r.modified for [r] in records.values()),
                               {name: r.stats for name, [r] in records.items()})
