// Standalone check of every matmul tier this build has and this CPU runs, against the ref tier.
// Built natively (x86 tiers) and cross-built for aarch64 and run under qemu-aarch64 (neon tiers) by
// tests/native/run_aarch64_qemu.sh. Exit status 0 when every check passes.
//
// Checks, for each available tier other than ref:
//   1. activation quantization (block_q8a for Q4_0/Q8_0, block_q8k for Q4_K): bytes identical to
//      ref's, on random rows and on special rows (zeros, subnormal blocks, +-inf, NaN, huge values,
//      exact .5 ties);
//   2. matmul (integer path) for every block format over awkward shapes (odd N and M, K from one
//      block up), on random weights and on extreme ones (all-0 / all-1 / 0x80 quant bytes, int8
//      scales of -128, fp16 scales of +-65504, subnormal and zero): every output bit-identical to
//      ref's (every tier computes ref's exact integer sums and ref's fp32 operations in ref's order;
//      two NaNs count as equal whatever their payload); the worst |diff| / sum|terms| is reported;
//   3. the same matmul on 1 and 2 threads, and the tier's gemm called on [0, N) at once and in
//      n_tile pieces: bit-identical outputs;
//   4. where the tier has a packed layout: pack_weights (out of place and in place) keeps the size
//      and matmul on the packed copy gives bit-identical outputs on 1 and 2 threads.
#include <cinttypes>
#include <cstddef>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/fp16.h"
#include "core/threadpool.h"
#include "cpu/dispatch.h"
#include "cpu/q4_matmul.h"
#include "cpu/quant.h"

using namespace xsil;

