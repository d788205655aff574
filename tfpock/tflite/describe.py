"""What is inside any .tflite file, read from the flatbuffer alone (``tfpock inspect``).

:func:`describe` returns a JSON-ready dict: per signature its inputs and outputs (name,
shape, dtype: what a LiteRT signature runner is called with, in Kotlin as in Python), its
operator count and its arena (the peak of live activation bytes, :func:`memory.timeline`);
the op histogram; whether the file is builtin-only (custom ops named, Flex ones, which need
TensorFlow's Select ops linked into the runtime, apart); the variables (count, bytes); and,
for a tfpock training model, its metadata (model, scheme, optimizer, loss, the trained
weights by Keras path). Numpy and the schema that ships with ai-edge-litert; no TensorFlow,
no interpreter (a Flex model describes as well as any).
"""
from __future__ import annotations

import json
import struct

from ai_edge_litert import schema_py_generated as schema

from tfpock.tflite import memory, model_file


def describe(content: bytes) -> dict:
    """The summary of a .tflite file's bytes; raises ``ValueError`` for what is not one."""
    parsed = model_file.read(content)
    root = schema.Model.GetRootAs(content, 0)
    signatures = {}
    for i in range(root.SignatureDefsLength()):
        sig = root.SignatureDefs(i)
        sg = parsed.subgraphs[sig.SubgraphIndex()]
        key = sig.SignatureKey().decode()

        def tensors(n, get, sg=sg):
            out = []
            for j in range(n):
                entry = get(j)
                t = sg.tensors[entry.TensorIndex()]
                out.append({"name": entry.Name().decode(), "shape": list(t.shape),
                            "dtype": t.dtype.lower()})
            return sorted(out, key=lambda d: d["name"])
        signatures[key] = {
            "inputs": tensors(sig.InputsLength(), sig.Inputs),
            "outputs": tensors(sig.OutputsLength(), sig.Outputs),
            "operators": len(sg.operators),
            "arena_bytes": memory.timeline(parsed, key).peak_bytes,
        }
    custom = parsed.custom_ops()
    assigned = [sg.tensors[op.inputs[1]] for sg in parsed.subgraphs for op in sg.operators
                if op.name == "ASSIGN_VARIABLE" and sg.tensors[op.inputs[1]].constant]
    result = {
        "bytes": len(content),
        "signatures": signatures,
        "ops": dict(parsed.op_histogram().most_common()),
        "builtin_only": not custom,
        "flex_ops": [c for c in custom if c.startswith("Flex")],
        "custom_ops": [c for c in custom if not c.startswith("Flex")],
        "variables": {"count": len(assigned), "bytes": sum(len(t.data) for t in assigned)},
        "tfpock": None,
    }
    metadata = tfpock_metadata(parsed)
    if metadata is not None:
        weights = [v for v in metadata.get("variables", []) if v.get("kind") == "weight"]
        result["tfpock"] = {
            "format": metadata.get("format"), "model": metadata.get("model"),
            "scheme": metadata.get("scheme"), "optimizer": metadata.get("optimizer"),
            "loss": metadata.get("loss"), "loss_config": metadata.get("loss_config"),
            "learning_rate": metadata.get("learning_rate"),
            "nonfinite": metadata.get("nonfinite"),
            "trained_weights": [{"name": v["name"], "layer": v.get("layer", ""),
                                 "shape": v["shape"], "dtype": v["dtype"]} for v in weights],
        }
    return result


def tfpock_metadata(parsed: model_file.ModelFile) -> dict | None:
    """The JSON of a tfpock file's ``metadata`` signature (a constant string output), read
    from the file; None when the file has no such signature or it is not JSON."""
    if "metadata" not in parsed.signatures:
        return None
    sg = parsed.subgraph("metadata")
    for index in sg.outputs:
        t = sg.tensors[index]
        if t.dtype == "STRING" and t.constant:
            try:
                metadata = json.loads(_first_string(t.data))
            except (ValueError, struct.error, IndexError):
                return None
            return metadata if isinstance(metadata, dict) else None
    return None


def _first_string(data: bytes) -> str:
    """TFLite's string tensor layout: int32 count, count + 1 int32 offsets, the bytes."""
    count, = struct.unpack_from("<i", data, 0)
    if count < 1:
        raise ValueError("no string")
    start, end = struct.unpack_from("<ii", data, 4)
    return data[start:end].decode("utf-8")
