"""Portability of the device side: tfpock's exported models trained by ``tfpock.runtime``
without TensorFlow, on other runtimes and another architecture (``README.md`` here).

* ``test_runtime_portability.py`` (pytest): a process where TensorFlow cannot be imported, and
  a tflite-runtime 2.14 virtual environment;
* ``aarch64_check.py`` (by hand, as root, not part of pytest): the aarch64 wheels under qemu-user;
* ``common.py``: what both export and how close a device's numbers must come;
* ``device_protocol.py``: what a device does with a model, imported on the host and run as a
  script on the device (numpy and a TFLite runtime only).

This ``__init__`` imports nothing: ``device_protocol`` is imported in processes where
TensorFlow is blocked.
"""