namespace {

int g_fail = 0, g_checks = 0;

void fail(const std::string& what) {
  ++g_fail;
  if (g_fail <= 30) std::printf("FAIL: %s\n", what.c_str());
}

const char* fmt_name(Fmt f) { return fmt_info(f)->name; }

int64_t act_row_bytes(Fmt fmt, int64_t K) {
  return fmt_is_k_quant(fmt) ? K / QK_K * (int64_t)sizeof(block_q8k) : K / 32 * (int64_t)sizeof(block_q8a);
}

// Random GGUF weight rows: random quant bytes (the full range, Q8_0 including -128), random finite
// fp16 scales.
std::vector<uint8_t> random_weights(Fmt fmt, int64_t N, int64_t K, std::mt19937& rng) {
  const int64_t rb = fmt_row_bytes(fmt, K);
  std::vector<uint8_t> w((size_t)(N * rb));
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> sc(0.001f, 0.05f);
  for (auto& b : w) b = (uint8_t)byte(rng);
  const int bs = fmt_info(fmt)->type_size;
  for (int64_t off = 0; off < N * rb; off += bs) {
    uint16_t d = fp32_to_fp16(sc(rng) * (byte(rng) & 1 ? -1.0f : 1.0f));
    std::memcpy(&w[off + (fmt == Fmt::Q6_K ? offsetof(block_q6_K, d) : 0)], &d, 2);
    if (fmt == Fmt::Q4_K || fmt == Fmt::Q5_K || fmt == Fmt::Q4_1 || fmt == Fmt::Q5_1) {  // dmin / m
      uint16_t dm = fp32_to_fp16(sc(rng));
      std::memcpy(&w[off + 2], &dm, 2);
    }
  }
  return w;
}

// Extreme GGUF weight rows: each block gets one quant-byte pattern (0x00, 0xFF, 0x80, 0x7F or random:
// the largest quants of either sign, Q6_K scales of -128 / 127) and extreme fp16 scales / mins.
std::vector<uint8_t> extreme_weights(Fmt fmt, int64_t N, int64_t K, std::mt19937& rng) {
  std::vector<uint8_t> w = random_weights(fmt, N, K, rng);
  const int bs = fmt_info(fmt)->type_size;
  const uint8_t pats[] = {0x00, 0xFF, 0x80, 0x7F};
  const uint16_t scales[] = {0x7BFF, 0xFBFF, 0x0001, 0x8001, 0x0400, 0x0000, 0x3C00, 0xBC00};  // +-65504, subnormals, min normal, 0, +-1
  std::uniform_int_distribution<int> pick(0, 5), pick_s(0, 9);
  for (size_t off = 0; off < w.size(); off += (size_t)bs) {
    const int p = pick(rng);
    if (p < 4) std::memset(&w[off], pats[p], (size_t)bs);
    const size_t d_off = fmt == Fmt::Q6_K ? offsetof(block_q6_K, d) : 0;
    int ps = pick_s(rng);
    if (ps < 8) std::memcpy(&w[off + d_off], &scales[ps], 2);
    else if (p < 4) { const uint16_t one = 0x2000; std::memcpy(&w[off + d_off], &one, 2); }  // keep the pattern's d finite
    if (fmt == Fmt::Q4_K || fmt == Fmt::Q5_K || fmt == Fmt::Q4_1 || fmt == Fmt::Q5_1) {  // dmin / m
      ps = pick_s(rng);
      const uint16_t m = ps < 8 ? scales[ps] : (uint16_t)0x2000;
      std::memcpy(&w[off + 2], &m, 2);
    }
  }
  return w;
}

std::vector<float> random_acts(int64_t M, int64_t K, std::mt19937& rng) {
  std::vector<float> x((size_t)(M * K));
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  for (int64_t m = 0; m < M; ++m) {
    const float row_scale = std::pow(10.0f, 4.0f * u(rng) - 2.0f);
    for (int64_t k = 0; k < K; ++k) x[m * K + k] = nd(rng) * row_scale;
  }
  return x;
}

// Dequantized activation row (from ref's bytes), to bound the terms of each output.
std::vector<float> deq_act(Fmt fmt, const uint8_t* xq, int64_t K) {
  std::vector<float> r((size_t)K);
  if (fmt_is_k_quant(fmt)) {
    const block_q8k* b = (const block_q8k*)xq;
    for (int64_t i = 0; i < K; ++i) r[i] = b[i / QK_K].d * b[i / QK_K].qs[i % QK_K];
  } else {
    const block_q8a* b = (const block_q8a*)xq;
    for (int64_t i = 0; i < K; ++i) r[i] = b[i / 32].d * b[i / 32].qs[i % 32];
  }
  return r;
}

bool same_bits(const float* a, const float* b, size_t n) { return std::memcmp(a, b, n * sizeof(float)) == 0; }

// --- 1. activation quantization -------------------------------------------------------------
void check_quantize(const MatmulKernels& tk, const MatmulKernels& rk, std::mt19937& rng) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (Fmt fmt : {Fmt::Q4_0, Fmt::Q4_K}) {
    const int64_t K = 1024;  // 32 q8a blocks / 4 q8k blocks
    std::vector<std::vector<float>> rows;
    for (int r = 0; r < 8; ++r) rows.push_back(random_acts(1, K, rng));
    // special rows: each 32-block (q8a) / the whole 256-block (q8k) gets one pattern
    std::vector<float> sp((size_t)K, 0.0f);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (int64_t b = 0; b < K / 32; ++b) {
      float* x = sp.data() + b * 32;
      for (int j = 0; j < 32; ++j) x[j] = nd(rng);
      switch (b % 12) {
        case 0: for (int j = 0; j < 32; ++j) x[j] = 0.0f; break;
        case 1: for (int j = 0; j < 32; ++j) x[j] *= 1e-40f; break;        // subnormal: 1/d overflows
        case 2: for (int j = 0; j < 32; ++j) x[j] *= 3e-38f; break;        // near the normal limit
        case 3: x[5] = inf; break;
        case 4: x[7] = -inf; break;
        case 5: x[9] = nan; break;
        case 6: for (int j = 0; j < 32; ++j) x[j] *= 1e37f; x[3] = 3.4e38f; break;  // huge
        case 7: for (int j = 0; j < 32; ++j) x[j] = (float)((j % 11) - 5) + 0.5f; x[0] = 127.0f; break;  // ties
        case 8: for (int j = 0; j < 32; ++j) x[j] = -0.0f; x[1] = 1e-45f; break;  // smallest subnormal
        case 9: x[0] = nan; x[1] = inf; x[2] = -inf; break;
        case 10: for (int j = 0; j < 32; ++j) x[j] = (float)(j - 16) * 0.5f; x[31] = 63.5f; break;  // ties, d = 0.5
        default: break;
      }
    }
    rows.push_back(sp);
    // a q8k block made only of subnormals / only of one inf
    std::vector<float> sp2((size_t)K);
    for (int64_t i = 0; i < K; ++i) sp2[i] = nd(rng) * (i < 256 ? 1e-41f : 1.0f);
    sp2[300] = inf;
    sp2[600] = nan;
    rows.push_back(sp2);
    const int64_t xb = act_row_bytes(fmt, K);
    const FmtKernels* tf = tk.for_fmt(fmt);
    const FmtKernels* rf = rk.for_fmt(fmt);
    for (size_t r = 0; r < rows.size(); ++r) {
      std::vector<uint8_t> a((size_t)xb, 0xAA), b((size_t)xb, 0x55);
      tf->quantize_act(rows[r].data(), a.data(), K);
      rf->quantize_act(rows[r].data(), b.data(), K);
      ++g_checks;
      if (a != b) {
        size_t at = 0;
        while (a[at] == b[at]) ++at;
        fail(std::string(tier_name(tk.tier)) + " quantize_act(" + (fmt == Fmt::Q4_K ? "q8k" : "q8a") + ") row " +
             std::to_string(r) + ": bytes differ from ref at byte " + std::to_string(at));
      }
    }
  }
}

