// xsil CUDA kernels: host-side launchers (plain C++ declarations, callable from .cpp files).
// Every pointer is a device pointer unless named host_*. Every launcher validates its sizes
// (std::invalid_argument) and turns a launch error into std::runtime_error naming the kernel.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "xsil/blocks.h"
#include "xsil/params.h"

namespace xsil::cuda {

// Throws std::runtime_error("[cuda:<what>] <name>: <message>") when e is an error.
inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("[cuda:") + what + "] " + cudaGetErrorName(e) + ": " +
                             cudaGetErrorString(e));
}
// cudaMalloc of `bytes` for `what`; when the device is out of memory the error says how much was
// asked for, how much is free and what to do (`advice`).
inline void* device_alloc(size_t bytes, const char* what, const char* advice) {
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, bytes < 16 ? 16 : bytes);
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // clear
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    throw std::runtime_error(std::string("[cuda] out of device memory: ") + what + " needs " +
                             std::to_string(bytes >> 20) + " MiB, " + std::to_string(free_b >> 20) + " MiB of " +
                             std::to_string(total_b >> 20) + " MiB are free; " + advice);
  }
  check(e, what);
  return p;
}
// After a launch: reports a bad configuration at once (not on the next synchronizing call).
inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

// Device-side weight layout of a block-quantized matrix W[N, K] (repacked once at upload from
// GGUF rows into structure-of-arrays so every quant load is an aligned 16-byte (or 8-byte) load):
//   Q4_0: qs = N * K/2 bytes (row n, block b: 16 bytes at (n * K/32 + b) * 16, GGUF nibble order),
//         d  = N * K/32 fp16 scales.
//   Q8_0: qs = N * K bytes (32 per block), d = N * K/32 fp16.
//   Q4_K: qs = N * K/2 bytes (row n, super-block i: the 128 GGUF nibble bytes at (n * K/256 + i) * 128),
//         d  = N * K/256 records of 20 bytes {fp16 d, fp16 dmin, uint8 sc[8], uint8 m[8]} (the 6-bit
//         sub-block scales and mins unpacked at upload), so a sub-block's (d*sc, dmin*m) is 2 byte loads.
// The formats below store, per 32-element block, its 32 low nibbles as 16 bytes in "nibble order"
// (byte l: element l in bits 0-3, element 16 + l in bits 4-7; GGUF's Q4_0/Q4_1/Q5_x order) and the
// remaining high bits in "plane order": a 32-bit word per bit plane p and half h (elements 16h..16h+15),
// element 16h + 4i + k (i, k in 0..3) at bit 8k + i of the word, so that (word >> i) & 0x01010101
// lines up, byte for byte, with the nibble word of elements 16h + 4i .. 16h + 4i + 3:
//   5-bit (Q5_0, Q5_1, Q5_K): one uint32 per block, bit 8k + 4h + i (the two halves' planes interleaved).
//   6-bit (Q6_K): two uint32 per block (half 0, half 1), bits 8k + 2i, 8k + 2i + 1 (a 2-bit field).
//   Q4_1: qs = N * K/2 (16 nibble bytes per block, the GGUF bytes), d = N * K/32 x {fp16 d, fp16 m}.
//   Q5_0: qs = N * K/2 (as Q4_1), d = N * K/32 x 8 bytes {uint32 5th bits, fp16 d, fp16 0}.
//   Q5_1: qs = N * K/2 (as Q4_1), d = N * K/32 x 8 bytes {uint32 5th bits, fp16 d, fp16 m}.
//   Q5_K: qs = N * K/256 x 160 bytes per super-block: 8 sub-blocks x 16 nibble bytes, then 8 x uint32
//         5th bits; d = N * K/256 records of 20 bytes, exactly as Q4_K.
//   Q6_K: qs = N * K/256 x 192 bytes per super-block: 8 blocks of 32 x 16 nibble bytes (the low 4 bits
//         of q), then 8 x 8 bytes of high 2 bits (6-bit plane order); d = N * K/256 records of 18
//         bytes {fp16 d, int8 sc[16]} (scale of sub-block s of 16 elements at byte 2 + s).
//   F16 / F32: dense rows, qs = the data, d unused.
// Every part is laid out row after row, so the rows of several matrices repacked one after another
// form the repack of the stacked matrix (QKV, gate|up).
constexpr int kQ4KRecord = 20;  // bytes of a Q4_K / Q5_K super-block record in DevMatrix::d
constexpr int kQ6KRecord = 18;  // bytes of a Q6_K super-block record in DevMatrix::d
constexpr int kQ5KBytes = 160;  // DevMatrix::qs bytes of a Q5_K super-block
constexpr int kQ6KBytes = 192;  // DevMatrix::qs bytes of a Q6_K super-block
// Weight types the CUDA backend takes (matmul, get_rows, the model), for messages.
constexpr const char* kCudaTypeList = "F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K";
// True for the types above.
bool cuda_supports(Fmt f);
// Block-quantized types: their matmuls read the q8a activations.
bool cuda_block_quant(Fmt f);
// Types with a tensor-core (mma.sync) prefill GEMM (every block-quantized type; the dispatcher falls
// back to the dp4a GEMM for a type without one).
bool cuda_has_mma(Fmt f);
const char* cuda_fmt_name(Fmt f);
struct DevMatrix {
  Fmt fmt = Fmt::F32;
  int64_t N = 0, K = 0;
  const void* qs = nullptr;
  const uint16_t* d = nullptr;
};
// Bytes of each part for a format (throws for unsupported formats / K not a multiple of 32).
void dev_matrix_sizes(Fmt fmt, int64_t N, int64_t K, size_t* qs_bytes, size_t* d_bytes);
// Host-side repack of GGUF rows (host_src, N rows) into the SoA layout (host_qs / host_d).
void repack_host(Fmt fmt, const void* host_src, int64_t N, int64_t K, void* host_qs, uint16_t* host_d);

