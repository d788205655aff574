"""Schemes: JSON in and out, helpers, and validation that names what is wrong."""
from __future__ import annotations

import json

import keras
import pytest

from tfpock import Scheme, SchemeError
from tfpock.scheme import Policy, TrainedWeight
from tfpock.testing import models

ISSUE_EXAMPLE = {"default": "frozen",
                 "layers": {"logits": "full", "conv_dil": "bias",
                            "fc_mid": {"weight_fraction": 0.25, "bias": True}}}


@pytest.fixture(scope="module")
def cnn():
    return models.every_layer_cnn(dropout=0.0)


def test_json_round_trip_and_file(tmp_path, cnn):
    scheme = Scheme.from_dict(ISSUE_EXAMPLE)
    assert scheme.to_dict() == ISSUE_EXAMPLE
    path = tmp_path / "scheme.json"
    scheme.save(path)
    assert json.loads(path.read_text()) == ISSUE_EXAMPLE
    assert Scheme.parse(str(path), cnn) == scheme
    assert Scheme.parse(ISSUE_EXAMPLE, cnn) == scheme


def test_resolution_of_the_issue_example(cnn):
    resolved = {w.path: w for w in Scheme.from_dict(ISSUE_EXAMPLE).resolve(cnn)}
    assert resolved["logits/kernel"] == TrainedWeight("logits/kernel", "logits")
    assert "conv_dil/bias" in resolved and "conv_dil/kernel" not in resolved
    fc = resolved["fc_mid/kernel"]  # [44, 10]: a quarter of 44 input channels
    assert (fc.channels, fc.axis) == (11, 0)
    assert "fc_mid/bias" in resolved
    assert len(resolved) == 5


def test_channel_counts_and_bias_flag(cnn):
    scheme = Scheme(layers={"dw": {"weight_channels": 3, "bias": False},
                            "sep": {"weight_fraction": 0.5}})
    resolved = {w.path: w for w in scheme.resolve(cnn)}
    assert resolved["dw/kernel"].channels == 3 and resolved["dw/kernel"].axis == 2
    assert "dw/bias" not in resolved
    assert resolved["sep/depthwise_kernel"].channels == 4   # of 8
    assert resolved["sep/pointwise_kernel"].channels == 4   # of 8
    assert "sep/bias" in resolved


def test_all_channels_is_a_full_update(cnn):
    (kernel, _) = Scheme(layers={"logits": {"weight_fraction": 1.0}}).resolve(cnn)
    assert kernel.channels is None


@pytest.mark.parametrize("spec, words", [
    ({"layers": {"fc_mid": {"weight_fraction": 1.5}}}, ["weight_fraction must be in (0, 1]"]),
    ({"layers": {"fc_mid": {"weight_fraction": 0.5, "weight_channels": 2}}}, ["exactly one"]),
    ({"layers": {"fc_mid": {"weight_channels": 0}}}, ["positive integer"]),
    ({"layers": {"fc_mid": {"weight_fraction": 0.5, "bias": "yes"}}}, ["true or false"]),
    ({"layers": {"fc_mid": {"fraction": 0.5}}}, ["unknown keys ['fraction']"]),
    ({"layers": {"fc_mid": "everything"}}, ["unknown policy 'everything'"]),
    ({"default": {"weight_fraction": 0.5}}, ["must name its layers"]),
    ({"layer": {}}, ["unknown keys ['layer']"]),
    ({"layers": {"d": {"lora": {"rank": 0}}}}, ["LoRA rank must be a positive integer"]),
    ({"layers": {"d": {"lora": {"rank": 2, "alpha": -1}}}}, ["alpha must be a positive number"]),
    ({"layers": {"d": {"lora": {"rank": 2}, "bias": True}}}, ["a LoRA policy is"]),
    ({"layers": {"d": {"lora": {"r": 2}}}}, ["a LoRA policy is"]),
    ({"default": {"lora": {"rank": 2}}}, ["LoRA policy must name its layers"]),
])
def test_malformed_policies_are_named(spec, words):
    with pytest.raises(SchemeError) as info:
        Scheme.from_dict(spec)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("layers, words", [
    ({"fc_mdi": "full"}, ["fc_mdi", "did you mean fc_mid"]),
    ({"dw": {"weight_channels": 99}}, ["99 channels", "dw/kernel", "8 input channels"]),
    ({"rescale": "full"}, ["has no weights"]),
    ({"bn": {"weight_fraction": 0.5}}, ["not trainable"]),
])
def test_impossible_policies_are_named(cnn, layers, words):
    with pytest.raises(SchemeError) as info:
        Scheme(layers=layers).resolve(cnn)
    for word in words:
        assert word in str(info.value)


