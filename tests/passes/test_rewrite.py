"""The rule driver (graph_passes/rewrite.py) on a toy IR: a list of integers.

A rule that halves even numbers: match (evens only), check (declines multiples of 10 with a
reason), rewrite (in place, returning a detail); the counts, the strict mode, anchors an
earlier rewrite removed, and a RuleTable with and without a rule for a key.
"""
import pytest

from graph_passes.rewrite import Declined, Outcome, Rule, RuleTable, apply_rule


class Numbers:
    def __init__(self, values):
        self.values = list(values)


class Halve(Rule):
    name = "halve"

    def anchors(self, ir):
        return list(range(len(ir.values)))

    def match(self, ir, i):
        return i if ir.values[i] % 2 == 0 else None

    def check(self, ir, i):
        return "a multiple of ten" if ir.values[i] % 10 == 0 else None

    def rewrite(self, ir, i):
        ir.values[i] //= 2
        return ir.values[i]


def test_counts_fired_declined_by_reason_and_skipped():
    ir = Numbers([4, 3, 10, 6, 20, 7])
    outcome = apply_rule(ir, Halve())
    assert ir.values == [2, 3, 10, 3, 20, 7]
    assert outcome.counts() == {"fired": 2, "declined": {"a multiple of ten": 2}}
    assert [detail for _, detail in outcome.fired] == [2, 3]
    assert outcome.skipped == [1, 5]


def test_strict_raises_at_the_first_decline():
    ir = Numbers([4, 10, 6])
    with pytest.raises(Declined, match="halve: a multiple of ten") as info:
        apply_rule(ir, Halve(), strict=True)
    assert info.value.match == 1 and ir.values == [2, 10, 6]


def test_anchors_an_earlier_rewrite_removed_are_passed_over():
    class DropNext(Halve):
        def alive(self, ir, i):
            return ir.values[i] is not None

        def rewrite(self, ir, i):
            if i + 1 < len(ir.values):
                ir.values[i + 1] = None
            return super().rewrite(ir, i)

        def match(self, ir, i):
            return i if ir.values[i] % 2 == 0 else None

    ir = Numbers([4, 8, 6])
    outcome = apply_rule(ir, DropNext())
    assert ir.values == [2, None, 3] and len(outcome.fired) == 2


def test_a_table_hands_each_anchor_to_its_keys_rule_in_ir_order():
    table = RuleTable("parity", {"even": Halve()},
                      anchors=lambda ir, keys: list(range(len(ir.values))),
                      key=lambda ir, i: "even" if ir.values[i] % 2 == 0 else "odd")
    ir = Numbers([4, 3, 8])
    outcome = apply_rule(ir, table)
    assert ir.values == [2, 3, 4] and len(outcome.skipped) == 1
    strict = RuleTable("parity", {"even": Halve()}, anchors=table._anchors, key=table.key,
                       missing=lambda key: f"no rule for {key} numbers")
    outcome = apply_rule(Numbers([4, 3]), strict)
    assert outcome.counts() == {"fired": 1, "declined": {"no rule for odd numbers": 1}}
    assert isinstance(outcome, Outcome)
