"""A new budget from the search cache (issue 12: "a second budget in under 5 seconds"): it
re-measures nothing measured before (a single option's gain is the analysis's, a
combination's is cached), a warm budget measures only its knapsack pick beyond what is known,
and the refinement screens a mutation on one seed before running the others. The probe is a
stand-in that counts its runs (no TensorFlow step), so these are fast unit tests of
``tfpock.contribution.core._State``."""
from __future__ import annotations

import collections

import pytest

from tfpock.contribution import Budget, core
from tfpock.contribution import candidates as cand
from tfpock.contribution.select import Item, predict

SEEDS = 3
BASE_LOSS = [1.0, 1.1, 0.9]
# per option: (gain, activation bytes, variable bytes); the true gain of a combination is
# the sum of its options' gains minus 0.3 per extra option (not additive, as measured)
OPTIONS = {"a": {"bias": (0.10, 100, 10), "full": (0.50, 100, 60)},
           "b": {"bias": (0.05, 100, 10), "full": (0.40, 100, 50)},
           "c": {"bias": (0.02, 100, 10), "full": (0.30, 100, 40)}}


def true_gain(choice: dict) -> float:
    gains = [OPTIONS[o.layer][o.label][0] for o in choice.values()]
    return sum(gains) - 0.3 * max(len(gains) - 1, 0)


class _Counted(core._State):
    """A search state whose probe returns the loss the true gain gives (and a seed's offset),
    and whose exact cost is the option's bytes summed over the base (no compile)."""

    def _losses(self, choice, seeds=None):
        seeds = range(self.seeds) if seeds is None else seeds
        for seed in seeds:
            self.runs[(cand.choice_key(choice), seed)] += 1
            self.probe_runs += 1
        noise = [0.0, 0.02, -0.02]
        return ([BASE_LOSS[s] - true_gain(choice) + noise[s] for s in seeds],
                [0.5] * len(seeds))

    def cost(self, choice, time_steps):
        key = cand.choice_key(choice)
        if key not in self.cache["exact"]:
            self.compiles += 1
            memory = 100 + sum(OPTIONS[o.layer][o.label][2] for o in choice.values())
            self.cache["exact"][key] = {"memory_bytes": memory, "step_ms": None,
                                        "activation_bytes": 100,
                                        "variable_bytes": memory - 100}
        return dict(self.cache["exact"][key])


def analysed_state():
    """A state after the analysis: base and every single option measured (as search's
    ``analyse`` leaves the cache), no probe run counted yet."""
    state = _Counted(None, None, None, 8, 4, SEEDS, ("head",), None, None, None, None, "k",
                     {"measured": {}, "exact": {}}, None, False)
    state.runs = collections.Counter()
    state.cache["base"] = {"val_losses": BASE_LOSS, "val_loss": 1.0, "val_accuracy": 0.5,
                           "cost": state.cost({}, 0)}
    state.cache["candidates"] = {}
    by_key, groups = {}, []
    for layer, opts in OPTIONS.items():
        group = []
        for label, (gain, act, var) in opts.items():
            o = cand.Option(layer, label, label)
            by_key[o.key] = o
            gains = [gain] * SEEDS
            state.cache["candidates"][o.key] = {"gain": gain, "gain_std": 0.0, "gains": gains,
                                                "accuracy_gain": 0.0}
            group.append(Item(o.key, layer, gain, act, var, None))
        groups.append(group)
    state.runs.clear()
    state.probe_runs = 0
    return state, groups, Item("base", "base", 0.0, 100, 0, None), by_key


def run_budget(state, groups, base, by_key, memory, warm, refine=6):
    return state.choose(groups, base, Budget(memory_bytes=memory), by_key, 0, False, refine,
                        2, warm=warm)


def test_a_single_options_gain_is_the_analysiss():
    state, _, _, by_key = analysed_state()
    m = state.measure({"a": by_key["a:full"]})
    assert state.probe_runs == 0
    assert m["gain"] == OPTIONS["a"]["full"][0] and m["gains"] == [0.5] * SEEDS