def test_channel_policy_on_a_layer_without_kernel():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d"),
                              keras.layers.LayerNormalization(name="ln")])
    with pytest.raises(SchemeError, match="no kernel with input channels"):
        Scheme(layers={"ln": {"weight_fraction": 0.5}}).resolve(model)


def _mlp():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d"),
                             keras.layers.LayerNormalization(name="ln"),
                             keras.layers.Dense(2, name="value")])


def test_lora_policy_on_a_copy():
    """A LoRA policy's JSON round-trips; ``Scheme.lora`` names by pattern; the compiled copy
    has LoRA on the named layer, trains its two factors only, and the model is untouched."""
    model = _mlp()
    scheme = Scheme.lora(model, 2, pattern="^d$", default="bias")
    assert scheme.to_dict() == {"default": "bias", "layers": {"d": {"lora": {"rank": 2}}}}
    assert Scheme.from_dict(scheme.to_dict()) == scheme
    assert Scheme.lora(model, 2).layers.keys() == {"value"}   # KerasHub's default targets
    copy = scheme.lora_model(model)
    assert copy is not model and copy.get_layer("d").lora_enabled
    assert not getattr(model.get_layer("d"), "lora_enabled", False)
    assert scheme.trained_paths(copy) == [f"{model.name}/{p}" for p in (
        "d/lora_kernel_a", "d/lora_kernel_b", "ln/beta", "value/bias")]
    assert Scheme.full().lora_model(model) is model


@pytest.mark.parametrize("layers, words", [
    ({"ln": {"lora": {"rank": 2}}}, ["'ln'", "not a Dense or EinsumDense"]),
    ({"dd": {"lora": {"rank": 2}}}, ["'dd'", "not a Dense or EinsumDense"]),
])
def test_lora_on_what_has_no_kernel_is_named(layers, words):
    with pytest.raises(SchemeError) as info:
        Scheme(layers=layers).lora_model(_mlp())
    for word in words:
        assert word in str(info.value)
    with pytest.raises(SchemeError, match="no Dense or EinsumDense layer matches 'nothing'"):
        Scheme.lora(_mlp(), 2, pattern="nothing")


def test_missing_and_broken_scheme_files(tmp_path, cnn):
    with pytest.raises(SchemeError, match="does not exist"):
        Scheme.parse(str(tmp_path / "none.json"), cnn)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(SchemeError, match="not valid JSON"):
        Scheme.parse(str(broken), cnn)


def test_last_blocks_of_mobilenet():
    model = models.mobilenet_v2(size=96)
    scheme = Scheme.last_blocks(model, 1)
    names = sorted(scheme.layers)
    assert all(n.startswith("block_16_") for n in names if n not in ("Conv_1", "predictions"))
    assert {"block_16_expand", "block_16_depthwise", "block_16_project", "Conv_1",
            "predictions"} <= set(names)
    assert not any(n.startswith("block_15_") for n in names)
    with pytest.raises(SchemeError, match="asked for 99 blocks"):
        Scheme.last_blocks(model, 99)


def test_policy_json_forms():
    assert Policy.parse("full", "x").to_json() == "full"
    assert Policy.parse({"weight_channels": 4}, "x").to_json() == {"weight_channels": 4,
                                                                    "bias": True}


def test_an_einsum_dense_in_dense_form_takes_channel_policies():
    """``btd,df->btf`` is a Dense written as an einsum: its kernel's first axis is the input
    channels, cut as a Dense's; a kernel with more axes (``btd,dhk->bthk``) is refused."""
    x = keras.Input((4, 6))
    dense_form = keras.layers.EinsumDense("btd,df->btf", (4, 8), bias_axes="f", name="gate")
    heads = keras.layers.EinsumDense("btd,dhk->bthk", (4, 2, 3), name="heads")
    model = keras.Model(x, [dense_form(x), heads(x)])
    resolved = {w.path: w for w in Scheme(layers={"gate": {"weight_fraction": 0.5}})
                .resolve(model)}
    assert (resolved["gate/kernel"].channels, resolved["gate/kernel"].axis) == (3, 0)
    assert "gate/bias" in resolved
    with pytest.raises(SchemeError, match=r"'heads' \(EinsumDense\).*Dense form"):
        Scheme(layers={"heads": {"weight_fraction": 0.5}}).resolve(model)
