"""The two pass pipelines, in one visible list each, and the one switch for optional passes.

tfpock compiles in two phases (``graph_passes/pass_base.py``): the passes on the GraphDef of
the training step (``graph_passes/``, one module each), then the TFLite converter, then the
passes on the .tflite file (``tfpock/tflite/``). Both are a :class:`Sequential` with the same
records, errors and debug checks; ``Program.report()`` shows them per phase.

Every optional pass has a default, on or off, in :data:`OPTIONAL_PASSES`; ``tfpock.optimize(...,
passes={"reorder": True, "fuse": False})`` overrides any of them, for either phase.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from graph_passes.dce import DeadCodeElimination
from graph_passes.fold_batchnorm import FoldBatchNorm
from graph_passes.fold_constants import FoldConstants
from graph_passes.freeze import Freeze
from graph_passes.lower import Lower
from graph_passes.narrow import NarrowWeightGradients
from graph_passes.pass_base import Sequential
from graph_passes.prune import Prune
from graph_passes.sink_scale import SinkScale
from graph_passes.split import SplitPartialKernels
from tfpock.errors import TfpockError
from tfpock.tflite.fuse import Fuse
from tfpock.tflite.inplace import Inplace
from tfpock.tflite.reorder import Reorder

# Optional passes -> on by default. freeze and lower are not among them: without freeze the
# frozen weights would have no values in the exported model, and without lower the model
# would need Flex ops. reorder is off by default: under the XNNPACK delegate's clustering it
# does not lower the allocation (tfpock/tflite/reorder.py).
OPTIONAL_PASSES: dict[str, bool] = {
    "prune": True, "narrow": True, "fold_bn": True, "split": True, "sink_scale": True,
    "fold_constants": True, "dce": True,          # on the GraphDef
    "fuse": True, "reorder": False, "inplace": True,  # on the .tflite file
}


def switches(passes: Mapping[str, bool] | None = None) -> dict[str, bool]:
    """:data:`OPTIONAL_PASSES` with ``passes`` (name -> on) applied; an unknown name or a
    value that is not a bool is an error naming it."""
    passes = dict(passes or {})
    unknown = sorted(set(passes) - set(OPTIONAL_PASSES))
    if unknown:
        raise TfpockError(f"passes: no optional pass {unknown}; the optional passes are "
                          f"{', '.join(OPTIONAL_PASSES)} (freeze and lower always run)")
    not_bool = sorted(k for k, v in passes.items() if not isinstance(v, bool))
    if not_bool:
        raise TfpockError(f"passes: {not_bool} must be True or False")
    return {**OPTIONAL_PASSES, **passes}


def build_pipeline(frozen_values: Mapping[str, np.ndarray], debug: bool = False,
                   passes: Mapping[str, bool] | None = None) -> Sequential:
    """The GraphDef phase: freeze -> prune -> narrow -> fold_bn -> split -> lower ->
    sink_scale -> fold_constants -> dce. ``debug`` checks the signature and each pass's
    postcondition after every pass; ``passes`` switches optional passes (:func:`switches`)."""
    on = switches(passes)
    return Sequential([p for p in [
        Freeze(frozen_values),    # weights the scheme does not train become constants
        Prune(),                  # backward ops no kept update needs are removed
        NarrowWeightGradients(),  # partial-channel kernels' gradients compute k channels only
        FoldBatchNorm(),          # frozen BatchNorm scales move into the kernel before them
        SplitPartialKernels(),    # partial kernels' readers use the trained and frozen parts
        Lower(),                  # ops TFLite lacks as builtins become builtin-convertible ops
        SinkScale(),              # lr * (a @ b) -> a @ (lr * b) on the smaller operand
        FoldConstants(),          # what depends on constants only is computed once, here
        DeadCodeElimination(),    # producers the lowering left unread
    ] if on.get(p.name, True)], check_invariants=debug)


def build_file_pipeline(debug: bool = False,
                        passes: Mapping[str, bool] | None = None) -> Sequential:
    """The file phase, on the converted ``train`` subgraph: fuse -> reorder -> inplace
    (each if switched on; inplace last: operator order decides TFLite's buffer sharing)."""
    on = switches(passes)
    return Sequential([p for p in [
        Fuse(),                   # what the converter left unfused (rules in fuse.py)
        Reorder(),                # a schedule with a lower peak of live activations
        Inplace(),                # no in-place write over a tensor still read (TFLite 2.14+)
    ] if on[p.name]], check_invariants=debug)
