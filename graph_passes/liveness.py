"""Liveness: the peak of live activation bytes of a GraphDef, so every pass has a memory figure.

Why: STYLE.md asks each optimisation for a before/after figure, and the passes that matter for
memory (prune, narrow, fold_bn) work on the GraphDef, long before a .tflite file exists. This
is the same model as :func:`tfpock.tflite.memory.timeline`, applied to the IR: a tensor lives from
the node that produces it (from the start, for signature inputs) to the last node that reads
it (to the end, for signature outputs); the peak is the largest sum of live bytes while one
node runs. What is not an activation is decided by the graph's structure, never by names:

* ``Const`` nodes (data in the file) and the weight, optimizer-slot and step-counter
  placeholders listed in ``graph.params`` (the program's state: variables in the file);
* resources, variants and strings (:func:`graph_passes.live_bytes.activation_bytes` sizes
  them 0);
* ``Identity``-like nodes, which forward their input's buffer (the converter removes them):
  reading their output keeps the forwarded tensor alive instead.

Every node counts as run, as every operator of a file does, including the dead ones a pass
leaves behind (the trace's gradients of frozen weights, producers a lowering stopped reading):
the pass that deletes them (prune, dce) is the one whose figure drops. A node's first output
lives at least while the node runs; its other outputs count only if something reads them.
The interval arithmetic is :mod:`graph_passes.live_bytes`, the one the file's timeline uses.

A dimension TensorFlow's shape inference leaves unknown counts as the batch size when it is
the leading one and the signature inputs that state a batch agree on it; otherwise the tensor
is left out and counted in ``unknown_shapes`` (the peak is then a lower bound).

This is an estimate, comparable between passes, not the device's figure: it follows the
graph's own topological order, while the converter and the export ``reorder`` pass schedule
the operators differently, and the file reads each variable into an arena tensor that is not
counted here. The exported file's :func:`tfpock.tflite.memory.timeline` is the real figure
(``Program.report()`` shows both).
"""
from __future__ import annotations

import dataclasses

from graph_passes.ir import Graph, parse_ref
from graph_passes.live_bytes import activation_bytes, live_profile

# Ops that hand their input buffer on unchanged (output i is input i).
_FORWARDING = frozenset({"Identity", "IdentityN", "StopGradient", "Snapshot", "PreventGradient"})
# Nodes that are not operators of the exported file.
_NOT_OPERATORS = frozenset({"Const", "Placeholder", "NoOp"}) | _FORWARDING


@dataclasses.dataclass(frozen=True)
class LivenessResult:
    """The peak of live activation bytes, where it happens, and what is alive there."""
    peak_bytes: int
    peak_node: str | None                     # the node running at the peak
    top_tensors: tuple[tuple[str, int], ...]  # largest activations alive there: (tensor, bytes)
    unknown_shapes: int = 0                   # activations left out: a shape unknown


def peak_live_bytes(graph: Graph, top: int = 3) -> LivenessResult:
    """Peak live activation bytes of ``graph``, in its topological order.

    Example:
        >>> result = peak_live_bytes(graph)
        >>> f"{result.peak_bytes / 2**20:.1f} MB at {result.peak_node}"
    """
    steps = [name for name in graph.topological_order()
             if graph.nodes[name].op not in _NOT_OPERATORS]
    if not steps:
        return LivenessResult(0, None, ())
    position = {name: i for i, name in enumerate(steps)}
    source = _buffer_source(graph)
    end: dict[str, int] = {}
    for i, name in enumerate(steps):
        for ref in graph.nodes[name].input:
            if not ref.startswith("^"):
                end[source(ref)] = i
        end[f"{name}:0"] = i  # read later, if at all: readers come after their producer
    for ref in graph.outputs.values():
        end[source(ref)] = len(steps) - 1
    for ref in graph.inputs.values():
        end.setdefault(source(ref), 0)
    state = {parse_ref(ref)[0] for ref in graph.params.values()}
    batch = _batch_size(graph)
    intervals, unknown = {}, 0
    for t, last in end.items():
        producer = graph.nodes[parse_ref(t)[0]]
        if producer.name in position:
            first = position[producer.name]
        elif producer.op == "Placeholder" and producer.name not in state:
            first = 0  # a signature input: alive from the start
        else:
            continue  # a constant or the program's state
        size = _bytes(graph, t, batch)
        if size is None:
            unknown += 1
        elif size:
            intervals[t] = (first, max(first, last), size)
    live = live_profile(intervals.values(), len(steps))
    peak = int(live.argmax())
    alive = sorted(((t, size) for t, (first, last, size) in intervals.items()
                    if first <= peak <= last), key=lambda item: (-item[1], item[0]))
    return LivenessResult(int(live[peak]), steps[peak], tuple(alive[:top]), unknown)


def _buffer_source(graph: Graph):
    """ref -> the tensor whose buffer it is, looking through forwarding ops."""
    def source(ref: str) -> str:
        name, index = parse_ref(ref)
        node = graph.nodes[name]
        while node.op in _FORWARDING:
            name, index = parse_ref(node.input[index if node.op == "IdentityN" else 0])
            node = graph.nodes[name]
        return f"{name}:{index}"
    return source


def _batch_size(graph: Graph) -> int | None:
    """The leading dimension the signature inputs that state one agree on (1, as for a
    learning rate of shape (1,), agrees with any), if they do."""
    leading = {graph.spec(ref).shape[0] for ref in graph.inputs.values()
               if graph.spec(ref).shape} - {None}
    batches = leading - {1}
    if len(batches) > 1:
        return None
    return batches.pop() if batches else (1 if leading else None)


def _bytes(graph: Graph, ref: str, batch: int | None) -> int | None:
    """Activation bytes of a tensor (0 for a node without outputs); None if its shape is
    unknown beyond the batch."""
    try:
        spec = graph.spec(ref)
    except KeyError:  # ``name:0`` of a node that has no outputs
        return 0
    if spec.shape is None:
        return None
    shape = list(spec.shape)
    if shape and shape[0] is None:
        shape[0] = batch
    if None in shape:
        return None
    return activation_bytes(shape, spec.dtype.name.upper())
