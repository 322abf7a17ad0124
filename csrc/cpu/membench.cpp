// Streaming-read probe for the benchmarks' roofline: sums a buffer as 64-bit words over threads.
#include "cpu/membench.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/threadpool.h"

namespace xsil {

uint64_t stream_read(const uint8_t* p, int64_t bytes, int threads) {
  ThreadPool& pool = ThreadPool::global();
  const int nthr = threads == 0 ? pool.num_threads() : std::min(threads, pool.num_threads());
  const int64_t chunk = 1 << 20;
  const int64_t n_chunks = (bytes + chunk - 1) / chunk;
  std::vector<uint64_t> part((size_t)n_chunks, 0);
  pool.parallel_for(n_chunks, nthr, [&](int64_t c, int) {
    const int64_t b0 = c * chunk, b1 = std::min(bytes, b0 + chunk);
    const uint64_t* w = (const uint64_t*)(p + b0);
    const int64_t n = (b1 - b0) / 8;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
      s0 += w[i]; s1 += w[i + 1]; s2 += w[i + 2]; s3 += w[i + 3];
      s4 += w[i + 4]; s5 += w[i + 5]; s6 += w[i + 6]; s7 += w[i + 7];
    }
    for (; i < n; ++i) s0 += w[i];
    part[c] = s0 + s1 + s2 + s3 + s4 + s5 + s6 + s7;
  });
  uint64_t s = 0;
  for (uint64_t v : part) s += v;
  return s;
}

}  // namespace xsil