def test_a_new_budget_re_measures_nothing_measured_before():
    """Cold budget, two new budgets from the cache, then the first again: no (combination,
    seed) is probed twice, and the repeated budget runs no probe and compiles nothing."""
    state, groups, base, by_key = analysed_state()
    first = run_budget(state, groups, base, by_key, 220, warm=False)
    for memory in (170, 260):
        run_budget(state, groups, base, by_key, memory, warm=True)
    assert state.runs and max(state.runs.values()) == 1
    runs, compiles = state.probe_runs, state.compiles
    again = run_budget(state, groups, base, by_key, 220, warm=True)
    assert (state.probe_runs, state.compiles) == (runs, compiles)
    assert cand.choice_key(again[4]) == cand.choice_key(first[4])


def test_a_warm_budget_measures_only_its_knapsack_pick_among_the_checks():
    state, groups, base, by_key = analysed_state()
    run_budget(state, groups, base, by_key, 220, warm=False, refine=0)
    cold_checks = {k for k, _ in state.runs}
    state.runs.clear()
    _, knap, checks, *_ = run_budget(state, groups, base, by_key, 280, warm=True, refine=0)
    assert {k for k, _ in state.runs} <= {cand.choice_key(knap)}
    assert [c["scheme"] for c in checks][0] == "knapsack"
    assert all(state.known(core._choice_of(c["choice"], by_key)) for c in checks)
    assert cold_checks   # the cold budget measured its checks


@pytest.mark.parametrize("memory", [220, 280])
def test_refinement_screens_on_one_seed_and_keeps_the_best_measured(memory):
    """A mutation that does not beat the best on the first seed is rejected after one probe
    run; the pick is the best fully measured combination; a combination probed on every seed
    beat the best of its time on the first."""
    state, groups, base, by_key = analysed_state()
    _, _, _, refinement, final, exact, _ = run_budget(state, groups, base, by_key, memory,
                                                      warm=False, refine=8)
    seeds_run = collections.defaultdict(set)
    for key, seed in state.runs:
        seeds_run[key].add(seed)
    assert all(s in ({0}, set(range(SEEDS))) for s in seeds_run.values())
    screened = [k for k, s in seeds_run.items() if s == {0}]
    assert len(screened) == refinement["screened_out"]
    assert refinement["screened_out"] >= 1
    budget = Budget(memory_bytes=memory)
    fits = [v["gain"] for k, v in state.cache["measured"].items()
            if core._fits(predict(core._items_of(groups, core._choice_of(k, by_key)), base),
                          budget)]
    assert refinement["refined_measured_gain"] == max(fits)
    assert refinement["refined_measured_gain"] >= refinement["knapsack_measured_gain"]
    assert exact["memory_bytes"] <= memory
    assert true_gain(final) == pytest.approx(state.measure(final)["gain"])


# ---- confirmation: the long probe decides between finalists -------------------------------
LONG_STEPS = 40
LADDER_PICK = "b:full,c:full"   # the long probe's best: short gain 0.40, long 1.00


class _Confirmed(_Counted):
    """The short probe as above; the long one (``LONG_STEPS``) ranks ``LADDER_PICK`` first,
    everything else at its short gain."""

    def _losses(self, choice, seeds=None, steps=None):
        if steps is None:
            return super()._losses(choice, seeds)
        seeds = range(self.seeds) if seeds is None else seeds
        self.long_runs += len(seeds)
        gain = 1.0 if cand.choice_key(choice) == LADDER_PICK else true_gain(choice)
        return [BASE_LOSS[s] - gain for s in seeds], [0.5] * len(seeds)


def confirmed_run(memory, count=6):
    state, groups, base, by_key = analysed_state()
    state.__class__ = _Confirmed
    state.confirm_steps, state.long_runs = LONG_STEPS, 0
    knap, knap_choice, checks, _, final, _, _ = run_budget(state, groups, base, by_key, memory,
                                                           warm=False)
    options = {layer: [by_key[f"{layer}:{label}"] for label in opts]
               for layer, opts in OPTIONS.items()}
    return state, final, state.confirm(groups, base, Budget(memory_bytes=memory), by_key, final,
                                       knap_choice, checks, options, count, 0, 2)


