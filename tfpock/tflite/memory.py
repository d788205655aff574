"""Memory analysis of a .tflite model: live bytes per operator, and the arena as allocated.

Two views, usable on any TFLite file (not only tfpock's):

* :func:`timeline` computes, from the graph alone, which activation tensors are alive while
  each operator of a signature runs. A tensor lives from the operator that produces it (or
  the start, for signature inputs) to the last operator that reads it (or the end, for
  outputs); constants (data in the file) and resource variables are not activations. The peak
  of this timeline is the least memory any arena plan for that operator order can use, which
  is why the order of operators decides memory (PockEngine reorders updates for this).
  :func:`live_tensors` lists the tensors behind one point of it (e.g. the peak).
* :func:`measured_arena` runs the signature once in a fresh process and reports how much the
  process's resident memory grew: what the runtime's arena planner really allocated for it
  (plus a little interpreter bookkeeping).

The byte sizes and the interval arithmetic are :mod:`graph_passes.live_bytes`, shared with the
GraphDef's liveness estimate. Needs numpy and the flatbuffer schema that ships with
ai-edge-litert; no TensorFlow.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from graph_passes.live_bytes import activation_bytes, live_profile
from tfpock.tflite import model_file


@dataclasses.dataclass(frozen=True)
class OpMemory:
    index: int
    op: str
    live_bytes: int          # activation bytes alive while this operator runs


@dataclasses.dataclass(frozen=True)
class Timeline:
    signature: str
    ops: list[OpMemory]

    @property
    def peak_bytes(self) -> int:
        return max((o.live_bytes for o in self.ops), default=0)

    @property
    def peak_op(self) -> OpMemory | None:
        return max(self.ops, key=lambda o: o.live_bytes, default=None)


def tensor_bytes(tensor: model_file.Tensor) -> int:
    return activation_bytes(tensor.shape, tensor.dtype)


def _lifetimes(sg: model_file.Subgraph) -> dict[int, tuple[int, int]]:
    """Tensor index -> (first, last) operator index over which each activation is alive.

    The one liveness rule both :func:`timeline` and :func:`live_tensors` use, so the tensors
    listed at an operator always add up to that operator's live bytes. Signature inputs live
    from operator 0, outputs to the last operator; constants are left out.
    """
    n_ops = len(sg.operators)
    start: dict[int, int] = {}
    end: dict[int, int] = {}
    for t in sg.inputs:
        start[t] = 0
    for i, op in enumerate(sg.operators):
        for t in op.outputs:
            start.setdefault(t, i)
        for t in op.inputs:
            if t >= 0:
                end[t] = i
    for t in sg.outputs:
        end[t] = n_ops - 1
    return {t: (first, max(end.get(t, first), first)) for t, first in start.items()
            if not sg.tensors[t].constant}


def _subgraph(content: bytes | model_file.ModelFile, signature: str) -> model_file.Subgraph:
    parsed = content if isinstance(content, model_file.ModelFile) else model_file.read(content)
    return parsed.subgraph(signature)


def timeline(content: bytes | model_file.ModelFile, signature: str) -> Timeline:
    """Live activation bytes at each operator of ``signature``, in the file's order."""
    sg = _subgraph(content, signature)
    live = live_profile(((first, last, tensor_bytes(sg.tensors[t]))
                         for t, (first, last) in _lifetimes(sg).items()), len(sg.operators))
    return Timeline(signature, [OpMemory(i, op.name, int(live[i]))
                                for i, op in enumerate(sg.operators)])


@dataclasses.dataclass(frozen=True)
class LiveTensor:
    name: str
    shape: tuple[int, ...]
    dtype: str
    bytes: int


def live_tensors(content: bytes | model_file.ModelFile, signature: str,
                 op_index: int) -> list[LiveTensor]:
    """The activations alive while operator ``op_index`` of ``signature`` runs, largest first.

    Says *what* makes up a point of :func:`timeline` (its bytes sum to that operator's
    ``live_bytes``), e.g. which tensors to shrink or free earlier to lower the peak::

        t = timeline(content, "train")
        biggest = live_tensors(content, "train", t.peak_op.index)[:5]
    """
    sg = _subgraph(content, signature)
    if not 0 <= op_index < len(sg.operators):
        raise IndexError(f"op_index {op_index} out of range: signature {signature!r} has "
                         f"{len(sg.operators)} operators")
    alive = [LiveTensor(sg.tensors[t].name, sg.tensors[t].shape, sg.tensors[t].dtype,
                        tensor_bytes(sg.tensors[t]))
             for t, (first, last) in sorted(_lifetimes(sg).items()) if first <= op_index <= last]
    return sorted((x for x in alive if x.bytes > 0), key=lambda x: -x.bytes)


_PROBE = r"""
import json, resource, sys
import numpy as np
from tfpock.runtime.interpreter import load_interpreter_class

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()

path, signature, runtime, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
_, cls = load_interpreter_class(runtime)
interpreter = cls(model_path=path, num_threads=threads)
runner = interpreter.get_signature_runner(signature)
inputs = {}
for name, d in runner.get_input_details().items():
    inputs[name] = np.zeros(d["shape"], d["dtype"])
before = rss()
runner(**inputs)
after = rss()
print(json.dumps({"rss_before": before, "rss_after": after,
                  "input_bytes": int(sum(a.nbytes for a in inputs.values()))}))
"""


def measured_arena(path: str | os.PathLike, signature: str, runtime: str = "auto",
                   threads: int = 1) -> int:
    """Bytes the process's resident set grew by on the first call of ``signature`` (tensor
    allocation plus the call), in a fresh Python process so nothing else is counted."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", _PROBE, os.fspath(path), signature, runtime,
                           str(threads)], capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"measuring {signature!r} of {os.fspath(path)!r} failed: "
                           f"{done.stderr.strip().splitlines()[-1:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return max(0, result["rss_after"] - result["rss_before"])
