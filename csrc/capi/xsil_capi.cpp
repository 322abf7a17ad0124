// The C ABI (xsil/xsil.h) over the kernels. Every entry point runs inside guard(): C++ exceptions
// never cross the boundary; they become a status code plus a thread-local message. Validation is the
// shared C++ code (cpu/checks.h, check_matmul, resolve_tier), so messages match the Python binding.
#include "xsil/xsil.h"

#include <cstring>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/threadpool.h"
#include "cpu/checks.h"
#include "cpu/dispatch.h"
#include "cpu/q4_matmul.h"
#include "cpu/quant.h"

namespace {

using namespace xsil;

static_assert(XSIL_FMT_Q4_0 == (int)Fmt::Q4_0 && XSIL_FMT_Q8_0 == (int)Fmt::Q8_0 && XSIL_FMT_Q4_K == (int)Fmt::Q4_K &&
                  XSIL_FMT_Q4_1 == (int)Fmt::Q4_1 && XSIL_FMT_Q5_0 == (int)Fmt::Q5_0 &&
                  XSIL_FMT_Q5_1 == (int)Fmt::Q5_1 && XSIL_FMT_Q5_K == (int)Fmt::Q5_K && XSIL_FMT_Q6_K == (int)Fmt::Q6_K,
              "C ABI format ids must be the GGML type ids");

thread_local std::string t_last_error;

// An error carrying its C status: thrown by the stage that knows which kind of failure it is.
struct StatusError : std::invalid_argument {
  xsil_status status;
  StatusError(xsil_status s, const std::string& msg) : std::invalid_argument(msg), status(s) {}
};

xsil_status fail(xsil_status s, const char* msg) {
  try {
    t_last_error = msg;
  } catch (...) {
    // Out of memory while copying the message: keep the status, leave the message empty.
    t_last_error.clear();
  }
  return s;
}

// Runs fn (which returns nothing or throws) and maps exceptions to status codes.
template <typename Fn>
xsil_status guard(Fn&& fn) noexcept {
  t_last_error.clear();
  try {
    fn();
    return XSIL_OK;
  } catch (const StatusError& e) {
    return fail(e.status, e.what());
  } catch (const std::invalid_argument& e) {
    return fail(XSIL_ERR_INVALID_ARGUMENT, e.what());
  } catch (const std::bad_alloc&) {
    return fail(XSIL_ERR_OUT_OF_MEMORY, "out of memory");
  } catch (const std::exception& e) {
    return fail(XSIL_ERR_INTERNAL, e.what());
  } catch (...) {
    return fail(XSIL_ERR_INTERNAL, "unknown C++ exception");
  }
}

// Re-throws a stage's std::invalid_argument with a specific status.
template <typename Fn>
auto stage(xsil_status s, Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const StatusError&) {
    throw;
  } catch (const std::invalid_argument& e) {
    throw StatusError(s, e.what());
  }
}

std::string str(int64_t v) { return std::to_string(v); }

void require_ptr(const void* p, const char* op, const char* what) {
  if (!p) throw std::invalid_argument(std::string("[") + op + "] " + what + " is NULL");
}

// size_t capacities compared in int64 without wrap-around.
bool fits(size_t have, int64_t need) { return need >= 0 && (uint64_t)need <= (uint64_t)have; }

int threads_arg(int32_t threads, const char* op) {
  if (threads != 0) check_threads(threads, op);
  return threads;
}

Fmt fmt_arg(int32_t fmt, const char* op, bool allow_no_quantizer = true) {
  return stage(XSIL_ERR_UNSUPPORTED_FORMAT, [&] { return fmt_from_id(fmt, op, allow_no_quantizer); });
}

Tier tier_arg(const char* name) {
  return stage(XSIL_ERR_TIER, [&] { return resolve_tier(name ? std::string(name) : std::string()); });
}

// Tiers of this build, copied once so names and reasons have static storage.
const std::vector<TierInfo>& tier_table() {
  static const std::vector<TierInfo> t = tiers();
  return t;
}

