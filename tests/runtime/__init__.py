"""The device side under stress: crash-safe checkpoints, hostile files and inputs (issue 15).

Models are exported on the host (:mod:`tests.runtime.models`, needs TensorFlow); what a device
does runs in subprocesses with TensorFlow blocked (:mod:`tests.runtime.device`).
"""
