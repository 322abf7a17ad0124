"""The embedded default model: a small Llama-architecture Q4_0 GGUF that xsil generates
deterministically (fixed seeds, no download) and caches under the user cache directory.

Its weights are SYNTHETIC (random): text generated from it is meaningless. It exists so the main
command runs on a fresh machine with no model download, exercising the real loading and inference
path (tokenizer from the file, Q4_0 matmuls, paged KV cache).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

import numpy as np

from .gguf_writer import GGUFWriter


@dataclass(frozen=True)
class SyntheticSpec:
    name: str = "xsil-default-synthetic"
    n_embd: int = 512
    n_layer: int = 6
    n_head: int = 8
    n_head_kv: int = 2
    n_ff: int = 1408
    n_vocab: int = 2048
    n_ctx: int = 2048
    arch: str = "llama"
    weight_type: str = "Q4_0"
    seed: int = 20261126


DEFAULT = SyntheticSpec()
# TinyLlama-1.1B shapes, for benchmarks (about 620 MB in Q4_0).
TINYLLAMA = SyntheticSpec(name="xsil-tinyllama-shaped-synthetic", n_embd=2048, n_layer=22, n_head=32, n_head_kv=4,
                          n_ff=5632, n_vocab=32000, n_ctx=2048)

_WORDS = ("the of and to in a is that for it on with as was edge model token cache silicon run fast byte layer "
          "head hello world small device memory quantized kernel thread page budget data text open").split()


def synthetic_vocab(n_vocab: int) -> tuple:
    """SentencePiece-style vocabulary: <unk> <s> </s>, 256 byte tokens, words, letters, filler."""
    tokens: List[str] = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types: List[int] = [2, 3, 3] + [6] * 256
    seen = set(tokens)

    def add(t: str) -> None:  # every token text once (llama.cpp rejects duplicates)
        if t not in seen:
            seen.add(t)
            tokens.append(t)

    for w in _WORDS:
        add("\u2581" + w)
        add(w)
    for ch in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'":
        add(ch)
        add("\u2581" + ch)
    i = 0
    while len(tokens) < n_vocab:
        add(f"\u2581t{i}")
        i += 1
    tokens = tokens[:n_vocab]
    types += [1] * (len(tokens) - len(types))
    scores = [0.0] * 259 + [-float(i) for i in range(len(tokens) - 259)]
    return tokens, scores, types


def write_synthetic(path: str, spec: SyntheticSpec = DEFAULT) -> None:
    """Write a synthetic GGUF model (deterministic in `spec`)."""
    from .. import quantize

    rng = np.random.default_rng(spec.seed)
    E, F, V, H, Hk = spec.n_embd, spec.n_ff, spec.n_vocab, spec.n_head, spec.n_head_kv
    D = E // H
    w = GGUFWriter()
    a = spec.arch
    w.add("general.architecture", a)
    w.add("general.name", spec.name)
    w.add(f"{a}.context_length", spec.n_ctx)
    w.add(f"{a}.embedding_length", E)
    w.add(f"{a}.block_count", spec.n_layer)
    w.add(f"{a}.feed_forward_length", F)
    w.add(f"{a}.rope.dimension_count", D)
    w.add(f"{a}.attention.head_count", H)
    w.add(f"{a}.attention.head_count_kv", Hk)
    w.add(f"{a}.attention.layer_norm_rms_epsilon", 1e-5)
    w.add(f"{a}.rope.freq_base", 10000.0)
    w.add("general.file_type", 2)
    tokens, scores, types = synthetic_vocab(V)
    w.add("tokenizer.ggml.model", "llama")
    w.add("tokenizer.ggml.tokens", tokens)
    w.add("tokenizer.ggml.scores", scores)
    w.add("tokenizer.ggml.token_type", types)
    w.add("tokenizer.ggml.bos_token_id", 1)
    w.add("tokenizer.ggml.eos_token_id", 2)
    w.add("tokenizer.ggml.unknown_token_id", 0)
    w.add("tokenizer.ggml.add_bos_token", True)
    w.add("tokenizer.ggml.add_eos_token", False)

    def mat(name: str, rows: int, cols: int, std: float) -> None:
        x = (rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(std))
        w.add_tensor(name, quantize(x, spec.weight_type), spec.weight_type, (rows, cols))

    def norm(name: str, n: int) -> None:
        w.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32), "F32", (n,))

    mat("token_embd.weight", V, E, 0.5)
    for i in range(spec.n_layer):
        b = f"blk.{i}."
        norm(b + "attn_norm.weight", E)
        mat(b + "attn_q.weight", H * D, E, 0.08)
        mat(b + "attn_k.weight", Hk * D, E, 0.08)
        mat(b + "attn_v.weight", Hk * D, E, 0.02)
        mat(b + "attn_output.weight", E, H * D, 0.02)
        norm(b + "ffn_norm.weight", E)
        mat(b + "ffn_gate.weight", F, E, 0.02)
        mat(b + "ffn_up.weight", F, E, 0.02)
        mat(b + "ffn_down.weight", E, F, 0.02)
    norm("output_norm.weight", E)
    mat("output.weight", V, E, 0.02)
    tmp = path + f".tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        w.write(f)
    os.replace(tmp, path)


def cache_dir() -> str:
    base = os.environ.get("XSIL_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "xsil")
    try:
        os.makedirs(base, exist_ok=True)
        return base
    except OSError:
        d = os.path.join(tempfile.gettempdir(), "xsil-cache")
        os.makedirs(d, exist_ok=True)
        return d


def synthetic_model_path(spec: SyntheticSpec = DEFAULT) -> str:
    """Path of the cached synthetic model for `spec`, generating it on first use."""
    key = hashlib.sha256(repr(asdict(spec)).encode() + b"v2").hexdigest()[:12]
    path = os.path.join(cache_dir(), f"{spec.name}-{key}.gguf")
    if not os.path.exists(path):
        write_synthetic(path, spec)
    return path


def default_model_path() -> str:
    return synthetic_model_path(DEFAULT)
