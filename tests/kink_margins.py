"""How close MobileNetV2's chaotic comparisons come to their allowance, on this CPU's kernels.

Not a test: a measurement behind ``tests.reference.assert_kink_tolerant`` (the figures in its
docstring and in issue 9's closing note). For the equivalence schemes (full, last:2, bias; two
batches) and the sparse scheme's five steps (SGD, Adam), one step of the TF host program and
of ai-edge-litert against the GradientTape reference; per step the worst weight's relative L2
error of the update, the 99.9th-percentile error over its allowance (1e-4 + 4x the reference's
sensitivity to a 1e-6 input nudge) and the largest absolute error.

Run: ``TF_ENABLE_ONEDNN_OPTS=0 python -m tests.kink_margins`` (and ``=1``); a few minutes.
"""
from __future__ import annotations

import os
import tempfile

import keras
import numpy as np

import tfpock
from tests import test_equivalence as eq
from tests import test_sparse_updates as sparse
from tfpock.runtime import Trainer


def margins(values, start, expected, sensitivity) -> tuple[float, float, float, str]:
    """(worst relative L2 error of an update, worst percentile / allowance, max abs error,
    the weight with the worst relative error)."""
    rows = []
    for path, value in values.items():
        error = np.abs(value - expected[path])
        allowance = 1e-4 + 4 * sensitivity.get(path, 0.0)
        update = np.linalg.norm(expected[path] - start[path])
        rows.append((float(np.linalg.norm(error) / max(update, 1e-30)),
                     float(np.percentile(error, 99.9) / allowance), float(error.max()), path))
    worst = max(rows)
    return worst[0], max(r[1] for r in rows), max(r[2] for r in rows), worst[3]


def show(tag: str, figures) -> None:
    rel, pct, err, path = figures
    print(f"{tag:<34} update off {rel:8.2e} in norm ({path}); 99.9th pct / allowance "
          f"{pct:5.2f}; max abs {err:.2e}", flush=True)


def equivalence() -> None:
    for scheme in eq.SCHEMES:
        model = eq.BUILDERS["mobilenet_v2"]()
        compile_args = dict(loss=eq.loss_fn(), optimizer=keras.optimizers.SGD(eq.LR),
                            scheme=scheme, batch_size=eq.BATCH)
        path = os.path.join(tempfile.mkdtemp(), "model.tflite")
        tfpock.optimize(model, **compile_args).export(path)
        for seed in (0, 1):
            x, y = eq.batch_for(model, seed=seed)
            host = tfpock.optimize(eq.BUILDERS["mobilenet_v2"](), **compile_args)
            _, start, _, after, sens = eq.reference_after_step("mobilenet_v2",
                                                               host.trained_paths, x, y)
            host.train_step(x, y)
            device = Trainer(path)
            device.train(x, y)
            print(f"{scheme} batch {seed}: the reference's largest sensitivity "
                  f"{max(sens.values()):.3g}")
            show(f"{scheme} batch {seed} host", margins(host.weights(), start, after, sens))
            show(f"{scheme} batch {seed} device", margins(device.weights(), start, after, sens))
            show(f"{scheme} batch {seed} device vs host",
                 margins(device.weights(), start, host.weights(), sens))


def sparse_steps() -> None:
    for optimizer in ("sgd", "adam"):
        model = sparse.MODELS["mobilenet_v2"][0]()
        path = os.path.join(tempfile.mkdtemp(), "model.tflite")
        tfpock.optimize(model, loss=sparse.loss_fn(), optimizer=sparse.OPTIMIZERS[optimizer](),
                        scheme=sparse.MOBILENET_SCHEME, batch_size=sparse.BATCH).export(path)
        trainer = Trainer(path)
        ref = sparse.reference("mobilenet_v2", optimizer)
        spares = [sparse.reference("mobilenet_v2", optimizer) for _ in range(2)]
        for i, (x, y) in enumerate(sparse.batches(model)):
            start = trainer.state()
            ref.load(start)
            ref.step(x, y)
            trainer.train(x, y)
            after = {**ref.weights(), **ref.slots()}
            sens = sparse.nudge_sensitivity(spares, start, x, y, after)
            state = trainer.state()
            show(f"sparse {optimizer} step {i}",
                 margins({k: state[k] for k in ref.trained}, start, after, sens))


if __name__ == "__main__":
    equivalence()
    sparse_steps()
