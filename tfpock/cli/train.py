"""Train a tfpock model on the device, from data files (no TensorFlow).

    tfpock train FILE.tflite --data train.npz [--val val.npz] --epochs E
        [--learning-rate LR] [--lr-schedule constant|cosine|step] [--checkpoint ckpt.npz
        --every N] [--resume] [--early-stopping PATIENCE] [--log log.csv] [--plot curve.png]

FILE is a training model ``tfpock optimize`` wrote. Data: ``data.npz`` with arrays ``x``
and ``y`` (a model with several inputs: an array per input name, e.g. ``token_ids`` and
``padding_mask``, and ``y``; any .npz may add ``sample_weight``, the loss's weight of each row
or label, for a model compiled with ``--sample-weight``); ``x.npy,y.npy``; or ``data.csv``
(label in the last column); shapes and dtypes are checked against the model first
(``tfpock inspect FILE`` shows what it takes). Batches are the model's compiled batch
size, each epoch in a new order (``--seed``); a final partial batch is padded and masked for
a model compiled with ``tfpock optimize --sample-weight``, else left out of the epoch and
counted (``rows_skipped``, docs/concepts.md).

Each epoch prints its loss (and, for classifiers, accuracy; with ``--val``, val_loss and
val_accuracy); on a terminal a progress bar runs under it. ``--checkpoint`` saves every
variable and the position every ``--every`` steps and at the end (atomically: a ``kill -9``
leaves the previous checkpoint whole); the same command with ``--resume`` continues from it
and ends with the result of an uninterrupted run. ``--log`` writes the history as CSV after
every epoch, ``--plot`` the loss curve as PNG (needs matplotlib).

Examples:
    tfpock train model.tflite --data train.npz --val val.npz --epochs 5
    tfpock train model.tflite --data x.npy,y.npy --epochs 20 --lr-schedule cosine \\
        --checkpoint ckpt.npz --every 100 --log log.csv --plot curve.png
    tfpock train model.tflite --data x.npy,y.npy --epochs 20 --lr-schedule cosine \\
        --checkpoint ckpt.npz --every 100 --log log.csv --resume     # after an interruption
"""
from __future__ import annotations

import csv
import io
import os

from absl import flags

from tfpock.cli._common import Progress, UsageError, output_path, positional, read_input

SCHEDULES = ("constant", "cosine", "step")
LOG_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "rows_skipped",
               "skipped_steps")


def define_flags() -> None:
    flags.DEFINE_string("data", None, "Training data: DATA.npz (x, y), X.npy,Y.npy or DATA.csv.")
    flags.DEFINE_string("val", None, "Validation data, the same forms (val_loss, val_accuracy).")
    flags.DEFINE_integer("epochs", 1, "Passes over the data.", lower_bound=1)
    flags.DEFINE_float("learning-rate", None, "Initial learning rate (default: the optimizer's "
                       "in the file).", lower_bound=0.0)
    flags.DEFINE_enum("lr-schedule", "constant", SCHEDULES,
                      "constant; cosine: to --lr-final over all steps; step: times "
                      "--lr-factor every --lr-every steps.")
    flags.DEFINE_float("lr-final", 0.0, "cosine: the rate at the last step.", lower_bound=0.0)
    flags.DEFINE_float("lr-factor", 0.5, "step: the factor.", lower_bound=0.0)
    flags.DEFINE_integer("lr-every", None, "step: steps between drops (default: an epoch).",
                         lower_bound=1)
    flags.DEFINE_integer("batch-size", None, "Must be the compiled one (default: it).")
    flags.DEFINE_bool("shuffle", True, "A new order every epoch (--noshuffle: file order).")
    flags.DEFINE_integer("seed", 0, "Seed of the epochs' orders.")
    flags.DEFINE_string("checkpoint", None, "Checkpoint .npz: every variable and the position.")
    flags.DEFINE_integer("every", None, "Steps between checkpoints (default: an epoch).",
                         lower_bound=1)
    flags.DEFINE_bool("resume", False, "Continue from --checkpoint (same data and flags).")
    flags.DEFINE_integer("early-stopping", None, "Stop after this many epochs without a better "
                         "val_loss (loss without --val).", lower_bound=0)
    flags.DEFINE_string("log", None, "Write the history to this CSV file after every epoch.")
    flags.DEFINE_string("plot", None, "Write the loss curve to this PNG (needs matplotlib).")
    flags.DEFINE_string("runtime", "auto", "auto, ai-edge-litert or tflite-runtime.")
    flags.DEFINE_integer("threads", None, "Interpreter threads.", lower_bound=1)


