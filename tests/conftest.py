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
