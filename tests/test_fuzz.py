"""CI's slice of the random-model fuzzer (``tests/fuzz.py``): a few fixed-seed cases, each a
random small Keras model, scheme and optimizer compiled by tfpock and stepped once on
ai-edge-litert against a GradientTape step. The full run is
``python -m tests.fuzz --cases 300``; a failure there becomes a regular test elsewhere."""
from __future__ import annotations

import pytest

from tests import fuzz

SEED = 15
CASES = 10


@pytest.fixture(scope="module")
def drawn():
    configs = fuzz.draw_configs(CASES, SEED)
    assert len(configs) == CASES
    return configs


@pytest.mark.parametrize("index", range(CASES))
def test_random_model_step_matches_tf(drawn, index, tmp_path):
    config = drawn[index]
    outcome = fuzz.run_case(config, str(tmp_path))
    assert outcome.status != "failed", f"{outcome.detail}\n{fuzz.repro(config)}"
