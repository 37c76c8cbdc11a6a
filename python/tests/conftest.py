"""Fixtures shared by the Python tests."""
import shutil
import tempfile

import pytest


@pytest.fixture
def scratch():
    """Makes private folders (`scratch("modelreg-py-")`) and removes them when
    the test ends, passed or failed."""
    made = []

    def make(prefix):
        made.append(tempfile.mkdtemp(prefix=prefix))
        return made[-1]

    yield make
    for d in made:
        shutil.rmtree(d, ignore_errors=True)
