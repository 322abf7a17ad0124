"""NumPy float64 reference forward for Llama-family GGUF decoders (llama, qwen2, qwen3).

Independent of xsil's native code: weights are dequantized with :mod:`xsil.testing.reference`,
everything else is plain NumPy in float64. Slow and memory-hungry; for small test models only.
"""

from __future__ import annotations

import numpy as np

from . import reference as ref


def _weight(g, name: str) -> np.ndarray:
    t = g.tensor_info(name)
    a = g.tensor(name)
    if t.type_name == "F32":
        w = np.asarray(a, np.float64)
    elif t.type_name == "F16":
        w = np.asarray(a, np.float64)
    else:
        w = ref.dequantize(a, t.type_name, t.dims[0]).astype(np.float64)
    return w.reshape(t.shape)


def rope(x: np.ndarray, pos: np.ndarray, n_rot: int, base: float, scale: float, neox: bool,
         factors=None) -> np.ndarray:
    """x [T, H, D]; rotates the first n_rot dims of each head. normal: pairs (2i, 2i+1);
    neox: pairs (i, i + n_rot/2). theta_i = pos * scale * base^(-2i/n_rot) / factors[i] (factors:
    GGUF rope_freqs.weight, [n_rot/2]; they divide the frequency for either pairing, as in ggml)."""
    x = x.copy()
    half = n_rot // 2
    inv = base ** (-np.arange(half, dtype=np.float64) * 2.0 / n_rot)
    if factors is not None:
        inv = inv / np.asarray(factors, np.float64).reshape(half)
    th = (pos.astype(np.float64) * scale)[:, None] * inv[None, :]  # [T, half]
    cos, sin = np.cos(th)[:, None, :], np.sin(th)[:, None, :]
    if neox:
        a, b = x[..., :half].copy(), x[..., half:n_rot].copy()
        x[..., :half] = a * cos - b * sin
        x[..., half:n_rot] = a * sin + b * cos
    else:
        a, b = x[..., 0:n_rot:2].copy(), x[..., 1:n_rot:2].copy()
        x[..., 0:n_rot:2] = a * cos - b * sin
        x[..., 1:n_rot:2] = a * sin + b * cos
    return x


class ReferenceModel:
    """Whole-sequence float64 forward: logits for every position of `tokens`."""

    def __init__(self, g):
        arch = g.require("general.architecture", (str,))
        if arch not in ("llama", "qwen2", "qwen3"):
            raise ValueError(f"reference forward supports llama, qwen2 and qwen3, not {arch}")
        self.arch = arch
        p = arch + "."
        self.n_embd = g.require(p + "embedding_length")
        self.n_layer = g.require(p + "block_count")
        self.n_head = g.require(p + "attention.head_count")
        self.n_head_kv = g.get(p + "attention.head_count_kv", self.n_head)
        self.n_head_kv = int(self.n_head_kv)
        self.eps = float(g.get(p + "attention.layer_norm_rms_epsilon", 1e-5))
        self.base = float(g.get(p + "rope.freq_base", 10000.0))
        self.head_dim = int(g.get(p + "attention.key_length", self.n_embd // self.n_head))
        self.n_rot = int(g.get(p + "rope.dimension_count", self.head_dim))
        scale = 1.0
        if g.get(p + "rope.scaling.type") == "linear":
            scale = 1.0 / float(g.get(p + "rope.scaling.factor", 1.0))
        self.freq_scale = scale
        self.neox = arch in ("qwen2", "qwen3")
        # Llama 3.1/3.2: per-pair frequency factors (read straight from the file, float64)
        self.rope_factors = _weight(g, "rope_freqs.weight") if "rope_freqs.weight" in g.tensors else None
        # qwen3: RMSNorm over each head's head_dim values of q and k (own weights), before RoPE
        self.qk_norm = arch == "qwen3"
        self.tok = _weight(g, "token_embd.weight")
        self.out_norm = _weight(g, "output_norm.weight")
        self.out = _weight(g, "output.weight") if "output.weight" in g.tensors else self.tok
        self.layers = []
        for i in range(self.n_layer):
            b = f"blk.{i}."
            L = {k: _weight(g, b + k + ".weight") for k in
                 ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up",
                  "ffn_down")}
            for k in ("attn_q", "attn_k", "attn_v"):
                if b + k + ".bias" in g.tensors:
                    L[k + ".bias"] = _weight(g, b + k + ".bias")
            if self.qk_norm:
                L["attn_q_norm"] = _weight(g, b + "attn_q_norm.weight")
                L["attn_k_norm"] = _weight(g, b + "attn_k_norm.weight")
            self.layers.append(L)

    def _norm(self, x, w):
        return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + self.eps) * w

    def forward(self, tokens) -> np.ndarray:
        tokens = np.asarray(tokens, np.int64)
        T = len(tokens)
        pos = np.arange(T)
        H, Hk, D = self.n_head, self.n_head_kv, self.head_dim
        x = self.tok[tokens]
        mask = np.triu(np.full((T, T), -np.inf), 1)
        for L in self.layers:
            h = self._norm(x, L["attn_norm"])
            q = h @ L["attn_q"].T + L.get("attn_q.bias", 0)
            k = h @ L["attn_k"].T + L.get("attn_k.bias", 0)
            v = h @ L["attn_v"].T + L.get("attn_v.bias", 0)
            q, k = q.reshape(T, H, D), k.reshape(T, Hk, D)
            if self.qk_norm:
                q, k = self._norm(q, L["attn_q_norm"]), self._norm(k, L["attn_k_norm"])
            q = rope(q, pos, self.n_rot, self.base, self.freq_scale, self.neox, self.rope_factors)
            k = rope(k, pos, self.n_rot, self.base, self.freq_scale, self.neox, self.rope_factors)
            v = v.reshape(T, Hk, D)
            rep = H // Hk
            k = np.repeat(k, rep, axis=1)
            v = np.repeat(v, rep, axis=1)
            s = np.einsum("thd,shd->hts", q, k) / np.sqrt(D) + mask[None]
            s = np.exp(s - s.max(axis=-1, keepdims=True))
            s /= s.sum(axis=-1, keepdims=True)
            o = np.einsum("hts,shd->thd", s, v).reshape(T, H * D)
            x = x + o @ L["attn_output"].T
            h = self._norm(x, L["ffn_norm"])
            gte = h @ L["ffn_gate"].T
            up = h @ L["ffn_up"].T
            x = x + ((gte / (1 + np.exp(-gte))) * up) @ L["ffn_down"].T
        x = self._norm(x, self.out_norm)
        return x @ self.out.T