def test_the_long_probe_decides_between_finalists():
    """The short probe's pick (a:full,b:full here, 0.60) loses to the ``last:N`` ladder's
    b:full,c:full, which the long probe measures best and which fits (190 <= 220 bytes)."""
    state, short_pick, (final, exact, info) = confirmed_run(220)
    assert cand.choice_key(short_pick) != LADDER_PICK
    assert cand.choice_key(final) == LADDER_PICK and info["changed"]
    assert exact["memory_bytes"] <= 220
    assert info["finalists"][0]["choice"] == LADDER_PICK
    assert len(info["finalists"]) <= 6 and state.long_runs == SEEDS * (len(info["finalists"]) + 1)
    # every finalist fits the budget; the deepest ladder (a, b, c full: 250 bytes) does not
    assert "a:full,b:full,c:full" not in [f["choice"] for f in info["finalists"]]
    # measured once, cached by the combination
    runs = state.long_runs
    assert state.confirmed(final)["gain"] == 1.0 and state.long_runs == runs


def test_a_finalist_over_the_budget_is_never_chosen():
    """Under 180 bytes the long probe's favourite (190 bytes) is no finalist."""
    _, _, (final, exact, info) = confirmed_run(180)
    assert cand.choice_key(final) != LADDER_PICK and exact["memory_bytes"] <= 180
    assert LADDER_PICK not in [f["choice"] for f in info["finalists"]]
    assert cand.choice_key(final) == max(info["finalists"], key=lambda f: f["gain"])["choice"]


def test_without_a_compile_left_only_known_costs_are_finalists():
    """With no compile left (``exact_checks`` spent), a finalist of unknown exact cost could
    not be chosen: it is not probed at all."""
    state, groups, base, by_key = analysed_state()
    state.__class__ = _Confirmed
    state.confirm_steps, state.long_runs = LONG_STEPS, 0
    *_, final, _, _ = run_budget(state, groups, base, by_key, 220, warm=False)
    knap_choice = {"b": by_key["b:full"], "c": by_key["c:full"]}
    options = {layer: [by_key[f"{layer}:{label}"] for label in opts]
               for layer, opts in OPTIONS.items()}
    unknown = [k for k in (LADDER_PICK,) if k not in state.cache["exact"]]
    assert unknown   # the long probe's favourite was never compiled
    _, _, info = state.confirm(groups, base, Budget(memory_bytes=220), by_key, final,
                               knap_choice, [], options, 6, 0, 0)
    assert all(f["choice"] in state.cache["exact"] for f in info["finalists"])
    assert LADDER_PICK not in [f["choice"] for f in info["finalists"]]


def test_a_combination_confirmed_before_is_a_finalist_at_no_cost():
    """Another budget with room for one new finalist still finds the long probe's favourite
    confirmed for the first budget, and runs no long probe for it."""
    state, _, (first, _, _) = confirmed_run(220)
    assert cand.choice_key(first) == LADDER_PICK
    groups = [[Item(f"{layer}:{label}", layer, gain, act, var, None)
               for label, (gain, act, var) in opts.items()] for layer, opts in OPTIONS.items()]
    by_key = {f"{layer}:{label}": cand.Option(layer, label, label)
              for layer, opts in OPTIONS.items() for label in opts}
    options = {layer: [by_key[f"{layer}:{label}"] for label in opts]
               for layer, opts in OPTIONS.items()}
    base = Item("base", "base", 0.0, 100, 0, None)
    runs = state.long_runs
    short_pick = {"a": by_key["a:full"]}
    final, _, info = state.confirm(groups, base, Budget(memory_bytes=230), by_key, short_pick,
                                   short_pick, [], options, 1, 0, 2)
    assert cand.choice_key(final) == LADDER_PICK
    assert [f["choice"] for f in info["finalists"]][0] == LADDER_PICK
    assert state.long_runs == runs   # a:full was confirmed too, for the first budget
