"""tfpock.search (issue 12): knapsack and selection against brute force, the probe against
separately trained GradientTape runs, one search end to end (cache, save), Budget
validation and every error case. Tiny models, so the whole file stays fast."""
from __future__ import annotations

import itertools
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfpock
from tests.numerics import assert_close
from tfpock.contribution import Budget, BudgetError, core
from tfpock.contribution import candidates as cand
from tfpock.contribution.probe import Probe
from tfpock.contribution.select import Item, knapsack, predict, select
from tfpock.errors import TfpockError

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def conv_model(seed=0, channels=2):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((12, channels)),
        keras.layers.Conv1D(4, 3, activation="tanh", name="c1"),
        keras.layers.Conv1D(4, 3, activation="tanh", name="c2"),
        keras.layers.GlobalAveragePooling1D(),
        keras.layers.Dense(3, name="head")], name="tiny")


def data(n, seed=0, channels=2):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 12, channels)).astype(np.float32)
    y = (np.argmax(x[:, :4, 0].reshape(n, 2, 2).sum(2), 1) + (x[:, 0, 1] > 1)).astype(np.int32)
    return x, np.minimum(y, 2).astype(np.int32)


# ---- selection --------------------------------------------------------------------------
def _brute(values, costs, capacity):
    best = 0.0
    for combo in itertools.product(*[[None] + list(range(len(g))) for g in values]):
        total = np.zeros(len(capacity), int)
        value = 0.0
        for g, o in enumerate(combo):
            if o is not None:
                value += values[g][o]
                total += costs[g][o]
        if np.all(total <= capacity):
            best = max(best, value)
    return best


def test_knapsack_equals_brute_force():
    rng = np.random.default_rng(3)
    for _ in range(150):
        dims = int(rng.integers(1, 3))
        values = [[float(rng.normal()) for _ in range(rng.integers(1, 4))]
                  for _ in range(rng.integers(1, 5))]
        costs = [[tuple(int(c) for c in rng.integers(0, 6, dims)) for _ in g] for g in values]
        capacity = tuple(int(c) for c in rng.integers(0, 10, dims))
        value, picked = knapsack(values, costs, capacity)
        assert_close(value, _brute(values, costs, capacity), atol=1e-9)
        used = sum((np.array(costs[g][o]) for g, o in enumerate(picked) if o is not None),
                   np.zeros(dims, int))
        assert np.all(used <= capacity)
        assert_close(sum(values[g][o] for g, o in enumerate(picked) if o is not None), value,
                     atol=1e-9)


def test_select_equals_brute_force_under_the_max_plus_model():
    """select's thresholds make the max over activation peaks exact; integer costs that are
    multiples of the grid cell make the grid exact too."""
    rng = np.random.default_rng(5)
    base = Item("base", "base", 0.0, 1000, 100, 1.0)
    for _ in range(60):
        groups = [[Item(f"{g}:{o}", str(g), float(rng.normal(0.5, 1)),
                        int(rng.choice([1000, 1200, 1600, 2000])), int(rng.integers(0, 5)) * 10,
                        float(rng.integers(0, 4))) for o in range(rng.integers(1, 4))]
                  for g in range(rng.integers(1, 4))]
        memory, step = 100 + int(rng.integers(10, 14)) * 100 + 40 * 10, None
        if rng.random() < 0.5:
            step = 1.0 + float(rng.integers(0, 6))
        picked = select(groups, base, memory, step, grid=40 if step is None else 40)
        best = 0.0
        for combo in itertools.product(*[[None] + g for g in groups]):
            items = [i for i in combo if i is not None]
            p = predict(items, base)
            if p.memory_bytes <= memory and (step is None or p.step_ms <= step):
                best = max(best, p.gain)
        got = predict(picked, base)
        assert got.memory_bytes <= memory and (step is None or got.step_ms <= step)
        assert got.gain <= best + 1e-9
        # the grid rounds costs up: exact whenever the rounding is lossless
        assert got.gain >= best - 1e-9 or step is not None


def test_select_refuses_when_the_base_does_not_fit():
    base = Item("base", "base", 0.0, 1000, 100, 1.0)
    assert select([[Item("a:full", "a", 1.0, 1000, 0, 0.0)]], base, 1099, None) is None
    assert select([], base, 2000, 0.5) is None


