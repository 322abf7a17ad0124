"""Tokenizers read from GGUF metadata.

- ``llama`` (SentencePiece-style, as llama.cpp implements it): the text gets a leading space and
  spaces become U+2581; adjacent symbols are merged greedily by the score of the merged token
  (highest first, leftmost on ties); symbols left outside the vocabulary fall back to byte tokens
  ``<0xNN>``. Written here rather than through a library: no library reproduces llama.cpp's
  bigram-by-score merge order exactly, and it is ~60 lines.
- ``gpt2`` (byte-level BPE with merges): built on the ``tokenizers`` library from the GGUF vocab and
  merges, with the pre-tokenizer regex named by ``tokenizer.ggml.pre``.
"""

from __future__ import annotations

import heapq
import re
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from ..errors import GGUFError

# GGUF token types
TT_NORMAL, TT_UNKNOWN, TT_CONTROL, TT_USER_DEFINED, TT_UNUSED, TT_BYTE = 1, 2, 3, 4, 5, 6
SPACE = "\u2581"
_BYTE_RE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


class Tokenizer:
    """Common surface: ``encode(text, add_bos=None) -> list[int]``, ``decode(ids) -> str``,
    ``token_bytes(id) -> bytes`` (for streaming), ``bos_id``, ``eos_id``, ``vocab_size``."""

    bos_id: Optional[int]
    eos_id: Optional[int]
    eot_ids: set
    add_bos: bool
    vocab_size: int

    def encode(self, text: str, add_bos: Optional[bool] = None) -> List[int]:
        raise NotImplementedError

    def _bos(self, add_bos: Optional[bool]) -> List[int]:
        """[bos_id] if BOS is to be added (the file's default unless add_bos says), else []."""
        want = self.add_bos if add_bos is None else add_bos
        return [self.bos_id] if want and self.bos_id is not None else []

    def _piece_bytes(self, tid: int) -> bytes:
        """The raw bytes of token tid (tid already range-checked)."""
        raise NotImplementedError

    def token_bytes(self, tid: int) -> bytes:
        """The bytes a token stands for (b"" for control tokens), cached."""
        cache = self.__dict__.setdefault("_bytes_cache", {})
        b = cache.get(tid)
        if b is None:
            if not 0 <= tid < self.vocab_size:
                raise ValueError(f"[decode] token id {tid} is out of range [0, {self.vocab_size})")
            b = cache[tid] = self._piece_bytes(tid)
        return b

    def decode(self, ids: Iterable[int]) -> str:
        return b"".join(self.token_bytes(int(i)) for i in ids).decode("utf-8", errors="replace")

    def is_eog(self, tid: int) -> bool:
        return tid == self.eos_id or tid in self.eot_ids


def _meta_list(g, key: str) -> list:
    v = g.get(key)
    if v is None:
        return None
    return list(v.tolist() if isinstance(v, np.ndarray) else v)


