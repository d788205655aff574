import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


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
