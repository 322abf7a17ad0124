"""What xsil runs and what it refuses. Small files written with gguf-py's GGUFWriter: every
architecture other than llama / qwen2 / qwen3, and every llama-family feature the forward does not
compute (experts, extra tensors, YaRN / longrope, softcapping, ...), must raise GGUFError naming it
and the supported list, from the metadata alone (before the tokenizer, the weights or the native
model are touched). head_dim != n_embd / n_head runs (llama, qwen2, qwen3) and matches the float64
reference; so do Llama 3.1-style RoPE frequency factors (rope_freqs.weight), malformed ones are
refused."""

import numpy as np
import pytest
from gguf_cases import MODEL_CASES, write_model

import xsil.model.llama as L
from xsil.errors import GGUFError
from xsil.model.gguf import GGUFFile
from xsil.model.llama import LlamaConfig, LlamaModel
from xsil.testing.forward_ref import ReferenceModel

SUPPORTED = "supported: llama, qwen2, qwen3"


@pytest.fixture(autouse=True)
def _nothing_loaded_before_the_refusal(monkeypatch):
    """A refusal must come before the tokenizer is built (and so before any weight is mapped or the
    native model allocated): the loader's next step after the config fails the test if reached."""
    real = L.from_gguf
    state = {"expect_refusal": False}

    def guarded(g):
        assert not state["expect_refusal"], "the tokenizer was built: the file was not refused up front"
        return real(g)

    monkeypatch.setattr(L, "from_gguf", guarded)
    return state


def refused(path, *words, guard=None, n_ctx=64):
    if guard is not None:
        guard["expect_refusal"] = True
    with pytest.raises(GGUFError) as e:
        LlamaModel(path, n_ctx=n_ctx)
    msg = str(e.value)
    for w in words:
        assert w in msg, (w, msg)
    return msg


# -- other architectures -------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["phi3", "gemma", "gemma2", "gemma3", "starcoder2", "mamba", "llama4", "qwen3moe",
                                  "qwen2moe", "deepseek2", "mistral3", "gpt2"])
def test_other_architectures_are_refused_naming_them(tmp_path, arch, _nothing_loaded_before_the_refusal):
    path = write_model(str(tmp_path / f"{arch}.gguf"), arch=arch)
    msg = refused(path, f"unsupported architecture {arch!r}", SUPPORTED, guard=_nothing_loaded_before_the_refusal)
    with pytest.raises(GGUFError, match="unsupported architecture"):
        LlamaConfig.from_gguf(GGUFFile(path))
    assert path.rsplit("/", 1)[1] in msg


