// Plain parameter structs, one per kernel family. Drivers fill them; ISA kernels read them.
// CPU and CUDA kernels take the same structs.
#pragma once
#include <cstddef>
#include <cstdint>

#include "xsil/blocks.h"

namespace xsil {

// y[M, N] = x[M, K] . W[N, K]^T with W in a block format.
struct MatmulParams {
  const float* x = nullptr;   // activations, M rows of K floats, row stride ldx (elements)
  int64_t ldx = 0;
  const void* w = nullptr;    // weights: N rows of K / block_size blocks (GGUF layout), or a packed layout
  bool w_packed = false;      // true when w was produced by the tier's pack() (layout owned by that tier)
  float* y = nullptr;         // output, M rows of N floats, row stride ldy (elements)
  int64_t ldy = 0;
  int64_t M = 0, N = 0, K = 0;
  Fmt fmt = Fmt::Q4_0;
};

// Arguments of an ISA GEMM kernel on the integer path: activations were already quantized to the
// activation block format of `fmt` (block_q8a for Q4_0/Q8_0, block_q8k for Q4_K).
struct GemmArgs {
  const void* xq = nullptr;   // M rows of quantized activations
  size_t xq_row_bytes = 0;    // bytes per quantized activation row
  const void* w = nullptr;    // weights (GGUF rows, or the tier's packed layout when w_packed)
  bool w_packed = false;
  size_t w_row_bytes = 0;     // bytes per GGUF weight row (K / block_size * type_size)
  float* y = nullptr;         // output rows, stride ldy
  int64_t ldy = 0;
  int64_t M = 0, N = 0, K = 0;
};

}  // namespace xsil

