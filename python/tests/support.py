"""Helpers shared by the package's tests."""
import time


def eventually(pred, timeout=10.0):
    """True as soon as `pred()` is; False if it is not within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return pred()