# -- llama-family files with features the forward does not compute -----------------------------
MOE = {f"blk.{i}.{t}": (4, 96, 64) for i in range(2) for t in ("ffn_gate_exps.weight", "ffn_up_exps.weight")}
REFUSALS = {
    "moe_expert_count": (dict(kv={".expert_count": 4, ".expert_used_count": 2}, extra_tensors=MOE),
                         ["mixture-of-experts", "llama.expert_count"]),
    "moe_tensors_only": (dict(extra_tensors=MOE), ["mixture-of-experts", "blk.0.ffn_gate_exps.weight"]),
    "moe_router": (dict(extra_tensors={"blk.1.ffn_gate_inp.weight": (4, 64)}), ["router", "ffn_gate_inp"]),
    "qwen3_moe_tensors": (dict(arch="qwen3", head_dim=32, extra_tensors=MOE), ["qwen3 file", "mixture-of-experts"]),
    "yarn": (dict(kv={".rope.scaling.type": "yarn", ".rope.scaling.factor": 4.0,
                      ".rope.scaling.original_context_length": 4096}), ["rope scaling type 'yarn'", "none, linear"]),
    "longrope": (dict(kv={".rope.scaling.type": "longrope"}), ["'longrope'"]),
    "yarn_keys_without_type": (dict(arch="qwen3", head_dim=32, kv={".rope.scaling.yarn_beta_fast": 32.0}),
                               ["YaRN", "qwen3.rope.scaling.yarn_beta_fast"]),
    "rope_attn_factor": (dict(kv={".rope.scaling.attn_factor": 0.5}), ["attention factor"]),
    # rope_freqs.weight is computed (test_llama3_rope_freqs_*), but only in the form llama.cpp writes it
    "rope_freqs_wrong_length": (dict(rope_freqs=np.full(7, 2.0, np.float32)),
                                ["rope_freqs.weight", "shape [7]", "[head_dim / 2] = [8]"]),
    "rope_freqs_2d": (dict(rope_freqs=np.full((2, 8), 2.0, np.float32)), ["rope_freqs.weight", "[head_dim / 2]"]),
    "rope_freqs_f16": (dict(rope_freqs=np.full(8, 2.0, np.float16)), ["rope_freqs.weight", "type F16", "must be F32"]),
    "rope_freqs_zero": (dict(rope_freqs=np.array([1, 1, 2, 0, 8, 8, 8, 8], np.float32)),
                        ["rope_freqs.weight", "not all finite and > 0"]),
    "rope_freqs_nan": (dict(rope_freqs=np.array([1, 1, 2, np.nan, 8, 8, 8, 8], np.float32)),
                       ["rope_freqs.weight", "not all finite and > 0"]),
    "softcap": (dict(kv={".attn_logit_softcapping": 50.0}), ["soft-capping"]),
    "final_softcap": (dict(arch="qwen2", kv={".final_logit_softcapping": 30.0}), ["qwen2 file", "soft-capping"]),
    "swa_pattern": (dict(kv={".attention.sliding_window_pattern": 4}), ["sliding-window"]),
    "non_causal": (dict(kv={".attention.causal": False}), ["non-causal"]),
    "alibi": (dict(kv={".attention.max_alibi_bias": 8.0}), ["ALiBi"]),
    "mrope": (dict(arch="qwen2", kv={".rope.dimension_sections": [2, 2, 4, 0]}), ["M-RoPE"]),
    "attn_scale": (dict(kv={".attention.scale": 0.1}), ["attention scale"]),
    "logit_scale": (dict(kv={".logit_scale": 0.5}), ["logit scale"]),
    "output_bias": (dict(extra_tensors={"blk.0.attn_output.bias": (64,)}), ["attention output bias"]),
    "ffn_bias": (dict(extra_tensors={"blk.0.ffn_up.bias": (96,)}), ["FFN biases"]),
    "qk_norm_in_llama": (dict(qk_norm=True), ["a tensor xsil does not know for llama", "attn_q_norm"]),
    "post_norm": (dict(extra_tensors={"blk.0.post_attention_norm.weight": (64,)}), ["post-attention"]),
    "unknown_tensor": (dict(extra_tensors={"blk.0.attn_sinks.weight": (4,)}), ["blk.0.attn_sinks.weight"]),
    "layer_beyond_block_count": (dict(extra_tensors={"blk.2.attn_norm.weight": (64,)}), ["blk.2.attn_norm.weight"]),
    "partial_rotary": (dict(kv={".rope.dimension_count": 8}), ["partial rotary"]),
    "value_length": (dict(head_dim=16, kv={}), None),  # patched below: value_length != key_length
    "qwen3_missing_k_norm": (dict(arch="qwen3", head_dim=32), None),
}


def _write_refusal(tmp_path, name):
    kw, words = REFUSALS[name]
    path = str(tmp_path / f"{name}.gguf")
    kw = dict(kw)
    if name == "value_length":
        kw["kv"] = {".attention.value_length": 32}
        words = ["value_length=32 != key_length=16"]
    elif name == "qwen3_missing_k_norm":
        kw["extra_tensors"] = None
        words = ["tensors missing for qwen3", "attn_k_norm"]
    write_model(path, **kw)
    if name == "qwen3_missing_k_norm":
        data = open(path, "rb").read()
        for i in range(2):
            n = f"blk.{i}.attn_k_norm.weight".encode()
            data = data.replace(n, f"blk.{i}.attn_k_nXrm.weight".encode(), 1)
        open(path, "wb").write(data)
    return path, words


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_unsupported_features_are_refused_up_front(tmp_path, name, _nothing_loaded_before_the_refusal):
    path, words = _write_refusal(tmp_path, name)
    refused(path, *words, guard=_nothing_loaded_before_the_refusal)


