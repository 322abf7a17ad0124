import os

import pytest

DATA = os.path.join(os.path.dirname(__file__), "..", "data", "oracle")


@pytest.fixture(scope="session")
def oracle_path():
    return os.path.join(DATA, "tiny.gguf")

import sys

sys.path.insert(0, os.path.dirname(__file__))