# ---- the probe --------------------------------------------------------------------------
def _reference_val_loss(model, scheme, xb, yb, xv, yv, lr, adam):
    """Trains a clone with a plain GradientTape loop, updating only the entries ``scheme``
    trains (whole weights, or their first input channels), written independently of the
    probe: numpy SGD or numpy Adam on exactly those entries."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    trained = {w.path: w for w in scheme.resolve(model)}
    pairs = [(v, trained.get(p)) for v, p in zip(clone.trainable_variables,
                                                 [v.path for v in model.trainable_variables])]
    state = {id(v): (np.zeros(v.shape), np.zeros(v.shape)) for v, _ in pairs}
    for t in range(len(xb)):
        with tf.GradientTape() as tape:
            value = LOSS(yb[t], clone(xb[t], training=False))
        grads = tape.gradient(value, [v for v, _ in pairs])
        for (v, w), g in zip(pairs, grads):
            if w is None:
                continue
            g = np.zeros(v.shape) if g is None else g.numpy().astype(np.float64)
            index = [slice(None)] * len(v.shape)
            if w.channels is not None:
                index[w.axis] = slice(0, w.channels)
            index = tuple(index)
            new = v.numpy().astype(np.float64)
            if adam:
                m, s = state[id(v)]
                m[index] = 0.9 * m[index] + 0.1 * g[index]
                s[index] = 0.999 * s[index] + 0.001 * g[index] ** 2
                alpha = lr * np.sqrt(1 - 0.999 ** (t + 1)) / (1 - 0.9 ** (t + 1))
                new[index] -= alpha * m[index] / (np.sqrt(s[index]) + 1e-7)
            else:
                new[index] -= lr * g[index]
            v.assign(new.astype(np.float32))
    return float(LOSS(yv, clone(xv, training=False)))


@pytest.mark.parametrize("adam", [False, True], ids=["sgd", "adam"])
def test_probe_gain_equals_a_separately_trained_run(adam):
    model = conv_model()
    x, y = data(40)
    xb, yb = x[:24].reshape(3, 8, 12, 2), y[:24].reshape(3, 8)
    lr = 0.01 if adam else 0.3
    opt = keras.optimizers.Adam(lr) if adam else keras.optimizers.SGD(lr)
    probe = Probe(model, LOSS, opt, x[24:], y[24:])
    base = cand.scheme_of(["head"], {})
    options = {o.label: o for o in cand.layer_options(model.get_layer("c2"))}
    assert sorted(options) == ["1/2", "1/8", "bias", "full"]
    base_loss, _ = probe.run(base, xb, yb)
    expected_base = _reference_val_loss(model, base, xb, yb, x[24:], y[24:], lr, adam)
    assert_close(base_loss, expected_base, rtol=2e-5)
    for label in ("1/2", "bias", "full"):
        scheme = cand.scheme_of(["head"], {"c2": options[label]})
        value, _ = probe.run(scheme, xb, yb)
        expected = _reference_val_loss(model, scheme, xb, yb, x[24:], y[24:], lr, adam)
        assert_close(value, expected, rtol=2e-5, where=label)
        assert_close(base_loss - value, expected_base - expected, atol=2e-5, where=label)
    assert probe.traces == 1      # one trace served the base and every option


def test_probe_runs_any_number_of_steps_on_one_trace():
    """The search's short screening probe and its longer confirmation probe share a trace:
    the number of steps is the batches' leading axis, not part of the signature."""
    model = conv_model()
    x, y = data(64)
    probe = Probe(model, LOSS, keras.optimizers.SGD(0.3), x[48:], y[48:])
    scheme = cand.scheme_of(["head"], {"c2": cand.layer_options(model.get_layer("c2"))[-1]})
    for steps in (2, 5):
        xb, yb = x[:8 * steps].reshape(steps, 8, 12, 2), y[:8 * steps].reshape(steps, 8)
        value, _ = probe.run(scheme, xb, yb)
        expected = _reference_val_loss(model, scheme, xb, yb, x[48:], y[48:], 0.3, False)
        assert_close(value, expected, rtol=2e-5, where=f"{steps} steps")
    assert probe.traces == 1


def test_a_confirmation_setting_is_part_of_the_cache_key(searched, tmp_path):
    """A search without confirmation neither reads nor writes the confirmed search's gains."""
    args, cache, first = searched
    plain = tfpock.search(*args, Budget(memory_bytes=10**7), 8, cache_dir=str(tmp_path),
                          confirm=0, **SMALL)
    assert plain.summary["confirmation"] is None
    assert plain.summary["cache_key"] != first.summary["cache_key"]
    assert os.listdir(tmp_path) == [plain.summary["cache_key"] + ".json"]


