"""The exported file: frozen weights are constants, trained ones variables; report()."""
from __future__ import annotations

import keras
import numpy as np
import pytest

import tfpock
from tfpock.testing import models
from tfpock.tflite import model_file


@pytest.fixture(scope="module")
def bias_only_mlp(tmp_path_factory):
    model = models.mlp()
    program = tfpock.optimize(model, loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), optimizer=keras.optimizers.SGD(0.1), scheme="bias", batch_size=4)
    path = tmp_path_factory.mktemp("mlp") / "m.tflite"
    program.export(path)
    return model, program, model_file.read(path.read_bytes())


def test_frozen_kernels_are_constants_with_their_values(bias_only_mlp):
    model, program, parsed = bias_only_mlp
    train = parsed.subgraph("train")
    constants = [t.value() for t in train.tensors if t.constant and t.dtype == "FLOAT32"]
    for layer in model.layers:
        kernel = layer.kernel.numpy()
        # FULLY_CONNECTED stores weights as [out, in]: the kernel transposed, bit for bit
        assert any(c.shape == kernel.T.shape and np.array_equal(c, kernel.T)
                   for c in constants), layer.name
    assert sorted(parsed.variables()) == sorted(
        (layer.bias.shape[0],) for layer in model.layers)


def test_every_signature_is_builtin_only(bias_only_mlp):
    _, _, parsed = bias_only_mlp
    assert sorted(parsed.signatures) == ["infer", "load", "metadata", "train", "weights"]
    assert parsed.custom_ops() == []
    assert not any(name.startswith("Flex") for name in parsed.op_histogram())


def test_report_lists_each_pass_with_its_figures(bias_only_mlp):
    _, program, _ = bias_only_mlp
    report = program.report()
    for graph in ("[train]", "[infer]"):
        assert graph in report
    for name in ("freeze", "prune", "lower", "dce"):
        assert f"  {name} " in report
    assert "variables_frozen=3" in report        # the three kernels
    assert "gradient_ops_removed=" in report
    assert "ops " in report and "->" in report
    assert "[train] peak live: the GraphDef's estimate" in report
    prune = next(r for r in program.pass_records["train"] if r.name == "prune")
    assert (f"peak live {prune.peak_live_before / 1024:.1f} -> "
            f"{prune.peak_live_after / 1024:.1f} KB") in report
    assert "trained weights: 3" in report
    table = program.layer_table()
    assert list(table) == ["hidden_1", "hidden_2", "logits"]
    assert [row["trained_parameters"] for row in table.values()] == [32, 16, 5]
    assert all(row["policy"] == "bias" for row in table.values())
    # bias-only: the kernels' weight-gradient MatMuls are pruned, per layer
    assert all(row["gradient_ops_removed"] >= 1 for row in table.values())
    assert "[layers]" in report


def test_multi_axis_reverse_is_a_runtime_hazard():
    """tflite-runtime 2.14 silently reverses only the first axis of such an op; export's
    verify refuses models that contain one."""
    import tensorflow as tf
    from tfpock.export import runtime_hazards
    from tfpock.testing.litert import convert_builtins_only
    both = convert_builtins_only(lambda x: tf.reverse(x, axis=[0, 1]),
                                 [tf.TensorSpec((2, 3, 4), tf.float32)])
    (problem,) = runtime_hazards(model_file.read(both))
    assert "REVERSE_V2 over several axes" in problem
    one_at_a_time = convert_builtins_only(lambda x: tf.reverse(tf.reverse(x, [0]), [1]),
                                          [tf.TensorSpec((2, 3, 4), tf.float32)])
    assert runtime_hazards(model_file.read(one_at_a_time)) == []


def test_one_switch_for_the_optional_passes_of_both_phases():
    def compile_(**kwargs):
        return tfpock.optimize(models.mlp(), loss="sparse_categorical_crossentropy",
                               optimizer=keras.optimizers.SGD(0.1), batch_size=4, **kwargs)
    program = compile_(passes={"narrow": False, "fold_bn": False, "split": False,
                               "sink_scale": False,
                               "fold_constants": False, "dce": False, "reorder": True})
    names = [r.name for r in program.pass_records["train"]]
    assert names == ["freeze", "prune", "lower"]
    program.to_tflite()
    fuse, reorder, inplace = program.pass_records["export"]
    assert (fuse.name, reorder.name, inplace.name) == ("fuse", "reorder", "inplace")
    assert "[export]" in program.report()
    assert set(fuse.stats["rules"]) == {"transpose_pair", "bias", "activation"}
    assert reorder.stats["peak_bytes_after"] <= reorder.stats["peak_bytes_before"]
    unfused = compile_(passes={"fuse": False, "inplace": False})
    unfused.to_tflite()
    assert "export" not in unfused.pass_records
    with pytest.raises(tfpock.TfpockError, match="the optional passes are prune, narrow, "
                       "fold_bn, split, sink_scale, fold_constants, dce, fuse, reorder, "
                       "inplace"):
        compile_(passes={"freeze": False})
    with pytest.raises(tfpock.TfpockError, match=r"\['fuse'\] must be True or False"):
        compile_(passes={"fuse": "no"})