const TierInfo& tier_at(int32_t index) {
  const auto& t = tier_table();
  if (index < 0 || (size_t)index >= t.size())
    throw std::invalid_argument("[cpu] tier index " + str(index) + " is out of range [0, " + str((int64_t)t.size()) +
                                ")");
  return t[(size_t)index];
}

}  // namespace

extern "C" {

XSIL_API const char* xsil_version(void) { return XSIL_VERSION; }

XSIL_API int32_t xsil_abi_version(void) { return XSIL_ABI_VERSION; }

XSIL_API const char* xsil_last_error(void) { return t_last_error.c_str(); }

XSIL_API const char* xsil_status_name(xsil_status status) {
  switch (status) {
    case XSIL_OK: return "XSIL_OK";
    case XSIL_ERR_INVALID_ARGUMENT: return "XSIL_ERR_INVALID_ARGUMENT";
    case XSIL_ERR_UNSUPPORTED_FORMAT: return "XSIL_ERR_UNSUPPORTED_FORMAT";
    case XSIL_ERR_TIER: return "XSIL_ERR_TIER";
    case XSIL_ERR_OUT_OF_MEMORY: return "XSIL_ERR_OUT_OF_MEMORY";
    case XSIL_ERR_INTERNAL: return "XSIL_ERR_INTERNAL";
    default: return "XSIL_ERR_UNKNOWN_STATUS";
  }
}

XSIL_API int32_t xsil_format_block_size(xsil_format fmt) {
  int32_t r = -1;
  guard([&] { r = fmt_info(fmt_arg(fmt, "format"))->block_size; });
  return r;
}

XSIL_API int32_t xsil_format_type_size(xsil_format fmt) {
  int32_t r = -1;
  guard([&] { r = fmt_info(fmt_arg(fmt, "format"))->type_size; });
  return r;
}

XSIL_API const char* xsil_format_name(xsil_format fmt) {
  const char* r = nullptr;
  guard([&] { r = fmt_info(fmt_arg(fmt, "format"))->name; });
  return r;
}

XSIL_API int64_t xsil_format_row_bytes(xsil_format fmt, int64_t cols) {
  int64_t r = -1;
  guard([&] { r = check_block_multiple(fmt_arg(fmt, "row_bytes"), cols, "row_bytes", "cols", /*positive=*/true); });
  return r;
}

XSIL_API int32_t xsil_cpu_tier_count(void) {
  int32_t r = 0;
  guard([&] { r = (int32_t)tier_table().size(); });
  return r;
}

XSIL_API const char* xsil_cpu_tier_name(int32_t index) {
  const char* r = nullptr;
  guard([&] { r = tier_name(tier_at(index).tier); });
  return r;
}

XSIL_API int32_t xsil_cpu_tier_available(int32_t index) {
  int32_t r = -1;
  guard([&] { r = tier_at(index).available ? 1 : 0; });
  return r;
}

XSIL_API const char* xsil_cpu_tier_reason(int32_t index) {
  const char* r = nullptr;
  guard([&] { r = tier_at(index).reason.c_str(); });
  return r;
}

XSIL_API const char* xsil_cpu_arch(void) {
  const char* r = "other";
  guard([&] { r = cpu_features().arch.c_str(); });  // cpu_features() is a process-lifetime static
  return r;
}

XSIL_API const char* xsil_cpu_get_tier(void) {
  const char* r = "ref";
  guard([&] { r = tier_name(default_tier()); });
  return r;
}

XSIL_API xsil_status xsil_cpu_set_tier(const char* name) {
  return guard([&] { stage(XSIL_ERR_TIER, [&] { set_default_tier(name ? std::string(name) : std::string()); }); });
}

XSIL_API int32_t xsil_get_num_threads(void) {
  int32_t r = 1;
  guard([&] { r = ThreadPool::global().num_threads(); });
  return r;
}

XSIL_API xsil_status xsil_set_num_threads(int32_t n) {
  return guard([&] {
    check_threads(n, "threads");
    ThreadPool::global().set_num_threads(n);
  });
}

XSIL_API xsil_status xsil_quantize(xsil_format fmt, const float* x, int64_t rows, int64_t cols, void* out,
                                   size_t out_bytes, int32_t threads) {
  return guard([&] {
    const char* op = "quantize";
    const Fmt f = fmt_arg(fmt, op, /*allow_no_quantizer=*/false);
    const int64_t rb = check_block_multiple(f, cols, op, "cols", /*positive=*/false);
    const int64_t need = checked_bytes(rows, rb, op);
    const int64_t n = checked_bytes(rows, cols, op);  // floats read from x
    const int nt = threads_arg(threads, op);
    require_ptr(x, op, "x");
    require_ptr(out, op, "out");
    if (!fits(out_bytes, need))
      throw std::invalid_argument("[quantize] out has " + std::to_string(out_bytes) + " bytes; rows=" + str(rows) +
                                  " of cols=" + str(cols) + " in " + fmt_info(f)->name + " need " + str(need));
    check_finite(x, n, op);
    quantize_rows(x, out, rows, cols, f, nt);
  });
}

XSIL_API xsil_status xsil_dequantize(xsil_format fmt, const void* blocks, size_t blocks_bytes, int64_t rows,
                                     int64_t cols, float* out, size_t out_floats, int32_t threads) {
  return guard([&] {
    const char* op = "dequantize";
    const Fmt f = fmt_arg(fmt, op);
    const int64_t rb = check_block_multiple(f, cols, op, "cols", /*positive=*/true);
    const int64_t need = checked_bytes(rows, rb, op);
    const int64_t n = checked_bytes(rows, cols, op);
    const int nt = threads_arg(threads, op);
    require_ptr(blocks, op, "blocks");
    require_ptr(out, op, "out");
    if ((uint64_t)need != (uint64_t)blocks_bytes)
      throw std::invalid_argument("[dequantize] blocks have " + std::to_string(blocks_bytes) +
                                  " bytes; rows=" + str(rows) + " of cols=" + str(cols) + " in " + fmt_info(f)->name +
                                  " need " + str(need));
    if (!fits(out_floats, n))
      throw std::invalid_argument("[dequantize] out has room for " + std::to_string(out_floats) +
                                  " floats; rows=" + str(rows) + " x cols=" + str(cols) + " need " + str(n));
    dequantize_rows(blocks, out, rows, cols, f, nt);
  });
}

XSIL_API xsil_status xsil_matmul(const float* x, int64_t M, int64_t K, const void* w, size_t w_bytes, int64_t N,
                                 xsil_format fmt, float* y, size_t y_floats, int32_t threads, const char* tier,
                                 int32_t exact) {
  return guard([&] {
    const char* op = "matmul";
    MatmulParams p;
    p.fmt = fmt_arg(fmt, op);
    p.x = x;
    p.w = w;
    p.y = y;
    p.M = M;
    p.N = N;
    p.K = K;
    p.ldx = K;
    p.ldy = N;
    const MatmulKernels& k = matmul_kernels(tier_arg(tier));
    if (w_bytes > (size_t)INT64_MAX)
      throw std::invalid_argument("[matmul] weight buffer size " + std::to_string(w_bytes) + " is too large");
    check_matmul(p, (int64_t)w_bytes, threads);  // M, N, K >= 1, K % block, w_bytes == N * row bytes, x, w
    threads_arg(threads, op);
    if (M > INT64_MAX / K) throw std::invalid_argument("[matmul] M=" + str(M) + " x K=" + str(K) + " overflows");
    if (M > INT64_MAX / N) throw std::invalid_argument("[matmul] M=" + str(M) + " x N=" + str(N) + " overflows");
    require_ptr(y, op, "y");
    if (!fits(y_floats, M * N))
      throw std::invalid_argument("[matmul] y has room for " + std::to_string(y_floats) + " floats; M=" + str(M) +
                                  " x N=" + str(N) + " need " + str(M * N));
    matmul(p, k, threads, exact != 0);
  });
}

}  // extern "C"