class SPMTokenizer(Tokenizer):
    def __init__(self, tokens: Sequence[str], scores: Sequence[float], types: Sequence[int], bos: Optional[int],
                 eos: Optional[int], unk: Optional[int], add_bos: bool, add_space_prefix: bool = True,
                 eot_ids: Iterable[int] = ()):
        self.tokens = list(tokens)
        self.vocab_size = len(self.tokens)
        self.scores = list(scores) if scores is not None else [0.0] * self.vocab_size
        self.types = list(types) if types is not None else [TT_NORMAL] * self.vocab_size
        self.bos_id, self.eos_id, self.unk_id = bos, eos, unk
        self.add_bos = add_bos
        self.add_space_prefix = add_space_prefix
        self.eot_ids = set(eot_ids)
        self.index: Dict[str, int] = {}
        self.byte_ids: Dict[int, int] = {}
        for i, (t, ty) in enumerate(zip(self.tokens, self.types)):
            if ty == TT_BYTE:
                m = _BYTE_RE.match(t)
                if m:
                    self.byte_ids[int(m.group(1), 16)] = i
                continue
            if ty in (TT_NORMAL, TT_USER_DEFINED, TT_UNUSED) or ty not in (TT_CONTROL, TT_UNKNOWN):
                self.index.setdefault(t, i)

    def _bigram(self, heap, syms, left: int, right: int) -> None:
        if left < 0 or right < 0:
            return
        text = syms[left][0] + syms[right][0]
        tid = self.index.get(text)
        if tid is not None:
            heapq.heappush(heap, (-self.scores[tid], left, text))

    def encode(self, text: str, add_bos: Optional[bool] = None) -> List[int]:
        ids: List[int] = self._bos(add_bos)
        if not text:
            return ids
        s = text.replace(" ", SPACE)
        if self.add_space_prefix:
            s = SPACE + s
        # symbols: [text, prev, next]; merged-away symbols get text ""
        syms = [[ch, i - 1, i + 1] for i, ch in enumerate(s)]
        syms[-1][2] = -1
        heap: list = []
        for i in range(len(syms) - 1):
            self._bigram(heap, syms, i, i + 1)
        while heap:
            _, left, text_ = heapq.heappop(heap)
            right = syms[left][2]
            if right < 0 or not syms[left][0] or not syms[right][0] or syms[left][0] + syms[right][0] != text_:
                continue  # stale entry: one side changed since it was pushed
            syms[left][0] = text_
            syms[right][0] = ""
            nxt = syms[right][2]
            syms[left][2] = nxt
            if nxt >= 0:
                syms[nxt][1] = left
            self._bigram(heap, syms, syms[left][1], left)
            self._bigram(heap, syms, left, nxt)
        i = 0
        while i >= 0 and i < len(syms):
            t = syms[i][0]
            tid = self.index.get(t)
            if tid is not None:
                ids.append(tid)
            else:
                for b in t.encode("utf-8"):
                    if b in self.byte_ids:
                        ids.append(self.byte_ids[b])
                    elif self.unk_id is not None:
                        ids.append(self.unk_id)
            i = syms[i][2]
        return ids

    def _piece_bytes(self, tid: int) -> bytes:
        ty = self.types[tid]
        t = self.tokens[tid]
        if ty == TT_BYTE:
            m = _BYTE_RE.match(t)
            return bytes([int(m.group(1), 16)]) if m else b""
        if ty in (TT_CONTROL, TT_UNKNOWN):
            return b""
        return t.replace(SPACE, " ").encode("utf-8")


# Pre-tokenizer regexes by tokenizer.ggml.pre (facts from the models' tokenizer configs).
_GPT2_PRE = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_LLAMA3_PRE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_PRE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_REGEX = {"default": _GPT2_PRE, "gpt2": _GPT2_PRE, "gpt-2": _GPT2_PRE, "llama-bpe": _LLAMA3_PRE,
             "llama3": _LLAMA3_PRE, "smollm": _GPT2_PRE, "qwen2": _QWEN2_PRE, "deepseek-llm": _GPT2_PRE}


