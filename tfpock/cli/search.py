"""Search the sparse scheme with the best accuracy gain under a memory/time budget (host).

    tfpock search MODEL.keras --data train.npz --val val.npz -o SEARCH_DIR
        [--memory-budget BYTES] [--step-ms MS] [--loss NAME] [--from-logits]
        [--optimizer sgd|adam|adamw] [--learning-rate LR] [--batch-size N] [--base LAYER,...]
        [--steps 20] [--seeds 3] [--unsafe] [--custom-objects MODULE]

PockEngine's per-layer contribution analysis (``tfpock.search``): every layer's options (bias
only, the first 1/8 .. all of its input channels) are fine-tuned briefly on ``--data`` beside
a base that always trains (``--base``, default the last layer with weights); their gain on
``--val`` and their exact cost (training memory: the exported train signature's activation
peak plus its variables; step time on ai-edge-litert, one thread) feed a knapsack under the
budget, checked and refined (README, "Searching a scheme under a budget"). Data: ``.npz``
with ``x`` and ``y``, ``X.npy,Y.npy`` or CSV (label last), as for ``tfpock train``.

SEARCH_DIR gets scheme.json (for ``tfpock optimize --scheme``), table.csv/.json, report.md,
summary.json and plot.png, all or nothing. Results are cached (``$XDG_CACHE_HOME/tfpock``), so
another budget for the same model and data re-runs only the selection.

Examples:
    tfpock search model.keras --data train.npz --val val.npz --memory-budget 300000 \\
        --loss sparse_categorical_crossentropy --from-logits --optimizer sgd \\
        --learning-rate 0.05 --batch-size 8 -o search/
    tfpock optimize model.keras -o model.tflite --scheme search/scheme.json --batch-size 8
"""
from __future__ import annotations

import os
import sys

from absl import flags

from tfpock.cli._common import UsageError, positional
from tfpock.cli.optimize import define_model_flags, load_for_training


def define_flags() -> None:
    flags.DEFINE_string("output", None, "The folder to write the result to.", short_name="o")
    flags.DEFINE_string("data", None, "Training data: DATA.npz (x, y), X.npy,Y.npy or DATA.csv.")
    flags.DEFINE_string("val", None, "Validation data (what the gain is measured on).")
    flags.DEFINE_integer("memory-budget", None, "Training memory bound, bytes.", lower_bound=1)
    flags.DEFINE_float("step-ms", None, "Step time bound, ms (one thread).", lower_bound=0.0)
    flags.DEFINE_list("base", None, "Layers always trained (default: the last with weights).")
    flags.DEFINE_integer("steps", 20, "Optimizer steps of each brief fine-tuning run.",
                         lower_bound=1)
    flags.DEFINE_integer("seeds", 3, "Batch orders each gain is averaged over.", lower_bound=1)
    flags.DEFINE_enum("costs", "exact", ["exact", "predicted"],
                      "Each option's cost: compiled (exact) or predicted from --depth-compiles "
                      "compiles (for models with many layers, e.g. MobileNetV2).")
    flags.DEFINE_integer("depth-compiles", 8, "Compiles along the depth with --costs "
                         "predicted.", lower_bound=2)
    flags.DEFINE_integer("confirm", 6, "Finalists re-measured by a probe as long as the "
                         "fine-tuning (0: the short probe decides).", lower_bound=0)
    flags.DEFINE_float("confirm-epochs", 20.0, "That probe's length, epochs over --data.",
                       lower_bound=0.0)
    flags.DEFINE_integer("confirm-cached", None, "--confirm for a budget whose contributions "
                         "come from the cache (default --confirm; 0: keep the short probe's "
                         "pick, a new budget in seconds).", lower_bound=0)
    define_model_flags()


def _flag(name):
    return flags.FLAGS[name].value


def main(args: list[str]) -> int:
    path, = positional(args, "one MODEL.keras")
    for name in ("output", "data", "val"):
        if not _flag(name):
            raise UsageError(f"--{name} is required")
    out = _flag("output")
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--output {out!r} exists and is not a folder")
    model, loss, optimizer = load_for_training(path)
    import tfpock
    from tfpock.losses import label_spec, resolve_loss
    from tfpock.runtime.data import load
    batch = _flag("batch-size")
    x_spec = {"shape": [batch, *model.inputs[0].shape[1:]], "dtype": model.inputs[0].dtype}
    label = label_spec(resolve_loss(loss or model.loss), batch,
                       tuple(model.outputs[0].shape[1:]))
    y_spec = {"shape": list(label.shape), "dtype": label.dtype.name}
    train, val = (load(_flag(k), x_spec, y_spec) for k in ("data", "val"))
    budget = tfpock.Budget(memory_bytes=_flag("memory-budget"), step_ms=_flag("step-ms"))
    result = tfpock.search(model, train, val, loss or model.loss, optimizer or model.optimizer,
                           budget, batch_size=batch, base=_flag("base"), steps=_flag("steps"),
                           seeds=_flag("seeds"), costs=_flag("costs"),
                           depth_compiles=_flag("depth-compiles"), confirm=_flag("confirm"),
                           confirm_epochs=_flag("confirm-epochs"),
                           confirm_cached=_flag("confirm-cached"))
    result.save(out)
    chosen = result.summary["chosen"]
    sys.stdout.write(f"wrote {out}: scheme {os.path.join(out, 'scheme.json')} "
                     f"({chosen['choice']})\n")
    return 0
