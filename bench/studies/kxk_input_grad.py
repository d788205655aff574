"""The input gradient of a trained (runtime-kernel) stride-1 kxk Conv2D, form by form, on the
digits CNN of the search study (bench/studies/search_tasks.py, issue 12): the training memory
(peak live activations of the exported ``train`` signature + variable bytes, as the search
counts it) and the one-thread step time on ai-edge-litert of a few schemes, per form.

Forms (graph_passes/lowering/conv.py; each computes
``dx[n, p, q, c] = sum_{i, j, o} dyp[n, p + i, q + j, o] * w[kh-1-i, kw-1-j, c, o]``):

* ``patches``: :func:`input_grad_matmul`, the kh*kw offset slices of the padded ``dy``
  concatenated into patches, one matmul with the flipped kernel (the rule before 12-07);
* ``offsets``: :func:`input_grad_offsets`, one matmul per offset with the kernel's slice,
  accumulated, no patches;
* ``stacked``: :func:`input_grad_kernel_as_is`, the slices stacked [kh, kw, NHW, Co] and one
  batch matmul with the kernel as it is, summed over the offsets (chosen for deep layers);
* ``conv2d``: :func:`input_grad_conv` on the runtime kernel: a CONV_2D whose filter is a
  runtime tensor (transposed and reversed each step). The converter and ai-edge-litert accept
  it; an im2col scratch the CONV_2D kernel may allocate is not a graph tensor, so the timeline
  does not count it.

Step times: interleaved rounds of every form's file per scheme (``ab_steps.compare``), one
thread, pinned to one CPU if the command is run under ``taskset -c 1``.

Run from the repository root: ``python -m bench.studies.kxk_input_grad``. Writes
``bench/results/<date>-<machine>-kxk-input-grad.{json,md}``.
"""
from __future__ import annotations

import datetime
import os
import tempfile

from bench import cli

FORMS = ("patches", "offsets", "stacked", "conv2d")


def scheme_of(spec: str):
    """``full`` or ``layer:option+...`` (options bias, full, 1/k) with the head trained."""
    import tfpock
    if spec == "full":
        return tfpock.Scheme.full()
    layers = {"head": "full"}
    for part in filter(None, spec.split("+")):
        layer, option = part.split(":")
        layers[layer] = (option if option in ("bias", "full") else
                         {"weight_fraction": 1 / float(option.split("/")[1]), "bias": True})
    return tfpock.Scheme(layers=layers)


def main(argv):
    import keras
    from absl import flags, logging

    import tfpock
    from bench.studies import ab_steps
    from bench.studies.search_tasks import BATCH, digits_task
    from graph_passes.lowering import conv
    from tfpock.contribution.cost import program_cost
    from tfpock.tflite import memory, model_file
    del argv
    f = flags.FLAGS
    forms = {"patches": conv.input_grad_matmul, "offsets": conv.input_grad_offsets,
             "stacked": conv.input_grad_kernel_as_is, "conv2d": conv.input_grad_conv}
    doc = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": f.machine,
           "uptime_start": cli.uptime(),
           "affinity": sorted(os.sched_getaffinity(0)),
           "command": "python -m bench.studies.kxk_input_grad --schemes " + ",".join(
               f.schemes) + f" --rounds {f.rounds} --steps {f.steps}",
           "rows": []}
    model, train, _, _ = digits_task(0, {})
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with tempfile.TemporaryDirectory(prefix="tfpock-kxk-") as tmp:
        for spec in f.schemes:
            paths, rows = [], []
            for form in FORMS:
                conv.FORCED_INPUT_GRAD_FORM = forms[form]
                try:
                    program = tfpock.optimize(model, loss=loss,
                                              optimizer=keras.optimizers.SGD(0.05),
                                              scheme=scheme_of(spec), batch_size=BATCH)
                finally:
                    conv.FORCED_INPUT_GRAD_FORM = None
                cost = program_cost(program)
                content = program.to_tflite()
                t = memory.timeline(model_file.read(content), "train")
                biggest = memory.live_tensors(content, "train", t.peak_op.index)[0]
                path = os.path.join(tmp, f"{form}.tflite")
                with open(path, "wb") as out:
                    out.write(content)
                paths.append(path)
                rows.append({"scheme": spec, "form": form, **cost.to_dict(),
                             "peak_op": t.peak_op.op,
                             "largest_at_peak": [biggest.name, list(biggest.shape),
                                                 biggest.bytes]})
            for row, timed in zip(rows, ab_steps.compare(paths, f.rounds, f.steps)):
                row["step_ms"] = timed["median_ms"]
                row["losses"] = timed["losses"]
            base = rows[0]["step_ms"]
            for row in rows:
                row["step_ratio"] = row["step_ms"] / base
                logging.info("%s %s: %d bytes, %.3f ms", spec, row["form"], row["memory_bytes"],
                             row["step_ms"])
            doc["rows"] += rows
    doc["uptime_end"] = cli.uptime()
    cli.write_results(doc, markdown(doc), "kxk-input-grad", f.out_dir)
    return 0


def markdown(doc: dict) -> str:
    lines = [f"# Input gradient of a trained kxk conv, by form ({doc['date'][:10]}, "
             f"{doc['machine']})", "", f"Command: `{doc['command']}` (CPUs {doc['affinity']}).",
             "", f"Load: `{doc['uptime_start']}` at the start, `{doc['uptime_end']}` at the end "
             "(2 shared cores). Digits CNN of bench/studies/search_tasks.py (seed 0), batch 8, "
             "SGD; memory = peak live activations of `train` + variable bytes (what "
             "tfpock.search counts); step = median over interleaved rounds, ai-edge-litert, one "
             "thread; ratio against `patches` (the rule before). The forms are described in "
             "bench/studies/kxk_input_grad.py.", "",
             "| scheme | form | activations | variables | memory | step ms | step ratio | "
             "peak op | largest tensor at the peak |", "|---|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        name, shape, size = r["largest_at_peak"]
        lines.append(f"| `{r['scheme']}` | {r['form']} | {r['activation_bytes']:,} | "
                     f"{r['variable_bytes']:,} | {r['memory_bytes']:,} | {r['step_ms']:.3f} | "
                     f"{r['step_ratio']:.2f} | {r['peak_op']} | {shape} {size:,} B |")
    return "\n".join(lines) + "\n"


def define_flags() -> None:
    from absl import flags
    flags.DEFINE_list("schemes", ["full", "conv2:bias+conv3:full", "conv2:1/4+conv3:1/2",
                                  "conv2:1/8+conv3:1/4", "conv2:full+conv3:full"],
                      "Schemes: full, or layer:option+... (the head always trained).")
    flags.DEFINE_integer("rounds", 11, "Interleaved timing rounds.")
    flags.DEFINE_integer("steps", 200, "Timed steps per file per round.")
    cli.define_output_flags()
    flags.adopt_module_key_flags(cli)


if __name__ == "__main__":
    from absl import app
    define_flags()
    app.run(main)
