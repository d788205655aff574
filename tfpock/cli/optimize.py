"""Compile a saved Keras model into a builtin-only TFLite training model (host: TensorFlow).

    tfpock optimize MODEL.keras -o OUT.tflite [--loss NAME] [--from-logits]
        [--optimizer sgd|adam|adamw] [--learning-rate LR] [--scheme full|last:N|bias|S.json]
        [--batch-size N] [--report report.txt|report.json] [--unsafe]
        [--custom-objects MODULE] [--sample-weight]

MODEL is Keras' own ``.keras`` format (``model.save("model.keras")``), loaded in Keras' safe
mode: a Lambda layer (arbitrary Python in the file) is refused unless ``--unsafe`` says you
trust the file. Custom layers come from ``--custom-objects MODULE``: the module is imported
(from the current folder or the Python path); its ``CUSTOM_OBJECTS`` dict if it has one, else
its public classes and functions, are given to Keras (a module that registers its classes
with ``@keras.saving.register_keras_serializable`` needs only to be imported).

``--loss`` and ``--optimizer`` default to what the model was compiled with; ``--scheme``
says which weights a step trains (docs/schemes.md); ``--batch-size`` is the static batch of
the exported signatures. The file is written atomically (nothing under OUT on an error);
``--report`` writes what each pass did (``program.report()``; ``.json``: the records).

Examples:
    tfpock optimize model.keras -o model.tflite --loss sparse_categorical_crossentropy \\
        --from-logits --optimizer sgd --learning-rate 0.05 --scheme last:2 --batch-size 8
    tfpock optimize model.keras -o model.tflite --scheme scheme.json --report report.txt
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import os
import sys
import warnings
import zipfile

from absl import flags

from tfpock.cli._common import UsageError, import_keras_quietly, output_path, positional

OPTIMIZERS = ("sgd", "adam", "adamw")


def define_flags() -> None:
    flags.DEFINE_string("output", None, "The .tflite to write.", short_name="o")
    define_model_flags()
    flags.DEFINE_string("scheme", "full", "full, last:N, bias or a SCHEME.json.")
    flags.DEFINE_string("report", None, "Write the pass report here (.txt or .json).")
    flags.DEFINE_enum("nonfinite", "skip", ("skip", "apply"), "A step with NaN/inf: skip or "
                      "apply it.")
    flags.DEFINE_bool("sample-weight", False, "The train signature takes a weight per row: "
                      "fit and tfpock train then pad and mask a final partial batch instead "
                      "of leaving it out of the epoch (docs/concepts.md).")


def define_model_flags() -> None:
    """The flags of the Keras model and its training (also ``tfpock search``'s)."""
    flags.DEFINE_string("loss", None, "A loss name, e.g. sparse_categorical_crossentropy, "
                        "categorical_crossentropy, binary_crossentropy, mse, mae, huber "
                        "(default: the model's compiled loss).")
    flags.DEFINE_bool("from-logits", False, "The cross-entropy --loss takes logits.")
    flags.DEFINE_enum("optimizer", None, OPTIMIZERS, "Default: the model's compiled one.")
    flags.DEFINE_float("learning-rate", None, "The optimizer's learning rate (the device may "
                       "follow a schedule: tfpock train --lr-schedule).", lower_bound=0.0)
    flags.DEFINE_integer("batch-size", 32, "The static batch size of the signatures.",
                         lower_bound=1)
    flags.DEFINE_bool("unsafe", False, "Load the model with Keras' safe mode off (Lambda "
                      "layers run code from the file: only for files you trust).")
    flags.DEFINE_string("custom-objects", None, "A module with the model's custom layers.")


def _flag(name):
    return flags.FLAGS[name].value


def main(args: list[str]) -> int:
    path, = positional(args, "one MODEL.keras")
    if not _flag("output"):
        raise UsageError("-o/--output OUT.tflite is required")
    out = output_path(_flag("output"), "--output", (".tflite",))
    report = _flag("report")
    if report:
        output_path(report, "--report", (".txt", ".json"))
    model, loss, optimizer = load_for_training(path)
    import tfpock
    program = tfpock.optimize(model, loss=loss, optimizer=optimizer,
                              scheme=_flag("scheme"), batch_size=_flag("batch-size"),
                              nonfinite=_flag("nonfinite"),
                              sample_weight=_flag("sample-weight"))
    program.export(out)
    if report:
        _write_report(report, program)
    sys.stdout.write(f"wrote {out} ({os.path.getsize(out)} bytes): "
                     f"{len(program.trained_paths)} weights trained, "
                     f"{len(program.frozen_paths)} frozen"
                     + (f"; report {report}" if report else "") + "\n")
    return 0


def load_for_training(path: str):
    """(model, loss, optimizer) of ``MODEL.keras`` and the model flags (loss/optimizer
    None: the model's compiled ones); every refusal a :class:`UsageError`."""
    if not path.endswith(".keras"):
        raise UsageError(f"MODEL {path!r}: expected a .keras file (model.save('m.keras'))")
    if not os.path.isfile(path):
        raise UsageError(f"MODEL {path!r} does not exist")
    if not zipfile.is_zipfile(path):
        raise UsageError(f"MODEL {path!r} is not a Keras model file (a .keras file is a zip "
                         f"archive; this one is not)")
    keras = import_keras_quietly()   # before --custom-objects' module imports it loudly
    custom = _custom_objects(_flag("custom-objects"))
    model = _load(keras, path, custom, _flag("unsafe"))
    for what, given in (("loss", _flag("loss")), ("optimizer", _flag("optimizer"))):
        if given is None and getattr(model, what, None) is None:
            raise UsageError(f"--{what} is required: MODEL {path!r} was saved without a "
                             f"compiled {what}")
    return model, _loss(keras), _optimizer(keras, model)


def _custom_objects(module_name: str | None) -> dict:
    if not module_name:
        return {}
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"--custom-objects {module_name!r} cannot be imported: {exc}") from None
    finally:
        sys.path.pop(0)
    found = getattr(module, "CUSTOM_OBJECTS", None)
    if isinstance(found, dict):
        return found
    return {name: value for name, value in vars(module).items()
            if not name.startswith("_") and (inspect.isclass(value) or inspect.isfunction(value))
            and getattr(value, "__module__", None) == module.__name__}


