"""Llama-family decoders from GGUF (arch ``llama``: Llama 2/3/3.1/3.2, Mistral, TinyLlama, SmolLM; arch
``qwen2``: Q/K/V biases, neox RoPE; arch ``qwen3``: neox RoPE, per-head RMSNorm on q and k, head_dim
from ``key_length``), run by the native core (``xsil._core.LlamaModel``). Any other architecture, and
any feature of these the forward does not compute (MoE experts, YaRN, softcapping, ...), is refused
with a GGUFError before anything is allocated (:func:`check_features`).

Weights stay in the file mapping (zero-copy). Where the ISA tier has a faster packed layout, a
tensor is repacked *in place* in a private (copy-on-write) mapping: the packed copy replaces the
file's pages instead of doubling memory.
"""

from __future__ import annotations

import mmap
import os
import resource
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np

from .. import _core
from ..errors import ContextOverflowError, GGUFError
from .gguf import GGUFFile
from .tokenizer import Tokenizer, from_gguf

SUPPORTED_ARCHS = ("llama", "qwen2", "qwen3")
# RoPE pairing per architecture: llama rotates adjacent pairs (ggml mode 0), qwen2/qwen3 split halves
# (neox, ggml mode 2).
ARCH_ROPE = {"llama": "normal", "qwen2": "neox", "qwen3": "neox"}
# Architectures with a per-head RMSNorm on q and k before RoPE (attn_q_norm / attn_k_norm, [head_dim]).
QK_NORM_ARCHS = ("qwen3",)
WEIGHT_TYPES = ("F32", "F16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K")
LAYER_TENSORS = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up",
                 "ffn_down")
# Optional per-layer tensors xsil computes with (any supported arch): Q/K/V biases (qwen2 has them).
LAYER_OPTIONAL = ("attn_q.bias", "attn_k.bias", "attn_v.bias")
# Per-layer tensors that mark a feature xsil does not implement, with what it is (checked before the
# generic "unexpected tensor" refusal so the message says what the file needs).
_UNSUPPORTED_TENSORS = (
    ("_exps", "mixture-of-experts FFN (expert tensors)"),
    ("_shexp", "mixture-of-experts FFN (shared-expert tensors)"),
    ("ffn_gate_inp", "mixture-of-experts FFN (router)"),
    ("attn_output.bias", "an attention output bias"),
    ("ffn_gate.bias", "FFN biases"), ("ffn_up.bias", "FFN biases"), ("ffn_down.bias", "FFN biases"),
    ("post_attention_norm", "post-attention norms (gemma2-style)"),
    ("post_ffw_norm", "post-FFN norms (gemma2-style)"),
    ("attn_rot_embd", None),  # a stored copy of the standard RoPE frequencies (harmless, ignored)
)
# Metadata that changes the arithmetic of the forward when present with a non-neutral value:
# key suffix -> (neutral value or None for "refused whenever present", what it is).
_UNSUPPORTED_KEYS = {
    "expert_count": (0, "mixture-of-experts (expert_count)"),
    "expert_used_count": (0, "mixture-of-experts (expert_used_count)"),
    "attention.sliding_window_pattern": (None, "interleaved sliding-window attention"),
    "attention.scale": (None, "a custom attention scale"),
    "attention.clamp_kqv": (None, "clamped Q/K/V"),
    "attention.max_alibi_bias": (0.0, "ALiBi position biases"),
    "attention.causal": (True, "non-causal attention"),
    "attn_logit_softcapping": (None, "attention logit soft-capping"),
    "final_logit_softcapping": (None, "final logit soft-capping"),
    "logit_scale": (1.0, "a logit scale"),
    "embedding_scale": (1.0, "an embedding scale"),
    "residual_scale": (1.0, "a residual scale"),
    "rope.dimension_sections": (None, "multi-section (M-RoPE) rotary embeddings"),
    "rope.scaling.attn_factor": (1.0, "a RoPE attention factor"),
}


def _unsupported(path: str, arch: str, what: str) -> GGUFError:
    return GGUFError(f"{os.path.basename(path)}: {arch} file uses {what}, which xsil does not implement "
                     f"(xsil runs dense {', '.join(SUPPORTED_ARCHS)} decoders, rope scaling none or linear, "
                     f"optionally with per-pair frequency factors rope_freqs.weight)")


def check_arch(g: GGUFFile) -> str:
    """The file's architecture if xsil runs it, else GGUFError naming it and the supported list.
    Reads only metadata and tensor names: nothing is allocated or mapped."""
    arch = g.require("general.architecture", (str,))
    if arch not in SUPPORTED_ARCHS:
        raise GGUFError(f"{os.path.basename(g.path)}: unsupported architecture {arch!r}; "
                        f"supported: {', '.join(SUPPORTED_ARCHS)}")
    return arch


