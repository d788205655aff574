"""Shared pieces of tfpock's tests and benchmarks, not of tfpock itself.

``models``: small Keras models built with fixed seeds (and ``calibrate_batchnorm``);
``litert``: convert a TF function with builtins only and run it on ai-edge-litert. Host side:
they need TensorFlow and Keras, so neither ``tfpock`` nor ``tfpock.runtime`` imports them.
``tests/`` and ``bench/`` both import from here; neither imports the other's helpers.
"""