def test_confirm_cached_bounds_a_cached_budgets_confirmation(searched):
    """A budget from the cache confirms as the first did unless ``confirm_cached`` says
    otherwise (0: none, steps 3-4's pick kept); the cache key does not change with it."""
    args, cache, first = searched
    assert first.summary["confirmation"] is not None
    budget = Budget(memory_bytes=10**7 - 1)
    warm = tfpock.search(*args, budget, 8, cache_dir=cache, **SMALL)
    skipped = tfpock.search(*args, budget, 8, cache_dir=cache, confirm_cached=0, **SMALL)
    assert warm.summary["confirmation"] is not None
    assert skipped.summary["confirmation"] is None
    assert skipped.summary["cache_key"] == warm.summary["cache_key"] == first.summary["cache_key"]
    with pytest.raises(tfpock.TfpockError, match="confirm_cached"):
        tfpock.search(*args, budget, 8, cache_dir=cache, confirm_cached=-1, **SMALL)


def test_probe_selection_of_a_partial_channel_option():
    model = conv_model()
    x, y = data(24)
    probe = Probe(model, LOSS, keras.optimizers.SGD(0.5), x[:8], y[:8])
    option = {o.label: o for o in cand.layer_options(model.get_layer("c2"))}["1/2"]
    sels = probe.selections(cand.scheme_of(["head"], {"c2": option}))
    kernel = [s for s, v in zip(sels, model.trainable_variables) if v.path.endswith("c2/kernel")][0]
    assert kernel.shape == (1, 4, 1) and kernel.ravel().tolist() == [1, 1, 0, 0]


# ---- search end to end ------------------------------------------------------------------
SMALL = dict(steps=4, seeds=2, time_steps=2, refine=4)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    model = keras.Sequential([keras.Input((12, 2)),
                              keras.layers.Conv1D(4, 3, activation="tanh", name="c1"),
                              keras.layers.GlobalAveragePooling1D(),
                              keras.layers.Dense(3, name="head")], name="tiny1")
    x, y = data(48)
    cache = str(tmp_path_factory.mktemp("cache"))
    args = (model, (x[:32], y[:32]), (x[32:], y[32:]), LOSS, keras.optimizers.SGD(0.3))
    result = tfpock.search(*args, Budget(memory_bytes=10**7), 8, cache_dir=cache, **SMALL)
    return args, cache, result


def test_search_result(searched):
    args, _, result = searched
    s = result.summary
    assert isinstance(result.scheme, tfpock.Scheme)
    assert result.scheme.to_dict()["layers"]["head"] == "full"
    assert [(r["layer"], r["option"]) for r in result.table] == [
        ("c1", "bias"), ("c1", "1/8"), ("c1", "full")]   # 2 input channels: 1/4 = 1/8 = 1 ch
    chosen = [r for r in result.table if r["chosen"]]
    assert len(chosen) <= 1
    assert s["chosen"]["exact_memory_bytes"] <= 10**7
    # a single chosen option's exact cost is the candidate's own row
    if chosen:
        assert s["chosen"]["exact_memory_bytes"] == chosen[0]["memory_bytes"]
        assert_close(s["chosen"]["predicted_gain"], chosen[0]["gain"], atol=1e-12)
    # the measured gain of every single option equals its table gain (same probe runs)
    for check in s["checks"]:
        if check["scheme"] == "best single option":
            row = [r for r in result.table if f"{r['layer']}:{r['option']}" == check["choice"]]
            assert_close(check["measured_gain"], row[0]["gain"], atol=1e-7)
    # the short probe's pick under the unbounded budget is the option with the best gain if
    # any gain is positive; the confirmation (32 examples, batch 8, 20 epochs: 80 steps)
    # then picks the finalist with the best long-probe gain (every one fits)
    c = s["confirmation"]
    best = max(result.table, key=lambda r: r["gain"])
    if best["gain"] > 0 and s["refinement"]["bought"] <= 0:
        assert c["short_choice"] == f"{best['layer']}:{best['option']}"
    assert c["steps"] == 80 and c["short_choice"] in [f["choice"] for f in c["finalists"]]
    assert s["chosen"]["choice"] == max(c["finalists"], key=lambda f: f["gain"])["choice"]
    assert [r for r in result.table if r["chosen"]] == (
        [] if c["choice"] == "base" else
        [r for r in result.table if f"{r['layer']}:{r['option']}" == c["choice"]])


