"""The pass contract and the pipeline that runs passes in one visible list, for either IR.

tfpock compiles in two phases, each a :class:`Sequential` of passes over its own IR: the
GraphDef of the training step (:class:`graph_passes.ir.Graph`, passes in ``graph_passes/``)
and, after conversion, the .tflite file (:class:`tfpock.tflite.ir.TfliteFile`, passes in
``tfpock/tflite/``). Both pipelines are listed in ``tfpock/pipeline.py``.

Every pass takes the IR it is given, edits it **in place**, and returns a :class:`PassResult`
saying whether it changed anything and what (``stats``, shown by ``Program.report()``). The
pipeline copies its input once, so the caller's IR is never touched, runs the passes in
order, and, with ``check_invariants=True`` (the debug switch), checks after every pass that the
signature kept its inputs and outputs and that everything read is produced
(:meth:`PassIR.check_signature`), and the pass's own ``postcondition`` (the lower pass: no op
it should have lowered is left). Each record carries the IR's peak of live activation bytes
before and after its pass (:meth:`PassIR.peak_live_bytes`, once per pass boundary): the
before/after memory figure each pass owes the report. An exception inside a pass is re-raised
as :class:`PassError` naming the pass and the passes that ran before it.

No TensorFlow here: the file phase runs where only a TFLite runtime is installed.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Generic, Protocol, Sequence, TypeVar

logger = logging.getLogger(__name__)


class PassIR(Protocol):
    """What a pipeline needs of the IR its passes edit."""

    def copy(self) -> "PassIR": ...

    def op_count(self) -> int: ...

    def peak_live_bytes(self) -> int:
        """Peak of live activation bytes in the IR's current operator order."""

    def signature(self) -> Any:
        """A snapshot of the signature, for :meth:`check_signature` after each pass."""

    def check_signature(self, signature: Any) -> None:
        """Raises AssertionError unless the signature equals ``signature`` and every tensor
        read is produced (the invariant of the debug switch)."""


IR = TypeVar("IR", bound=PassIR)


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
    # liveness estimate for graph passes, the file's timeline for file passes.
    peak_live_before: int | None = None
    peak_live_after: int | None = None


class PassError(RuntimeError):
    def __init__(self, pass_name: str, ran_before: Sequence[str], cause: BaseException):
        before = ", ".join(ran_before) or "none"
        super().__init__(f"pass {pass_name!r} failed (passes run before it: {before}): {cause}")
        self.pass_name = pass_name
        self.cause = cause


class Pass(Generic[IR]):
    """Base class of a pass: ``name`` for reports, ``run`` does the work in place."""

    name: str = ""

    def run(self, ir: IR) -> PassResult:
        raise NotImplementedError

    def postcondition(self, ir: IR) -> None:
        """Raises AssertionError if the IR is not what this pass promises (debug switch)."""

    def __call__(self, ir: IR) -> PassResult:
        return self.run(ir)


class Sequential(Generic[IR]):
    """Runs passes in order on a copy of the IR and records what each did."""

    def __init__(self, passes: Sequence[Pass[IR]], check_invariants: bool = False,
                 extra_checks: Sequence[Callable[[IR], None]] = ()):
        self.passes = list(passes)
        self.check_invariants = check_invariants
        self.extra_checks = list(extra_checks)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.passes]

    def __call__(self, ir: IR) -> tuple[IR, list[PassRecord]]:
        ir = ir.copy()
        signature = ir.signature()
        records: list[PassRecord] = []
        peak = ir.peak_live_bytes() if self.passes else None
        for p in self.passes:
            before = ir.op_count()
            try:
                result = p(ir)
                if self.check_invariants:
                    ir.check_signature(signature)
                    p.postcondition(ir)
                    for check in self.extra_checks:
                        check(ir)
                peak_after = ir.peak_live_bytes()
            except PassError:
                raise
            except Exception as exc:  # re-raised with the pipeline's context
                raise PassError(p.name, [r.name for r in records], exc) from exc
            records.append(PassRecord(p.name, before, ir.op_count(), result.modified,
                                      result.stats, peak, peak_after))
            logger.debug("pass %s: %d -> %d ops, peak live %d -> %d bytes, %s", p.name, before,
                         ir.op_count(), peak, peak_after, result.stats)
            peak = peak_after
        return ir, records