def check_features(g: GGUFFile, arch: str) -> None:
    """Refuse (GGUFError) a file of a supported architecture that uses a feature the forward does
    not compute: expert (MoE) tensors, extra per-layer tensors, softcapping, ALiBi, sliding-window
    patterns, rope scaling other than none/linear (yarn, longrope), ... (Llama 3.1-style frequency
    factors, tensor rope_freqs.weight, are computed: see load_rope_freq_factors)
    Silently skipping any of them would produce wrong logits. Metadata and tensor names only."""
    p = arch + "."
    path = g.path
    for suffix, (neutral, what) in _UNSUPPORTED_KEYS.items():
        if p + suffix not in g.metadata:
            continue
        v = g.get(p + suffix)
        if isinstance(v, np.generic):
            v = v.item()
        if neutral is None or v != neutral:
            raise _unsupported(path, arch, f"{what} ({p + suffix} = {v!r})")
    st = g.get(p + "rope.scaling.type")
    if st not in (None, "none", "linear"):
        raise _unsupported(path, arch, f"rope scaling type {st!r} ({p}rope.scaling.type; supported: none, linear)")
    yarn = sorted(k for k in g.metadata if k.startswith(p + "rope.scaling.yarn_"))
    if yarn:
        raise _unsupported(path, arch, f"YaRN rope scaling parameters ({yarn[0]})")


