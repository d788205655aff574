"""The pass contract and the pipeline that runs passes in one visible list.

Every pass takes the :class:`TrainingGraph` it is given, edits it **in place**, and returns a
:class:`PassResult` saying whether it changed anything and what (``stats``, shown by
``Program.report()``). The pipeline copies its input once, so the caller's graph is never
touched, runs the passes in order, and, with ``check_invariants=True`` (the debug switch),
checks after every pass that the signature kept its inputs and outputs, that each output
still exists, and the pass's own ``postcondition`` (the lower pass: no op it should have
lowered is left). Each record carries the graph's peak of live activation bytes before and
after its pass (:func:`graph_passes.liveness.peak_live_bytes`, once per pass boundary): the
before/after memory figure each pass owes the report. An exception inside a pass is re-raised
as :class:`PassError` naming the pass and the passes that ran before it.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Sequence

from graph_passes.ir import Graph, parse_ref
from graph_passes.liveness import peak_live_bytes

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class PassResult:
    modified: bool
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class PassRecord:
    """What one pass did: shown per pass by ``Program.report()``."""
    name: str
    ops_before: int
    ops_after: int
    modified: bool
    stats: dict[str, Any]
    # Peak live activation bytes before and after (None where not measured): the GraphDef
    # liveness estimate for graph passes, the file's timeline for the export reorder pass.
    peak_live_before: int | None = None
    peak_live_after: int | None = None


class PassError(RuntimeError):
    def __init__(self, pass_name: str, ran_before: Sequence[str], cause: BaseException):
        before = ", ".join(ran_before) or "none"
        super().__init__(f"pass {pass_name!r} failed (passes run before it: {before}): {cause}")
        self.pass_name = pass_name
        self.cause = cause


class Pass:
    """Base class of a pass: ``name`` for reports, ``run`` does the work in place."""

    name: str = ""

    def run(self, graph: Graph) -> PassResult:
        raise NotImplementedError

    def postcondition(self, graph: Graph) -> None:
        """Raises AssertionError if the graph is not what this pass promises (debug switch)."""

    def __call__(self, graph: Graph) -> PassResult:
        return self.run(graph)


def check_signature(graph: Graph, inputs: dict[str, str], output_keys: Sequence[str]) -> None:
    """Invariant: the signature kept its inputs and outputs, and every output is produced."""
    if graph.inputs != inputs:
        raise AssertionError(f"signature inputs changed: {inputs} -> {graph.inputs}")
    if sorted(graph.outputs) != sorted(output_keys):
        raise AssertionError(f"signature outputs changed: {sorted(output_keys)} -> "
                             f"{sorted(graph.outputs)}")
    for key, ref in graph.outputs.items():
        if parse_ref(ref)[0] not in graph.nodes:
            raise AssertionError(f"output {key!r} reads {ref}, which no node produces")
    for node in graph.nodes.values():
        for ref in node.input:
            if parse_ref(ref)[0] not in graph.nodes:
                raise AssertionError(f"node {node.name} reads {ref}, which no node produces")


class Sequential:
    """Runs passes in order on a copy of the graph and records what each did."""

    def __init__(self, passes: Sequence[Pass], check_invariants: bool = False,
                 extra_checks: Sequence[Callable[[Graph], None]] = ()):
        self.passes = list(passes)
        self.check_invariants = check_invariants
        self.extra_checks = list(extra_checks)

    def __call__(self, graph: Graph) -> tuple[Graph, list[PassRecord]]:
        graph = graph.copy()
        inputs, output_keys = dict(graph.inputs), list(graph.outputs)
        records: list[PassRecord] = []
        peak = peak_live_bytes(graph).peak_bytes if self.passes else None
        for p in self.passes:
            before = len(graph.nodes)
            try:
                result = p(graph)
                if self.check_invariants:
                    check_signature(graph, inputs, output_keys)
                    p.postcondition(graph)
                    for check in self.extra_checks:
                        check(graph)
                peak_after = peak_live_bytes(graph).peak_bytes
            except PassError:
                raise
            except Exception as exc:  # re-raised with the pipeline's context
                raise PassError(p.name, [r.name for r in records], exc) from exc
            records.append(PassRecord(p.name, before, len(graph.nodes), result.modified,
                                      result.stats, peak, peak_after))
            logger.debug("pass %s: %d -> %d ops, peak live %d -> %d bytes, %s", p.name, before,
                         len(graph.nodes), peak, peak_after, result.stats)
            peak = peak_after
        return graph, records