def _load(keras, path: str, custom: dict, unsafe: bool):
    try:
        with warnings.catch_warnings():
            # tfpock builds its own optimizer state: a saved one's variables do not matter
            warnings.filterwarnings("ignore", "Skipping variable loading for optimizer")
            return keras.saving.load_model(path, custom_objects=custom, safe_mode=not unsafe)
    except Exception as exc:   # Keras raises ValueError, TypeError, zip and JSON errors
        text = " ".join(str(exc).split())
        if "safe_mode" in text or "Lambda" in text and "unsafe" in text.lower():
            raise UsageError(f"MODEL {path!r} holds a Lambda layer (Python code in the file); "
                             f"Keras' safe mode refuses to load it: pass --unsafe if you trust "
                             f"the file") from None
        if "Could not locate" in text or "Unknown layer" in text:
            raise UsageError(f"MODEL {path!r} uses a class Keras does not know ({text[:300]}); "
                             f"pass --custom-objects MODULE with its definition") from None
        raise UsageError(f"MODEL {path!r} could not be loaded by Keras: "
                         f"{type(exc).__name__}: {text[:300]}") from None


def _loss(keras):
    name = _flag("loss")
    if name is None:
        return None
    from tfpock.losses import resolve_loss
    loss = resolve_loss(name)
    if _flag("from-logits"):
        config = loss.get_config()
        if "from_logits" not in config:
            raise UsageError(f"--from-logits: loss {name!r} takes no logits option")
        loss = type(loss)(**{**config, "from_logits": True})
    return loss


def _optimizer(keras, model):
    name, lr = _flag("optimizer"), _flag("learning-rate")
    if name is None and lr is None:
        return None
    if name is None:
        if not getattr(model, "optimizer", None):
            raise UsageError("--learning-rate without --optimizer: the model has no compiled "
                             "optimizer to take it")
        optimizer = model.optimizer
    else:
        optimizer = keras.optimizers.get(name)
    config = optimizer.get_config()
    if lr is not None:
        config["learning_rate"] = lr
    return type(optimizer).from_config(config)


def _write_report(path: str, program) -> None:
    from tfpock.runtime.atomic import write_atomically
    if path.endswith(".json"):
        doc = {"report": program.report(), "layers": program.layer_table(),
               "passes": {g: [dataclasses.asdict(r) for r in records]
                          for g, records in program.pass_records.items()},
               "metadata": program.metadata}
        text = json.dumps(doc, indent=1, default=str)
    else:
        text = program.report() + "\n"
    write_atomically(path, lambda f: f.write(text.encode()))