def _flag(name):
    return flags.FLAGS[name].value


def main(args: list[str]) -> int:
    path, = positional(args, "one FILE.tflite")
    f = flags.FLAGS
    if not f.data:
        raise UsageError("--data is required (DATA.npz, X.npy,Y.npy or DATA.csv)")
    if f.resume and not f.checkpoint:
        raise UsageError("--resume needs --checkpoint, the file to continue from")
    if f.resume and not os.path.isfile(f.checkpoint):
        raise UsageError(f"--resume: checkpoint {f.checkpoint!r} does not exist")
    if f.checkpoint:
        output_path(f.checkpoint, "--checkpoint", (".npz",))
    if f.log:
        output_path(f.log, "--log", (".csv",))
    if f.plot:
        output_path(f.plot, "--plot", (".png",))
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError("--plot needs matplotlib (pip install matplotlib)") from None
    metadata = _read_model(path)

    from tfpock.runtime import Trainer, data
    from tfpock.runtime import fit as fitting
    x_spec = _input_spec(metadata)
    x, y = data.load(f.data, x_spec, metadata["y"])
    weight = data.sample_weight(f.data, len(y))
    val = None
    if f.val:
        vx, vy = data.load(f.val, x_spec, metadata["y"])
        val = (vx, vy, data.sample_weight(f.val, len(vy)))
    if f.resume:
        _check_checkpoint(f.checkpoint, metadata)
    compiled = fitting.compiled_batch(metadata)
    if _flag("batch-size") not in (None, compiled):
        raise UsageError(f"--batch-size {_flag('batch-size')}: the model was compiled for "
                         f"batches of {compiled} (tfpock optimize --batch-size)")
    trainer = Trainer(path, runtime=f.runtime.replace("_", "-"), num_threads=f.threads)
    size = fitting.batch_size(trainer)
    steps_per_epoch = max(1, len(x) // size)
    lr = trainer.learning_rate if _flag("learning-rate") is None else _flag("learning-rate")
    schedule = {
        "constant": lambda: fitting.constant(lr),
        "cosine": lambda: fitting.cosine(lr, f.epochs * steps_per_epoch, _flag("lr-final")),
        "step": lambda: fitting.step_decay(lr, _flag("lr-every") or steps_per_epoch,
                                           _flag("lr-factor")),
    }[_flag("lr-schedule")]()
    progress = Progress(steps_per_epoch, "epoch")
    callbacks = [_Report(progress, f.epochs, steps_per_epoch, f.log, f.plot)]
    if f.checkpoint:
        callbacks.append(fitting.ModelCheckpoint(f.checkpoint, f.every or steps_per_epoch))
    if _flag("early-stopping") is not None:
        callbacks.append(fitting.EarlyStopping("val_loss" if val else "loss",
                                               patience=_flag("early-stopping")))
    try:
        history = trainer.fit(x, y, sample_weight=weight, epochs=f.epochs,
                              batch_size=_flag("batch-size"),
                              validation_data=val, shuffle=f.shuffle, seed=f.seed,
                              learning_rate=schedule, callbacks=callbacks,
                              resume=f.checkpoint if f.resume else None)
    finally:
        progress.close()
    done = len(history.get("loss", []))
    progress.stage(f"trained {done} epoch(s)" + (f"; checkpoint {f.checkpoint}" if f.checkpoint
                                                 else "; no --checkpoint: weights not kept"))
    return 0


def _input_spec(metadata: dict) -> dict:
    """The model's ``x`` spec, or ``{name: spec}`` for a model with several inputs (their
    files list ``inputs`` and have no ``x``)."""
    inputs = metadata.get("inputs")
    if inputs and [s["name"] for s in inputs] != ["x"]:
        return {s["name"]: {"shape": s["shape"], "dtype": s["dtype"]} for s in inputs}
    return metadata["x"]


def _read_model(path: str) -> dict:
    """The file's tfpock metadata, read from the flatbuffer before an interpreter loads it
    (so that every input is checked first); a Flex or custom op is named here, before the
    interpreter refuses the file less clearly. The Trainer checks the metadata again."""
    from tfpock.tflite import describe, model_file
    content = read_input(path, "FILE")
    try:
        parsed = model_file.read(content)
    except Exception as exc:   # a damaged flatbuffer can fail anywhere inside the reader
        raise UsageError(f"FILE {path!r} is not a TFLite model ({exc})") from None
    custom = parsed.custom_ops()
    if custom:
        raise UsageError(f"FILE {path!r} contains ops the device runtimes cannot run: "
                         f"{', '.join(custom)} (Flex ops need TensorFlow linked in); compile "
                         f"the model with tfpock optimize, which writes builtin ops only")
    metadata = describe.tfpock_metadata(parsed)
    if metadata is None or not all(k in metadata for k in ("y", "variables")) or not (
            "x" in metadata or metadata.get("inputs")):
        raise UsageError(f"FILE {path!r} is a TFLite model but not a tfpock training model "
                         f"(no tfpock metadata signature); tfpock optimize writes one")
    return metadata


def _check_checkpoint(path: str, metadata: dict) -> None:
    """``--resume``: the checkpoint must be whole and of this model (checked again, with the
    position, when the fit restores it)."""
    import numpy as np

    from tfpock.runtime import checkpoint
    expected = {v["name"]: (tuple(v["shape"]), np.dtype(v["dtype"]))
                for v in metadata["variables"]}
    checkpoint.load(path, expected, checkpoint.fingerprint(metadata),
                    checkpoint.describe(metadata))


class _Report:
    """Per epoch: a line, the --log CSV and the --plot PNG (atomically); a bar per step."""

    def __init__(self, progress, epochs, steps, log, plot):
        self.progress, self.epochs, self.steps, self.log, self.plot = (progress, epochs, steps,
                                                                        log, plot)

    def on_train_begin(self, loop):
        if loop.step:
            self.progress.stage(f"resumed at epoch {loop.epoch + 1}, step {loop.step}")

    def on_batch_begin(self, loop):
        pass

    def on_batch_end(self, loop, logs):
        self.progress.update(1, loss=logs["loss"])

    def on_epoch_end(self, loop, logs):
        shown = "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in logs.items() if k not in ("skipped_steps", "rows_skipped")
                          or v)
        self.progress.stage(f"epoch {loop.epoch}/{self.epochs}: {shown}")
        if self.log:
            _write_log(self.log, loop.history)
        if self.plot:
            _write_plot(self.plot, loop.history)

    def on_train_end(self, loop):
        pass

    def state(self):
        return {}

    def load_state(self, state):
        pass


def _write_log(path: str, history: dict) -> None:
    from tfpock.runtime.atomic import write_atomically
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    columns = [c for c in LOG_COLUMNS if c == "epoch" or c in history]
    writer.writerow(columns)
    for i in range(len(history["loss"])):
        writer.writerow([i + 1] + [repr(history[c][i]) for c in columns[1:]])
    write_atomically(path, lambda f: f.write(text.getvalue().encode()))


def _write_plot(path: str, history: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from tfpock.runtime.atomic import write_atomically
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = range(1, len(history["loss"]) + 1)
    for key in ("loss", "val_loss"):
        if key in history:
            ax.plot(epochs, history[key], marker="o", label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    write_atomically(path, lambda f: f.write(buffer.getvalue()))
