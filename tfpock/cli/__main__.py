"""``python -m tfpock.cli ...``: the ``tfpock`` command without its console script."""
from tfpock.cli import entry

entry()
