"""``tfpock.search`` and ``tfpock.Budget`` live here: contribution analysis picks a sparse scheme.

Host side (TensorFlow). ``search(...)`` is the function the command line wraps; see
:mod:`tfpock.contribution.core` for the method and :class:`Budget` for what a budget bounds.
"""
from tfpock.contribution.budget import Budget, BudgetError
from tfpock.contribution.core import search
from tfpock.contribution.result import SearchResult

__all__ = ["Budget", "BudgetError", "SearchResult", "search"]