def test_per_layer_kv_heads(tmp_path, monkeypatch):
    path = write_model(str(tmp_path / "m.gguf"))
    g = GGUFFile(path)
    monkeypatch.setitem(g.metadata, "llama.attention.head_count_kv", np.array([2, 4], np.uint32))
    with pytest.raises(GGUFError, match="per-layer head counts"):
        LlamaConfig.from_gguf(g)


def test_sliding_window_only_within_the_window(tmp_path, _nothing_loaded_before_the_refusal):
    # SWA equals full attention while no sequence exceeds the window: n_ctx <= window runs
    path = write_model(str(tmp_path / "swa.gguf"), kv={".attention.sliding_window": 32})
    m = LlamaModel(path, n_ctx=32)
    assert m.forward([1, 2, 3], m.cache.add_sequence()).shape == (3, 320)
    refused(path, "sliding-window", "n_ctx <= 32", guard=_nothing_loaded_before_the_refusal, n_ctx=33)


def test_neutral_values_are_accepted(tmp_path):
    # keys present with their no-op value, and a stored copy of the standard RoPE frequencies
    path = write_model(str(tmp_path / "neutral.gguf"),
                       kv={".expert_count": 0, ".attention.causal": True, ".rope.scaling.type": "none",
                           ".logit_scale": 1.0},
                       extra_tensors={"blk.0.attn_rot_embd": (8,)})
    m = LlamaModel(path, n_ctx=32)
    assert m.forward([1, 2], m.cache.add_sequence()).shape == (2, 320)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])  # normal and neox pairing
def test_llama3_rope_freqs_run_and_match_the_reference(tmp_path, arch):
    # Llama 3.1/3.2: rope_freqs.weight (1 for fast pairs, 8 for slow ones, interpolated between)
    # divides each pair's frequency; the exact path must match the float64 reference, and the
    # reference without the factors must not (so ignoring them cannot pass).
    path = write_model(str(tmp_path / f"{arch}_rf.gguf"), arch=arch, n_embd=128, wtype="F32",
                       rope_base=500000.0, rope_freqs="llama3")
    m = LlamaModel(path, n_ctx=128, exact=True, kv_dtype="f32")
    f = m.config.rope_freq_factors
    assert f is not None and f.dtype == np.float32 and f.shape == (16,) and f[0] == 1 and f[-1] == 8
    np.testing.assert_array_equal(m.cache.rope_freq_factors, f)
    toks = np.random.default_rng(3).integers(3, 300, size=40).astype(np.int32)
    got = m.forward(toks, m.cache.add_sequence())
    ref = ReferenceModel(GGUFFile(path))
    want = ref.forward(toks)
    assert np.abs(got - want).max() / want.std() < 2e-4
    ref.rope_factors = None
    assert np.abs(got - ref.forward(toks)).max() / want.std() > 1e-2
    # decode step by step (q rotated at each position in attention) agrees with the prefill
    s = m.cache.add_sequence()
    step = np.concatenate([m.forward(toks[i:i + 1], s) for i in range(len(toks))])
    assert np.abs(step - want).max() / want.std() < 2e-4


def test_llama3_rope_freqs_with_context_shift_match_a_fresh_start(tmp_path):
    # A context shift re-rotates the kept keys by -d with the same per-pair frequencies: with one layer
    # (cached K/V depend only on the token and its position) the logits after a shift equal those of a
    # fresh sequence holding the kept tokens (fp32 cache, exact path).
    path = write_model(str(tmp_path / "rf_shift.gguf"), n_embd=128, n_layer=1, wtype="F32", rope_base=500000.0,
                       rope_freqs="llama3")
    m = LlamaModel(path, n_ctx=32, exact=True, kv_dtype="f32", context_shift="shift", n_keep=4)
    toks = np.random.default_rng(5).integers(3, 300, size=33).astype(np.int32)
    s = m.cache.add_sequence()
    m.forward(toks[:32], s)
    last = m.forward(toks[32:], s)  # passes n_ctx: drops (32 - 4) // 2 = 14 tokens after the first 4
    d = m.cache.n_shifted(s)
    assert d == 14
    kept = np.r_[toks[:4], toks[4 + d:]]
    m.cache.remove_sequence(s)  # the budget is n_ctx tokens
    f = m.forward(kept, m.cache.add_sequence())[-1:]
    assert np.abs(last - f).max() / f.std() < 1e-4


