#include "cpu/q4_matmul.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "core/threadpool.h"
#include "cpu/quant.h"

namespace xsil {

namespace {
std::string str(int64_t v) { return std::to_string(v); }

int64_t act_row_bytes(Fmt fmt, int64_t K) {
  return fmt_is_k_quant(fmt) ? K / QK_K * (int64_t)sizeof(block_q8k) : K / 32 * (int64_t)sizeof(block_q8a);
}

// 64-byte aligned scratch, reused by the calling thread across calls (grows, never shrinks).
uint8_t* scratch(size_t bytes) {
  thread_local std::unique_ptr<uint8_t, void (*)(void*)> buf(nullptr, std::free);
  thread_local size_t cap = 0;
  if (bytes > cap) {
    size_t n = (bytes + 63) & ~(size_t)63;
    void* p = std::aligned_alloc(64, n);
    if (!p) throw std::bad_alloc();
    buf.reset((uint8_t*)p);
    cap = n;
  }
  return buf.get();
}
}  // namespace

int64_t fmt_row_bytes(Fmt fmt, int64_t K) {
  const FmtInfo* fi = fmt_info(fmt);
  return K / fi->block_size * fi->type_size;
}

Fmt parse_fmt(const std::string& name, const char* op, bool allow_no_quantizer) {
  std::string u;
  for (char c : name) u += (char)std::toupper((unsigned char)c);
  for (Fmt f : {Fmt::Q4_0, Fmt::Q4_1, Fmt::Q5_0, Fmt::Q5_1, Fmt::Q8_0, Fmt::Q4_K, Fmt::Q5_K, Fmt::Q6_K})
    if (u == fmt_info(f)->name && (allow_no_quantizer || fmt_has_quantizer(f))) return f;
  throw std::invalid_argument(std::string("[") + op + "] unsupported format '" + name + "'; expected one of " +
                              (allow_no_quantizer ? kBlockFormatList : "Q4_0, Q4_1, Q5_0, Q5_1, Q8_0"));
}

void check_matmul(const MatmulParams& p, int64_t w_bytes, int threads) {
  const FmtInfo* fi = fmt_info(p.fmt);
  if (!fi)
    throw std::invalid_argument("[matmul] unsupported weight format id " + str((int)p.fmt) + "; expected one of " +
                                kBlockFormatList);
  if (p.M < 1) throw std::invalid_argument("[matmul] M=" + str(p.M) + " must be >= 1");
  if (p.N < 1) throw std::invalid_argument("[matmul] N=" + str(p.N) + " must be >= 1");
  if (p.K < 1) throw std::invalid_argument("[matmul] K=" + str(p.K) + " must be >= 1");
  if (p.K % fi->block_size != 0)
    throw std::invalid_argument("[matmul] K=" + str(p.K) + " is not a multiple of the " + fi->name +
                                " block size " + str(fi->block_size));
  if (p.ldx < p.K) throw std::invalid_argument("[matmul] x row stride " + str(p.ldx) + " < K=" + str(p.K));
  if (p.ldy < p.N) throw std::invalid_argument("[matmul] y row stride " + str(p.ldy) + " < N=" + str(p.N));
  // N * row_bytes must not overflow and must match the buffer.
  const int64_t rb = fmt_row_bytes(p.fmt, p.K);
  if (p.N > INT64_MAX / rb) throw std::invalid_argument("[matmul] N=" + str(p.N) + " is too large");
  if (w_bytes != p.N * rb)
    throw std::invalid_argument("[matmul] weight buffer has " + str(w_bytes) + " bytes; N=" + str(p.N) + " rows of K=" +
                                str(p.K) + " in " + fi->name + " need " + str(p.N * rb));
  if (threads < 0 || threads > 1024)
    throw std::invalid_argument("[matmul] threads=" + str(threads) + " is out of range [1, 1024]");
  if (!p.x || !p.w) throw std::invalid_argument("[matmul] null input buffer");
}

const MatmulKernels& matmul_kernels(Tier t) {
  switch (t) {
#if defined(XSIL_X86_TIERS)
    case Tier::Avx2: return matmul_kernels_avx2();
    case Tier::Avx512: return matmul_kernels_avx512(cpu_features().avx512vnni);
#endif
#if defined(XSIL_ARM_TIERS)
    case Tier::Neon: return matmul_kernels_neon(false);
    case Tier::NeonDotprod: return matmul_kernels_neon(true);
#endif
    default: return matmul_kernels_ref();
  }
}

void matmul(const MatmulParams& p, const MatmulKernels& k, int threads, bool exact) {
  ThreadPool& pool = ThreadPool::global();
  const int64_t rb = fmt_row_bytes(p.fmt, p.K);

  if (exact) {
    if (p.w_packed) throw std::invalid_argument("[matmul] the exact path reads GGUF rows, not packed weights");
    const int64_t tile = 16;
    const int64_t n_tasks = (p.N + tile - 1) / tile;
    const int n_thr = threads == 0 ? pool.num_threads() : std::min(threads, pool.num_threads());
    std::vector<std::vector<float>> rows(std::max(n_thr, 1), std::vector<float>(p.K));
    pool.parallel_for(n_tasks, threads, [&](int64_t t, int th) {
      float* wr = rows[th].data();
      const int64_t n1 = std::min(p.N, (t + 1) * tile);
      for (int64_t n = t * tile; n < n1; ++n) {
        dequantize_row((const uint8_t*)p.w + n * rb, wr, p.K, p.fmt);
        for (int64_t m = 0; m < p.M; ++m) {
          const float* xr = p.x + m * p.ldx;
          float acc = 0.0f;
          for (int64_t i = 0; i < p.K; ++i) acc += xr[i] * wr[i];
          p.y[m * p.ldy + n] = acc;
        }
      }
    });
    return;
  }

  const FmtKernels* fk = k.for_fmt(p.fmt);
  if (!fk)
    throw std::invalid_argument(std::string("[matmul] unsupported weight format id ") + str((int)p.fmt) +
                                "; expected one of " + kBlockFormatList);
  const GemmFn gemm = p.w_packed ? fk->gemm_packed : fk->gemm;
  if (!gemm)
    throw std::invalid_argument(std::string("[matmul] tier '") + tier_name(k.tier) + "' has no kernel for this layout");

  // 1. Quantize each activation row once.
  const int64_t xrb = act_row_bytes(p.fmt, p.K);
  uint8_t* xq = scratch((size_t)(p.M * xrb));
  pool.parallel_for(p.M, threads, [&](int64_t m, int) { fk->quantize_act(p.x + m * p.ldx, xq + m * xrb, p.K); });

  // 2. Tile the output: N in chunks of whole n_tiles, M in blocks, so both threads get work for a
  // GEMV (split N) and a GEMM keeps a weight chunk hot in cache while it walks an M block.
  const int64_t nt = k.n_tile;
  const int n_thr = threads == 0 ? pool.num_threads() : std::min(threads, pool.num_threads());
  const int64_t m_block = p.M <= 64 ? p.M : 64;
  const int64_t m_blocks = (p.M + m_block - 1) / m_block;
  // Enough N chunks per M block that dynamic scheduling balances (>= 4 per thread overall).
  const int64_t n_tiles = (p.N + nt - 1) / nt;
  int64_t want_chunks = std::max<int64_t>(1, (4 * (int64_t)n_thr + m_blocks - 1) / m_blocks);
  int64_t tiles_per_chunk = std::max<int64_t>(1, n_tiles / want_chunks);
  // Bound the weight bytes of a chunk so it stays in L2 while the M block streams past it.
  const int64_t max_tiles_l2 = std::max<int64_t>(1, (512 * 1024) / std::max<int64_t>(1, nt * rb));
  if (m_blocks > 1) tiles_per_chunk = std::min(tiles_per_chunk, max_tiles_l2);
  const int64_t chunk = tiles_per_chunk * nt;
  const int64_t n_chunks = (p.N + chunk - 1) / chunk;

  GemmArgs base;
  base.xq = xq;
  base.xq_row_bytes = (size_t)xrb;
  base.w = p.w;
  base.w_packed = p.w_packed;
  base.w_row_bytes = (size_t)rb;
  base.y = p.y;
  base.ldy = p.ldy;
  base.N = p.N;
  base.K = p.K;
  pool.parallel_for(n_chunks * m_blocks, threads, [&](int64_t t, int) {
    const int64_t mb = t / n_chunks, nc = t % n_chunks;
    GemmArgs a = base;
    const int64_t m0 = mb * m_block;
    a.M = std::min(m_block, p.M - m0);
    a.xq = xq + m0 * xrb;
    a.y = p.y + m0 * p.ldy;
    const int64_t n0 = nc * chunk;
    const int64_t n1 = std::min(p.N, n0 + chunk);
    gemm(a, n0, n1);
  });
}

bool pack_weights(const void* src, uint8_t* dst, Fmt fmt, int64_t N, int64_t K, const MatmulKernels& k, int threads,
                  PackedWeights* out) {
  const FmtKernels* fk = k.for_fmt(fmt);
  if (!fk || !fk->pack) return false;
  const int64_t rb = fmt_row_bytes(fmt, K);
  const int64_t total = N * rb;
  const int64_t g = fk->pack_rows;
  const int64_t n_groups = (N + g - 1) / g;
  PackedWeights pw;
  pw.tier = k.tier;
  pw.fmt = fmt;
  pw.N = N;
  pw.K = K;
  pw.nbytes = total;
  if (dst) {
    pw.data = dst;
  } else {
    void* p = std::aligned_alloc(64, (size_t)((total + 63) & ~(int64_t)63));
    if (!p) throw std::bad_alloc();
    pw.owner.reset((uint8_t*)p, std::free);
    pw.data = pw.owner.get();
  }
  const bool in_place = (const void*)pw.data == src;
  ThreadPool::global().parallel_for(n_groups, threads, [&](int64_t gi, int) {
    const int64_t r0 = gi * g;
    const int64_t nr = std::min(g, N - r0);
    const uint8_t* s = (const uint8_t*)src + r0 * rb;
    uint8_t* d = pw.data + r0 * rb;
    if (in_place) {
      uint8_t* tmp = scratch((size_t)(nr * rb));
      std::memcpy(tmp, s, (size_t)(nr * rb));
      fk->pack(tmp, d, nr, K);
    } else {
      fk->pack(s, d, nr, K);
    }
  });
  *out = std::move(pw);
  return true;
}

}  // namespace xsil
