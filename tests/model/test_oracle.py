"""xsil's logits against llama.cpp's on the oracle model (tests/data/oracle, from ../shared/oracle).

Tolerance (see tests/data/oracle/README.md): an exact float64 forward lands at per-position cosine
>= 0.99991 and max |diff| 0.12 against llama.cpp (whose own batch and step paths differ by 0.05),
because llama.cpp quantizes activations to 8 bits and stores K/V in fp16. xsil does the same kinds
of approximation, so we require cosine >= 0.9995 per position, max |diff| <= 0.3 (0.12 logit std),
identical argmax at every position and the identical 32-token greedy continuation.
"""

import json
import os

import numpy as np
import pytest

import xsil
from xsil.model.llama import LlamaModel
from xsil.model.tokenizer import from_gguf
from xsil.model.gguf import GGUFFile

DATA = os.path.join(os.path.dirname(__file__), "..", "data", "oracle")

COS_MIN, MAXABS = 0.9995, 0.3


@pytest.fixture(scope="module")
def oracle():
    return np.load(os.path.join(DATA, "tiny.npz"))


def compare(got, want):
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    return float(np.abs(got - want).max()), float(cos.min()), float((got.argmax(1) == want.argmax(1)).mean())


@pytest.mark.parametrize("kv_dtype", ["f32", "f16"])
def test_batch_logits_match_llama_cpp(oracle_path, oracle, tier, kv_dtype):
    m = LlamaModel(oracle_path, n_ctx=512, isa=tier, kv_dtype=kv_dtype)
    seq = m.cache.add_sequence()
    got = m.forward(oracle["tokens"], seq)
    maxabs, cos, agree = compare(got, oracle["logits_batch"])
    assert cos >= COS_MIN and maxabs <= MAXABS and agree == 1.0, (maxabs, cos, agree)


def test_step_logits_match_llama_cpp(oracle_path, oracle, tier):
    m = LlamaModel(oracle_path, n_ctx=512, isa=tier)
    seq = m.cache.add_sequence()
    got = np.stack([m.forward(np.array([t], np.int32), seq)[0] for t in oracle["tokens"]])
    maxabs, cos, agree = compare(got, oracle["logits_step"])
    assert cos >= COS_MIN and maxabs <= MAXABS and agree == 1.0, (maxabs, cos, agree)


def test_q8_kv_cache_close(oracle_path, oracle):
    m = LlamaModel(oracle_path, n_ctx=512, kv_dtype="q8_0")
    seq = m.cache.add_sequence()
    maxabs, cos, agree = compare(m.forward(oracle["tokens"], seq), oracle["logits_batch"])
    assert cos >= 0.999 and agree >= 0.95, (maxabs, cos, agree)


def test_greedy_continuation_matches(oracle_path, oracle):
    """Teacher-forced along llama.cpp's greedy path: at every step xsil's argmax is llama.cpp's token,
    except at a near-tie (exact float64 logit gap <= 0.05, the size of llama.cpp's own batch/step
    disagreement), where xsil must pick the exact forward's winner. On this model step 9 is such a tie: float64 gives
    1570 by 0.006 over 533, xsil picks 1570, llama.cpp 533."""
    from xsil.testing.forward_ref import ReferenceModel

    toks, greedy = oracle["tokens"].tolist(), oracle["greedy"].tolist()
    seq = toks + greedy
    m = LlamaModel(oracle_path, n_ctx=512)
    got = m.forward(np.array(seq, np.int32), m.cache.add_sequence())[len(toks) - 1:-1]
    ref = None
    ties = 0
    for i, want in enumerate(greedy):
        mine = int(got[i].argmax())
        if mine == want:
            continue
        if ref is None:
            ref = ReferenceModel(GGUFFile(oracle_path)).forward(seq)[len(toks) - 1:-1]
        gap = abs(ref[i][mine] - ref[i][want])
        assert gap <= 0.05, f"step {i}: xsil {mine} vs llama.cpp {want}; exact gap {gap:.3f} is no tie"
        assert mine == int(ref[i].argmax()), f"step {i}: tie broken differently from the exact forward"
        ties += 1
    assert ties <= 2
    # free-running greedy through a Session agrees up to the first tie
    with xsil.Session(oracle_path, backend="cpu", n_ctx=512) as s:
        ids = [e.token_id for e in s.generate(toks, max_tokens=9)]
    assert ids == greedy[:9]


def test_tokenizer_matches_llama_cpp(oracle_path):
    tk = from_gguf(GGUFFile(oracle_path))
    with open(os.path.join(DATA, "tiny-tokenize.json")) as f:
        cases = json.load(f)
    for c in cases:
        ids = tk.encode(c["text"], add_bos=c["add_bos"])
        assert ids == c["ids"], c["text"]
        assert tk.decode(ids) == c["detok"], c["text"]


def test_file_hash_is_the_oracles(oracle_path):
    import hashlib

    with open(os.path.join(DATA, "tiny.json")) as f:
        meta = json.load(f)
    with open(oracle_path, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == meta["sha256"]


def test_kv_cache_too_large_says_what_to_do(oracle_path):
    # 2^29 tokens of KV for this model is 512 GiB, more than any test machine has: refused up front
    # with the size and the remedy (not std::bad_alloc, not an overcommitted allocation)
    from xsil.errors import BackendError

    with pytest.raises(BackendError, match=r"cannot allocate the KV cache: it needs \d+ MiB.*n_ctx.*q8_0"):
        xsil.Session(oracle_path, backend="cpu", strict=True, n_ctx=2**29)
