// Times matmul per tier (integer path, GGUF rows and, where the tier packs, packed rows) for a
// GEMV (M = 1, weight streaming) and a GEMM (M = 64). For real hardware: under qemu the numbers
// mean nothing. Prints one line per (tier, format, layout, M): median ms of `reps` calls, weight
// GB/s and GMAC/s.
//   matmul_bench [N] [K] [threads] [reps]      (defaults 4096 4096 0 (= pool size) 20)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "core/fp16.h"
#include "core/threadpool.h"
#include "cpu/dispatch.h"
#include "cpu/q4_matmul.h"

using namespace xsil;

int main(int argc, char** argv) {
  const int64_t N = argc > 1 ? std::atoll(argv[1]) : 4096;
  const int64_t K = argc > 2 ? std::atoll(argv[2]) : 4096;
  const int threads = argc > 3 ? std::atoi(argv[3]) : 0;
  const int reps = argc > 4 ? std::atoi(argv[4]) : 20;
  if (K % 256 != 0 || N < 1 || reps < 1) {
    std::fprintf(stderr, "K must be a multiple of 256\n");
    return 2;
  }
  std::mt19937 rng(1);
  std::uniform_int_distribution<int> byte(0, 255);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::printf("N=%lld K=%lld threads=%d (pool %d) reps=%d\n", (long long)N, (long long)K, threads,
              ThreadPool::global().num_threads(), reps);
  for (Fmt fmt : {Fmt::Q4_0, Fmt::Q8_0, Fmt::Q4_K}) {
    const int64_t rb = fmt_row_bytes(fmt, K);
    std::vector<uint8_t> w((size_t)(N * rb));
    for (auto& b : w) b = (uint8_t)byte(rng);
    const int bs = fmt_info(fmt)->type_size;
    for (int64_t off = 0; off < N * rb; off += bs) {
      const uint16_t d = fp32_to_fp16(0.01f);
      std::memcpy(&w[off], &d, 2);
      if (fmt == Fmt::Q4_K) std::memcpy(&w[off + 2], &d, 2);
    }
    for (int64_t M : {1, 64}) {
      std::vector<float> x((size_t)(M * K)), y((size_t)(M * N));
      for (auto& v : x) v = nd(rng);
      for (const TierInfo& t : tiers()) {
        if (!t.available) continue;
        const MatmulKernels& k = matmul_kernels(t.tier);
        for (int packed = 0; packed < 2; ++packed) {
          PackedWeights pw;
          if (packed && !pack_weights(w.data(), nullptr, fmt, N, K, k, 0, &pw)) continue;
          MatmulParams p;
          p.x = x.data();
          p.ldx = K;
          p.w = packed ? (const void*)pw.data : (const void*)w.data();
          p.w_packed = packed != 0;
          p.y = y.data();
          p.ldy = N;
          p.M = M;
          p.N = N;
          p.K = K;
          p.fmt = fmt;
          matmul(p, k, threads, false);  // warm-up
          std::vector<double> ms;
          for (int r = 0; r < reps; ++r) {
            const auto t0 = std::chrono::steady_clock::now();
            matmul(p, k, threads, false);
            ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
          }
          std::sort(ms.begin(), ms.end());
          const double med = ms[ms.size() / 2];
          std::printf("%-13s %-5s %-6s M=%-3lld %9.3f ms  %7.2f GB/s weights  %8.2f GMAC/s\n", t.name.c_str(),
                      fmt_info(fmt)->name, packed ? "packed" : "gguf", (long long)M, med,
                      (double)w.size() / (med * 1e6), (double)M * N * K / (med * 1e6));
        }
      }
    }
  }
  return 0;
}
