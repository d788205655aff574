"""Language models: a plain Keras decoder (token ids and a padding mask in, next-token logits
out) trained one step on ai-edge-litert and in the host program equals one GradientTape step.

The decoder (``tfpock.testing.models.decoder``) has every transformer piece the lowering has
to carry: ``Embedding`` (its gradient is a gather's: UNSORTED_SEGMENT_SUM), causal
``MultiHeadAttention`` with a padding mask (EinsumDense projections: batch-matmul gradients;
softmax), ``LayerNormalization`` or ``RMSNormalization`` (Rsqrt gradients), GELU or a SiLU
gate through an ``EinsumDense``, residual adds. The loss is next-token cross-entropy weighted
by the padding mask (``sample_weight``), as KerasHub's ``CausalLM`` trains. Tolerances are the
acceptance's: loss 1e-5 relative, every weight 1e-4.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import keras
import numpy as np
import pytest

import tfpock
from tests.numerics import assert_close
from tests.portability.test_runtime_portability import tflite_runtime_python  # noqa: F401
from tests.reference import Reference
from tfpock.runtime import Trainer
from tfpock.runtime.validate import InputError
from tfpock.tflite import model_file
from tfpock.testing import models

LR = 0.05
BATCH, SEQ, VOCAB = 2, 8, 64
REPO = Path(__file__).resolve().parents[1]


def norms_and_biases(model: keras.Model) -> dict:
    """Every norm's scale and offset and every bias (a scheme issue 13 names)."""
    norms = [l.name for l in model.layers
             if isinstance(l, (keras.layers.LayerNormalization, keras.layers.RMSNormalization))]
    return {"default": "bias", "layers": {name: "full" for name in norms}}


def last_block(model: keras.Model) -> dict:
    return tfpock.Scheme.last_blocks(model, 1, pattern=r"block_\d+").to_dict()


def mlp_half(model: keras.Model) -> dict:
    """The last block's MLP projections on the first half of their input channels: the
    SwiGLU gate is an EinsumDense in Dense form (``btd,df->btf``), the others Dense."""
    return {"default": "frozen", "layers": {
        name: {"weight_fraction": 0.5} for name in ("block_1_mlp_gate", "block_1_mlp_up",
                                                    "block_1_mlp_down")}}


SCHEMES = {"full": lambda model: {"default": "full", "layers": {}},
           "last_block": last_block, "norms_and_biases": norms_and_biases,
           "mlp_half": mlp_half}
# (mlp, norm, scheme): each scheme once, to keep the file fast (GELU and LayerNormalization
# are differentiated by the norms-and-biases case: its biases reach back to the embedding's
# block 0; tests/test_keras_hub.py trains RMS norms and SiLU gates fully too)
CASES = [("swiglu", "rms", "full"), ("swiglu", "rms", "last_block"),
         ("gelu", "layer", "norms_and_biases"), ("swiglu", "rms", "mlp_half")]


def batch(seed: int = 0):
    rng = np.random.default_rng(seed)
    mask = np.ones((BATCH, SEQ), np.int32)
    mask[1, 5:] = 0   # the second sequence is padded: its last 3 tokens weigh nothing
    x = {"token_ids": rng.integers(1, VOCAB, (BATCH, SEQ)).astype(np.int32) * mask,
         "padding_mask": mask}
    y = rng.integers(0, VOCAB, (BATCH, SEQ)).astype(np.int32)
    return x, y, mask.astype(np.float32)


def loss_fn():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture(scope="module", params=CASES, ids="-".join)
def compiled(request, tmp_path_factory):
    mlp, norm, scheme_name = request.param
    model = models.decoder(mlp=mlp, norm=norm, vocab=VOCAB, seq=SEQ)
    scheme = SCHEMES[scheme_name](model)
    program = tfpock.optimize(model, loss=loss_fn(), optimizer=keras.optimizers.SGD(LR),
                              scheme=scheme, batch_size=BATCH, sample_weight=True)
    path = tmp_path_factory.mktemp("lm") / "model.tflite"
    program.export(path)
    return request.param, scheme, program, path


def test_step_matches_gradient_tape(compiled):
    (mlp, norm, _), scheme, program, path = compiled
    x, y, weights = batch()
    reference = Reference(models.decoder(mlp=mlp, norm=norm, vocab=VOCAB, seq=SEQ), scheme,
                          keras.optimizers.SGD(LR), loss_fn())
    before = reference.weights()
    assert sorted(reference.trained) == sorted(program.trained_paths)
    trainer = Trainer(path)
    assert_close(trainer.infer(x), reference.model(x, training=False).numpy(), rtol=1e-4,
                 atol=1e-5, where="infer before the step")
    ref_loss = reference.step(x, y, sample_weight=weights)
    after = reference.weights()
    for engine, out, state in [
            ("ai-edge-litert", trainer.train(x, y, sample_weight=weights), trainer.weights),
            ("TF program", program.train_step(x, y, sample_weight=weights), program.weights)]:
        assert out["applied"]
        assert_close(out["loss"], ref_loss, rtol=1e-5, where=f"{engine}: loss")
        new = state()
        assert sorted(new) == sorted(program.trained_paths)
        moved = [p for p in new if not np.array_equal(new[p], before[p])]
        assert len(moved) >= len(new) // 2, f"{engine}: only {moved} changed"
        for p, value in new.items():
            assert_close(value, after[p], atol=1e-4, where=f"{engine}: weight {p}")
    assert_close(trainer.infer(x), reference.model(x, training=False).numpy(), rtol=1e-4,
                 atol=1e-5, where="infer after the step")


