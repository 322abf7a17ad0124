import os
import warnings

import pytest

import xsil
from xsil import registry
from xsil.select import choose

MODEL = os.path.join(os.path.dirname(__file__), "..", "data", "oracle", "tiny.gguf")


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
    c = choose("auto")
    assert c.candidates[0] == "cpu" and c.candidates[-1] == "cpu"
    assert c.explanation.startswith("auto chose cpu")
    assert "skipped" in c.explanation and "cuda" in c.explanation


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
    with pytest.raises(xsil.BackendError, match=r"strict=True: backend cuda is unavailable"):
        xsil.Session(MODEL, backend="cuda", strict=True)


def test_fallback_is_loud_and_once():
    with pytest.warns(RuntimeWarning, match=r"fell back to cpu because cuda: unavailable"):
        s = xsil.Session(MODEL, backend="cuda", n_ctx=32)
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
