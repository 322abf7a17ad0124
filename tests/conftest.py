import numpy as np
import pytest

import xsil


def available_tiers():
    return xsil.cpu_info()["available_tiers"]


@pytest.fixture(params=available_tiers())
def tier(request):
    """Every ISA tier this machine can run."""
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Keep generated models (the embedded default) out of the user's cache during tests."""
    import os

    d = str(tmp_path_factory.mktemp("xsil-cache"))
    old = os.environ.get("XSIL_CACHE_DIR")
    os.environ["XSIL_CACHE_DIR"] = d
    yield
    if old is None:
        os.environ.pop("XSIL_CACHE_DIR", None)
    else:
        os.environ["XSIL_CACHE_DIR"] = old
