"""A llama.cpp "Q4_K_M"-like model (Q4_K, Q5_K, Q6_K, F32 norms): the cpu and cuda backends accept
it; the backends without Q5_K / Q6_K kernels (ORT family) refuse it in supports() with a message that
names the unsupported types and the supported ones, without loading anything."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))
from gguf_cases import MODEL_CASES, write_model  # noqa: E402

from xsil import registry  # noqa: E402
from xsil.backend import ModelSpec  # noqa: E402
from xsil.model.gguf import GGUFFile  # noqa: E402


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("kq") / "q4_k_m_mix.gguf")
    write_model(path, **MODEL_CASES["q4_k_m_mix"])
    g = GGUFFile(path)
    types = sorted({t.type_name for t in g.tensors.values()})
    assert types == ["F32", "Q4_K", "Q5_K", "Q6_K"]
    return ModelSpec(path=path, arch="llama", tensor_types=types, n_params=0, n_layer=2, n_embd=256, n_vocab=320)


def test_cpu_supports_k_quant_mix(spec):
    assert registry.get("cpu").supports(spec).ok


def test_cuda_supports_k_quant_mix(spec):
    # supports() is data only: it answers without a GPU (running it: tests/backends/test_cuda.py)
    b = registry.get("cuda")
    if b is None:
        pytest.skip(f"backend cuda not importable here: {registry.import_error('cuda')}")
    s = b.supports(spec)
    assert s.ok, s.reason


@pytest.mark.parametrize("name", ["ort-cpu", "qnn", "coreml"])
def test_other_backends_refuse_with_supported_list(spec, name):
    b = registry.get(name)
    if b is None:
        pytest.skip(f"backend {name} not importable here: {registry.import_error(name)}")
    s = b.supports(spec)
    assert not s.ok
    assert "Q5_K, Q6_K not supported" in s.reason and "(supported: " in s.reason and "Q4_0" in s.reason, s.reason