// --- KV cache and attention ---------------------------------------------------------------------
namespace xsil {

class KVCache;  // cpu/kv_cache.h

// Storage type of cached K or V rows; values are the GGML type ids.
enum class KVDtype : int32_t { F32 = 0, F16 = 1, Q8_0 = 8 };

// RoPE convention. Normal (ggml mode 0, Llama in GGUF): rotates adjacent pairs (x[2i], x[2i+1]).
// Neox (ggml mode 2, Qwen2, GPT-NeoX): rotates (x[i], x[i + d/2]). None: no rotation.
// Pair i is rotated by theta_i = pos * freq_scale * freq_base^(-2i/d) / freq_factors[i], d = head_dim
// (freq_factors[i] = 1 when there are none).
enum class RopeMode : int32_t { None = -1, Normal = 0, Neox = 2 };

struct RopeParams {
  RopeMode mode = RopeMode::Normal;  // pairing convention (or None)
  float freq_base = 10000.0f;        // base of the per-pair frequencies (rope_freq_base)
  float freq_scale = 1.0f;           // linear position scaling (rope_freq_scale; 1 = none)
  // Optional per-pair frequency factors (GGUF tensor rope_freqs.weight, Llama 3.1/3.2 rope scaling):
  // n_freq_factors == head_dim / 2 finite values > 0; pair i's angle is DIVIDED by freq_factors[i]
  // for either pairing (ggml's rope divides theta by its "freq_factors" operand, and llama.cpp's
  // converter stores Meta's llama3 scaling as factor = 1 for high-frequency pairs, the scaling
  // factor for low-frequency ones). nullptr (n_freq_factors 0) = all ones.
  // A host pointer the RopeParams does NOT own: whoever fills it keeps the array alive while the
  // struct is used. A KVCache (KVPages) copies the factors at construction and its params().rope
  // points at that copy, so a model or caller may drop its own array afterwards. CUDA kernels never
  // read this pointer: they take a device copy as a separate argument.
  const float* freq_factors = nullptr;
  int32_t n_freq_factors = 0;
};

// What a sequence does when it would grow past its limit (n_ctx, or the pool running dry).
enum class ShiftPolicy : int32_t {
  Error = 0,  // raise; nothing is changed
  Shift = 1,  // drop the oldest tokens after the first n_keep and re-rotate the kept keys
};

// Creation parameters of a KVCache (one object holds every layer).
struct KVCacheParams {
  int32_t n_layers = 1;        // layers held; a page stores page_size tokens for all layers
  int32_t n_kv_heads = 1;      // K/V heads per layer
  int32_t head_dim = 64;       // elements per head (even; a multiple of 32 for Q8_0)
  int32_t page_size = 16;      // tokens per page
  KVDtype k_dtype = KVDtype::F16;  // storage of K rows
  KVDtype v_dtype = KVDtype::F16;  // storage of V rows
  int64_t budget_bytes = 0;    // pool size in bytes (rounded down to whole pages); 0: use budget_tokens
  int64_t budget_tokens = 0;   // pool size in tokens (rounded down to whole pages) when budget_bytes == 0
  int64_t n_ctx = 0;           // per-sequence limit in tokens; 0 = the whole budget
  ShiftPolicy shift = ShiftPolicy::Error;  // policy when a sequence reaches its limit
  int32_t n_keep = 0;          // tokens at the start of a sequence a shift never drops
  RopeParams rope;             // rotation applied to K when written and to Q when attending
};

// Write K and V of n_tokens consecutive positions [pos0, pos0 + n_tokens) of one sequence for one
// layer. The positions must have been reserved (KVCache::reserve) and lie below the sequence length.
struct KVWriteParams {
  int32_t layer = 0;           // layer index in [0, n_layers)
  int32_t seq_id = 0;          // sequence id from add_sequence / fork
  int64_t pos0 = 0;            // first position written
  int32_t n_tokens = 0;        // tokens written
  const float* k = nullptr;    // [n_tokens][n_kv_heads][head_dim] fp32, not yet rotated (unless k_rotated)
  const float* v = nullptr;    // [n_tokens][n_kv_heads][head_dim] fp32
  bool k_rotated = false;      // true: k already has RoPE applied, store as is
};

// Decode attention: one query token per sequence (the sequence's last position) over all of its
// cached tokens.
struct AttnDecodeParams {
  const KVCache* cache = nullptr;  // the cache holding the sequences
  int32_t layer = 0;           // layer index
  int32_t n_seqs = 0;          // number of sequences (queries)
  const int32_t* seq_ids = nullptr;  // [n_seqs] distinct sequence ids, each of length >= 1
  int32_t n_heads = 0;         // query heads (a multiple of n_kv_heads; GQA group = n_heads / n_kv_heads)
  const float* q = nullptr;    // [n_seqs][n_heads][head_dim] fp32 queries
  bool q_rotated = false;      // false: RoPE is applied to q at position length - 1
  float scale = 0.0f;          // softmax scale; 0 = 1 / sqrt(head_dim)
  float* out = nullptr;        // [n_seqs][n_heads][head_dim] fp32 output
};

// Prefill attention: the last n_q positions of one sequence (already written to the cache) attend
// causally to every cached token at or before their own position.
struct AttnPrefillParams {
  const KVCache* cache = nullptr;  // the cache holding the sequence
  int32_t layer = 0;           // layer index
  int32_t seq_id = 0;          // sequence id
  int32_t n_q = 0;             // query tokens: positions [length - n_q, length)
  int32_t n_heads = 0;         // query heads (a multiple of n_kv_heads)
  const float* q = nullptr;    // [n_q][n_heads][head_dim] fp32 queries
  bool q_rotated = false;      // false: RoPE is applied to each query at its position
  float scale = 0.0f;          // softmax scale; 0 = 1 / sqrt(head_dim)
  float* out = nullptr;        // [n_q][n_heads][head_dim] fp32 output
};

// One span of an attention kernel (an ISA tier's inner loop): `rows` query rows against n cached
// tokens of one KV head, updating an online-softmax state. Row j sees the first n_valid[j] tokens.
struct AttnSpanArgs {
  const float* q = nullptr;    // [rows][head_dim], rotated and pre-multiplied by the scale
  int32_t rows = 0;            // query rows (GQA heads x query tokens)
  const int32_t* n_valid = nullptr;  // [rows] visible prefix of the n tokens (0..n)
  const uint8_t* k = nullptr;  // n K rows, k_row_bytes apart
  const uint8_t* v = nullptr;  // n V rows, v_row_bytes apart
  int32_t n = 0;               // tokens in the span (<= page_size)
  int32_t head_dim = 0;
  KVDtype k_dtype = KVDtype::F32, v_dtype = KVDtype::F32;
  int64_t k_row_bytes = 0, v_row_bytes = 0;
  float* m = nullptr;          // [rows] running max of scores (-inf initially)
  float* l = nullptr;          // [rows] running sum of exp(score - m) (0 initially)
  float* acc = nullptr;        // [rows][head_dim] running sum of exp(score - m) * v (0 initially)
  float* scratch = nullptr;    // >= 2 * n * head_dim + rows * n floats, 64-byte aligned
};

}  // namespace xsil