def test_second_budget_comes_from_the_cache(searched, monkeypatch):
    args, cache, first = searched
    assert len(os.listdir(cache)) == 1
    monkeypatch.setattr(core, "_MEMORY_CACHE", {})   # from disk, as a new process would
    monkeypatch.setattr(core, "_PROBES", {})
    monkeypatch.setattr(core, "_COSTS", {})
    smallest = first.summary["base_cost"]["memory_bytes"]
    second = tfpock.search(*args, Budget(memory_bytes=smallest), 8, cache_dir=cache, **SMALL)
    t = second.summary["timing"]
    assert t["analysis_from_cache"] and t["compiles"] == 0
    assert [r["gain"] for r in second.table] == [r["gain"] for r in first.table]
    assert second.summary["chosen"]["exact_memory_bytes"] <= smallest
    assert second.scheme.to_dict()["layers"] == {"head": "full"}   # only the base fits
    # compile_checks: each checked scheme's exact memory; a single option's is its row's
    checked = tfpock.search(*args, Budget(memory_bytes=10**7), 8, cache_dir=cache,
                            compile_checks=True, **SMALL)
    rows = {f"{r['layer']}:{r['option']}": r["memory_bytes"] for r in checked.table}
    rows["base"] = smallest
    for check in checked.summary["checks"]:
        assert isinstance(check["exact_memory_bytes"], int)
        if check["choice"] in rows:
            assert check["exact_memory_bytes"] == rows[check["choice"]]
    # other data: another key, so no hit
    x, y = data(48, seed=1)
    other = core.cache_key(args[0], (x, y), {})
    assert other != second.summary["cache_key"]
    # another compiler (any source change of graph_passes or tfpock): another key too
    same = core.cache_key(args[0], (x, y), {})
    monkeypatch.setattr(core, "compiler_fingerprint", lambda: "another compiler")
    assert core.cache_key(args[0], (x, y), {}) != same


def test_budget_nothing_fits_names_the_smallest_and_writes_nothing(searched, tmp_path):
    args, _, first = searched
    smallest = first.summary["base_cost"]["memory_bytes"]
    with pytest.raises(BudgetError, match=f"needs {smallest:,} bytes"):
        tfpock.search(*args, Budget(memory_bytes=smallest - 1), 8, cache_dir=str(tmp_path),
                      **SMALL)
    assert os.listdir(tmp_path) == []


def test_save_writes_everything_atomically(searched, tmp_path, monkeypatch):
    _, _, result = searched
    out = tmp_path / "search"
    result.save(out)
    assert sorted(os.listdir(out)) == ["plot.png", "report.md", "scheme.json", "summary.json",
                                       "table.csv", "table.json"]
    assert tfpock.Scheme.load(out / "scheme.json") == result.scheme
    assert len((out / "table.csv").read_text().strip().splitlines()) == len(result.table) + 1
    assert json.loads((out / "table.json").read_text()) == result.table
    assert "| figure | predicted | measured |" in (out / "report.md").read_text()
    before = {p: (out / p).read_bytes() for p in os.listdir(out)}

    def broken(path):
        raise OSError("disk full")
    monkeypatch.setattr(result, "plot", broken)
    with pytest.raises(OSError, match="disk full"):
        result.save(out)
    assert {p: (out / p).read_bytes() for p in os.listdir(out)} == before
    assert sorted(os.listdir(tmp_path)) == ["search"]   # no half-written folder left


@pytest.mark.parametrize("kwargs, message", [
    ({"memory_bytes": 0}, "memory_bytes"), ({"memory_bytes": -5}, "memory_bytes"),
    ({"memory_bytes": 1.5}, "memory_bytes"), ({"memory_bytes": float("inf")}, "memory_bytes"),
    ({"memory_bytes": True}, "memory_bytes"), ({"memory_bytes": "1MB"}, "memory_bytes"),
    ({"step_ms": 0.0}, "step_ms"), ({"step_ms": float("nan")}, "step_ms"),
    ({"step_ms": "5"}, "step_ms")])
def test_budget_validation(kwargs, message):
    with pytest.raises(BudgetError, match=message):
        Budget(**kwargs)


def test_budget_accepts_either_field():
    assert Budget(memory_bytes=1024.0).memory_bytes == 1024
    assert Budget(step_ms=3).step_ms == 3.0 and Budget().fits(10**12, 10**6)