// Quantized activations (block_q8a semantics, SoA): qs [M][K] int8, d/s [M][K/32] fp32.
struct DevQ8a {
  int8_t* qs = nullptr;
  float* d = nullptr;
  float* s = nullptr;
};
// x[M][K] fp32 -> q8a: d = amax/127, q = round(x/d) (half away from zero), s = d * sum(q).
void quantize_q8a(const float* x, DevQ8a xq, int64_t M, int64_t K, cudaStream_t st);

// Output of a matmul whose weight rows are several matrices stacked at upload (Q|K|V, gate|up):
// rows [n0[s], n0[s+1]) go to y[s], a dense [M][n0[s+1] - n0[s]] array. One segment = plain y[M][N].
struct SplitOut {
  float* y[3] = {nullptr, nullptr, nullptr};
  int n0[4] = {0, 0, 0, 0};
  int segs = 1;
};

// y[M][N] = x[M][K] . W^T. Block-quantized weights use the quantized activations xq (integer __dp4a dots);
// F16/F32 read x. M == 1 runs the decode GEMV; M > 1 the shared-memory-tiled GEMM (Q4_0/Q8_0:
// 8 weight rows x 16 activation rows per CTA) or the register-tiled dense kernel (F16/F32).
// Q4_K uses the same per-32 activations (its 32-element sub-blocks line up with the q8a blocks):
// y += (d*sc) * d8 * dot(q4, q8) - (dmin*m) * s8 per sub-block. So do Q5_K (the same with 5-bit q),
// Q4_1 / Q5_1 (d * d8 * dot(q, q8) + m * s8), Q5_0 (d * (d8 * dot(q, q8) - 16 * s8)) and Q6_K (two
// sub-blocks of 16 per activation block: d * d8 * (sc0 * dot(q - 32, q8)[0:16] + sc1 * dot[16:32]), the
// int32 combination exact).
// path: Auto picks the tensor-core GEMM (GemmPath::Mma) for quantized weights when M >= mma_min_m()
// and mma_enabled_for(w.fmt), else the __dp4a kernels; Dp4a / Mma force one (tests, bench, self-check).
enum class GemmPath { Auto, Dp4a, Mma };
void matmul(const DevMatrix& w, const float* x, DevQ8a xq, float* y, int64_t M, cudaStream_t st,
            GemmPath path = GemmPath::Auto);