class BPETokenizer(Tokenizer):
    """GPT-2 style byte-level BPE through the ``tokenizers`` library."""

    def __init__(self, tokens: Sequence[str], merges: Sequence[str], types: Optional[Sequence[int]], pre: str,
                 bos: Optional[int], eos: Optional[int], add_bos: bool, eot_ids: Iterable[int] = ()):
        try:
            from tokenizers import Regex, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers
        except ImportError:  # pragma: no cover - dependency of xsil
            raise GGUFError("GPT-2 BPE tokenizers need the 'tokenizers' package: pip install tokenizers") from None
        if pre not in PRE_REGEX:
            raise GGUFError(f"unsupported tokenizer.ggml.pre {pre!r}; supported: {', '.join(sorted(PRE_REGEX))}")
        self.tokens = list(tokens)
        self.vocab_size = len(self.tokens)
        self.types = list(types) if types is not None else [TT_NORMAL] * self.vocab_size
        vocab = {}
        for i, t in enumerate(self.tokens):
            vocab.setdefault(t, i)
        pairs = []
        for m in merges:
            a, _, b = m.partition(" ")
            pairs.append((a, b))
        model = models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False)
        tk = HFTokenizer(model)
        tk.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(PRE_REGEX[pre]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        tk.decoder = decoders.ByteLevel()
        special = [t for t, ty in zip(self.tokens, self.types) if ty in (TT_CONTROL, TT_USER_DEFINED)]
        if special:
            from tokenizers import AddedToken

            tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
        self._tk = tk
        self.bos_id, self.eos_id = bos, eos
        self.add_bos = add_bos
        self.eot_ids = set(eot_ids)
        # byte-level alphabet: printable stand-ins for raw bytes
        bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
            list(range(ord("®"), ord("ÿ") + 1))
        cs = bs[:]
        n = 0
        for b in range(256):
            if b not in bs:
                bs.append(b)
                cs.append(256 + n)
                n += 1
        self._unbyte = {chr(c): b for b, c in zip(bs, cs)}

    def encode(self, text: str, add_bos: Optional[bool] = None) -> List[int]:
        ids = self._bos(add_bos)
        if text:
            ids.extend(self._tk.encode(text, add_special_tokens=False).ids)
        return ids

    def _piece_bytes(self, tid: int) -> bytes:
        t = self.tokens[tid]
        if self.types[tid] == TT_CONTROL:
            return b""
        if self.types[tid] == TT_USER_DEFINED:
            return t.encode("utf-8")
        return bytes(self._unbyte.get(ch, 0x3F) for ch in t)


def from_gguf(g) -> Tokenizer:
    """Build the tokenizer a GGUF file describes (``tokenizer.ggml.*``)."""
    kind = g.get("tokenizer.ggml.model")
    tokens = _meta_list(g, "tokenizer.ggml.tokens")
    if kind is None or tokens is None:
        raise GGUFError("the file has no tokenizer (tokenizer.ggml.model / tokenizer.ggml.tokens missing)")
    if not all(isinstance(t, str) for t in tokens):
        raise GGUFError("tokenizer.ggml.tokens must be an array of strings")
    n = len(tokens)
    types = _meta_list(g, "tokenizer.ggml.token_type")
    scores = _meta_list(g, "tokenizer.ggml.scores")
    for key, arr in (("tokenizer.ggml.token_type", types), ("tokenizer.ggml.scores", scores)):
        if arr is not None and len(arr) != n:
            raise GGUFError(f"{key} has {len(arr)} entries but the vocabulary has {n}")

    def tid(key):
        v = g.get(key)
        if v is None:
            return None
        v = int(v)
        if not 0 <= v < n:
            raise GGUFError(f"{key} = {v} is outside the vocabulary [0, {n})")
        return v

    bos, eos = tid("tokenizer.ggml.bos_token_id"), tid("tokenizer.ggml.eos_token_id")
    eot = [t for t in (tid("tokenizer.ggml.eot_token_id"), tid("tokenizer.ggml.eom_token_id")) if t is not None]
    if kind == "llama":
        add_bos = bool(g.get("tokenizer.ggml.add_bos_token", True))
        return SPMTokenizer(tokens, scores, types, bos, eos, tid("tokenizer.ggml.unknown_token_id"), add_bos,
                            bool(g.get("tokenizer.ggml.add_space_prefix", True)), eot)
    if kind == "gpt2":
        merges = _meta_list(g, "tokenizer.ggml.merges")
        if merges is None:
            raise GGUFError("gpt2 tokenizer without tokenizer.ggml.merges")
        add_bos = bool(g.get("tokenizer.ggml.add_bos_token", False))
        return BPETokenizer(tokens, merges, types, str(g.get("tokenizer.ggml.pre", "default")), bos, eos, add_bos, eot)
    raise GGUFError(f"unsupported tokenizer.ggml.model {kind!r}; supported: llama (SentencePiece), gpt2 (BPE)")
