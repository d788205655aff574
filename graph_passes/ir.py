"""A small mutable view of a TensorFlow GraphDef: the IR every pass works on.

Why a GraphDef and not our own op set: the training step is derived by TensorFlow's own
autodiff (``GradientTape``), so its gradient ops are exactly TF's; the passes then rewrite
that graph the way Grappler or the TFLite converter would, but with rules we own. The graph
keeps its *signature* (named inputs and outputs) beside the nodes, so a rewrite that redirects
a tensor also redirects a signature output, and every pass can be checked against it.

Tensor references follow GraphDef spelling: ``"node"`` is output 0, ``"node:1"`` output 1,
``"^node"`` a control input.
"""
from __future__ import annotations

import collections
import copy
import dataclasses
from typing import Callable, Iterable, Sequence

import tensorflow as tf


def parse_ref(ref: str) -> tuple[str, int]:
    """Splits a GraphDef input reference into (node name, output index); control refs give -1."""
    if ref.startswith("^"):
        return ref[1:], -1
    name, _, index = ref.partition(":")
    return name, int(index) if index else 0


def tensor_name(ref: str) -> str:
    """Canonical ``node:index`` spelling of a data reference."""
    name, index = parse_ref(ref)
    return f"{name}:{index}"


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    dtype: tf.DType
    shape: tuple[int | None, ...] | None