void matmul_split(const DevMatrix& w, const float* x, DevQ8a xq, const SplitOut& out, int64_t M, cudaStream_t st,
                  GemmPath path = GemmPath::Auto);

// Tensor-core prefill GEMM (int8 mma.sync m16n8k32, the types of cuda_has_mma(), compute capability >= 8.0).
// Process-wide switch: on by default unless XSIL_CUDA_MMA=0; mma_status() says why it is off. A
// format whose self-check failed stays on the dp4a GEMM while the others keep the tensor cores.
bool mma_enabled();
bool mma_enabled_for(Fmt fmt);
void set_mma_enabled(bool on, const std::string& reason);
std::string mma_status();  // "on (M >= 16)[; off for <fmt> (<reason>)...]" or "off: <reason>"
constexpr int kMmaMinM = 16;
// Runs the tensor-core GEMM and the __dp4a GEMM on a small pseudo-random matrix of format fmt and
// compares them; when they differ beyond fp32 rounding (or the mma kernel fails) the tensor-core
// path is switched off for that format, with the reason. Returns "" when they agree (or mma is off).
std::string mma_self_check(Fmt fmt, cudaStream_t st);

// Fused norm: optionally x += add (in place, residual), then h = rmsnorm(x) * w, and (when xq.qs) h
// quantized to q8a in the same pass. n must be a multiple of 32 when quantizing.
void rms_norm_q(float* x, const float* add, const float* w, float* h, DevQ8a xq, int64_t rows, int64_t n, float eps,
                cudaStream_t st);
// g[r][i] = silu(g[r][i]) * u[r][i] for rows x n, and g quantized to q8a (n a multiple of 32).
void swiglu_q(float* g, const float* u, DevQ8a xq, int64_t rows, int64_t n, cudaStream_t st);
void rms_norm(const float* x, const float* w, float* y, int64_t rows, int64_t n, float eps, cudaStream_t st);
// x[t][h][hd] rotated in place at positions pos0 + t (t < n_tok), h < n_vec.
// dpos (optional, device): when given, the kernels read pos0 from it instead (so a captured CUDA graph
// can be replayed at every decode position); the paged KV write and attention do the same.
// dff: device copy of rp's frequency factors (nullptr iff rp.freq_factors is).
void rope(float* x, int64_t n_tok, int64_t n_vec, int64_t hd, int64_t pos0, const RopeParams& rp, const float* dff,
          cudaStream_t st, const int64_t* dpos = nullptr);
void swiglu(float* g, const float* u, int64_t count, cudaStream_t st);           // g = silu(g) * u
void add_inplace(float* y, const float* x, int64_t count, cudaStream_t st);      // y += x
void add_bias(float* y, const float* b, int64_t rows, int64_t n, cudaStream_t st);  // y[r] += b
// out[i][:] = row tokens[i] of W[rows, n] in GGUF layout (every type of kCudaTypeList), dequantized to
// fp32 with the CPU dequantizer's roundings (bit-exact).
void get_rows(const void* w, Fmt fmt, int64_t n_rows, int64_t n, const int32_t* tokens, int64_t n_tok,
              float* out, cudaStream_t st);

// Device memory bandwidth probe: device-to-device copy of `bytes` (for the bench).
void copy_d2d(void* dst, const void* src, size_t bytes, cudaStream_t st);

}  // namespace xsil::cuda
