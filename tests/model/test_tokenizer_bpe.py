"""GPT-2 byte-level BPE tokenizer built from GGUF metadata (through the tokenizers library)."""

import pytest

from xsil.model.gguf import GGUFFile
from xsil.model.tokenizer import BPETokenizer, from_gguf

pytest.importorskip("gguf")
from gguf_cases import write_model  # noqa: E402


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    p = str(tmp_path_factory.mktemp("bpe") / "q.gguf")
    write_model(p, arch="qwen2", biases=True)
    return from_gguf(GGUFFile(p))


def test_is_bpe(tok):
    assert isinstance(tok, BPETokenizer)


@pytest.mark.parametrize("text", ["the theme", "Hello, world!", "ünïcödé → 🚀", "a\n\tb  c", ""])
def test_roundtrip(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_merges_are_applied(tok):
    ids = tok.encode(" the")
    assert len(ids) == 1 and tok.decode(ids) == " the"


def test_special_token_decodes_to_nothing(tok):
    assert tok.decode([tok.eos_id]) == "" and tok.is_eog(tok.eos_id)


def test_out_of_range_decode(tok):
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([10 ** 6])