def test_all_ones_rope_freqs_equal_none(tmp_path):
    # an all-ones rope_freqs.weight is the standard frequencies: same logits, bit for bit
    a = write_model(str(tmp_path / "ones.gguf"), rope_freqs=np.ones(8, np.float32))
    b = write_model(str(tmp_path / "none.gguf"))
    ma, mb = LlamaModel(a, n_ctx=32), LlamaModel(b, n_ctx=32)
    assert ma.config.rope_freq_factors is None and ma.cache.rope_freq_factors is None
    toks = np.arange(3, 20, dtype=np.int32)
    np.testing.assert_array_equal(ma.forward(toks, ma.cache.add_sequence()), mb.forward(toks, mb.cache.add_sequence()))


def test_linear_rope_scaling_runs_and_matches_the_reference(tmp_path):
    path = write_model(str(tmp_path / "lin.gguf"), wtype="F32",
                       kv={".rope.scaling.type": "linear", ".rope.scaling.factor": 4.0})
    m = LlamaModel(path, n_ctx=64, exact=True, kv_dtype="f32")
    assert m.config.rope_freq_scale == 0.25
    toks = np.arange(3, 24, dtype=np.int32)
    got = m.forward(toks, m.cache.add_sequence())
    want = ReferenceModel(GGUFFile(path)).forward(toks)
    assert np.abs(got - want).max() / want.std() < 2e-4


# -- head_dim from key_length ---------------------------------------------------------------------
@pytest.mark.parametrize("arch,kw", [("llama", {}), ("qwen2", dict(biases=True)), ("qwen3", {}),
                                     ("llama", dict(n_head=6, n_head_kv=2)),   # 64 / 6 is not an integer
                                     ("qwen3", dict(head_dim=8, n_head=4, n_head_kv=1))])  # narrower
def test_head_dim_from_key_length_matches_the_reference(tmp_path, arch, kw):
    kw = dict(dict(head_dim=32, n_head=4, n_head_kv=2), **kw)
    path = write_model(str(tmp_path / f"{arch}.gguf"), arch=arch, **kw)
    m = LlamaModel(path, n_ctx=64, exact=True, kv_dtype="f32")
    assert m.config.head_dim == kw["head_dim"] and m.config.qk_norm == (arch == "qwen3")
    assert m.config.rope_mode == ("normal" if arch == "llama" else "neox")
    toks = np.arange(3, 24, dtype=np.int32)
    got = m.forward(toks, m.cache.add_sequence())
    want = ReferenceModel(GGUFFile(path)).forward(toks)
    assert np.abs(got - want).max() / want.std() < 2e-4


def test_n_embd_not_a_multiple_of_n_head_needs_key_length(tmp_path):
    path = write_model(str(tmp_path / "m.gguf"), n_head=6, n_head_kv=2, head_dim=None, wtype="F32")
    # write_model then writes rope.dimension_count = 64 // 6 = 10 and no key_length
    with pytest.raises(GGUFError, match="not a multiple of n_head=6 and llama.attention.key_length is missing"):
        LlamaConfig.from_gguf(GGUFFile(path))


def test_qwen3_cases_are_in_the_model_matrix():
    assert MODEL_CASES["qwen3_hd32"]["arch"] == "qwen3"
    assert MODEL_CASES["qwen3_hd32"]["n_head"] * MODEL_CASES["qwen3_hd32"]["head_dim"] != 64
