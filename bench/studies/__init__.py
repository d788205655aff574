"""One-off studies: each module measures one question once, beside the suite (``bench/``).

A study is a command, run from the repository root as ``python -m bench.studies.<name>``
(absl flags, defined in its ``define_flags()``; ``--help``). Its docstring says what it
measures and how; it either writes a dated file ``bench/results/<date>-<machine>-<what>.
{json,md}`` (the depth sweep, the memory benchmark) or prints the figures that a docstring
elsewhere quotes (the lowering forms). It may import the suite (``bench.harness``,
``bench.prepare``, ...) and the shared test models and helpers (``tfpock.testing``), never
``tests``. A measurement of every model and contender, repeated as the code changes, belongs
in the suite instead (``bench/run.py``).
"""
