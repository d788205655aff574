"""The IR of the file passes: a .tflite file and the signature they work on.

The file passes (:mod:`tfpock.tflite.fuse`, :mod:`tfpock.tflite.reorder`) run in a
:class:`graph_passes.pass_base.Sequential`, as the GraphDef passes do, so they get the same
records (ops and peak live bytes before and after), errors and debug checks. What that pipeline
needs of an IR (:class:`graph_passes.pass_base.PassIR`) is answered here from the file itself:
operators of the signature's subgraph, the peak of its :func:`tfpock.tflite.memory.timeline`.

A pass edits the flatbuffer's object API (:meth:`TfliteFile.unpack`) and hands the model back
with :meth:`TfliteFile.update`; a pass that changes nothing leaves :attr:`content` as it was,
byte for byte (packing an unchanged model again would not give the converter's bytes).
"""
from __future__ import annotations

from typing import Iterable

from ai_edge_litert import schema_py_generated as schema

from graph_passes.pass_base import PassRecord, Sequential
from tfpock.tflite import memory, model_file
from tfpock.tflite.flatbuffer import pack

# (name, shape, dtype) of each input and each output of the signature's subgraph
SignatureSnapshot = tuple[tuple[tuple[str, tuple[int, ...], str], ...], ...]


class TfliteFile:
    """A .tflite file's bytes and the signature the file passes work on."""

    def __init__(self, content: bytes, signature: str):
        self.content = content
        self.signature_key = signature
        self._parsed: model_file.ModelFile | None = None
        if signature not in self.parsed.signatures:
            raise ValueError(f"the model has no signature {signature!r}; it has "
                             f"{sorted(self.parsed.signatures)}")

    # ---- what a pass reads and writes ----------------------------------------------------
    @property
    def parsed(self) -> model_file.ModelFile:
        if self._parsed is None:
            self._parsed = model_file.read(self.content)
        return self._parsed

    def unpack(self) -> schema.ModelT:
        """A fresh object-API model of the current bytes, to edit."""
        return schema.ModelT.InitFromPackedBuf(self.content, 0)

    def subgraph_index(self, model: schema.ModelT) -> int:
        return next(s.subgraphIndex for s in model.signatureDefs
                    if s.signatureKey.decode() == self.signature_key)

    def update(self, model: schema.ModelT) -> None:
        """The pass changed ``model``: it becomes the file's content."""
        self.content = pack(model)
        self._parsed = None

    # ---- what the pipeline needs (graph_passes.pass_base.PassIR) ---------------------------
    def copy(self) -> "TfliteFile":
        return TfliteFile(self.content, self.signature_key)

    def op_count(self) -> int:
        return len(self.parsed.subgraph(self.signature_key).operators)

    def peak_live_bytes(self) -> int:
        return memory.timeline(self.parsed, self.signature_key).peak_bytes

    def signature(self) -> SignatureSnapshot:
        sg = self.parsed.subgraph(self.signature_key)
        return tuple(tuple((sg.tensors[t].name, sg.tensors[t].shape, sg.tensors[t].dtype)
                           for t in ends) for ends in (sg.inputs, sg.outputs))

    def check_signature(self, signature: SignatureSnapshot) -> None:
        """Invariant: the signature's inputs and outputs are unchanged, and every operator
        reads only constants, the subgraph's inputs and what an earlier operator wrote (the
        order is a valid schedule)."""
        if self.signature() != signature:
            raise AssertionError(f"signature {self.signature_key!r} changed: {signature} -> "
                                 f"{self.signature()}")
        sg = self.parsed.subgraph(self.signature_key)
        written = {t for op in sg.operators for t in op.outputs}
        # what no operator writes: inputs, constants (an empty one has no data)
        given = set(sg.inputs) | {t for t, tensor in enumerate(sg.tensors) if tensor.constant
                                  or (tensor.shape and 0 in tensor.shape)}
        available = set(given)
        for index, op in enumerate(sg.operators):
            early = [t for t in op.inputs if t >= 0 and t not in available and t in written]
            unwritten = [t for t in op.inputs if t >= 0 and t not in written | given]
            if early or unwritten:
                raise AssertionError(f"operator {index} ({op.name}) of {self.signature_key!r} "
                                     f"reads tensors {early + unwritten} that are not written "
                                     "before it")
            available.update(op.outputs)
        unwritten = [t for t in sg.outputs if t not in available]
        if unwritten:
            raise AssertionError(f"outputs {unwritten} of {self.signature_key!r} are never "
                                 "written")


def run_per_signature(pipeline: Sequential, content: bytes,
                      signatures: Iterable[str]) -> tuple[bytes, dict[str, list[PassRecord]]]:
    """Runs ``pipeline`` on the subgraph of each of ``signatures`` in turn (each run starts
    from the previous one's file); returns the last file (``content`` itself if no pass
    changed anything) and the records per signature."""
    signatures = list(signatures)
    known = model_file.read(content).signatures
    unknown = [name for name in signatures if name not in known]
    if unknown:
        raise ValueError(f"the model has no signature {unknown}; it has {sorted(known)}")
    records = {}
    for name in signatures:
        ir, records[name] = pipeline(TfliteFile(content, name))
        content = ir.content
    return content, records