class Graph:
    """Nodes of a GraphDef by name, in topological order, plus a named signature.

    ``inputs`` maps signature names to Placeholder tensors, ``outputs`` maps signature names
    to the tensors they return. Passes edit the graph in place through the methods below,
    which keep consumers, signature and tensor metadata consistent.
    """

    def __init__(self, graph_def: tf.compat.v1.GraphDef, inputs: dict[str, str],
                 outputs: dict[str, str], params: dict[str, str] | None = None,
                 backward: Iterable[str] = ()):
        self.nodes: dict[str, tf.compat.v1.NodeDef] = {n.name: n for n in graph_def.node}
        self.inputs = {k: tensor_name(v) for k, v in inputs.items()}
        self.outputs = {k: tensor_name(v) for k, v in outputs.items()}
        # Weights fed to the graph (weight path -> Placeholder tensor); freezing removes
        # entries, so unlike ``inputs`` they are not part of the signature.
        self.params = {k: tensor_name(v) for k, v in (params or {}).items()}
        # Nodes the trace created while deriving gradients (provenance, for reports).
        self.backward = set(backward)
        self._specs: dict[str, TensorSpec] = {}
        self._fresh = 0
        if graph_def.library.function:
            raise ValueError("graphs with function libraries are not supported: "
                             "the trace should inline every call")

    # ---- reading -------------------------------------------------------------------
    def copy(self) -> "Graph":
        return Graph(self.to_graph_def(), dict(self.inputs), dict(self.outputs),
                     dict(self.params), set(self.backward))

    def op_count(self) -> int:
        return len(self.nodes)

    def peak_live_bytes(self) -> int:
        """The GraphDef liveness estimate (:func:`graph_passes.liveness.peak_live_bytes`)."""
        from graph_passes.liveness import peak_live_bytes  # liveness reads this module
        return peak_live_bytes(self).peak_bytes

    def signature(self) -> tuple[dict[str, str], list[str]]:
        return dict(self.inputs), list(self.outputs)

    def check_signature(self, signature: tuple[dict[str, str], list[str]]) -> None:
        """Invariant: the signature kept its inputs and outputs, and every output and every
        input of a node is produced by a node."""
        inputs, output_keys = signature
        if self.inputs != inputs:
            raise AssertionError(f"signature inputs changed: {inputs} -> {self.inputs}")
        if sorted(self.outputs) != sorted(output_keys):
            raise AssertionError(f"signature outputs changed: {sorted(output_keys)} -> "
                                 f"{sorted(self.outputs)}")
        for key, ref in self.outputs.items():
            if parse_ref(ref)[0] not in self.nodes:
                raise AssertionError(f"output {key!r} reads {ref}, which no node produces")
        for node in self.nodes.values():
            for ref in node.input:
                if parse_ref(ref)[0] not in self.nodes:
                    raise AssertionError(f"node {node.name} reads {ref}, which no node "
                                         "produces")

    def to_graph_def(self) -> tf.compat.v1.GraphDef:
        graph_def = tf.compat.v1.GraphDef()
        graph_def.node.extend(copy.deepcopy(list(self.nodes.values())))
        return graph_def

    def op_histogram(self) -> collections.Counter:
        return collections.Counter(n.op for n in self.nodes.values())

    def nodes_of(self, op_types: Iterable[str]) -> list[tf.compat.v1.NodeDef]:
        wanted = set(op_types)
        return [n for n in self.nodes.values() if n.op in wanted]

    def consumers(self) -> dict[str, list[str]]:
        """Node name -> names of the nodes that read any of its outputs (data or control)."""
        users: dict[str, list[str]] = collections.defaultdict(list)
        for node in self.nodes.values():
            for ref in node.input:
                users[parse_ref(ref)[0]].append(node.name)
        return users

    def spec(self, ref: str) -> TensorSpec:
        """Static dtype and shape of a tensor, as TensorFlow's shape inference sees it."""
        name = tensor_name(ref)
        if name not in self._specs:
            self._infer_specs()
        return self._specs[name]

    def to_tf_graph(self) -> tf.Graph:
        """The nodes imported into a new ``tf.Graph`` (same names), to run or inspect."""
        scratch = tf.Graph()
        with scratch.as_default():
            tf.graph_util.import_graph_def(self.to_graph_def(), name="")
        return scratch

    def _infer_specs(self) -> None:
        scratch = self.to_tf_graph()
        for op in scratch.get_operations():
            for out in op.outputs:
                shape = None if out.shape.rank is None else tuple(out.shape.as_list())
                self._specs[out.name] = TensorSpec(out.dtype, shape)

    def attr(self, node: tf.compat.v1.NodeDef, key: str, default=None):
        """A node attribute as a Python value (ints, floats, strings, lists, dtypes)."""
        if key not in node.attr:
            return default
        value = node.attr[key]
        kind = value.WhichOneof("value")
        if kind == "list":
            lst = value.list
            for field in ("i", "f", "s", "b"):
                items = list(getattr(lst, field))
                if items:
                    return [x.decode() if isinstance(x, bytes) else x for x in items]
            return []
        if kind == "s":
            return value.s.decode()
        if kind == "type":
            return tf.DType(value.type)
        return getattr(value, kind)

    # ---- editing -------------------------------------------------------------------
    def fresh_name(self, base: str) -> str:
        while True:
            self._fresh += 1
            name = f"{base}_{self._fresh}"
            if name not in self.nodes:
                return name

    def add_node(self, node: tf.compat.v1.NodeDef) -> None:
        if node.name in self.nodes:
            raise ValueError(f"node {node.name!r} already exists")
        self.nodes[node.name] = node

    def replace_uses(self, old: str, new: str) -> int:
        """Makes every reader of tensor ``old`` (and the signature) read ``new`` instead."""
        old, new = tensor_name(old), tensor_name(new)
        count = 0
        for node in self.nodes.values():
            for i, ref in enumerate(node.input):
                if not ref.startswith("^") and tensor_name(ref) == old:
                    node.input[i] = new
                    count += 1
        for key, ref in self.outputs.items():
            if ref == old:
                self.outputs[key] = new
                count += 1
        return count

    def remove(self, names: Iterable[str]) -> None:
        """Deletes nodes; control edges from them are dropped, data edges must be gone."""
        names = set(names)
        for name in names:
            del self.nodes[name]
        self.backward -= names
        for node in self.nodes.values():
            kept = [r for r in node.input if not (r.startswith("^") and r[1:] in names)]
            if len(kept) != len(node.input):
                del node.input[:]
                node.input.extend(kept)
        self._specs = {k: v for k, v in self._specs.items() if parse_ref(k)[0] not in names}

    def splice(self, build: Callable[..., Sequence[tf.Tensor] | tf.Tensor],
               inputs: Sequence[str], scope: str) -> list[str]:
        """Builds ``build(*placeholders)`` in a scratch graph and inserts its nodes here.

        The placeholders stand for ``inputs`` (with their static shapes and dtypes) and are
        wired to them; the new nodes live under the unique name ``scope``. Returns the names of
        the tensors ``build`` returned, ready for :meth:`replace_uses`.
        """
        scope = self.fresh_name(scope)
        scratch = tf.Graph()
        with scratch.as_default():
            placeholders = []
            for i, ref in enumerate(inputs):
                spec = self.spec(ref)
                placeholders.append(tf.compat.v1.placeholder(spec.dtype, spec.shape, name=f"in{i}"))
            results = build(*placeholders)
            if isinstance(results, tf.Tensor):
                results = [results]
            results = [tf.identity(r, name=f"out{i}") for i, r in enumerate(results)]
        wiring = {p.op.name: tensor_name(ref) for p, ref in zip(placeholders, inputs)}
        graph_def = scratch.as_graph_def(add_shapes=True)
        for node in graph_def.node:
            if node.name in wiring:
                continue
            new = copy.deepcopy(node)
            new.name = f"{scope}/{node.name}"
            for i, ref in enumerate(node.input):
                src, index = parse_ref(ref)
                if index == -1:
                    if src in wiring:  # control dependency on an input: depend on its producer
                        new.input[i] = "^" + parse_ref(wiring[src])[0]
                    else:
                        new.input[i] = f"^{scope}/{src}"
                elif src in wiring:
                    new.input[i] = wiring[src]
                else:
                    new.input[i] = f"{scope}/{src}:{index}"
            self.add_node(new)
        for op in scratch.get_operations():
            if op.name in wiring:
                continue
            for out in op.outputs:
                shape = None if out.shape.rank is None else tuple(out.shape.as_list())
                self._specs[f"{scope}/{out.name}"] = TensorSpec(out.dtype, shape)
        return [f"{scope}/{r.name}" for r in results]

    def insert_after(self, ref: str, build: Callable[..., tf.Tensor],
                     extra_inputs: Sequence[str], scope: str) -> str:
        """Puts ``build(ref, *extra_inputs)`` between ``ref`` and all its current readers
        (and the signature); returns the new tensor."""
        old = tensor_name(ref)
        readers = [n for n in self.nodes.values()
                   if any(not r.startswith("^") and tensor_name(r) == old for r in n.input)]
        outputs = [k for k, v in self.outputs.items() if v == old]
        (new,) = self.splice(lambda *ts: build(*ts), [old, *extra_inputs], scope)
        for node in readers:
            for i, r in enumerate(node.input):
                if not r.startswith("^") and tensor_name(r) == old:
                    node.input[i] = new
        for key in outputs:
            self.outputs[key] = new
        return new

    def readers(self, ref: str) -> list[tuple[tf.compat.v1.NodeDef, int]]:
        """(node, input position) pairs reading tensor ``ref`` (data edges only)."""
        want = tensor_name(ref)
        return [(n, i) for n in self.nodes.values() for i, r in enumerate(n.input)
                if not r.startswith("^") and tensor_name(r) == want]

    def topological_order(self) -> list[str]:
        """Node names so that every node follows its inputs (GraphDef import needs no order,
        but passes that walk producers first do)."""
        order, state = [], {}
        for root in self.nodes:
            stack = [(root, False)]
            while stack:
                name, done = stack.pop()
                if done:
                    state[name] = 2
                    order.append(name)
                    continue
                if state.get(name):
                    continue
                state[name] = 1
                stack.append((name, True))
                for ref in self.nodes[name].input:
                    src = parse_ref(ref)[0]
                    if not state.get(src):
                        stack.append((src, False))
        return order
