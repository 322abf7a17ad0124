import numpy as np
import pytest

from xsil.model.sampling import Sampler, SamplingParams


def test_greedy_is_argmax(rng):
    x = rng.standard_normal(100).astype(np.float32)
    assert Sampler(SamplingParams())(x) == int(x.argmax())


def test_top_k_one_and_tiny_top_p_are_greedy(rng):
    x = rng.standard_normal(100).astype(np.float32)
    for p in (SamplingParams(temperature=1.0, top_k=1, seed=0), SamplingParams(temperature=1.0, top_p=1e-6, seed=0)):
        assert all(Sampler(p)(x) == int(x.argmax()) for _ in range(10))


def test_seed_reproducible_and_distribution(rng):
    x = np.log(np.array([0.5, 0.3, 0.2], np.float32))
    s1 = Sampler(SamplingParams(temperature=1.0, seed=42))
    s2 = Sampler(SamplingParams(temperature=1.0, seed=42))
    a = [s1(x) for _ in range(3000)]
    assert a == [s2(x) for _ in range(3000)]
    freq = np.bincount(a, minlength=3) / 3000
    assert np.allclose(freq, [0.5, 0.3, 0.2], atol=0.04)


def test_min_p_and_top_k_restrict_support():
    x = np.log(np.array([0.6, 0.3, 0.06, 0.04], np.float32))
    s = Sampler(SamplingParams(temperature=1.0, min_p=0.2, seed=1))
    assert set(s(x) for _ in range(500)) <= {0, 1}
    s = Sampler(SamplingParams(temperature=1.0, top_k=2, seed=1))
    assert set(s(x) for _ in range(500)) <= {0, 1}
    s = Sampler(SamplingParams(temperature=1.0, top_p=0.85, seed=1))
    assert set(s(x) for _ in range(500)) <= {0, 1}


def test_repetition_penalty_moves_argmax():
    x = np.array([2.0, 1.9, 0.0], np.float32)
    assert Sampler(SamplingParams(repetition_penalty=1.5))(x, history=[0]) == 1
    assert Sampler(SamplingParams(repetition_penalty=1.0))(x, history=[0]) == 0


@pytest.mark.parametrize("kw", [dict(temperature=-1), dict(top_k=-2), dict(top_p=0), dict(top_p=1.5),
                                dict(min_p=1.0), dict(repetition_penalty=0), dict(temperature=float("nan"))])
def test_invalid_params(kw):
    with pytest.raises(ValueError, match=r"\[sampling\]"):
        SamplingParams(**kw).validate()
