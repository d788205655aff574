import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# What the suite assumes of the machine, set before Keras or TF is imported: Keras on the TF
# backend whatever ~/.keras/keras.json says (a channels_first or jax config there would change
# every model), and TF on the CPU (a GPU build would run references in TF32).
os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ["KERAS_HOME"] = tempfile.mkdtemp(prefix="tfpock-tests-keras-")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def pytest_report_header(config):
    """Which CPU kernels TensorFlow runs (oneDNN or its default ones): they accept different
    ops and round differently, so a failure report must say which were in use."""
    return _kernels()


def pytest_terminal_summary(terminalreporter):
    """The same line at the end, where ``-q`` (which hides the header) still shows it."""
    terminalreporter.write_line(_kernels())


def _kernels() -> str:
    try:
        from tensorflow.python.util import _pywrap_util_port  # the only place TF tells
        onednn = _pywrap_util_port.IsMklEnabled()
    except (ImportError, AttributeError):
        return "TensorFlow CPU kernels: unknown"
    setting = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset: by CPU")
    return (f"TensorFlow CPU kernels: {'oneDNN' if onednn else 'default'} "
            f"(TF_ENABLE_ONEDNN_OPTS={setting})")
