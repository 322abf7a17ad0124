import os

import pytest

import xsil
from xsil import registry
from xsil.backend import Probe, Support
from xsil.select import choose

MODEL = os.path.join(os.path.dirname(__file__), "..", "data", "oracle", "tiny.gguf")


def _unavailable():
    """A registered backend this machine cannot run (cuda without a GPU, coreml off macOS, ...)."""
    for name in ("cuda", "coreml", "qnn"):
        if not registry.probe(name).available:
            return name
    pytest.skip("every optional backend is available here")


def test_backends_listed_as_data():
    rows = xsil.backends()
    names = [r["name"] for r in rows]
    assert names[:5] == ["cpu", "ort-cpu", "qnn", "coreml", "cuda"]
    for r in rows:
        assert set(r) >= {"name", "kind", "score", "available", "reason", "devices"}
    cpu = rows[0]
    assert cpu["available"] and cpu["devices"]
    assert xsil.devices()[0]["backend"] == "cpu"


def test_auto_explains_choice(monkeypatch):
    monkeypatch.delenv("XSIL_BACKEND", raising=False)
    cuda = registry.probe("cuda")
    if cuda.available and "emulator" not in cuda.reason:
        pytest.skip("a usable GPU makes auto choose cuda")
    c = choose("auto")
    assert c.candidates[0] == "cpu" and c.candidates[-1] == "cpu"
    assert c.explanation.startswith("auto chose cpu")
    # unavailable backends are skipped with their reason; the CUDA emulator (tests) ranks below cpu
    assert "cuda" in c.explanation
    assert ("skipped" in c.explanation) or ("emulator" in cuda.reason)


def test_env_backend(monkeypatch):
    monkeypatch.setenv("XSIL_BACKEND", "cpu")
    c = choose("auto")
    assert c.candidates == ["cpu"] and "XSIL_BACKEND=cpu" in c.explanation


def test_unknown_backend():
    with pytest.raises(ValueError, match=r"unknown backend 'tpu'; registered backends: cpu"):
        choose("tpu")
    with pytest.raises(ValueError, match=r"unknown backend"):
        xsil.Session(MODEL, backend=["cpu", "nope"])


def test_strict_never_falls_back():
    name = _unavailable()
    with pytest.raises(xsil.BackendError, match=rf"strict=True: backend {name} is unavailable"):
        xsil.Session(MODEL, backend=name, strict=True)


def test_fallback_is_loud_and_once():
    name = _unavailable()
    with pytest.warns(RuntimeWarning, match=rf"fell back to cpu because {name}: unavailable"):
        s = xsil.Session(MODEL, backend=name, n_ctx=32)
    assert s.backend_name == "cpu" and "fell back to cpu" in s.selection
    s.close()


def test_broken_plugin_does_not_break_import(monkeypatch):
    monkeypatch.setitem(registry.BUILTINS, "broken", "xsil_no_such_module:Backend")
    registry._errors.pop("broken", None)
    registry._probes.pop("broken", None)
    rows = {r.name: r for r in registry.table(refresh=True)}
    assert not rows["broken"].available and "failed to import" in rows["broken"].reason
    registry._errors.pop("broken", None)
    registry._probes.pop("broken", None)


def test_missing_model_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        xsil.Session(str(tmp_path / "none.gguf"))


def test_bad_session_arguments():
    with pytest.raises(ValueError, match=r"n_ctx"):
        xsil.Session(MODEL, backend="cpu", n_ctx=0)
    with pytest.raises(ValueError, match=r"kv_dtype|dtype"):
        xsil.Session(MODEL, backend="cpu", n_ctx=32, kv_dtype="int3")
    with pytest.raises(ValueError, match=r"threads"):
        xsil.Session(MODEL, backend="cpu", n_ctx=32, threads=0)


class _Fake:
    """A minimal registered backend that records what open() received."""

    kind = "cpu"

    def __init__(self, name, score, api_version):
        self.name, self.score, self.api_version = name, score, api_version
        self.opened_with = None

    def probe(self):
        return Probe(self.score, f"fake score {self.score}")

    def supports(self, spec):
        return Support(True)

    def options(self):
        return {}

    def open(self, model, **kw):
        self.opened_with = kw
        raise RuntimeError("fake backend opens nothing")


@pytest.fixture
def fake(monkeypatch):
    made = []

    def make(name, score, api_version=2):
        b = _Fake(name, score, api_version)
        monkeypatch.setitem(registry.BUILTINS, name, "tests_fake:Backend")
        monkeypatch.setitem(registry._instances, name, b)
        registry._probes.pop(name, None)
        made.append(name)
        return b

    yield make
    for n in made:
        registry._probes.pop(n, None)


def test_auto_never_prefers_a_lower_score_than_cpu(fake, monkeypatch):
    monkeypatch.delenv("XSIL_BACKEND", raising=False)
    fake("fake-sim", 3)
    c = choose("auto")
    assert c.candidates[0] == "cpu" and "fake-sim" not in c.candidates
    assert "fake-sim (score 3)" in c.explanation
    fake("fake-npu", 20)
    c = choose("auto")
    assert c.candidates == ["fake-npu", "cpu"]


def test_strict_reaches_v2_backends_only(fake):
    v2 = fake("fake-v2", 1, api_version=2)
    with pytest.raises(xsil.BackendError, match="fake backend opens nothing"):
        xsil.Session(MODEL, backend="fake-v2", strict=True, n_ctx=32)
    assert v2.opened_with["strict"] is True
    v1 = fake("fake-v1", 1, api_version=1)
    with pytest.raises(xsil.BackendError):
        xsil.Session(MODEL, backend="fake-v1", strict=True, n_ctx=32)
    assert "strict" not in v1.opened_with      # contract v1 open() never sees the new keyword
