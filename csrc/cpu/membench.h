// Streaming-read probe used by the benchmarks as the memory roofline.
#pragma once
#include <cstdint>

namespace xsil {
// Reads `bytes` (a multiple of 8, 8-byte aligned) once across `threads` (0 = pool); returns a checksum.
uint64_t stream_read(const uint8_t* p, int64_t bytes, int threads);
}  // namespace xsil