@pytest.mark.parametrize("which, make, message", [
    ("val_data", lambda x, y: (x[:0], y[:0]), "val_data is empty"),
    ("train_data", lambda x, y: (x[:, :10], y), r"train_data: x has examples of shape \(10, 2\)"),
    ("val_data", lambda x, y: (x.astype(np.int32), y), "val_data: x has dtype int32"),
    ("train_data", lambda x, y: (x, y.astype(np.float32)), "train_data: y must be integer"),
    ("train_data", lambda x, y: (x, y + 3), "train_data: y holds labels outside"),
    ("val_data", lambda x, y: (x, y[:-1]), "val_data: x has 48 examples, y 47"),
    ("train_data", lambda x, y: (x[:4], y[:4]), "fewer than batch_size=8"),
])
def test_bad_data_is_refused_by_name_before_anything_runs(which, make, message, tmp_path):
    model = conv_model()
    x, y = data(48)
    good = (x, y)
    bad = make(x, y)
    train, val = (bad, good) if which == "train_data" else (good, bad)
    with pytest.raises(TfpockError, match=message):
        tfpock.search(model, train, val, LOSS, keras.optimizers.SGD(0.1),
                      Budget(memory_bytes=10**6), 8, cache_dir=str(tmp_path), **SMALL)
    assert os.listdir(tmp_path) == []


def test_bad_settings_are_refused():
    model = conv_model()
    x, y = data(16)
    with pytest.raises(BudgetError, match="tfpock.Budget"):
        tfpock.search(model, (x, y), (x, y), LOSS, "sgd", {"memory_bytes": 5}, 8)
    with pytest.raises(BudgetError, match="time_steps"):
        tfpock.search(model, (x, y), (x, y), LOSS, "sgd", Budget(step_ms=1.0), 8, time_steps=0)
    with pytest.raises(TfpockError, match="base names layer 'nope'"):
        tfpock.search(model, (x, y), (x, y), LOSS, "sgd", Budget(), 8, base="nope")


def test_a_dataset_reads_like_arrays():
    model = conv_model()
    x, y = data(20)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(6)
    xs, ys = core.check_data("train_data", ds, model, LOSS, 8)
    assert_close(xs, x)
    assert ys.dtype == np.int32 and ys.tolist() == y.tolist()
    with pytest.raises(TfpockError, match="val_data is empty"):
        core.check_data("val_data", ds.take(0), model, LOSS, 1)


class _CostsOnly:
    """What ``_State.verify_cost`` reads of a search: exact costs by combination (a compile
    in a real search) and measured gains."""
    known_fits = core._State.known_fits

    def __init__(self, exact: dict[str, int], gains: dict[str, float]):
        self.cache = {"exact": {}}
        self._exact, self._gains = exact, gains

    def cost(self, choice, time_steps):
        key = cand.choice_key(choice)
        self.cache["exact"][key] = {"memory_bytes": self._exact[key], "step_ms": None}
        return dict(self.cache["exact"][key])

    def measure(self, choice):
        return {"gain": self._gains[cand.choice_key(choice)]}


def test_a_repair_never_ends_below_a_known_scheme_that_fits():
    """The knapsack's pair compiles far over the budget; the repair lowers the budget by the
    overshoot and lands on the base, but ``a:full`` alone, exactly costed and fitting, measured
    better: that is the pick (on the digits task the repair had ended at the base:
    bench/results/2026-12-06-x86_64-2core-search-merged.md)."""
    a, b = cand.Option("a", "full", "full"), cand.Option("b", "full", "full")
    base = Item("base", "base", 0.0, 10, 0, None)
    groups = [[Item("a:full", "a", 5.0, 10, 10, None)], [Item("b:full", "b", 1.0, 10, 10, None)]]
    state = _CostsOnly({"base": 10, "a:full": 25, "b:full": 25, "a:full,b:full": 100},
                       {"base": 0.0, "a:full": 5.0, "b:full": 1.0, "a:full,b:full": 6.0})
    state.cost({}, 0)
    state.cost({"a": a}, 0)                    # costed during the analysis, as in a search
    final, exact, repairs = core._State.verify_cost(
        state, groups, base, Budget(memory_bytes=40), {"a:full": a, "b:full": b},
        {"a": a, "b": b}, 0, exact_checks=2)
    assert [r["choice"] for r in repairs] == ["a:full,b:full"]
    assert cand.choice_key(final) == "a:full" and exact["memory_bytes"] == 25
