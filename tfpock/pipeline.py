"""The pass pipeline, in one visible list (see ../graph_passes and STYLE.md)."""
from __future__ import annotations

from typing import Mapping

import numpy as np

from graph_passes.dce import DeadCodeElimination
from graph_passes.freeze import Freeze
from graph_passes.lower import Lower
from graph_passes.narrow import NarrowWeightGradients
from graph_passes.pass_base import Sequential
from graph_passes.prune import Prune


def build_pipeline(frozen_values: Mapping[str, np.ndarray], debug: bool = False) -> Sequential:
    """freeze -> prune -> narrow -> lower -> dce; ``debug`` checks the signature after each pass."""
    return Sequential([
        Freeze(frozen_values),   # weights the scheme does not train become constants
        Prune(),                 # backward ops no kept update needs are removed
        NarrowWeightGradients(),  # partial-channel kernels' gradients compute k channels only
        Lower(),                 # ops TFLite lacks as builtins become builtin-convertible ops
        DeadCodeElimination(),   # producers the lowering left unread
    ], check_invariants=debug)  # debug also runs each pass's postcondition