// --- 2./3. matmul ---------------------------------------------------------------------------------
struct Stats {
  int64_t outputs = 0, exact = 0, packed_cases = 0;
  double worst = 0.0;  // max |diff| / bound
};

void run_matmul(const MatmulKernels& k, Fmt fmt, const std::vector<float>& x, const uint8_t* w, int64_t M, int64_t N,
                int64_t K, int threads, std::vector<float>& y, bool packed = false) {
  MatmulParams p;
  p.x = x.data();
  p.ldx = K;
  p.w = w;
  p.w_packed = packed;
  p.y = y.data();
  p.ldy = N;
  p.M = M;
  p.N = N;
  p.K = K;
  p.fmt = fmt;
  matmul(p, k, threads, false);
}

void check_matmul_case(const MatmulKernels& tk, const MatmulKernels& rk, Fmt fmt, int64_t M, int64_t N, int64_t K,
                       std::mt19937& rng, Stats& st, bool specials, bool extreme = false) {
  const std::string name = std::string(tier_name(tk.tier)) + " " + fmt_name(fmt) + " M=" + std::to_string(M) +
                           " N=" + std::to_string(N) + " K=" + std::to_string(K) + (specials ? " (inf/nan)" : "") +
                           (extreme ? " (extreme)" : "");
  const std::vector<uint8_t> w = extreme ? extreme_weights(fmt, N, K, rng) : random_weights(fmt, N, K, rng);
  std::vector<float> x = random_acts(M, K, rng);
  if (extreme) {  // activation quants of +-127 (constant-magnitude rows), alternating or one sign
    for (int64_t k = 0; k < K; ++k) x[k] = (k & 1) ? -3.0f : 3.0f;
    if (M > 1) for (int64_t k = 0; k < K; ++k) x[K + k] = -1e30f;
    if (M > 2) for (int64_t k = 0; k < K; ++k) x[2 * K + k] = 1e-30f;
  }
  if (specials) {
    x[0] = std::numeric_limits<float>::infinity();
    if (M > 1) x[K + 1] = std::numeric_limits<float>::quiet_NaN();
    if (M > 2) for (int64_t i = 0; i < K; ++i) x[2 * K + i] *= 1e-40f;
  }
  std::vector<float> yr((size_t)(M * N)), y1((size_t)(M * N)), y2((size_t)(M * N)), y3((size_t)(M * N));
  run_matmul(rk, fmt, x, w.data(), M, N, K, 1, yr);
  run_matmul(tk, fmt, x, w.data(), M, N, K, 1, y1);
  run_matmul(tk, fmt, x, w.data(), M, N, K, 2, y2);

  // bound of each output: sum |w_k| |x_k| over the dequantized operands
  const int64_t rb = fmt_row_bytes(fmt, K), xrb = act_row_bytes(fmt, K);
  std::vector<uint8_t> xq((size_t)(M * xrb));
  for (int64_t m = 0; m < M; ++m) rk.for_fmt(fmt)->quantize_act(x.data() + m * K, xq.data() + m * xrb, K);
  std::vector<std::vector<float>> xd;
  for (int64_t m = 0; m < M; ++m) xd.push_back(deq_act(fmt, xq.data() + m * xrb, K));
  std::vector<float> wr((size_t)K);
  int bad = 0;
  for (int64_t n = 0; n < N; ++n) {
    dequantize_row(w.data() + n * rb, wr.data(), K, fmt);
    for (int64_t m = 0; m < M; ++m) {
      double bound = 0.0;
      for (int64_t i = 0; i < K; ++i) bound += std::fabs((double)wr[i] * xd[m][i]);
      const float a = y1[m * N + n], b = yr[m * N + n];
      ++st.outputs;
      if (std::memcmp(&a, &b, 4) == 0) {
        ++st.exact;
        continue;
      }
      if (std::isnan(a) && std::isnan(b)) {
        ++st.exact;
        continue;
      }
      const double diff = std::fabs((double)a - (double)b);
      if (std::isfinite(bound) && bound > 0) st.worst = std::max(st.worst, diff / bound);
      if (bad++ < 3)  // not bit-identical: every tier must be
        fail(name + ": y[" + std::to_string(m) + "," + std::to_string(n) + "] = " + std::to_string(a) +
             ", ref " + std::to_string(b) + " (bound " + std::to_string(bound) + "): not bit-identical");
    }
  }
  ++g_checks;
  ++g_checks;
  if (!same_bits(y1.data(), y2.data(), y1.size())) fail(name + ": 1-thread and 2-thread results differ");

  // strided x and y (ldx = K + 5, ldy = N + 3): same outputs
  {
    const int64_t ldx = K + 5, ldy = N + 3;
    std::vector<float> xs((size_t)(M * ldx), 7.0f), ys((size_t)(M * ldy), -3.0f);
    for (int64_t m = 0; m < M; ++m) std::memcpy(&xs[m * ldx], &x[m * K], (size_t)K * 4);
    MatmulParams p;
    p.x = xs.data();
    p.ldx = ldx;
    p.w = w.data();
    p.y = ys.data();
    p.ldy = ldy;
    p.M = M;
    p.N = N;
    p.K = K;
    p.fmt = fmt;
    matmul(p, tk, 2, false);
    bool ok = true;
    for (int64_t m = 0; m < M; ++m) {
      ok = ok && same_bits(&ys[m * ldy], &y1[m * N], (size_t)N);
      for (int64_t n = N; n < ldy; ++n) ok = ok && ys[m * ldy + n] == -3.0f;
    }
    ++g_checks;
    if (!ok) fail(name + ": strided x/y (ldx, ldy) give other outputs or write past N");
  }

  // gemm on [0, N) at once vs in n_tile pieces (last piece ragged), on the tier's own quantized acts
  const FmtKernels* fk = tk.for_fmt(fmt);
  std::vector<uint8_t> xqt((size_t)(M * xrb));
  for (int64_t m = 0; m < M; ++m) fk->quantize_act(x.data() + m * K, xqt.data() + m * xrb, K);
  GemmArgs a;
  a.xq = xqt.data();
  a.xq_row_bytes = (size_t)xrb;
  a.w = w.data();
  a.w_row_bytes = (size_t)rb;
  a.y = y3.data();
  a.ldy = N;
  a.M = M;
  a.N = N;
  a.K = K;
  std::fill(y3.begin(), y3.end(), -1.0f);
  fk->gemm(a, 0, N);
  std::vector<float> y4((size_t)(M * N), -2.0f);
  a.y = y4.data();
  for (int64_t n0 = 0; n0 < N; n0 += tk.n_tile) fk->gemm(a, n0, std::min(N, n0 + tk.n_tile));
  ++g_checks;
  if (!same_bits(y3.data(), y4.data(), y3.size())) fail(name + ": gemm over [0,N) and in n_tile pieces differ");
  if (!same_bits(y3.data(), y1.data(), y3.size())) fail(name + ": direct gemm and matmul() differ");

  // packed weights (when the tier has a packed layout): same size, bit-identical outputs, in place too
  if (fk->pack) {
    ++st.packed_cases;
    PackedWeights pw;
    if (!pack_weights(w.data(), nullptr, fmt, N, K, tk, 2, &pw)) fail(name + ": pack_weights refused");
    ++g_checks;
    if (pw.nbytes != (int64_t)w.size()) fail(name + ": packed size differs");
    std::vector<float> yp1((size_t)(M * N)), yp2((size_t)(M * N));
    run_matmul(tk, fmt, x, pw.data, M, N, K, 1, yp1, true);
    run_matmul(tk, fmt, x, pw.data, M, N, K, 2, yp2, true);
    ++g_checks;
    if (!same_bits(yp1.data(), y1.data(), y1.size())) fail(name + ": packed result differs from GGUF rows' result");
    if (!same_bits(yp2.data(), y1.data(), y1.size())) fail(name + ": packed 2-thread result differs");
    std::vector<uint8_t> inplace = w;
    PackedWeights pw2;
    pack_weights(inplace.data(), inplace.data(), fmt, N, K, tk, 2, &pw2);
    ++g_checks;
    if (std::memcmp(inplace.data(), pw.data, w.size()) != 0) fail(name + ": in-place packing differs");
  }
}

}  // namespace

