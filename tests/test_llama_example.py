"""examples/llama_finetune.py end to end in its tiny size: a tokenizer trained on pydoc's
topics, a one-block Llama pre-trained with Keras, exported for full and LoRA fine-tuning,
fine-tuned on IDLE's change log in a process that never imports TensorFlow; held-out
perplexity falls for both, and both start from the same pre-trained model."""
from __future__ import annotations

import numpy as np

from examples import llama_finetune


def test_tiny_run_end_to_end(tmp_path):
    doc = llama_finetune.main(["--tiny", "--schemes", "full,lora", "--work", str(tmp_path),
                               "--out", str(tmp_path / "result")])
    device = doc["device"]
    assert device["tensorflow_imported"] is False
    full, lora = device["schemes"]["full"], device["schemes"]["lora"]
    # LoRA's factors start with B = 0: the same function as the pre-trained model
    np.testing.assert_allclose(lora["before"]["perplexity"], full["before"]["perplexity"],
                               rtol=1e-4)
    for scheme in (full, lora):
        assert scheme["after"]["perplexity"] < scheme["before"]["perplexity"]
        assert scheme["sample_after"].startswith(llama_finetune.PROMPT)
    trained = doc["host"]["trained_parameters"]
    assert trained["full"] == doc["host"]["parameters"] and 0 < trained["lora"] < trained["full"]
    assert "| lora |" in (tmp_path / "result.md").read_text()