def test_file_is_builtin_only_with_named_inputs(compiled):
    _, _, program, path = compiled
    parsed = model_file.read(path.read_bytes())
    assert parsed.custom_ops() == []
    trainer = Trainer(path)
    assert list(trainer.input_specs) == ["padding_mask", "token_ids"]
    assert program.metadata["sample_weight"]["shape"] == [BATCH, SEQ]
    assert "x" not in program.metadata


def test_padding_weighs_nothing(compiled):
    """Changing a label the padding mask hides changes neither the loss nor the update."""
    _, _, _, path = compiled
    x, y, weights = batch()
    flipped = y.copy()
    flipped[1, 6] = (y[1, 6] + 1) % VOCAB
    first, second = Trainer(path), Trainer(path)
    assert first.train(x, y, sample_weight=weights)["loss"] == \
        second.train(x, flipped, sample_weight=weights)["loss"]
    for p, value in first.weights().items():
        np.testing.assert_array_equal(value, second.weights()[p], err_msg=p)


def test_inputs_must_be_a_dict_of_the_input_names(compiled):
    _, _, program, path = compiled
    x, y, _ = batch()
    trainer = Trainer(path)
    with pytest.raises(InputError, match="padding_mask, token_ids"):
        trainer.train(x["token_ids"], y)
    with pytest.raises(InputError, match="keys"):
        trainer.infer({"token_ids": x["token_ids"]})
    with pytest.raises(InputError, match="keys"):
        program.train_step({**x, "segment_ids": x["token_ids"]}, y)


@pytest.fixture(scope="module")
def gelu_layer_full(tmp_path_factory):
    """The GELU + LayerNormalization decoder, full scheme: the one of the suite's models where
    TFLite's in-place buffer sharing went wrong (``tfpock/tflite/inplace.py``), exported, and
    GradientTape's step on it."""
    model = models.decoder(mlp="gelu", norm="layer", vocab=VOCAB, seq=SEQ)
    scheme = SCHEMES["full"](model)
    program = tfpock.optimize(model, loss=loss_fn(), optimizer=keras.optimizers.SGD(LR),
                              scheme=scheme, batch_size=BATCH, sample_weight=True)
    path = program.export(tmp_path_factory.mktemp("gelu-layer") / "model.tflite")
    [record] = [r for r in program.pass_records["export"] if r.name == "inplace"]
    reference = Reference(models.decoder(mlp="gelu", norm="layer", vocab=VOCAB, seq=SEQ),
                          scheme, keras.optimizers.SGD(LR), loss_fn())
    x, y, weights = batch()
    loss = reference.step(x, y, sample_weight=weights)
    return path, record, loss, reference.weights()


def assert_step(loss, weights, ref_loss, ref_weights, where):
    assert_close(loss, ref_loss, rtol=1e-5, where=f"{where}: loss")
    assert sorted(weights) == sorted(ref_weights)
    for p, value in weights.items():
        assert_close(value, ref_weights[p], atol=1e-4, where=f"{where}: weight {p}")


def test_step_without_a_delegate_matches_gradient_tape(gelu_layer_full):
    """On ai-edge-litert's builtin kernels with no delegate, whose memory plan is tflite-runtime
    2.14's: without the inplace pass the planner wrote a MUL over the final norm's output
    before the LM head read it, and the loss was 3.373 instead of 3.421."""
    from ai_edge_litert.interpreter import OpResolverType
    path, record, ref_loss, ref_weights = gelu_layer_full
    [(deferred, left)] = [(len(s["defer"]), s["left"])
                          for s in record.stats["subgraphs"].values()]
    assert (deferred, left) == (1, 0)   # RESHAPE(final norm) * lr, after the LM head
    x, y, weights = batch()
    trainer = Trainer(path, experimental_op_resolver_type=(
        OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES))
    out = trainer.train(x, y, sample_weight=weights)
    assert_step(out["loss"], trainer.weights(), ref_loss, ref_weights, "no delegate")


ON_TFLITE_RUNTIME = """
import sys, numpy as np
from tfpock.runtime import Trainer
model, batch, lr, out = sys.argv[1:5]
feeds = dict(np.load(batch))
y, weights = feeds.pop("y"), feeds.pop("sample_weight")
trainer = Trainer(model, runtime="tflite-runtime")
loss = trainer.train(feeds, y, sample_weight=weights, learning_rate=float(lr))["loss"]
np.savez(out, loss=loss, **trainer.weights())
"""


def test_step_on_tflite_runtime_214_matches_gradient_tape(gelu_layer_full, tmp_path, request):
    """The same on tflite-runtime 2.14, in the venv ``tests/portability`` makes (skipped, with
    a warning, where it cannot be made)."""
    python = request.getfixturevalue("tflite_runtime_python")
    path, _, ref_loss, ref_weights = gelu_layer_full
    x, y, weights = batch()
    np.savez(tmp_path / "batch.npz", **x, y=y, sample_weight=weights)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    subprocess.run([str(python), "-c", ON_TFLITE_RUNTIME, str(path),
                    str(tmp_path / "batch.npz"), str(LR), str(tmp_path / "out.npz")],
                   check=True, env={**env, "PYTHONPATH": str(REPO)}, timeout=120)
    result = dict(np.load(tmp_path / "out.npz"))
    loss = float(result.pop("loss"))
    assert_step(loss, result, ref_loss, ref_weights, "tflite-runtime 2.14")
