"""What the passes on the exported .tflite file share: op codes, constants, packing.

They edit the flatbuffer through the object API of the schema that ships with ai-edge-litert
(``schema.ModelT.InitFromPackedBuf``) and write it back with :func:`pack`; no bytes are parsed
by hand.
"""
from __future__ import annotations

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

from tfpock.tflite import model_file


def builtin(model: schema.ModelT, op: schema.OperatorT) -> int:
    """The ``schema.BuiltinOperator`` code of ``op`` (old files keep small codes in the
    deprecated field, new ones in ``builtinCode``)."""
    code = model.operatorCodes[op.opcodeIndex]
    return max(code.builtinCode, code.deprecatedBuiltinCode)


def pack(model: schema.ModelT) -> bytes:
    """The .tflite bytes of ``model``."""
    builder = flatbuffers.Builder(1024 * 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def constant_value(model: schema.ModelT, tensor: schema.TensorT) -> np.ndarray | None:
    """The value of a constant tensor (data in its buffer); None for activations, variables
    and data stored outside the flatbuffer."""
    data = model.buffers[tensor.buffer].data if tensor.buffer else None
    if data is None or len(data) == 0:
        return None
    dtype = np.dtype(model_file.type_name(tensor.type).lower()).newbyteorder("<")
    shape = [int(d) for d in tensor.shape] if tensor.shape is not None else []
    return np.frombuffer(np.asarray(data, np.uint8).tobytes(), dtype).reshape(shape)


def add_constant(model: schema.ModelT, sg: schema.SubGraphT, value: np.ndarray, name: str,
                 buffer: int | None = None) -> int:
    """Appends a constant tensor holding ``value`` to ``sg`` (in a new buffer, or viewing
    buffer ``buffer``, which must hold the same bytes); returns its index."""
    if buffer is None:
        data = schema.BufferT()
        data.data = np.frombuffer(value.astype(value.dtype.newbyteorder("<")).tobytes(),
                                  np.uint8)
        model.buffers.append(data)
        buffer = len(model.buffers) - 1
    tensor = schema.TensorT()
    tensor.shape = list(value.shape)
    tensor.type = getattr(schema.TensorType, value.dtype.name.upper())
    tensor.buffer = buffer
    tensor.name = name.encode()
    sg.tensors.append(tensor)
    return len(sg.tensors) - 1


def opcode_index(model: schema.ModelT, code: int) -> int:
    """Index of builtin ``code`` in the model's operator codes, appended if missing."""
    for i, entry in enumerate(model.operatorCodes):
        if max(entry.builtinCode, entry.deprecatedBuiltinCode) == code:
            return i
    entry = schema.OperatorCodeT()
    entry.builtinCode = code
    # codes above 127 live in builtinCode only; the deprecated byte holds the placeholder
    entry.deprecatedBuiltinCode = min(code, schema.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES)
    entry.version = 1
    model.operatorCodes.append(entry)
    return len(model.operatorCodes) - 1
