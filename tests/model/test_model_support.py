"""What xsil runs and what it refuses. Small files written with gguf-py's GGUFWriter: every
architecture other than llama / qwen2 / qwen3, and every llama-family feature the forward does not
compute (experts, extra tensors, YaRN / longrope / llama3 frequency factors, softcapping, ...), must
raise GGUFError naming it and the supported list, from the metadata alone (before the tokenizer,
the weights or the native model are touched). head_dim != n_embd / n_head runs (llama, qwen2,
qwen3) and matches the float64 reference."""

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
    "llama3_rope_freqs": (dict(extra_tensors={"rope_freqs.weight": (8,)}), ["rope_freqs.weight", "frequency factors"]),
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
    # keys present with their no-op value, and an all-ones rope_freqs (the standard frequencies)
    path = write_model(str(tmp_path / "neutral.gguf"),
                       kv={".expert_count": 0, ".attention.causal": True, ".rope.scaling.type": "none",
                           ".logit_scale": 1.0},
                       extra_tensors={"blk.0.attn_rot_embd": (8,)})
    m = LlamaModel(path, n_ctx=32)
    assert m.forward([1, 2], m.cache.add_sequence()).shape == (2, 320)


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
