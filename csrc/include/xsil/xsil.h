/* xsil C ABI: GGUF block (de)quantization and block-quantized matmul over the xsil kernels.
 *
 * Plain C (C99 and C++), no C++ types or exceptions cross this boundary. Every function validates
 * every size and pointer before touching memory. Buffer sizes are always passed explicitly: inputs
 * must have exactly the size their shape implies, outputs at least that capacity.
 *
 * Status: functions returning xsil_status return XSIL_OK (0) or a negative error code; on error
 * xsil_last_error() gives a message naming the op and the offending value, e.g.
 *   "[matmul] K=100 is not a multiple of the Q4_0 block size 32"
 * (the same text the Python binding puts in its ValueError where the check is shared).
 *
 * Compatibility: XSIL_ABI_VERSION is bumped whenever an existing declaration changes meaning or
 * signature; additions do not bump it. Compare it with xsil_abi_version() at run time.
 *
 * State: libxsil has its own thread pool and default ISA tier, separate from those of the Python
 * module xsil._core even when both are loaded in one process.
 */
#ifndef XSIL_XSIL_H_
#define XSIL_XSIL_H_

#include <stddef.h>
#include <stdint.h>

#define XSIL_ABI_VERSION 1
#define XSIL_VERSION "0.1.0"

#if defined(_WIN32)
#if defined(XSIL_BUILDING_DLL)
#define XSIL_API __declspec(dllexport)
#else
#define XSIL_API __declspec(dllimport)
#endif
#elif defined(__GNUC__) || defined(__clang__)
#define XSIL_API __attribute__((visibility("default")))
#else
#define XSIL_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes (returned as int32_t). */
typedef int32_t xsil_status;
enum {
  XSIL_OK = 0,
  XSIL_ERR_INVALID_ARGUMENT = -1,   /* bad size, shape, stride, pointer, thread count or value */
  XSIL_ERR_UNSUPPORTED_FORMAT = -2, /* format id unknown, or not supported by this op */
  XSIL_ERR_TIER = -3,               /* ISA tier name unknown, or not runnable on this CPU */
  XSIL_ERR_OUT_OF_MEMORY = -4,
  XSIL_ERR_INTERNAL = -5 /* any other failure (a bug: please report it) */
};

/* Block formats, by GGML type id (as stored in GGUF tensor infos). */
typedef int32_t xsil_format;
enum {
  XSIL_FMT_Q4_0 = 2, XSIL_FMT_Q4_1 = 3, XSIL_FMT_Q5_0 = 6, XSIL_FMT_Q5_1 = 7, XSIL_FMT_Q8_0 = 8,
  XSIL_FMT_Q4_K = 12, XSIL_FMT_Q5_K = 13, XSIL_FMT_Q6_K = 14
};

/* --- Version ----------------------------------------------------------------------------------- */
/* Package version string, e.g. "0.1.0". Static storage. */
XSIL_API const char* xsil_version(void);
/* XSIL_ABI_VERSION the library was built with. */
XSIL_API int32_t xsil_abi_version(void);

/* --- Errors ------------------------------------------------------------------------------------ */
/* Message of the last failed call on this thread; "" when the last call succeeded. Every function
 * that can fail resets it on entry. Valid until the next xsil_* call on the same thread. Never NULL. */
XSIL_API const char* xsil_last_error(void);
/* Short name of a status code ("XSIL_OK", "XSIL_ERR_INVALID_ARGUMENT", ...). Static storage. */
XSIL_API const char* xsil_status_name(xsil_status status);

/* --- Formats ----------------------------------------------------------------------------------- */
/* Weights per block (32, 32, 256) and bytes per block (18, 34, 144); -1 for an unknown format. */
XSIL_API int32_t xsil_format_block_size(xsil_format fmt);
XSIL_API int32_t xsil_format_type_size(xsil_format fmt);
/* "Q4_0", "Q8_0", "Q4_K"; NULL for an unknown format. Static storage. */
XSIL_API const char* xsil_format_name(xsil_format fmt);
/* Bytes of one row of `cols` weights (cols a positive multiple of the block size); -1 on error. */
XSIL_API int64_t xsil_format_row_bytes(xsil_format fmt, int64_t cols);

/* --- CPU: ISA tiers and threads ---------------------------------------------------------------- */
/* Tiers compiled into this build, in preference order (best last); index 0 is "ref". */
XSIL_API int32_t xsil_cpu_tier_count(void);
/* Name of tier `index` ("ref", "avx2", "avx512", "neon", "neon-dotprod"); NULL if out of range.
 * Static storage. */
XSIL_API const char* xsil_cpu_tier_name(int32_t index);
/* 1 if this CPU runs tier `index`, 0 if not, -1 if index is out of range. */
XSIL_API int32_t xsil_cpu_tier_available(int32_t index);
/* Why tier `index` is unavailable ("" when available); NULL if out of range. Static storage. */
XSIL_API const char* xsil_cpu_tier_reason(int32_t index);
/* "x86_64", "aarch64" or "other". Static storage. */
XSIL_API const char* xsil_cpu_arch(void);
/* Name of the default tier used when a call passes tier NULL. Static storage. */
XSIL_API const char* xsil_cpu_get_tier(void);
/* Set the default tier by name; NULL, "" or "auto" = best available. */
XSIL_API xsil_status xsil_cpu_set_tier(const char* name);
/* Threads in libxsil's persistent pool (caller included). */
XSIL_API int32_t xsil_get_num_threads(void);
/* Resize the pool: n in [1, 1024]. */
XSIL_API xsil_status xsil_set_num_threads(int32_t n);

/* --- Kernels ----------------------------------------------------------------------------------- */
/* `threads`: 0 = the whole pool, otherwise a cap in [1, 1024]. Results never depend on it. */

/* Quantize x[rows, cols] (row-major fp32, all finite) to GGUF rows of fmt (Q4_0, Q4_1, Q5_0,
 * Q5_1 or Q8_0; cols a multiple of 32): rows * row_bytes(fmt, cols) bytes into out, out_bytes >= that. Byte-identical
 * to gguf-py's gguf.quants.quantize. */
XSIL_API xsil_status xsil_quantize(xsil_format fmt, const float* x, int64_t rows, int64_t cols, void* out,
                                   size_t out_bytes, int32_t threads);

/* Dequantize rows GGUF rows of `cols` weights (any xsil_format; blocks_bytes == rows *
 * row_bytes(fmt, cols)) to out[rows, cols], out_floats >= rows * cols. Identical to gguf-py's
 * gguf.quants.dequantize. */
XSIL_API xsil_status xsil_dequantize(xsil_format fmt, const void* blocks, size_t blocks_bytes, int64_t rows,
                                     int64_t cols, float* out, size_t out_floats, int32_t threads);

/* y[M, N] = x[M, K] . W[N, K]^T. x: M * K floats, row-major. w: N GGUF rows of K weights in fmt,
 * w_bytes == N * row_bytes(fmt, K). y: y_floats >= M * N, written row-major.
 * tier: ISA tier for this call (NULL, "" or "auto" = the default tier).
 * exact = 0: activations quantized to 8-bit blocks, integer dot products (fast path).
 * exact != 0: each weight row dequantized to fp32, fp32 accumulation (slow; for checking). */
XSIL_API xsil_status xsil_matmul(const float* x, int64_t M, int64_t K, const void* w, size_t w_bytes, int64_t N,
                                 xsil_format fmt, float* y, size_t y_floats, int32_t threads, const char* tier,
                                 int32_t exact);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* XSIL_XSIL_H_ */
