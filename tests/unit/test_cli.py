"""The command line, as a user runs it (subprocesses, isolated cache dir)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import xsil

ORACLE = os.path.join(os.path.dirname(__file__), "..", "data", "oracle", "tiny.gguf")


def run(*args, timeout=300):
    r = subprocess.run([sys.executable, "-m", "xsil.cli", *args], capture_output=True, text=True, timeout=timeout,
                       env=dict(os.environ))
    return r


def test_devices():
    r = run("devices")
    assert r.returncode == 0, r.stderr
    assert "cpu" in r.stdout and "cuda" in r.stdout  # unavailable backends are listed with their reason
    r = run("devices", "--json")
    rows = json.loads(r.stdout)
    assert rows[0]["name"] == "cpu" and rows[0]["available"]


def test_run_default_model_says_synthetic():
    r = run("run", "-n", "4", "-p", "hello")
    assert r.returncode == 0, r.stderr
    assert "SYNTHETIC" in r.stderr and "tok/s" in r.stderr
    assert r.stdout.startswith("hello")


def test_run_given_model():
    r = run("run", ORACLE, "-n", "3", "--backend", "cpu", "--n-ctx", "64")
    assert r.returncode == 0, r.stderr
    assert "SYNTHETIC" not in r.stderr


def test_run_bad_file(tmp_path):
    p = tmp_path / "bad.gguf"
    p.write_bytes(b"not a gguf file at all, sorry")
    r = run("run", str(p), "-n", "3")
    assert r.returncode == 2 and "GGUFError" in r.stderr and "bad magic" in r.stderr
    assert "Traceback" not in r.stderr


def test_bench_small(tmp_path):
    out = tmp_path / "b.json"
    r = run("bench", ORACLE, "--pp", "16", "--tg", "4", "--repeat", "1", "--llama-cpp", "off", "--json-out", str(out))
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    row = res["results"][0]
    for k in ("load_s", "ttft_s", "pp16_tok_s", "tg4_tok_s", "peak_rss_bytes", "roofline_pct"):
        assert row[k] > 0, k
    assert res["stream_read_gbs"] > 0


def test_synthetic_vocab_has_unique_tokens():
    from xsil.model.default import synthetic_vocab

    toks, scores, types = synthetic_vocab(4000)
    assert len(toks) == len(set(toks)) == len(scores) == len(types) == 4000


def test_demo_selfcheck_covers_every_format_and_passes(capsys):
    # `xsil demo` is the README's main command: its self-check must handle every format the core has
    from xsil.cli import _selfcheck

    assert _selfcheck(np.random.default_rng(0))
    out = capsys.readouterr().out
    for fmt in xsil.FORMATS:
        assert f"  {fmt}" in out
