// Attention over the paged KV cache: decode (one query per sequence) and causal prefill, both with
// an online softmax (one pass over K/V, no score matrix of the whole context). The drivers here
// validate, apply RoPE to the queries, split the work over threads (heads, query tiles and, for long
// contexts, pages: split-K with a final reduction) and call the tier's span kernel per page.
//
// Use from a model's layer loop (no Python in between), for one decode step of sequence `seq`:
//   const int64_t pos = cache.reserve(seq, 1);          // once per step: pages, COW, context shift
//   const AttentionKernels& ak = attention_kernels(default_tier());
//   for (int l = 0; l < n_layers; ++l) {
//     ... q, k, v = projections of layer l (fp32, not rotated) ...
//     KVWriteParams w; w.layer = l; w.seq_id = seq; w.pos0 = pos; w.n_tokens = 1; w.k = k; w.v = v;
//     cache.write(w);                                   // rotates K at pos, stores f32/f16/Q8_0
//     AttnDecodeParams a; a.cache = &cache; a.layer = l; a.n_seqs = 1; a.seq_ids = &seq;
//     a.n_heads = n_heads; a.q = q; a.out = attn_out;   // q rotated at pos inside
//     attention_decode(a, ak, n_threads);
//   }
// Prefill is the same with reserve(seq, n), n_tokens = n and attention_prefill (n_q = n).
#pragma once
#include <cstdint>

#include "cpu/dispatch.h"
#include "cpu/kv_cache.h"
#include "xsil/params.h"

namespace xsil {

// --- The attention family's per-tier table ------------------------------------------------------
// Updates the online-softmax state of args.rows query rows with one span of cached tokens.
using AttnSpanFn = void (*)(const AttnSpanArgs& a);

struct AttentionKernels {
  Tier tier = Tier::Ref;
  AttnSpanFn span = nullptr;
  // Floats of scratch a span needs (64-byte aligned buffer).
  static int64_t scratch_floats(int64_t rows, int64_t n, int64_t head_dim) {
    return 2 * n * head_dim + rows * ((n + 15) / 16 * 16) + 64;
  }
};

const AttentionKernels& attention_kernels(Tier t);
const AttentionKernels& attention_kernels_ref();
#if defined(XSIL_X86_TIERS)
const AttentionKernels& attention_kernels_avx2();
const AttentionKernels& attention_kernels_avx512();
#endif
#if defined(XSIL_ARM_TIERS)
// One NEON table for both aarch64 tiers (its tier field says which was asked for).
const AttentionKernels& attention_kernels_neon(bool dotprod);
#endif

// Validation (throws std::invalid_argument "[attention_decode] ..." / "[attention_prefill] ...").
void check_attention_decode(const AttnDecodeParams& p, int threads);
void check_attention_prefill(const AttnPrefillParams& p, int threads);

// out = softmax(q k^T * scale) v per head, GQA head h reading KV head h / (n_heads / n_kv_heads).
// threads: 0 = the pool size. Both validate first.
void attention_decode(const AttnDecodeParams& p, const AttentionKernels& k, int threads);
void attention_prefill(const AttnPrefillParams& p, const AttentionKernels& k, int threads);

}  // namespace xsil
