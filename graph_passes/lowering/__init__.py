"""Lowering rules, one module per op family, gathered into one op type -> rule table.

Each module lists its rules in a module-level ``RULES`` list; this table is the only place
the lower pass looks. An op type with no entry here and no TFLite builtin is reported by the
export check with the layer it came from.
"""
from graph_passes.lowering import (activations, conv, depthwise, embedding, pooling,
                                   random_ops, reductions, slicing)
from graph_passes.lowering.base import LoweringRule


def _table(*modules) -> dict[str, LoweringRule]:
    table: dict[str, LoweringRule] = {}
    for module in modules:
        for rule in module.RULES:
            if rule.op_type in table:
                raise ValueError(f"two lowering rules for {rule.op_type}")
            table[rule.op_type] = rule
    return table


RULES: dict[str, LoweringRule] = _table(activations, conv, depthwise, embedding, pooling,
                                         random_ops, reductions, slicing)
