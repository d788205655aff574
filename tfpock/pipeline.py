"""The pass pipeline, in one visible list (see ../graph_passes and STYLE.md)."""
from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

from graph_passes.dce import DeadCodeElimination
from graph_passes.fold_batchnorm import FoldBatchNorm
from graph_passes.fold_constants import FoldConstants
from graph_passes.freeze import Freeze
from graph_passes.lower import Lower
from graph_passes.narrow import NarrowWeightGradients
from graph_passes.pass_base import Sequential
from graph_passes.sink_scale import SinkScale
from graph_passes.prune import Prune
from tfpock.errors import TfpockError

# Passes a user may switch off to measure what they buy. freeze and lower are not among
# them: without freeze the frozen weights would have no values in the exported model, and
# without lower the model would need Flex ops.
OPTIONAL_PASSES = ("prune", "narrow", "fold_bn", "sink_scale", "fold_constants", "dce")
# Passes on the exported flatbuffer (Program.to_tflite), switched off the same way.
EXPORT_PASSES = ("fuse",)


def build_pipeline(frozen_values: Mapping[str, np.ndarray], debug: bool = False,
                   skip: Iterable[str] = ()) -> Sequential:
    """freeze -> prune -> narrow -> fold_bn -> lower -> sink_scale -> fold_constants -> dce;
    ``debug`` checks the signature and each pass's postcondition after every pass; ``skip`` names
    optional passes to leave out."""
    skip = set(skip)
    unknown = skip - set(OPTIONAL_PASSES) - set(EXPORT_PASSES)
    if unknown:
        raise TfpockError(f"cannot skip passes {sorted(unknown)}; optional passes are "
                          f"{', '.join(OPTIONAL_PASSES + EXPORT_PASSES)}")
    passes = [
        Freeze(frozen_values),    # weights the scheme does not train become constants
        Prune(),                  # backward ops no kept update needs are removed
        NarrowWeightGradients(),  # partial-channel kernels' gradients compute k channels only
        FoldBatchNorm(),          # frozen BatchNorm scales move into the kernel before them
        Lower(),                  # ops TFLite lacks as builtins become builtin-convertible ops
        SinkScale(),              # lr * (a @ b) -> a @ (lr * b) on the smaller operand
        FoldConstants(),          # what depends on constants only is computed once, here
        DeadCodeElimination(),    # producers the lowering left unread
    ]
    return Sequential([p for p in passes if p.name not in skip], check_invariants=debug)
