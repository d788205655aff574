"""The one shape of a local rewrite, and the one driver that applies it and counts.

Every pass that rewrites locally, on the GraphDef (lower, narrow, fold_bn, sink_scale) or on
the .tflite file (fuse), writes its rewrites as :class:`Rule` s:

``anchors(ir)``   the places to look, in IR order (a rule for one op type: its nodes);
``match(ir, a)``  the pattern around anchor ``a``, or ``None``: not here (counted ``skipped``);
``check(ir, m)``  why the rule declines the match (a short reason, counted per reason), or
                  ``None``: it applies;
``rewrite(ir, m)`` edits the IR in place; may return a detail the pass reports.

:func:`apply_rule` sweeps the anchors once in order, skipping anchors an earlier rewrite
removed, and returns an :class:`Outcome`: what fired (with each rewrite's detail), what
declined and why, how many anchors did not match. A pass turns that into its stats; with
``strict=True`` the first decline raises :class:`Declined` instead (lowering: a node with a
rule that cannot be lowered is the user's error, not a statistic).

A table of rules keyed by the anchor's op type (one rule per op, as the lowering and
narrowing tables are) is itself a rule: :class:`RuleTable`. No TensorFlow here.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable, Generic, Hashable, Iterable, Mapping, TypeVar

IR = TypeVar("IR")
Anchor = TypeVar("Anchor")


class Rule(Generic[IR, Anchor]):
    """Base class of a local rewrite (module docstring). ``name`` labels it in stats."""

    name: str = ""

    def anchors(self, ir: IR) -> Iterable[Anchor]:
        raise NotImplementedError

    def alive(self, ir: IR, anchor: Anchor) -> bool:
        """Whether ``anchor`` is still in the IR (an earlier rewrite may have removed it)."""
        return True

    def match(self, ir: IR, anchor: Anchor) -> Any | None:
        return anchor

    def check(self, ir: IR, match: Any) -> str | None:
        return None

    def rewrite(self, ir: IR, match: Any) -> Any:
        raise NotImplementedError


class Declined(Exception):
    """Raised by :func:`apply_rule` with ``strict=True`` at the first declined match."""

    def __init__(self, rule: Rule, match: Any, reason: str):
        super().__init__(f"{rule.name}: {reason}")
        self.rule, self.match, self.reason = rule, match, reason


@dataclasses.dataclass
class Outcome:
    """What one sweep of a rule did."""
    fired: list[tuple[Any, Any]] = dataclasses.field(default_factory=list)     # (match, detail)
    declined: list[tuple[Any, str]] = dataclasses.field(default_factory=list)  # (match, reason)
    skipped: list[Any] = dataclasses.field(default_factory=list)               # unmatched anchors

    def counts(self) -> dict[str, Any]:
        """``{"fired": n, "declined": {reason: n}}``: the stats most rules report."""
        return {"fired": len(self.fired),
                "declined": dict(collections.Counter(reason for _, reason in self.declined))}


def apply_rule(ir: IR, rule: Rule[IR, Any], strict: bool = False) -> Outcome:
    """One sweep of ``rule`` over its anchors in order (module docstring)."""
    outcome = Outcome()
    for anchor in list(rule.anchors(ir)):
        if not rule.alive(ir, anchor):
            continue
        found = rule.match(ir, anchor)
        if found is None:
            outcome.skipped.append(anchor)
            continue
        reason = rule.check(ir, found)
        if reason is not None:
            if strict:
                raise Declined(rule, found, reason)
            outcome.declined.append((found, reason))
            continue
        outcome.fired.append((found, rule.rewrite(ir, found)))
    return outcome


class NodeRule(Rule):
    """A rule anchored at the GraphDef nodes of ``op_types`` (:class:`graph_passes.ir.Graph`),
    in graph order; a node an earlier rewrite removed is passed over."""

    op_types: tuple[str, ...] = ()

    def anchors(self, graph) -> list:
        return graph.nodes_of(self.op_types)

    def alive(self, graph, node) -> bool:
        return node.name in graph.nodes


@dataclasses.dataclass(frozen=True)
class TableMatch:
    """A match of one rule of a :class:`RuleTable`: the anchor's key, its rule and what the
    rule matched (no rule for the key: None, and the anchor itself)."""
    key: Hashable
    rule: Rule | None
    match: Any


class RuleTable(Rule[IR, Anchor]):
    """Rules keyed by what ``key(ir, anchor)`` says of an anchor (its op type): one sweep
    over ``anchors(ir, keys)``, each anchor handed to its key's rule, so rewrites happen in
    IR order whatever rule does them. An anchor whose key has no rule is skipped, or, if
    ``missing`` is given, declined with ``missing(key)`` as the reason."""

    def __init__(self, name: str, rules: Mapping[Hashable, Rule[IR, Anchor]],
                 anchors: Callable[[IR, Iterable[Hashable]], Iterable[Anchor]],
                 key: Callable[[IR, Anchor], Hashable],
                 missing: Callable[[Hashable], str] | None = None):
        self.name, self.rules, self._anchors, self.key = name, rules, anchors, key
        self.missing = missing

    def anchors(self, ir: IR) -> Iterable[Anchor]:
        return self._anchors(ir, self.rules)

    def alive(self, ir: IR, anchor: Anchor) -> bool:
        rule = self.rules.get(self.key(ir, anchor))
        return rule is None or rule.alive(ir, anchor)

    def match(self, ir: IR, anchor: Anchor) -> TableMatch | None:
        key = self.key(ir, anchor)
        rule = self.rules.get(key)
        if rule is None:
            return TableMatch(key, None, anchor) if self.missing else None
        found = rule.match(ir, anchor)
        return None if found is None else TableMatch(key, rule, found)

    def check(self, ir: IR, match: TableMatch) -> str | None:
        if match.rule is None:
            return self.missing(match.key)
        return match.rule.check(ir, match.match)

    def rewrite(self, ir: IR, match: TableMatch) -> Any:
        return match.rule.rewrite(ir, match.match)
