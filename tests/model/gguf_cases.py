"""Synthetic GGUF models written with gguf-py's GGUFWriter (independent of xsil's own writer)."""

from __future__ import annotations

import numpy as np

gguf = __import__("pytest").importorskip("gguf")
GT = gguf.GGMLQuantizationType


def _vocab_llama(n):
    toks = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    extra = ["\u2581" + c for c in "abcdefghijklmnopqrstuvwxyz"] + list("abcdefghijklmnopqrstuvwxyz")
    toks += extra
    types += [1] * len(extra)
    i = 0
    while len(toks) < n:
        toks.append(f"\u2581w{i}")
        types.append(1)
        i += 1
    return toks[:n], [0.0] * 259 + [-float(i) for i in range(n - 259)], types[:n]


def _vocab_gpt2(n):
    # byte-level alphabet (GPT-2 mapping), then merges of common pairs
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    k = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + k)
            k += 1
    toks = [chr(c) for c in cs]
    merges = []
    for a, b in [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r")]:
        merges.append(f"{a} {b}")
        toks.append(a + b)
    toks += ["<|endoftext|>"]
    types = [1] * (len(toks) - 1) + [3]
    while len(toks) < n:
        toks.append(f"[unused{len(toks)}]")
        types.append(5)
    return toks[:n], merges, types[:n]


def llama3_rope_factors(head_dim, base, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, orig_ctx=256):
    """Llama 3.1-style per-pair frequency factors (what llama.cpp's converter stores as
    rope_freqs.weight), from Meta's description: pairs whose wavelength 2*pi/freq is shorter than
    orig_ctx / high_freq_factor keep their frequency (factor 1), those longer than orig_ctx /
    low_freq_factor are slowed down by `factor`, and in between the inverse factor interpolates
    linearly in orig_ctx / wavelength. orig_ctx is small here so a tiny test model's pairs cover all
    three ranges."""
    freq = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    ratio = orig_ctx * freq / (2 * np.pi)  # orig_ctx / wavelength
    t = np.clip((ratio - low_freq_factor) / (high_freq_factor - low_freq_factor), 0.0, 1.0)
    return (1.0 / ((1.0 - t) / factor + t)).astype(np.float32)


def write_model(path, *, arch="llama", n_embd=64, n_layer=2, n_head=4, n_head_kv=2, n_ff=96, n_vocab=320,
                wtype="Q4_0", mix=None, tied=False, biases=False, seed=0, rope_base=10000.0, head_dim=None,
                qk_norm=None, kv=None, extra_tensors=None, rope_freqs=None):
    """mix: optional dict of tensor-name part -> type name overriding wtype (e.g. {"ffn_down": "Q8_0"});
    a key starting with "=" matches the whole name only (e.g. {"=output.weight": "Q6_K"}).
    head_dim: written as {arch}.attention.key_length / value_length (q has n_head * head_dim rows,
    which need not be n_embd). qk_norm: write blk.N.attn_q_norm / attn_k_norm [head_dim] (default:
    arch == "qwen3"). kv: extra metadata {key (without "{arch}." when it starts with "."): value}.
    extra_tensors: {name: shape} written as F32 (e.g. expert tensors for refusal tests).
    rope_freqs: rope_freqs.weight: "llama3" (llama3_rope_factors for this head_dim and base) or an
    array written with its own dtype (F32 / F16) and shape."""
    rng = np.random.default_rng(seed)
    hd = head_dim or n_embd // n_head
    if qk_norm is None:
        qk_norm = arch == "qwen3"
    w = gguf.GGUFWriter(path, arch)
    w.add_context_length(256)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(hd)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(rope_base)
    if head_dim is not None:
        w.add_key_length(hd)
        w.add_value_length(hd)
    for k, v in (kv or {}).items():
        k = arch + k if k.startswith(".") else k
        if isinstance(v, bool):
            w.add_bool(k, v)
        elif isinstance(v, int):
            w.add_uint32(k, v)
        elif isinstance(v, float):
            w.add_float32(k, v)
        elif isinstance(v, str):
            w.add_string(k, v)
        else:
            w.add_array(k, list(v))
    if arch in ("qwen2", "qwen3"):
        toks, merges, types = _vocab_gpt2(n_vocab)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("qwen2")
        w.add_token_list(toks)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_eos_token_id(len(toks) - 1 if "<|endoftext|>" not in toks else toks.index("<|endoftext|>"))
    else:
        toks, scores, types = _vocab_llama(n_vocab)
        w.add_tokenizer_model("llama")
        w.add_token_list(toks)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)

    def typ(name):
        for k, v in (mix or {}).items():
            if (name == k[1:]) if k.startswith("=") else (k in name):
                return v
        return wtype

    def mat(name, rows, cols, std):
        x = (rng.standard_normal((rows, cols)) * std).astype(np.float32)
        t = typ(name)
        if t == "F32":
            w.add_tensor(name, x)
        elif t == "F16":
            w.add_tensor(name, x.astype(np.float16))
        elif t in ("Q4_K", "Q5_K", "Q6_K"):  # gguf-py has no K-quant quantizers: xsil's simple ones
            from xsil.testing import reference

            b = getattr(reference, "quantize_" + t.lower())(x)
            w.add_tensor(name, b, raw_dtype=getattr(GT, t))
        else:
            q = gguf.quants.quantize(x, getattr(GT, t))
            w.add_tensor(name, q, raw_dtype=getattr(GT, t))

    def vec(name, n, center=1.0, std=0.1):
        w.add_tensor(name, (center + std * rng.standard_normal(n)).astype(np.float32))

    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    for i in range(n_layer):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        mat(b + "attn_q.weight", n_head * hd, n_embd, 0.15)
        mat(b + "attn_k.weight", n_head_kv * hd, n_embd, 0.15)
        mat(b + "attn_v.weight", n_head_kv * hd, n_embd, 0.1)
        if biases:
            vec(b + "attn_q.bias", n_head * hd, 0.0, 0.2)
            vec(b + "attn_k.bias", n_head_kv * hd, 0.0, 0.2)
            vec(b + "attn_v.bias", n_head_kv * hd, 0.0, 0.2)
        if qk_norm:
            vec(b + "attn_q_norm.weight", hd, 1.0, 0.3)
            vec(b + "attn_k_norm.weight", hd, 1.0, 0.3)
        mat(b + "attn_output.weight", n_embd, n_head * hd, 0.1)
        vec(b + "ffn_norm.weight", n_embd)
        mat(b + "ffn_gate.weight", n_ff, n_embd, 0.1)
        mat(b + "ffn_up.weight", n_ff, n_embd, 0.1)
        mat(b + "ffn_down.weight", n_embd, n_ff, 0.1)
    vec("output_norm.weight", n_embd)
    if not tied:
        mat("output.weight", n_vocab, n_embd, 0.1)
    if isinstance(rope_freqs, str):
        assert rope_freqs == "llama3", rope_freqs
        rope_freqs = llama3_rope_factors(hd, rope_base)
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", np.asarray(rope_freqs))
    for name, shape in (extra_tensors or {}).items():
        w.add_tensor(name, (0.1 * rng.standard_normal(shape)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# Model shapes and quantization mixes the backends are checked on against the float64 reference.
MODEL_CASES = {
    "gqa1_q4_0": dict(n_head=4, n_head_kv=4),
    "gqa4_q8_0": dict(n_head=8, n_head_kv=2, wtype="Q8_0"),
    "mqa_q4_0": dict(n_head=4, n_head_kv=1),
    "gqa8_hd16": dict(n_embd=128, n_head=8, n_head_kv=1),
    "tied_f16_mix": dict(tied=True, mix={"ffn_down": "F16", "attn_v": "Q8_0", "token_embd": "F16"}),
    "f32_all": dict(wtype="F32", n_head_kv=1),
    "q4_k_mix": dict(n_embd=256, n_ff=512, n_head=4, n_head_kv=2, wtype="Q4_K", mix={"token_embd": "Q8_0"}),
    # llama.cpp "Q4_K_M"-like: Q4_K matrices, Q6_K output and ffn_down, a Q5_K attn_v, F32 norms.
    "q4_k_m_mix": dict(n_embd=256, n_ff=512, n_head=4, n_head_kv=2, wtype="Q4_K",
                       mix={"ffn_down": "Q6_K", "=output.weight": "Q6_K", "attn_v": "Q5_K"}),
    "qwen2_biases": dict(arch="qwen2", biases=True, n_head=4, n_head_kv=2, rope_base=1000000.0),
    # Qwen3-shaped: no biases, per-head q/k RMSNorm, head_dim 32 from key_length with n_embd 64 and 4
    # heads (q has 128 rows, like Qwen3-0.6B's 16 x 128 for n_embd 1024), GQA 4:2 and 8:2.
    "qwen3_hd32": dict(arch="qwen3", n_head=4, n_head_kv=2, head_dim=32, rope_base=1000000.0),
    "qwen3_gqa4_q8_0": dict(arch="qwen3", n_embd=128, n_head=8, n_head_kv=2, head_dim=32, wtype="Q8_0", tied=True,
                            rope_base=1000000.0),
    # llama with key_length != n_embd / n_head (q/k/v wider than the residual stream)
    "llama_hd32_wide": dict(n_head=4, n_head_kv=2, head_dim=32),
    # Llama 3.1/3.2-shaped RoPE: base 500000 and per-pair frequency factors (rope_freqs.weight): 1 for
    # the 3 fastest pairs, 8 for the 11 slowest, 2 interpolated (head_dim 32, as the CUDA cache needs)
    "llama3_rope_freqs": dict(n_embd=128, n_head=4, n_head_kv=2, rope_base=500000.0, rope_freqs="llama3"),
}


def reference_case(name, directory, **overrides):
    """Write MODEL_CASES[name] (with overrides) under directory; return (path, tokens, float64
    reference logits for those tokens). Seeds are stable across processes."""
    import zlib

    from xsil.model.gguf import GGUFFile
    from xsil.testing.forward_ref import ReferenceModel

    path = str(directory / f"{name}.gguf")
    write_model(path, seed=zlib.crc32(name.encode()) % 1000, **dict(MODEL_CASES[name], **overrides))
    toks = np.random.default_rng(7).integers(3, 300, size=21).astype(np.int32)
    return path, toks, ReferenceModel(GGUFFile(path)).forward(toks)
