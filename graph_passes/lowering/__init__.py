"""Lowering rules, one module per op family, gathered into one op -> rule table."""
from graph_passes.lowering.base import LoweringRule

RULES: dict[str, LoweringRule] = {}


def register(rule: LoweringRule) -> LoweringRule:
    if rule.op_type in RULES:
        raise ValueError(f"two lowering rules for {rule.op_type}")
    RULES[rule.op_type] = rule
    return rule
