"""``tfpock.search``: per-layer contribution analysis picks a sparse scheme under a budget.

The steps (PockEngine / MCUNetV3's contribution analysis, with their knapsack and
evolutionary refinement; their search code was never published):

1. **Contributions.** For each seed, fixed batches (a permutation of the training set,
   ``steps`` batches) and the same start (the model's weights): the probe
   (:mod:`tfpock.contribution.probe`, one trace) fine-tunes the base alone and base + each
   candidate option; the option's gain is ``val_loss(base) - val_loss(base + option)``,
   averaged over seeds. Validation *loss*, not accuracy, is the score: on a few dozen
   validation examples accuracy moves in steps of 1/N and ties, the loss is continuous.
   The spread over seeds is reported as the noise.
2. **Costs**, exact per candidate (``costs="exact"``): base + each option is compiled and
   exported (:mod:`tfpock.contribution.cost`): the file's peak live activations, its variable
   bytes and a measured one-thread step on ai-edge-litert. Or predicted
   (``costs="predicted"``, for models with many options): from ``depth_compiles`` exported
   compiles along the depth and the compiler's variable layout
   (:mod:`tfpock.contribution.estimate`: variable bytes exact, activations an upper bound by
   depth, step time interpolated).
3. **Selection** (:mod:`tfpock.contribution.select`): exact under the additive model.
4. **Verification and refinement**: the probe measures the chosen combination's real gain
   (and a few other combinations'); an evolutionary search seeded by the knapsack picks
   (mutations of one layer's option, predicted-feasible only, fitness = measured gain) keeps
   what measures better; the final scheme is compiled and its exact memory and time compared
   with the prediction; if the exact memory exceeds the budget, the selection runs again with
   the budget lowered by the overshoot.

5. **Confirmation** (successive halving): a few finalists that fit (the pick, the knapsack's,
   the checks, the ``last:N`` ladder, the best measured) are measured again by a probe as
   long as the fine-tuning (``confirm_epochs``), and the best that fits exactly wins: the
   short probe screens, the long one decides (``_State.confirm`` says why).

Steps 1-2 are cached by a key of the model (config and weights), the data and the settings,
so a new budget re-runs only 3-4.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import sys
import time
from typing import Any, Sequence

import keras
import numpy as np

from tfpock.errors import TfpockError
from tfpock.losses import resolve_loss
from tfpock.runtime import atomic
from tfpock.contribution import candidates as cand
from tfpock.contribution.budget import Budget, BudgetError
from tfpock.contribution.cost import exact_cost, layout_variables
from tfpock.contribution.estimate import predicted_costs
from tfpock.contribution.probe import Probe, accuracy
from tfpock.contribution.result import SearchResult
from tfpock.contribution.select import Item, predict, select

logger = logging.getLogger(__name__)

# /2: per-seed gains of measured combinations, screened mutations (12-07). A cache written by
# another version of the compiler is never read: the key holds compiler_fingerprint().
CACHE_FORMAT = "tfpock-search-cache/2"
_MEMORY_CACHE: dict[str, dict] = {}   # key -> cache document, for this process
_PROBES: dict[str, Probe] = {}        # key -> traced probe, for this process
# Exact costs by (model config, scheme, settings): a cost depends on the graph, not on the
# weights' values, so models that differ only in weights (seeds of one study) share them.
_COSTS: dict[str, dict] = {}


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tfpock", "search")


def search(model: keras.Model, train_data, val_data, loss, optimizer, budget: Budget,
           batch_size: int = 8, *, base: str | Sequence[str] | None = None,
           steps: int = 20, seeds: int = 3, time_steps: int = 20, refine: int = 24,
           refine_cached: int | None = None, cache_dir: str | None = "default",
           learning_rate: float | None = None,
           progress: bool | None = None, compile_checks: bool = False,
           costs: str = "exact", depth_compiles: int = 8,
           exact_checks: int = 2, confirm: int = 6,
           confirm_epochs: float = 20.0, confirm_cached: int | None = None) -> SearchResult:
    """Searches the sparse update scheme with the best validation gain within ``budget``.

    Args:
        model: a built Keras model (read, never modified), e.g. pre-trained with a new head.
        train_data: ``(x, y)`` numpy arrays, or a ``tf.data.Dataset`` of (x, y) batches.
        val_data: the same form; what the gain is measured on (not the test set).
        loss, optimizer: as for ``tfpock.optimize``; the probe uses the optimizer's rule.
        budget: a :class:`Budget` (training memory and/or step time).
        batch_size: the batch of the probe and of the exported model.
        base: layer name(s) always trained fully; default the last layer with weights.
        steps: optimizer steps of each brief fine-tuning run of the probe.
        seeds: how many batch orders each contribution is averaged over.
        time_steps: one-thread steps timed per candidate on ai-edge-litert (0: no times;
            then ``budget.step_ms`` cannot be used).
        refine: probe evaluations of the evolutionary refinement (0: knapsack only); an
            evaluation is ``seeds`` probe runs, a mutation screened out on the first seed
            costs one.
        refine_cached: evaluations of the refinement for a budget whose contributions come
            from the cache (a new budget; default ``refine``). The first search's checks
            and refinement, and every combination measured since, seed it at no cost. A new
            budget runs the probe ``seeds`` times for its knapsack pick (unless measured
            before) plus what this refinement measures: MobileNetV2 0.35 @96, 2 seeds, at
            load ~1.5: 2.9-4.5 s with 6, 1.0-1.6 s with 1, 0.8 s with 0; at load 8-10
            (~1.9 s a probe run) 9.5-26 s, 6.2-9.2 s, 3.2-3.8 s
            (bench/results/2026-12-07-x86_64-2core-search-cache-quiet.md, ...-search-cache.md).
        cache_dir: where contributions and costs are cached (``"default"``:
            ``$XDG_CACHE_HOME/tfpock/search``; None: this process only).
        learning_rate: the probe's learning rate (default: the optimizer's).
        progress: a tqdm bar on stderr; default only when stderr is a terminal.
        compile_checks: also compile the other checked combinations, to compare their
            predicted memory and time with exact ones (a compile each, ~4 s here; the
            chosen scheme is always compiled and checked).
        costs: ``"exact"`` (compile and export base + each option) or ``"predicted"``
            (:mod:`tfpock.contribution.estimate`: ``depth_compiles`` exported compiles,
            whatever the number of options).
        depth_compiles: layers whose ``base + layer:full`` is exported when predicting.
        exact_checks: combinations the final exact check may compile (the pick and its
            repairs, and the confirmation's finalists: together); beyond that the best
            known-cost scheme that fits is chosen.
        confirm: finalists re-measured by the confirmation probe (step 5; 0: none).
        confirm_epochs: the confirmation probe's length in epochs over ``train_data`` (the
            fine-tuning you will run): ``ceil(confirm_epochs * len(x) / batch_size)`` steps;
            no confirmation when that is not more than ``steps``. Costs ``confirm x seeds``
            probe runs of that length for the first budget, and those of the finalists not
            confirmed before for a new one.
        confirm_cached: ``confirm`` for a budget whose contributions come from the cache
            (default ``confirm``; 0: such a budget skips the confirmation and keeps steps
            3-4's pick, as before 12-07). The confirmation's long probes are what a new
            budget pays most: MobileNetV2 0.35 @96 25-95 s with 6, against 0.1-2.8 s without
            (bench/results/2026-12-07-x86_64-2core-search-mobilenet-confirm.md,
            ...-search-mobilenet-noconfirm.md); on the digits task ~0.1 s a finalist.

    Returns:
        A :class:`SearchResult`: ``.scheme``, ``.table``, ``.save(dir)``.

    Example:
        >>> result = tfpock.search(model, (x, y), (xv, yv), loss, keras.optimizers.SGD(0.05),
        ...                        tfpock.Budget(memory_bytes=300_000), batch_size=8)
        >>> program = tfpock.optimize(model, loss=loss, optimizer=opt, scheme=result.scheme)
    """
    started = time.perf_counter()
    if not isinstance(model, keras.Model) or not model.built or not getattr(model, "inputs", None):
        raise TfpockError("model must be a built keras.Model with a known input shape")
    if not isinstance(budget, Budget):
        raise BudgetError(f"budget must be a tfpock.Budget, got {type(budget).__name__}")
    for name, value, least in (("batch_size", batch_size, 1), ("steps", steps, 1),
                               ("seeds", seeds, 1), ("time_steps", time_steps, 0),
                               ("refine", refine, 0), ("depth_compiles", depth_compiles, 2),
                               ("refine_cached", refine if refine_cached is None
                                else refine_cached, 0),
                               ("exact_checks", exact_checks, 0), ("confirm", confirm, 0),
                               ("confirm_cached", confirm if confirm_cached is None
                                else confirm_cached, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise TfpockError(f"{name} must be an int >= {least}, got {value!r}")
    if (isinstance(confirm_epochs, bool) or not isinstance(confirm_epochs, (int, float))
            or not confirm_epochs > 0):
        raise TfpockError(f"confirm_epochs must be a number > 0, got {confirm_epochs!r}")
    if costs not in ("exact", "predicted"):
        raise TfpockError(f"costs must be 'exact' or 'predicted', got {costs!r}")
    if budget.step_ms is not None and time_steps == 0:
        raise BudgetError("budget.step_ms needs measured step times: time_steps must be > 0")
    loss_obj = resolve_loss(loss)
    x, y = check_data("train_data", train_data, model, loss_obj, batch_size)
    xv, yv = check_data("val_data", val_data, model, loss_obj, 1)
    base_names = cand.resolve_base(model, base)
    layers = [l for l in cand.candidate_layers(model) if l.name not in base_names]
    options = {l.name: cand.layer_options(l) for l in layers}
    confirm_steps = math.ceil(confirm_epochs * len(x) / batch_size)
    if confirm == 0 or confirm_steps <= steps:
        confirm, confirm_steps = 0, 0
    settings = {"confirm": confirm, "confirm_steps": confirm_steps,
                "batch_size": batch_size, "base": base_names, "steps": steps, "seeds": seeds,
                "time_steps": time_steps, "learning_rate": learning_rate,
                "loss": [type(loss_obj).__name__, loss_obj.get_config()],
                "optimizer": [type(optimizer).__name__, _opt_config(optimizer)],
                "fractions": cand.FRACTIONS, "costs": costs,
                **({"depth_compiles": depth_compiles} if costs == "predicted" else {})}
    key = cache_key(model, (x, y, xv, yv), settings)
    cache = _load_cache(key, cache_dir)
    show = sys.stderr.isatty() if progress is None else progress
    state = _State(model, loss, optimizer, batch_size, steps, seeds, base_names, x, y, xv, yv,
                   key, cache, learning_rate, show, costs, depth_compiles,
                   confirm_steps=confirm_steps)

    # the least any scheme needs is the base alone: refuse a budget below it before measuring
    base_cost = state.cost({}, time_steps)
    if not budget.fits(base_cost["memory_bytes"], base_cost["step_ms"]):
        raise BudgetError(
            f"budget {budget.to_dict()} fits no scheme: the smallest, training only the base "
            f"{list(base_names)}, needs {base_cost['memory_bytes']:,} bytes of training memory"
            + (f" and {base_cost['step_ms']:.3f} ms a step" if base_cost["step_ms"] else ""))
    # 1-2: contributions and exact costs per candidate (cached)
    analysed_from_cache = "candidates" in cache and "base" in cache
    if not analysed_from_cache:
        state.analyse(options, time_steps)
        _save_cache(key, cache, cache_dir)
    analysis_s = time.perf_counter() - started

    base_item = _item(cache["base"], "base", "base")
    # predicted costs: activations summed, not maxed (see _item)
    summed = base_item.activation_bytes if costs == "predicted" else None
    groups = [[_item(cache["candidates"][o.key], o.key, o.layer, summed) for o in opts]
              for opts in options.values()]
    by_key = {o.key: o for opts in options.values() for o in opts}
    base_cost = cache["base"]["cost"]

    # 3: selection under the additive model
    selection_started = time.perf_counter()
    if analysed_from_cache:
        refine = refine if refine_cached is None else refine_cached
    compiles_before = state.compiles
    knap, knap_choice, checks, refinement, final, exact, repairs = state.choose(
        groups, base_item, budget, by_key, time_steps, compile_checks, refine, exact_checks,
        warm=analysed_from_cache)
    predicted = predict(knap, base_item)
    confirmation = None
    if analysed_from_cache and confirm_cached is not None:
        confirm = min(confirm, confirm_cached)
    if confirm:
        final, exact, confirmation = state.confirm(
            groups, base_item, budget, by_key, final, knap_choice, checks, options, confirm,
            time_steps, max(exact_checks - (state.compiles - compiles_before), 0))
    _save_cache(key, cache, cache_dir)
    selection_s = time.perf_counter() - selection_started

    chosen_keys = {o.key for o in final.values()}
    table = []
    for opts in options.values():
        for o in opts:
            c = cache["candidates"][o.key]
            table.append({"layer": o.layer, "option": o.label, "policy": o.policy,
                          "gain": c["gain"], "gain_std": c["gain_std"],
                          "accuracy_gain": c["accuracy_gain"],
                          **{"predicted": False, **c["cost"]}, "chosen": o.key in chosen_keys})
    final_items = [_item(cache["candidates"][o.key], o.key, o.layer, summed)
                   for o in final.values()]
    final_pred = predict(final_items, base_item)
    measured = state.measure(final)
    noise = [row["gain_std"] for row in table]
    summary = {
        "budget": budget.to_dict(), "base": list(base_names), "base_cost": base_cost,
        "base_val_loss": cache["base"]["val_loss"], "base_val_accuracy":
            cache["base"]["val_accuracy"],
        "settings": {k: v for k, v in settings.items() if k not in ("loss", "optimizer")},
        "knapsack": {"choice": cand.choice_key(knap_choice), "predicted_gain": predicted.gain,
                     "measured_gain": state.measure(knap_choice)["gain"],
                     "predicted_memory_bytes": predicted.memory_bytes,
                     "predicted_step_ms": predicted.step_ms},
        "chosen": {"choice": cand.choice_key(final), "predicted_gain": final_pred.gain,
                   "measured_gain": measured["gain"], "measured_gain_std": measured["gain_std"],
                   "measured_val_accuracy": measured["val_accuracy"],
                   "predicted_memory_bytes": final_pred.memory_bytes,
                   "exact_memory_bytes": exact["memory_bytes"],
                   "exact_activation_bytes": exact["activation_bytes"],
                   "exact_variable_bytes": exact["variable_bytes"],
                   "predicted_step_ms": final_pred.step_ms, "measured_step_ms": exact["step_ms"]},
        "checks": checks, "refinement": refinement, "repairs": repairs,
        "confirmation": confirmation,
        "costs": costs, "estimate": cache.get("estimate"),
        "noise": {"median_gain_std": float(np.median(noise)) if noise else 0.0,
                  "max_gain_std": float(np.max(noise)) if noise else 0.0,
                  "gain_range": [min((r["gain"] for r in table), default=0.0),
                                 max((r["gain"] for r in table), default=0.0)]},
        "timing": {"analysis_s": analysis_s, "selection_s": selection_s,
                   "total_s": time.perf_counter() - started,
                   "analysis_from_cache": analysed_from_cache,
                   "probe_runs": state.probe_runs, "compiles": state.compiles},
        "cache_key": key,
    }
    logger.info("search: %s, measured gain %.4f (predicted %.4f), %d bytes, %.1f s",
                summary["chosen"]["choice"], measured["gain"], final_pred.gain,
                exact["memory_bytes"], summary["timing"]["total_s"])
    return SearchResult(cand.scheme_of(base_names, final), table, summary)


# ---- data ------------------------------------------------------------------------------------
def check_data(name: str, data, model: keras.Model, loss, least: int):
    """``(x, y)`` as arrays matching the model's input and the loss's labels, else a
    TfpockError naming ``name``; a ``tf.data.Dataset`` of (x, y) batches is read whole."""
    if hasattr(data, "as_numpy_iterator"):
        parts = list(data.as_numpy_iterator())
        if not parts:
            raise TfpockError(f"{name} is empty")
        data = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TfpockError(f"{name} must be (x, y) arrays or a tf.data.Dataset of (x, y)")
    x, y = np.asarray(data[0]), np.asarray(data[1])
    if len(x) == 0 or len(y) == 0:
        raise TfpockError(f"{name} is empty: the search needs examples to measure gains on")
    expect = tuple(model.inputs[0].shape[1:])
    if tuple(x.shape[1:]) != expect:
        raise TfpockError(f"{name}: x has examples of shape {tuple(x.shape[1:])}, model "
                          f"{model.name!r} takes {expect}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TfpockError(f"{name}: x has dtype {x.dtype}, the model takes float32")
    if len(x) != len(y):
        raise TfpockError(f"{name}: x has {len(x)} examples, y {len(y)}")
    if len(x) < least:
        raise TfpockError(f"{name} has {len(x)} examples, fewer than batch_size={least}")
    out = tuple(model.outputs[0].shape[1:])
    if isinstance(loss, keras.losses.SparseCategoricalCrossentropy):
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise TfpockError(f"{name}: y must be integer labels of shape (n,) for "
                              f"{type(loss).__name__}, got {y.dtype} {y.shape}")
        if y.min() < 0 or y.max() >= out[-1]:
            raise TfpockError(f"{name}: y holds labels outside [0, {out[-1]}) (min {y.min()}, "
                              f"max {y.max()})")
        y = y.astype(np.int32)
    else:
        if tuple(y.shape[1:]) != out or not np.issubdtype(y.dtype, np.floating):
            raise TfpockError(f"{name}: y must be float targets of shape (n, *{out}) for "
                              f"{type(loss).__name__}, got {y.dtype} {y.shape}")
        y = y.astype(np.float32)
    return x.astype(np.float32), y


# ---- cache -----------------------------------------------------------------------------------
@functools.cache
def compiler_fingerprint() -> str:
    """sha256 over the compiler's source (every module of ``graph_passes`` and ``tfpock``).
    A cache holds the compiler's own figures (exact costs of compiled schemes, probe gains
    of its programs), and a new lowering changes them: the per-offset kxk input gradient of
    12-07 cut the digits CNN's full fine-tuning from 244,428 to 138,956 bytes, and a cache
    keyed without it would have kept the old costs. Read once per process (a few hundred
    kilobytes)."""
    import graph_passes
    import tfpock
    h = hashlib.sha256()
    for package in (graph_passes, tfpock):
        root = os.path.dirname(os.path.abspath(package.__file__))
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            for name in sorted(n for n in files if n.endswith(".py")):
                path = os.path.join(folder, name)
                h.update(os.path.relpath(path, root).encode())
                with open(path, "rb") as f:
                    h.update(f.read())
    return h.hexdigest()


def cache_key(model: keras.Model, arrays, settings: dict) -> str:
    """sha256 over the compiler (:func:`compiler_fingerprint`), the model's config and
    weights, the data and the settings."""
    h = hashlib.sha256(CACHE_FORMAT.encode())
    h.update(compiler_fingerprint().encode())
    h.update(json.dumps(model.get_config(), sort_keys=True, default=str).encode())
    for v in model.weights:
        h.update(v.path.encode())
        h.update(np.ascontiguousarray(v.numpy()).tobytes())
    for a in arrays:
        h.update(str((a.shape, a.dtype)).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


def _load_cache(key: str, cache_dir: str | None) -> dict:
    if key in _MEMORY_CACHE:
        return _MEMORY_CACHE[key]
    doc = {"format": CACHE_FORMAT, "measured": {}, "exact": {}}
    path = _cache_path(key, cache_dir)
    if path and os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                loaded = json.load(f)
            if loaded.get("format") == CACHE_FORMAT:
                doc = loaded
        except (OSError, ValueError):
            logger.warning("search cache %s unreadable; measuring again", path)
    _MEMORY_CACHE[key] = doc
    return doc


def _save_cache(key: str, doc: dict, cache_dir: str | None) -> None:
    path = _cache_path(key, cache_dir)
    if path:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = json.dumps(doc).encode()
        atomic.write_atomically(path, lambda f: f.write(data))


def _cache_path(key: str, cache_dir: str | None) -> str | None:
    if cache_dir is None:
        return None
    return os.path.join(default_cache_dir() if cache_dir == "default" else cache_dir,
                        f"{key}.json")


def _opt_config(optimizer) -> dict:
    if isinstance(optimizer, str):
        return {"name": optimizer}
    return {k: v for k, v in optimizer.get_config().items() if k != "name"}


def _item(entry: dict, key: str, group: str, summed: int | None = None) -> Item:
    """An option as selection sees it. ``summed`` (the base's activation peak): the option's
    activations above the base's count as additive bytes, so a combination's predicted
    memory is ``a(base) + sum(a(base + c) - a(base)) + variables`` instead of the max-plus
    model of :mod:`tfpock.contribution.select`. Used with predicted costs: every trained
    layer keeps its own input for its weight gradient, and with dozens of layers trained the
    max-plus model under-predicted by far (MobileNetV2 0.35 @96: a pick of 35 options
    predicted under 7.5 MB compiled to 12.6 MB; bench/results/2026-12-06-x86_64-2core-
    search-mobilenet-maxplus.md). The sum counts shared backward chains more than once, so
    it is mostly conservative, but not a bound: on the tiny CNN of
    tests/search/test_estimate.py c1:full + c3:full compiled to 5,472 bytes against 5,112
    predicted. The chosen scheme is compiled and repaired if over (``verify_cost``)."""
    cost = entry["cost"]
    extra = 0 if summed is None else max(cost["activation_bytes"] - summed, 0)
    return Item(key, group, entry.get("gain", 0.0),
                cost["activation_bytes"] if summed is None else summed,
                cost.get("delta_variable_bytes", cost["variable_bytes"]) + extra,
                cost.get("delta_step_ms", cost["step_ms"]))


# ---- the measuring state -----------------------------------------------------------------------
@dataclasses.dataclass
class _State:
    model: Any
    loss: Any
    optimizer: Any
    batch_size: int
    steps: int
    seeds: int
    base: tuple
    x: np.ndarray
    y: np.ndarray
    xv: np.ndarray
    yv: np.ndarray
    key: str
    cache: dict
    learning_rate: float | None
    show: bool
    costs: str = "exact"
    depth_compiles: int = 8
    probe_runs: int = 0
    compiles: int = 0
    confirm_steps: int = 0   # the confirmation probe's length (0: no confirmation)

    def _probe(self) -> Probe:
        if self.key not in _PROBES:
            _PROBES[self.key] = Probe(self.model, self.loss, self.optimizer, self.xv, self.yv,
                                      self.learning_rate)
        return _PROBES[self.key]

    def _batches(self, seed: int, steps: int | None = None):
        """``steps`` (default ``self.steps``) batches of a seeded permutation of the training
        set, cycled: a longer probe's first batches are the short probe's."""
        steps = self.steps if steps is None else steps
        rng = np.random.default_rng(seed)
        n = steps * self.batch_size
        order = np.concatenate([rng.permutation(len(self.x))
                                for _ in range(math.ceil(n / len(self.x)))])[:n]
        shape = (steps, self.batch_size)
        return (self.x[order].reshape(shape + self.x.shape[1:]),
                self.y[order].reshape(shape + self.y.shape[1:]))

    def _losses(self, choice: dict, seeds=None,
                steps: int | None = None) -> tuple[list[float], list[float]]:
        """Validation loss and accuracy of base + ``choice`` after the brief run (``steps``
        long, default ``self.steps``), per seed (those of ``seeds``, default all)."""
        probe, scheme = self._probe(), cand.scheme_of(self.base, choice)
        losses, accs = [], []
        for seed in (range(self.seeds) if seeds is None else seeds):
            xb, yb = self._batches(seed, steps)
            value, out = probe.run(scheme, xb, yb)
            self.probe_runs += 1
            losses.append(value)
            accs.append(accuracy(out, self.yv))
        return losses, accs

    def measure(self, choice: dict) -> dict:
        """Measured gain of base + ``choice`` over the base (mean and spread over seeds),
        cached by the combination."""
        key = cand.choice_key(choice)
        if key not in self.cache["measured"]:
            single = self.cache.get("candidates", {}).get(key) if len(choice) == 1 else None
            if not choice:
                self.cache["measured"][key] = {"gain": 0.0, "gain_std": 0.0,
                                               "val_accuracy": self.cache["base"]["val_accuracy"]}
            elif single is not None and "gains" in single:
                # one option alone: the analysis ran exactly this probe (same start, batches)
                self.cache["measured"][key] = {
                    "gain": single["gain"], "gain_std": single["gain_std"],
                    "gains": single["gains"], "val_accuracy":
                        self.cache["base"]["val_accuracy"] + single["accuracy_gain"]}
            else:
                first = self.cache.get("screened", {}).get(key)
                if first is None:
                    losses, accs = self._losses(choice)
                else:   # the first seed was run by screen(): the others only
                    losses, accs = self._losses(choice, range(1, self.seeds))
                    losses, accs = [first["loss"]] + losses, [first["accuracy"]] + accs
                gains = np.array(self.cache["base"]["val_losses"]) - np.array(losses)
                self.cache["measured"][key] = {"gain": float(gains.mean()),
                                               "gain_std": float(gains.std()),
                                               "gains": gains.tolist(),
                                               "val_accuracy": float(np.mean(accs))}
        return self.cache["measured"][key]

    def screen(self, choice: dict) -> float:
        """The gain of base + ``choice`` on the first seed's batches only (one probe run
        instead of ``seeds``), cached; the full measurement's first seed when known."""
        key = cand.choice_key(choice)
        if not choice:
            return 0.0
        if self.known(choice):
            known = self.measure(choice)
            if "gains" in known:
                return known["gains"][0]
        screened = self.cache.setdefault("screened", {})
        if key not in screened:
            losses, accs = self._losses(choice, range(1))
            screened[key] = {"loss": losses[0], "accuracy": accs[0]}
        return float(self.cache["base"]["val_losses"][0] - screened[key]["loss"])

    def known(self, choice: dict) -> bool:
        """Whether the measured gain of base + ``choice`` needs no probe run: measured
        before (this budget or another), a single option (the analysis), or the base."""
        key = cand.choice_key(choice)
        return (not choice or key in self.cache["measured"]
                or (len(choice) == 1 and key in self.cache.get("candidates", {})))

    def analyse(self, options: dict, time_steps: int) -> None:
        """Contributions (probe) of the base and every option; their costs exact (a compile
        each) or predicted (:mod:`tfpock.contribution.estimate`)."""
        all_options = [o for opts in options.values() for o in opts]
        predicted = self.costs == "predicted"
        bar = _bar((1 if predicted else 2) * len(all_options) + 2, self.show)
        try:
            losses, accs = self._losses({})
            bar.update(1)
            cost = self.cost({}, time_steps)
            bar.update(1)
            self.cache["base"] = {"val_losses": losses, "val_loss": float(np.mean(losses)),
                                  "val_accuracy": float(np.mean(accs)), "cost": cost}
            self.cache["candidates"] = {}
            gains = {}
            for o in all_options:
                l_o, a_o = self._losses({o.layer: o})
                bar.update(1)
                g = np.array(losses) - np.array(l_o)
                gains[o.key] = {"gain": float(g.mean()), "gain_std": float(g.std()),
                                "gains": g.tolist(),
                                "accuracy_gain": float(np.mean(a_o) - np.mean(accs))}
            if predicted:
                costs, info = predicted_costs(options, cost, lambda c: self.cost(c, time_steps),
                                              self._variables, self.depth_compiles)
                self.cache["estimate"] = info
            for o in all_options:
                if predicted:
                    c = costs[o.key]
                else:
                    c = self.cost({o.layer: o}, time_steps)
                    bar.update(1)
                    c["delta_variable_bytes"] = c["variable_bytes"] - cost["variable_bytes"]
                    c["delta_step_ms"] = (None if c["step_ms"] is None
                                          else c["step_ms"] - cost["step_ms"])
                self.cache["candidates"][o.key] = {**gains[o.key], "cost": c}
                logger.info("search: %s gain %.4f +- %.4f, %d bytes", o.key,
                            gains[o.key]["gain"], gains[o.key]["gain_std"], c["memory_bytes"])
        finally:
            bar.close()

    def _variables(self, choice: dict) -> list[dict]:
        """Variables of base + ``choice``'s exported model (the compiler's layout, no trace)."""
        return layout_variables(self.model, cand.scheme_of(self.base, choice), self.optimizer)

    def cost(self, choice: dict, time_steps: int) -> dict:
        key = cand.choice_key(choice)
        if key not in self.cache["exact"]:
            scheme = cand.scheme_of(self.base, choice)
            memo = hashlib.sha256(json.dumps(
                [self.model.to_json(), str(scheme), self.batch_size, time_steps,
                 _opt_config(self.optimizer), type(self.optimizer).__name__,
                 type(resolve_loss(self.loss)).__name__], default=str).encode()).hexdigest()
            if memo not in _COSTS:
                self.compiles += 1
                _COSTS[memo] = exact_cost(self.model, scheme, self.loss, self.optimizer,
                                          self.batch_size, time_steps, self.x,
                                          self.y).to_dict()
            self.cache["exact"][key] = dict(_COSTS[memo])
        return dict(self.cache["exact"][key])

    def choose(self, groups, base_item, budget, by_key, time_steps, compile_checks,
               refine, exact_checks, warm):
        """Steps 3-4 for one budget: the knapsack's pick, the checks, the refinement, the
        exact cost check. ``warm``: the contributions came from the cache (a new budget)."""
        knap = select(groups, base_item, budget.memory_bytes, budget.step_ms)
        knap_choice = {i.group: by_key[i.key] for i in knap}
        checks = self.checks(groups, base_item, budget, by_key, knap, time_steps,
                             compile_checks, warm=warm)
        # seeds of the refinement: the checked schemes, every measured combination whose
        # exact cost is known and fits (a pick of an earlier budget), so a larger budget
        # never ends below a smaller one's measured pick, and every measured combination
        # predicted to fit (earlier budgets' checks and refinement): none costs a probe run
        seeds = [c for c in (_choice_of(c["choice"], by_key) for c in checks) if c is not None]
        seeds += [c for c in self.known_fits(budget, by_key)
                  if cand.choice_key(c) in self.cache["measured"]]
        seeds += [c for c in (_choice_of(k, by_key) for k in self.cache["measured"])
                  if c is not None and _fits(predict(_items_of(groups, c), base_item), budget)]
        chosen, refinement = self.refine(groups, base_item, budget, by_key, knap_choice,
                                         refine, seeds)
        final, exact, repairs = self.verify_cost(groups, base_item, budget, by_key, chosen,
                                                 time_steps, exact_checks)
        return knap, knap_choice, checks, refinement, final, exact, repairs

    def checks(self, groups, base_item, budget, by_key, knap, time_steps,
               compile_checks, warm: bool = False) -> list[dict]:
        """Predicted vs measured gain, and predicted vs exact memory and time, for the
        knapsack's pick and a few others: the best
        pick at half the budget, the best single option, and all the feasible best options
        of each layer together. ``warm`` (a new budget from the cache): the others are the
        additivity report, made by the first search; they are listed only when their gain
        needs no probe run (:meth:`known`), the knapsack's pick is always measured."""
        others = {"knapsack": knap}
        half = Budget(None if budget.memory_bytes is None else max(
            1, int(base_item.activation_bytes + base_item.variable_bytes +
                   (budget.memory_bytes - base_item.activation_bytes -
                    base_item.variable_bytes) / 2)), budget.step_ms)
        others["knapsack at half the room"] = select(groups, base_item, half.memory_bytes,
                                                     half.step_ms) or []
        singles = [i for g in groups for i in g if _fits(predict([i], base_item), budget)]
        if singles:
            others["best single option"] = [max(singles, key=lambda i: i.gain)]
        greedy = []
        for g in groups:
            fit = [i for i in g if _fits(predict(greedy + [i], base_item), budget)]
            if fit:
                greedy.append(max(fit, key=lambda i: i.gain))
        others["greedy per layer"] = greedy
        out = []
        for name, items in others.items():
            choice = {i.group: by_key[i.key] for i in items}
            if warm and name != "knapsack" and not self.known(choice):
                continue
            m = self.measure(choice)
            p = predict(items, base_item)
            key = cand.choice_key(choice)
            exact = (self.cost(choice, time_steps) if compile_checks
                     else self.cache["exact"].get(key, {"memory_bytes": None, "step_ms": None}))
            out.append({"scheme": name, "choice": cand.choice_key(choice),
                        "predicted_gain": p.gain, "measured_gain": m["gain"],
                        "predicted_memory_bytes": p.memory_bytes,
                        "exact_memory_bytes": exact["memory_bytes"],
                        "predicted_step_ms": p.step_ms, "measured_step_ms": exact["step_ms"]})
        return out

    def refine(self, groups, base_item, budget, by_key, start: dict, evaluations: int,
               checked: Sequence[dict] = ()):
        """MCUNetV3-style evolutionary search seeded by the knapsack pick and the checked
        schemes (all predicted-feasible, their gains already measured): each generation
        mutates the best combinations (one layer's option changed, or dropped), keeps the
        predicted-feasible ones and measures them with the probe; the best measured wins
        (a checked single option can beat a combination whose gains did not add up).

        A mutation is screened first on the first seed's batches (one probe run, cached):
        only if it beats the current best there are the other seeds run; a rejected one
        costs 1/seeds of an evaluation (``evaluations`` counts full measurements' worth of
        probe runs). A mutation whose gain is known (measured for an earlier budget, or a
        single option) costs no probe run."""
        rng = np.random.default_rng(0)
        start_gain = self.measure(start)["gain"]
        best = [(start_gain, dict(start))]
        seen = {cand.choice_key(start)}
        for choice in checked:
            if cand.choice_key(choice) not in seen:
                seen.add(cand.choice_key(choice))
                best.append((self.measure(choice)["gain"], dict(choice)))
        best.sort(key=lambda t: -t[0])
        tried, screened_out = 0.0, 0
        layer_items = {g[0].group: g for g in groups if g}
        while tried < evaluations and layer_items:
            parent = best[rng.integers(min(3, len(best)))][1]
            child = dict(parent)
            layer = list(layer_items)[rng.integers(len(layer_items))]
            pick = rng.integers(len(layer_items[layer]) + 1)
            if pick == len(layer_items[layer]):
                child.pop(layer, None)
            else:
                child[layer] = by_key[layer_items[layer][pick].key]
            k = cand.choice_key(child)
            if k in seen or not _fits(predict(_items_of(groups, child), base_item), budget):
                seen.add(k)
                tried += 0.25   # a rejected mutation costs a little, so the loop ends
                continue
            seen.add(k)
            if self.known(child):
                tried += 0.25
            elif self.seeds > 1 and self.screen(child) <= self.screen(best[0][1]):
                tried += 1 / self.seeds
                screened_out += 1
                continue
            else:
                tried += 1
            best.append((self.measure(child)["gain"], child))
            best.sort(key=lambda t: -t[0])
        gain, choice = best[0]
        return choice, {"evaluations": int(math.ceil(tried)), "screened_out": screened_out,
                        "knapsack_measured_gain": start_gain,
                        "refined_measured_gain": gain,
                        "bought": gain - start_gain, "choice": cand.choice_key(choice)}

    def verify_cost(self, groups, base_item, budget, by_key, choice, time_steps,
                    exact_checks: int):
        """Exact memory/time of ``choice`` (a compile unless known); if the exact memory
        exceeds the budget, select again under a budget lowered by the overshoot. At most
        ``exact_checks`` combinations not costed before are compiled; after that (or three
        repairs), and whenever a repair was needed, the pick is the best-measured combination
        whose exact cost is known and fits the budget (the base always is: the search checked
        it first; the repaired pick is one of them). A repair lowers the budget by the
        overshoot, and memory is not additive, so it can land far below what fits: on the
        digits task two repairs ended at the base (gain 0) while ``conv3:full``, costed
        exactly and fitting, had gain 8.15 (bench/results/2026-12-06-x86_64-2core-search-
        merged.md, before this rule). So a new budget from the cache costs at most
        ``exact_checks`` compiles."""
        repairs = []
        limit = budget.memory_bytes
        compiled = 0
        while len(repairs) < 4:
            if cand.choice_key(choice) not in self.cache["exact"]:
                if compiled >= exact_checks:
                    break
                compiled += 1
            exact = self.cost(choice, time_steps)
            if budget.fits(exact["memory_bytes"], exact["step_ms"]):
                if not repairs:
                    return choice, exact, repairs
                break
            over = exact["memory_bytes"] - (budget.memory_bytes or exact["memory_bytes"])
            repairs.append({"choice": cand.choice_key(choice),
                            "exact_memory_bytes": exact["memory_bytes"],
                            "exact_step_ms": exact["step_ms"]})
            limit = None if limit is None else limit - max(over, 1)
            picked = select(groups, base_item, limit, budget.step_ms) or []
            choice = {i.group: by_key[i.key] for i in picked}
        choice = max(self.known_fits(budget, by_key),
                     key=lambda c: (self.measure(c)["gain"], -len(c)))
        return choice, self.cost(choice, time_steps), repairs

    def confirmed(self, choice: dict) -> dict:
        """Gain of base + ``choice`` by the confirmation probe: ``confirm_steps`` steps from
        the same start on the same batch orders as the short probe, continued; mean and
        spread over seeds, cached by the combination."""
        if not choice:
            return {"gain": 0.0, "gain_std": 0.0}
        done = self.cache.setdefault("confirmed", {})
        if "base_losses_confirmed" not in self.cache:
            self.cache["base_losses_confirmed"] = self._losses({}, steps=self.confirm_steps)[0]
        key = cand.choice_key(choice)
        if key not in done:
            losses, accs = self._losses(choice, steps=self.confirm_steps)
            gains = np.array(self.cache["base_losses_confirmed"]) - np.array(losses)
            done[key] = {"gain": float(gains.mean()), "gain_std": float(gains.std()),
                         "gains": gains.tolist(), "val_accuracy": float(np.mean(accs))}
        return done[key]

    def confirm(self, groups, base_item, budget, by_key, chosen: dict, knap_choice: dict,
                checks, options: dict, count: int, time_steps: int, exact_checks: int):
        """Step 5, successive halving: the short probe screened every option and combination;
        ``count`` finalists that fit are re-measured by the confirmation probe, as long as
        the fine-tuning, and the best that fits exactly wins. The finalists, in this order:
        steps 3-4's pick (fits exactly), the knapsack's, the checked schemes, the ``last:N``
        ladder (deepest first), then every measured combination by short-probe gain (the
        first ``count`` that fit; any confirmed for an earlier budget joins at no cost); one
        whose exact cost is known must fit it, the others their predicted cost (and are
        left out when no compile is left: they could not be chosen). A finalist
        not compiled before is compiled when it ranks first (at most ``exact_checks``: what
        the exact check left of the budget's compiles, so a new budget from the cache still
        compiles at most ``exact_checks`` in all).

        Why: on the digits task 20 steps at the optimizer's rate rank schemes unlike 20
        epochs of fine-tuning where it matters, among the best: the head alone is still in
        its first transient (validation loss 9.38, accuracy 0.25 on 5 classes:
        bench/results/2026-12-07-x86_64-2core-search-kxk-ref-images/report.md), every option
        that damps it gains about as much, and full fine-tuning probes below ``conv3:full``
        (5.15 vs 5.31) though it ends 2.3 points above it. A probe as long as the fine-tuning ranks
        the 29 schemes with Spearman 0.99 against final accuracy (20 steps: 0.87) and
        its conv2+conv3 combinations add up within 0.6 (20 steps: 1.9 below)
        (bench/results/2026-12-07-x86_64-2core-probe-fidelity.md). Too slow to screen every
        option with it on larger models, it decides between finalists only."""
        ladder = []
        full = [next((o for o in opts if o.label == "full"), None) for opts in options.values()]
        for k in range(len(full), 0, -1):
            if all(o is not None for o in full[-k:]):
                ladder.append({o.layer: o for o in full[-k:]})
        measured = [c for c in (_choice_of(k, by_key) for k in self.cache["measured"])
                    if c is not None]
        candidates = ([chosen, knap_choice]
                      + [c for c in (_choice_of(c["choice"], by_key) for c in checks)
                         if c is not None]
                      + ladder + sorted(measured, key=lambda c: -self.measure(c)["gain"]))
        # combinations confirmed before (for another budget) are finalists at no cost, beyond
        # ``count``: a budget then never ends below a known better one that fits (MobileNetV2
        # @1/8 chose a 0.28 over a confirmed 0.46 that fitted, as it was 7th by short gain)
        free = [c for c in (_choice_of(k, by_key) for k in self.cache.get("confirmed", {}))
                if c is not None]
        finalists, seen = [], set()
        for c in candidates + free:
            key = cand.choice_key(c)
            if key in seen or (len(finalists) >= count and c not in free):
                continue
            seen.add(key)
            exact = self.cache["exact"].get(key)
            if exact is None and exact_checks == 0:
                continue   # could not be compiled, so could not be chosen: not probed
            if (budget.fits(exact["memory_bytes"], exact["step_ms"]) if exact is not None
                    else _fits(predict(_items_of(groups, c), base_item), budget)):
                finalists.append(c)
        ranked = sorted(finalists, key=lambda c: -self.confirmed(c)["gain"])
        final, exact, compiled = chosen, self.cost(chosen, time_steps), 0
        for c in ranked:
            if cand.choice_key(c) not in self.cache["exact"]:
                if compiled >= exact_checks:
                    continue
                compiled += 1
            cost = self.cost(c, time_steps)
            if budget.fits(cost["memory_bytes"], cost["step_ms"]):
                final, exact = c, cost
                break
        rows = [{"choice": cand.choice_key(c),
                 "short_gain": self.measure(c)["gain"] if self.known(c) else None,
                 "gain": self.confirmed(c)["gain"], "gain_std": self.confirmed(c)["gain_std"],
                 "exact_memory_bytes": self.cache["exact"].get(cand.choice_key(c), {}).get(
                     "memory_bytes")} for c in ranked]
        return final, exact, {"steps": self.confirm_steps, "finalists": rows,
                              "short_choice": cand.choice_key(chosen),
                              "choice": cand.choice_key(final),
                              "changed": cand.choice_key(final) != cand.choice_key(chosen)}

    def known_fits(self, budget, by_key) -> list[dict]:
        """The combinations whose exact cost is known (compiled) and fits ``budget``."""
        known = [_choice_of(key, by_key) for key, c in self.cache["exact"].items()
                 if budget.fits(c["memory_bytes"], c["step_ms"])]
        return [c for c in known if c is not None]


def _choice_of(key: str, by_key: dict) -> dict | None:
    """The combination a :func:`candidates.choice_key` names ({layer: Option}), None if it
    names an option this search does not have."""
    parts = [] if key == "base" else key.split(",")
    if not all(p in by_key for p in parts):
        return None
    return {by_key[p].layer: by_key[p] for p in parts}


def _items_of(groups, choice: dict) -> list[Item]:
    """The selection's items of a combination's options."""
    keys = {o.key for o in choice.values()}
    return [i for g in groups for i in g if i.key in keys]


def _fits(p, budget: Budget) -> bool:
    return budget.fits(p.memory_bytes, p.step_ms)


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _bar(total: int, show: bool):
    if not show:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc="tfpock.search", file=sys.stderr, leave=False)
