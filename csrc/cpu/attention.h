// Attention over the paged KV cache: decode (one query per sequence) and causal prefill, both with
// an online softmax (one pass over K/V, no score matrix of the whole context). The drivers here
// validate, apply RoPE to the queries, split the work over threads (heads, query tiles and, for long
// contexts, pages: split-K with a final reduction) and call the tier's span kernel per page.
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

// Validation (throws std::invalid_argument "[attention_decode] ..." / "[attention_prefill] ...").
void check_attention_decode(const AttnDecodeParams& p, int threads);
void check_attention_prefill(const AttnPrefillParams& p, int threads);

// out = softmax(q k^T * scale) v per head, GQA head h reading KV head h / (n_heads / n_kv_heads).
// threads: 0 = the pool size. Both validate first.
void attention_decode(const AttnDecodeParams& p, const AttentionKernels& k, int threads);
void attention_prefill(const AttnPrefillParams& p, const AttentionKernels& k, int threads);

}  // namespace xsil