@dataclass
class LlamaConfig:
    arch: str
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int              # key_length (= value_length); may differ from n_embd / n_head
    n_ff: int
    n_vocab: int
    n_ctx_train: int
    rms_eps: float
    rope_mode: str
    rope_freq_base: float
    rope_freq_scale: float
    qk_norm: bool = False      # per-head RMSNorm on q and k before RoPE (qwen3)
    sliding_window: int = 0    # attention window in tokens (0: none); n_ctx must not exceed it
    # Per-pair RoPE frequency factors (rope_freqs.weight, Llama 3.1/3.2): float32 [head_dim / 2], pair
    # i's frequency divided by factor i; None when the file has none or they are all 1.
    rope_freq_factors: Optional[np.ndarray] = field(default=None, compare=False, repr=False)

    @classmethod
    def from_gguf(cls, g: GGUFFile) -> "LlamaConfig":
        """The decoder's shape from the file's metadata. Raises GGUFError, before anything is
        allocated, for an architecture or a feature xsil does not compute (see check_features)."""
        arch = check_arch(g)
        check_features(g, arch)
        p = arch + "."
        n_embd = g.require(p + "embedding_length")
        n_head = g.require(p + "attention.head_count")
        n_head_kv = g.get(p + "attention.head_count_kv", n_head)
        if not isinstance(n_head_kv, (int, np.integer)) or isinstance(n_head_kv, bool):
            # a per-layer array (different KV heads per layer) or another type
            raise GGUFError(f"{os.path.basename(g.path)}: {p}attention.head_count_kv must be one integer "
                            f"(per-layer head counts are not supported)")
        n_head_kv = int(n_head_kv)
        if n_head <= 0:
            raise GGUFError(f"model dimension n_head={n_head} is out of range")
        key_len = g.get(p + "attention.key_length")
        if key_len is None and n_embd % n_head:
            raise GGUFError(f"{os.path.basename(g.path)}: n_embd={n_embd} is not a multiple of n_head={n_head} "
                            f"and {p}attention.key_length is missing")
        head_dim = int(key_len if key_len is not None else n_embd // n_head)
        n_rot = int(g.get(p + "rope.dimension_count", head_dim))
        if n_rot != head_dim:
            raise GGUFError(f"partial rotary embeddings (rope.dimension_count={n_rot} < head_dim={head_dim}) are "
                            f"not supported")
        v_len = int(g.get(p + "attention.value_length", head_dim))
        if v_len != head_dim:
            raise GGUFError(f"{os.path.basename(g.path)}: value_length={v_len} != key_length={head_dim} is not "
                            f"supported")
        if head_dim % 2:
            raise GGUFError(f"{os.path.basename(g.path)}: head_dim={head_dim} must be even (RoPE pairs)")
        tok = g.tensor_info("token_embd.weight")
        n_vocab = tok.dims[1] if len(tok.dims) == 2 else 0
        scale = 1.0
        if g.get(p + "rope.scaling.type") == "linear":
            scale = 1.0 / float(g.get(p + "rope.scaling.factor", 1.0))
        cfg = cls(arch=arch, n_embd=int(n_embd), n_layer=int(g.require(p + "block_count")), n_head=int(n_head),
                  n_head_kv=n_head_kv, head_dim=head_dim, n_ff=int(g.require(p + "feed_forward_length")),
                  n_vocab=int(n_vocab), n_ctx_train=int(g.get(p + "context_length", 0)),
                  rms_eps=float(g.get(p + "attention.layer_norm_rms_epsilon", 1e-5)),
                  rope_mode=ARCH_ROPE[arch],
                  rope_freq_base=float(g.get(p + "rope.freq_base", 10000.0)), rope_freq_scale=scale,
                  qk_norm=arch in QK_NORM_ARCHS,
                  sliding_window=int(g.get(p + "attention.sliding_window", 0) or 0))
        for k in ("n_embd", "n_layer", "n_head", "n_head_kv", "head_dim", "n_ff", "n_vocab"):
            v = getattr(cfg, k)
            if not 0 < v < 1 << 24:
                raise GGUFError(f"model dimension {k}={v} is out of range")
        if cfg.n_head % cfg.n_head_kv:
            raise GGUFError(f"n_head={cfg.n_head} is not a multiple of n_head_kv={cfg.n_head_kv}")
        if not 0 < scale <= 1e6 or not np.isfinite(scale):
            raise GGUFError(f"{os.path.basename(g.path)}: {p}rope.scaling.factor gives a frequency scale {scale}")
        check_tensors(g, cfg)
        cfg.rope_freq_factors = load_rope_freq_factors(g, cfg)
        return cfg

    def rope_inv_freq(self) -> np.ndarray:
        """Per-pair angular frequencies (float64 [head_dim / 2]) before freq_scale: freq_base^(-2i/d)
        divided by the frequency factors (the same expression as the native kernels)."""
        D = self.head_dim
        inv = self.rope_freq_base ** (-np.arange(D // 2, dtype=np.float64) * 2.0 / D)
        if self.rope_freq_factors is not None:
            inv = inv / self.rope_freq_factors.astype(np.float64)
        return inv

    def check_n_ctx(self, n_ctx: int) -> None:
        """Sliding-window attention equals full attention while no sequence is longer than the window:
        refuse a context that could exceed it (xsil attends to every cached position)."""
        if self.sliding_window and n_ctx > self.sliding_window:
            raise GGUFError(f"{self.arch} model uses sliding-window attention ({self.sliding_window} tokens), "
                            f"which xsil does not implement; open it with n_ctx <= {self.sliding_window} "
                            f"(asked for {n_ctx})")

    def as_core(self) -> Dict[str, Any]:
        return dict(n_embd=self.n_embd, n_layer=self.n_layer, n_head=self.n_head, n_head_kv=self.n_head_kv,
                    head_dim=self.head_dim, n_ff=self.n_ff, n_vocab=self.n_vocab, rms_eps=self.rms_eps,
                    rope_mode=self.rope_mode, rope_freq_base=self.rope_freq_base,
                    rope_freq_scale=self.rope_freq_scale, qk_norm=self.qk_norm,
                    rope_freq_factors=self.rope_freq_factors)


def tensor_names(cfg: LlamaConfig) -> List[str]:
    names = ["token_embd.weight", "output_norm.weight"]
    for i in range(cfg.n_layer):
        names += [f"blk.{i}.{t}.weight" for t in LAYER_TENSORS]
        if cfg.qk_norm:
            names += [f"blk.{i}.attn_q_norm.weight", f"blk.{i}.attn_k_norm.weight"]
    return names


def check_tensors(g: GGUFFile, cfg: "LlamaConfig") -> None:
    """Every tensor the forward needs is present, and every tensor in the file is one it computes
    with: a tensor it would skip (an expert, an output bias, ...) means the logits would be wrong,
    so the file is refused naming it. Tensor names only."""
    arch, path = cfg.arch, g.path
    missing = [n for n in tensor_names(cfg) if n not in g.tensors]
    if missing:
        raise GGUFError(f"{os.path.basename(path)}: tensors missing for {arch}: {', '.join(missing[:5])}")
    allowed = {"token_embd.weight", "output_norm.weight", "output.weight"}
    per_layer = set(t + ".weight" for t in LAYER_TENSORS) | set(LAYER_OPTIONAL)
    if cfg.qk_norm:
        per_layer |= {"attn_q_norm.weight", "attn_k_norm.weight"}
    for name in g.tensors:
        if name in allowed:
            continue
        if name == "rope_freqs.weight":
            continue  # computed (validated by load_rope_freq_factors)
        parts = name.split(".", 2)
        if (len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and int(parts[1]) < cfg.n_layer
                and parts[2] in per_layer):
            continue
        rest = parts[2] if len(parts) == 3 else name
        for marker, what in _UNSUPPORTED_TENSORS:
            if marker in rest:
                if what is None:
                    break
                raise _unsupported(path, arch, f"{what} (tensor {name!r})")
        else:
            raise _unsupported(path, arch, f"a tensor xsil does not know for {arch} ({name!r})")


def load_rope_freq_factors(g: GGUFFile, cfg: "LlamaConfig") -> Optional[np.ndarray]:
    """The per-pair RoPE frequency factors of the file (tensor ``rope_freqs.weight``, written by
    llama.cpp's converter for Llama 3.1/3.2: 1 for high-frequency pairs, the scaling factor for
    low-frequency ones, smooth in between) as a float32 copy, or None when absent or all 1.
    Raises GGUFError unless the tensor is F32 of shape [head_dim / 2] with finite values > 0."""
    name = "rope_freqs.weight"
    if name not in g.tensors:
        return None
    ti = g.tensor_info(name)
    base = os.path.basename(g.path)
    half = cfg.head_dim // 2
    if ti.type_name != "F32":
        raise GGUFError(f"{base}: tensor {name!r} has type {ti.type_name}; RoPE frequency factors must be F32")
    if tuple(int(d) for d in ti.dims) != (half,):
        raise GGUFError(f"{base}: tensor {name!r} has shape {list(ti.dims)}; RoPE frequency factors must be "
                        f"[head_dim / 2] = [{half}]")
    f = np.array(g.tensor(name), np.float32).reshape(half)  # a copy: the file may be closed after loading
    if not np.all(np.isfinite(f)) or not np.all(f > 0):
        raise GGUFError(f"{base}: tensor {name!r} holds RoPE frequency factors that are not all finite and > 0")
    if np.all(f == 1.0):
        return None  # the standard frequencies (dividing by 1 changes nothing)
    return f


def peak_rss_bytes() -> int:
    """Peak resident set size of this process. VmHWM (per address space, so not inherited from a
    parent the way ru_maxrss is across fork+exec), else getrusage."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class LoadReport:
    phases: Dict[str, float] = field(default_factory=dict)   # seconds per phase
    peak_rss: int = 0
    file_bytes: int = 0
    weight_bytes: int = 0
    packed_tensors: int = 0
    packed_bytes: int = 0
    tier: str = ""

    def as_dict(self) -> Dict[str, Any]:
        return dict(phases_s=dict(self.phases), peak_rss_bytes=self.peak_rss, file_bytes=self.file_bytes,
                    weight_bytes=self.weight_bytes, packed_tensors=self.packed_tensors,
                    packed_bytes=self.packed_bytes, tier=self.tier)


class LlamaModel:
    """A loaded GGUF decoder: config, tokenizer, the native model and its KV cache."""

    def __init__(self, path: str, *, n_ctx: int = 4096, kv_dtype: str = "f16", isa: Optional[str] = None,
                 threads: Optional[int] = None, pack: bool = True, page_size: int = 16,
                 context_shift: str = "error", n_keep: int = 0, exact: bool = False):
        rep = LoadReport()
        if exact:
            pack = False  # the exact (fp32 dequantize) path reads GGUF rows
        t0 = time.perf_counter()
        if isinstance(n_ctx, bool) or not isinstance(n_ctx, (int, np.integer)) or n_ctx < 1:
            raise ValueError(f"[model] n_ctx={n_ctx!r} must be an int >= 1")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, (int, np.integer))
                                    or not 1 <= threads <= 1024):
            raise ValueError(f"[model] threads={threads!r} must be an int in [1, 1024] or None")
        g = GGUFFile(path)
        rep.phases["open_validate"] = time.perf_counter() - t0
        rep.file_bytes = g.size
        self.gguf = g
        self.path = path
        self.config = cfg = LlamaConfig.from_gguf(g)
        cfg.check_n_ctx(int(n_ctx))
        t1 = time.perf_counter()
        self.tokenizer: Tokenizer = from_gguf(g)
        if self.tokenizer.vocab_size != cfg.n_vocab:
            raise GGUFError(f"tokenizer has {self.tokenizer.vocab_size} tokens but token_embd has {cfg.n_vocab} rows")
        rep.phases["tokenizer"] = time.perf_counter() - t1

        t2 = time.perf_counter()
        names = tensor_names(cfg)
        optional = ["output.weight"] + [f"blk.{i}.attn_{x}.bias" for i in range(cfg.n_layer) for x in "qkv"]
        tier = _core.get_isa() if not isa else isa
        weights: Dict[str, tuple] = {}
        for name in names + [n for n in optional if n in g.tensors]:
            ti = g.tensor_info(name)
            if ti.type_name not in WEIGHT_TYPES:
                raise GGUFError(f"tensor {name!r} has type {ti.type_name}; supported: {', '.join(WEIGHT_TYPES)}")
            if len(ti.dims) > 2:
                raise GGUFError(f"tensor {name!r} has {len(ti.dims)} dims; expected 1 or 2")
            rows = ti.dims[1] if len(ti.dims) == 2 else 1
            cols = ti.dims[0]
            arr = g.tensor(name)
            if ti.type_name in ("F32", "F16"):
                arr = arr.reshape(rows, cols) if len(ti.dims) == 2 else arr.reshape(1, cols)
            weights[name] = (arr, ti.type_name, rows, cols)
            rep.weight_bytes += ti.nbytes
        # Missing tensors are reported by name by the core; but check here for a clearer message.
        missing = [n for n in names if n not in g.tensors]
        if missing:
            raise GGUFError(f"tensors missing for {cfg.arch}: {', '.join(missing[:5])}")
        rep.phases["map_weights"] = time.perf_counter() - t2

        t3 = time.perf_counter()
        if pack:
            self._arena = self._pack_weights(g, weights, tier, threads, rep)
        rep.phases["pack"] = time.perf_counter() - t3

        t4 = time.perf_counter()
        kv = dict(page_size=page_size, k_dtype=kv_dtype, v_dtype=kv_dtype, budget_tokens=int(n_ctx), n_ctx=int(n_ctx),
                  context_shift=context_shift, n_keep=int(n_keep))
        try:
            self.native = _core.LlamaModel(cfg.as_core(), weights, kv, tier, int(threads or 0))
        except ValueError as e:
            if str(e).startswith("[model] tensor"):  # shapes/types in the file do not fit the config
                raise GGUFError(f"{os.path.basename(path)}: {e}") from None
            raise
        self.native.exact = bool(exact)
        self.n_ctx = int(n_ctx)
        self.kv_dtype = kv_dtype
        self.tier = self.native.tier
        rep.phases["build"] = time.perf_counter() - t4
        rep.phases["total"] = time.perf_counter() - t0
        rep.peak_rss = peak_rss_bytes()
        rep.tier = self.tier
        self.report = rep

    @staticmethod
    def _pack_weights(g: GGUFFile, weights: Dict[str, tuple], tier: str, threads: Optional[int],
                      rep: LoadReport) -> Optional[mmap.mmap]:
        """Repack the block-quantized matrices for the tier into one anonymous arena (huge pages
        where the kernel allows), tensor by tensor in file order, dropping each source range from
        this process's mapping as soon as it is copied: the packed weights replace the file's pages
        rather than adding to them (peak = file + one tensor), and the file is never written."""
        cands = []
        for name, (arr, fmt, rows, cols) in weights.items():
            if fmt not in ("F32", "F16") and name != "token_embd.weight":
                probe = _core.pack(np.array(arr[:1]), fmt, tier, False, 1)  # does the tier pack fmt?
                if probe is not None:
                    cands.append((g.tensor_info(name).offset, name))
        if not cands:
            return None
        cands.sort()
        sizes = [(weights[n][0].nbytes + 63) // 64 * 64 for _, n in cands]
        arena = mmap.mmap(-1, max(sum(sizes), 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(mmap, "MADV_HUGEPAGE"):
            try:
                arena.madvise(mmap.MADV_HUGEPAGE)
            except OSError:
                pass
        buf = np.frombuffer(arena, np.uint8)
        off = 0
        for (_, name), size in zip(cands, sizes):
            arr, fmt, rows, cols = weights[name]
            dst = buf[off:off + arr.nbytes].reshape(arr.shape)
            np.copyto(dst, arr)
            pk = _core.pack(dst, fmt, tier, True, threads)
            weights[name] = (pk, fmt, rows, cols)
            g.release(name)
            rep.packed_tensors += 1
            rep.packed_bytes += pk.nbytes
            off += size
        return arena

    @property
    def cache(self):
        return self.native.cache

    def forward(self, ids: np.ndarray, seq_id: int, all_logits: bool = True) -> np.ndarray:
        try:
            return self.native.forward(np.ascontiguousarray(ids, np.int32), seq_id, all_logits)
        except ValueError as e:
            msg = str(e)
            if msg.startswith("[kv_cache]") and ("exhausted" in msg or "past n_ctx" in msg):
                raise ContextOverflowError(msg) from None
            raise

    def close(self) -> None:
        self.native = None
        self.gguf.close()
