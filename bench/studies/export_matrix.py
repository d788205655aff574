"""A behaviour fingerprint of the compiler: for 12 model/scheme/option cases, the exported
file's sha256, every pass record (both phases) and the report, to compare two commits.

    python -m bench.studies.export_matrix --out before.json     # at one commit
    python -m bench.studies.export_matrix --out after.json      # at another
    python -m bench.studies.export_matrix --compare before.json,after.json

A refactor that means to change nothing must print ``DIFFERENCES: 0`` (dict order inside
stats and report lines is ignored: Counter ties are unordered). Issue 10's refactor was
checked this way (with ``skip_passes=``/``reorder=`` spelled as that commit's API had them).
"""
from __future__ import annotations

import hashlib
import json

from absl import app, flags

FLAGS = flags.FLAGS

CNN_SCHEME = {"default": "frozen", "layers": {
    "conv_s2": "frozen", "conv_dil": "full", "dw": {"weight_channels": 5, "bias": False},
    "conv_1x1": {"weight_fraction": 0.25, "bias": True},
    "sep": {"weight_channels": 3, "bias": True}, "gate": "bias",
    "conv1d": {"weight_channels": 4, "bias": False},
    "fc_flat": {"weight_fraction": 0.25, "bias": True}, "fc_mid": "bias", "logits": "full"}}
MOBILENET_SCHEME = {"default": "frozen", "layers": {
    "block_16_expand": "frozen", "block_16_depthwise": {"weight_channels": 16},
    "block_16_project": {"weight_fraction": 0.25, "bias": True}, "Conv_1": "full",
    "predictions": "bias"}}
BN_SCHEME = {"default": "frozen", "layers": {
    "conv_a": "full", "bn_a": "full", "conv_b": {"weight_fraction": 0.5, "bias": True},
    "bn_b": "bias", "conv_c": {"weight_channels": 3, "bias": False}, "logits": "full"}}
ALL_OFF = ("prune", "narrow", "fold_bn", "sink_scale", "fold_constants", "dce", "fuse")


def define_flags() -> None:
    flags.DEFINE_string("out", None, "Write the fingerprint of this checkout to this JSON.")
    flags.DEFINE_list("compare", None, "Two JSON files to compare, A.json,B.json.")


def cases():
    from tfpock.testing import models
    mnv2 = lambda: models.mobilenet_v2(size=96)  # noqa: E731
    off = {name: False for name in ALL_OFF}
    return [
        ("mlp-full", models.mlp, "full", "sgd", {}),
        ("mlp-full-adam", models.mlp, "full", "adam", {}),
        ("cnn-sparse", models.every_layer_cnn, CNN_SCHEME, "sgd", {"debug": True}),
        ("cnn-sparse-reorder", models.every_layer_cnn, CNN_SCHEME, "sgd",
         {"passes": {"reorder": True}}),
        ("cnn-full-nofuse", models.every_layer_cnn, "full", "sgd", {"passes": {"fuse": False}}),
        ("cnn-full-offall", models.every_layer_cnn, "full", "sgd", {"passes": off}),
        ("bn-sparse", models.bn_cnn, BN_SCHEME, "momentum", {}),
        ("bn-last2", models.bn_cnn, "last:2", "sgd", {}),
        ("mnv2-last2", mnv2, "last:2", "sgd", {"passes": {"reorder": True}}),
        ("mnv2-sparse", mnv2, MOBILENET_SCHEME, "sgd", {}),
        ("mnv2-full", mnv2, "full", "sgd", {"passes": {"reorder": True}, "debug": True}),
        ("mnv2-bias", mnv2, "bias", "sgd", {}),
    ]


def fingerprint() -> dict:
    import keras

    import tfpock
    optimizers = {"sgd": lambda: keras.optimizers.SGD(0.05),
                  "adam": lambda: keras.optimizers.Adam(1e-3),
                  "momentum": lambda: keras.optimizers.SGD(0.05, momentum=0.9)}
    out = {}
    for name, build, scheme, optimizer, options in cases():
        program = tfpock.optimize(build(), loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True), optimizer=optimizers[optimizer](), scheme=scheme, batch_size=4,
            **options)
        content = program.to_tflite()
        records = {g: [{"name": r.name, "ops": [r.ops_before, r.ops_after],
                        "modified": r.modified, "stats": r.stats,
                        "peaks": [r.peak_live_before, r.peak_live_after]} for r in rs]
                   for g, rs in program.pass_records.items()}
        out[name] = {"sha": hashlib.sha256(content).hexdigest(), "size": len(content),
                     "records": records, "report": program.report()}
    return out


def differences(a: dict, b: dict) -> list[str]:
    def lines(text):   # report lines as bags of words: dict order is not behaviour
        table = str.maketrans("{},:'", "     ")
        return sorted(" ".join(sorted(line.translate(table).split()))
                      for line in text.splitlines())
    found = []
    for name in a:
        if name not in b:
            found.append(f"{name}: missing")
            continue
        if a[name]["sha"] != b[name]["sha"]:
            found.append(f"{name}: file differs ({a[name]['size']} vs {b[name]['size']} bytes)")
        if json.dumps(a[name]["records"], sort_keys=True, default=str) != json.dumps(
                b[name]["records"], sort_keys=True, default=str):
            found.append(f"{name}: pass records differ")
        if lines(a[name]["report"]) != lines(b[name]["report"]):
            found.append(f"{name}: report differs")
    return found


def main(argv):
    del argv
    if FLAGS.compare:
        a, b = (json.load(open(path)) for path in FLAGS.compare)
        found = differences(a, b)
        print("\n".join(found + [f"DIFFERENCES: {len(found)}"]))
        return
    if not FLAGS.out:
        raise app.UsageError("--out FILE.json or --compare A.json,B.json")
    with open(FLAGS.out, "w") as f:
        json.dump(fingerprint(), f, indent=1, sort_keys=True, default=str)


if __name__ == "__main__":
    define_flags()
    app.run(main)