int main(int argc, char** argv) {
  unsigned seed = argc > 1 ? (unsigned)std::strtoul(argv[1], nullptr, 10) : 1234u;
  std::mt19937 rng(seed);
  ThreadPool::global().set_num_threads(2);
  const CpuFeatures& f = cpu_features();
  std::string flags;
  for (const auto& s : f.flags) flags += " " + s;
  std::printf("arch %s, flags:%s\n", f.arch.c_str(), flags.c_str());
  const MatmulKernels& rk = matmul_kernels(Tier::Ref);
  int tested = 0;
  for (const TierInfo& t : tiers()) {
    std::printf("tier %-13s %s%s\n", t.name.c_str(), t.available ? "available" : "unavailable: ",
                t.available ? "" : t.reason.c_str());
  }
  for (const TierInfo& t : tiers()) {
    if (!t.available || t.tier == Tier::Ref) continue;
    const MatmulKernels& tk = matmul_kernels(t.tier);
    if (tk.tier != t.tier) {
      fail(t.name + ": matmul_kernels returned the table of tier " + tier_name(tk.tier));
      continue;
    }
    ++tested;
    const int fails0 = g_fail;
    check_quantize(tk, rk, rng);
    for (Fmt fmt : {Fmt::Q4_0, Fmt::Q8_0, Fmt::Q4_K, Fmt::Q4_1, Fmt::Q5_0, Fmt::Q5_1, Fmt::Q5_K, Fmt::Q6_K}) {
      Stats st;
      const int fails1 = g_fail;
      for (int64_t K : {32, 256, 4096}) {
        if (fmt_is_k_quant(fmt) && K < QK_K) continue;
        for (int64_t N : {1, 7, 33, 77})
          for (int64_t M : {1, 3, 17, 64}) check_matmul_case(tk, rk, fmt, M, N, K, rng, st, false);
      }
      check_matmul_case(tk, rk, fmt, 5, 37, 512, rng, st, true);
      check_matmul_case(tk, rk, fmt, 150, 21, 256, rng, st, false);  // M > 64: several M blocks
      for (int64_t N : {1, 6, 13})
        for (int64_t M : {1, 3, 6}) check_matmul_case(tk, rk, fmt, M, N, 512, rng, st, false, true);
      std::printf("  %-13s %-5s %s: %" PRId64 " outputs, %" PRId64 " bit-exact vs ref, worst |diff|/sum|terms| %.3g, %" PRId64
                  " cases also packed\n",
                  t.name.c_str(), fmt_name(fmt), g_fail == fails1 ? "PASS" : "FAIL", st.outputs, st.exact, st.worst,
                  st.packed_cases);
    }
    std::printf("tier %s: %s\n", t.name.c_str(), g_fail == fails0 ? "PASS" : "FAIL");
  }
  if (tested == 0) std::printf("no SIMD matmul tier available here: only ref (nothing compared)\n");
  std::printf("%d checks, %d failures\n", g_checks, g_fail);
  return g_fail ? 1 : 0;
}
