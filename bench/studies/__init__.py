"""One-off studies: each module measures one question once, beside the suite (``bench/``).

A study is a command, run from the repository root as ``python -m bench.studies.<name>``
(absl flags, defined in its ``define_flags()``; ``--help``). Its docstring says what it
measures and how; it writes a dated file ``bench/results/<date>-<machine>-<what>.{json,md}``,
which the docstring that rests on its figures cites (``probe_layer_ops`` and ``notes_last4``,
quick checks, print theirs). It may import the suite (``bench.harness``,
``bench.prepare``, ...) and the shared test models and helpers (``tfpock.testing``), never
``tests``. A measurement of every model and contender, repeated as the code changes, belongs
in the suite instead (``bench/run.py``).
"""
