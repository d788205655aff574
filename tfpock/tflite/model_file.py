"""Read a .tflite flatbuffer: operators per subgraph, signatures, variables, constants.

Uses the flatbuffer schema bindings that ship with ai-edge-litert (``schema_py_generated``,
generated from TFLite's schema.fbs) through the ``flatbuffers`` package, so no bytes are
parsed by hand and no TensorFlow is needed. Export uses it to verify a model before writing
it; tests and the memory tools use it to inspect what was written.
"""
from __future__ import annotations

import collections
import dataclasses

import numpy as np

try:
    from ai_edge_litert import schema_py_generated as schema
except ImportError as exc:  # pragma: no cover - depends on the installed runtime
    raise ImportError("tfpock.tflite.model_file needs ai-edge-litert (pip install ai-edge-litert)"
                      ) from exc

_BUILTIN_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
_TYPE_NAMES = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
def type_name(code: int) -> str:
    """The schema's name of a TensorType code (FLOAT32, INT32, RESOURCE, ...)."""
    return _TYPE_NAMES.get(code, str(code))


_NUMPY_TYPES = {"FLOAT32": "<f4", "INT32": "<i4", "INT64": "<i8", "FLOAT16": "<f2",
                "INT8": "i1", "UINT8": "u1", "BOOL": "?", "INT16": "<i2"}


@dataclasses.dataclass(frozen=True)
class Operator:
    name: str          # builtin name (e.g. CONV_2D) or the custom code (e.g. FlexReluGrad)
    custom: bool
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: str
    constant: bool     # has data in a buffer
    data: bytes = dataclasses.field(default=b"", repr=False)

    def value(self) -> np.ndarray:
        """The constant's contents (little-endian, as TFLite stores them)."""
        if not self.constant:
            raise ValueError(f"tensor {self.name!r} is not a constant")
        return np.frombuffer(self.data, _NUMPY_TYPES[self.dtype]).reshape(self.shape)


@dataclasses.dataclass(frozen=True)
class Subgraph:
    name: str
    operators: list[Operator]
    tensors: list[Tensor]
    inputs: tuple[int, ...] = ()
    outputs: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class ModelFile:
    subgraphs: list[Subgraph]
    signatures: dict[str, int]   # signature key -> subgraph index

    def op_histogram(self) -> collections.Counter:
        return collections.Counter(op.name for sg in self.subgraphs for op in sg.operators)

    def custom_ops(self) -> list[str]:
        return sorted({op.name for sg in self.subgraphs for op in sg.operators if op.custom})

    def variables(self) -> list[tuple[int, ...]]:
        """Shapes of the resource variables, from the ops that assign them in the
        initialisation subgraph (one VAR_HANDLE + ASSIGN_VARIABLE per variable)."""
        shapes = []
        for sg in self.subgraphs:
            for op in sg.operators:
                if op.name == "ASSIGN_VARIABLE" and sg.tensors[op.inputs[1]].constant:
                    shapes.append(sg.tensors[op.inputs[1]].shape)
        return shapes

    def subgraph(self, signature: str) -> Subgraph:
        return self.subgraphs[self.signatures[signature]]


def read(content: bytes) -> ModelFile:
    if len(content) < 8 or not schema.Model.ModelBufferHasIdentifier(content, 0):
        raise ValueError("not a TFLite flatbuffer (file identifier TFL3 missing)")
    model = schema.Model.GetRootAs(content, 0)
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        custom = code == schema.BuiltinOperator.CUSTOM
        codes.append((oc.CustomCode().decode() if custom else _BUILTIN_NAMES.get(code, str(code)),
                      custom))
    subgraphs = []
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        tensors = []
        for t in range(sg.TensorsLength()):
            tensor = sg.Tensors(t)
            buffer = model.Buffers(tensor.Buffer()) if tensor.Buffer() else None
            data = _buffer_bytes(content, buffer) if buffer is not None else b""
            tensors.append(Tensor(tensor.Name().decode(),
                                  tuple(int(d) for d in tensor.ShapeAsNumpy())
                                  if tensor.ShapeLength() else (),
                                  type_name(tensor.Type()),
                                  bool(data), data))
        ops = []
        for o in range(sg.OperatorsLength()):
            op = sg.Operators(o)
            name, custom = codes[op.OpcodeIndex()]
            inputs = tuple(int(i) for i in op.InputsAsNumpy()) if op.InputsLength() else ()
            outputs = tuple(int(i) for i in op.OutputsAsNumpy()) if op.OutputsLength() else ()
            ops.append(Operator(name, custom, inputs, outputs))
        subgraphs.append(Subgraph(
            (sg.Name() or b"").decode(), ops, tensors,
            tuple(int(i) for i in sg.InputsAsNumpy()) if sg.InputsLength() else (),
            tuple(int(i) for i in sg.OutputsAsNumpy()) if sg.OutputsLength() else ()))
    signatures = {}
    for i in range(model.SignatureDefsLength()):
        sig = model.SignatureDefs(i)
        signatures[sig.SignatureKey().decode()] = sig.SubgraphIndex()
    return ModelFile(subgraphs, signatures)


def _buffer_bytes(content: bytes, buffer) -> bytes:
    """A buffer's bytes: inline (``data``) or, for models over 2 GB, at ``offset``/``size``."""
    if buffer.DataLength() > 0:
        return buffer.DataAsNumpy().tobytes()
    if buffer.Offset() > 1 and buffer.Size() > 0:
        return bytes(content[buffer.Offset():buffer.Offset() + buffer.Size()])
    return b""
