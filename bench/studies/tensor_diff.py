"""Which tensor of a converted ``train`` signature first differs from the TF graph it came from.

A debugging study: it runs one training step of a compiled program twice, in TensorFlow (the
optimised GraphDef ``Program.train_step`` runs) and in a TFLite interpreter built with
``experimental_preserve_all_tensors`` and no delegate, then compares every tensor of the
TFLite ``train`` subgraph whose name is a TF node of the graph (the converter names most
tensors after the op that made them; fused names are ``a;b``, the first part is tried) with
that node's output 0 (the last tensor of a name: an op the converter decomposes names its
intermediates after itself too), in the file's tensor order (about the order the ops write
them). The list is a lead, not a verdict: the converter also reuses a name for a tensor of
the same shape that holds something else (a fused or rewritten op), so the first rows can be
false alarms. On Gemma's step (2026-12-06) it pointed at the gradient of the rotary
embedding's ``stack(split(x))``; a four-op graph converted alone then showed the bug
(``graph_passes/lowering/slicing.py``).

    python -m bench.studies.tensor_diff --model gemma [--runtime tflite_runtime]

``compare`` is what the command runs; it takes any program and its exported file.
"""
from __future__ import annotations

import argparse

import numpy as np
import tensorflow as tf

from graph_passes.ir import tensor_name


def tf_values(program, feeds: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    """Output 0 of the train graph's nodes ``names`` for the signature inputs ``feeds``,
    with the params at their compile-time values."""
    graph = program._module.train_graph
    scratch = graph.to_tf_graph()
    feed = {graph.inputs[k]: v for k, v in feeds.items()}
    feed.update({ref: program._step.params[key] for key, ref in graph.params.items()})
    fetch = {n: f"{n}:0" for n in names if n in graph.nodes}
    with tf.compat.v1.Session(graph=scratch) as session:
        return session.run(fetch, feed_dict={scratch.get_tensor_by_name(tensor_name(k)): v
                                             for k, v in feed.items()})


def tflite_values(path: str, feeds: dict[str, np.ndarray], runtime: str = "ai_edge_litert"):
    """(name, value) of every tensor of the ``train`` subgraph after one step, in the order
    its operators write them."""
    if runtime == "ai_edge_litert":
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    else:
        from tflite_runtime.interpreter import Interpreter, OpResolverType
    interpreter = Interpreter(
        model_path=str(path), experimental_preserve_all_tensors=True,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    runner = interpreter.get_signature_runner("train")
    runner(**feeds)
    index = runner._subgraph_index
    details = interpreter.get_tensor_details(index)
    out = []
    for d in details:
        if d["dtype"] not in (np.float32, np.int32, np.bool_) or "/" not in d["name"]:
            continue   # resource handles (reading them crashes), constants, inputs
        try:
            out.append((d["name"], interpreter.get_tensor(d["index"], index)))
        except ValueError:   # a tensor without data (an unused optional input)
            continue
    return out


def compare(program, path, feeds: dict[str, np.ndarray], runtime: str = "ai_edge_litert",
            atol: float = 1e-4) -> list[tuple[str, float, float]]:
    """(TF node, max |difference|, max |value|) for every TFLite tensor matched by name,
    in TFLite order; a difference above ``atol`` relative to ``max(1, max |value|)`` is off."""
    converted = tflite_values(path, feeds, runtime)
    # an op the converter decomposes leaves several tensors under its name: the last is its
    # result
    converted = list({name: (name, value) for name, value in converted}.values())
    names = {name: name.split(";")[0].removeprefix("train/") for name, _ in converted}
    reference = tf_values(program, feeds, list(set(names.values())))
    rows = []
    for name, value in converted:
        node = names[name]
        if node in reference and np.shape(reference[node]) == np.shape(value):
            expected = np.asarray(reference[node], np.float64)
            diff = float(np.max(np.abs(np.asarray(value, np.float64) - expected), initial=0))
            rows.append((node, diff, float(np.max(np.abs(expected), initial=0))))
    return rows


def first_off(rows, atol: float = 1e-4, count: int = 10):
    return [r for r in rows if r[1] > atol * max(1.0, r[2])][:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["gemma", "decoder"], default="gemma")
    parser.add_argument("--runtime", default="ai_edge_litert")
    parser.add_argument("--out", default="/tmp/tensor_diff.tflite")
    args = parser.parse_args()
    import keras

    import tfpock
    from tests.test_keras_hub_models import LR, batch, tiny_gemma
    from tfpock.testing import models
    if args.model == "gemma":
        model, (x, y, w) = tiny_gemma(), batch("gemma")
        shapes = {"token_ids": (8,), "padding_mask": (8,)}
    else:
        from tests.test_language_models import VOCAB, SEQ, batch as lm_batch
        model, (x, y, w) = models.decoder(mlp="gelu", norm="layer", vocab=VOCAB, seq=SEQ), \
            lm_batch()
        shapes = None
    program = tfpock.optimize(model, loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), optimizer=keras.optimizers.SGD(LR), batch_size=2,
        sample_weight=True, input_shapes=shapes)
    program.export(args.out)
    feeds = {**x, "y": y, "sample_weight": w, "learning_rate": np.array([LR], np.float32)}
    rows = compare(program, args.out, feeds, args.runtime)
    print(f"{len(rows)} tensors matched by name; first off:")
    for node, diff, peak in first_off(rows):
        print(f"  {diff:10.3g}  (peak {peak:8.3g})  {node}")


if __name__ == "__main__":
    main()
