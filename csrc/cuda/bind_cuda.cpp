// xsil._cuda: the CUDA backend's extension. Importing it loads no CUDA library beyond the statically
// linked runtime; the driver (libcuda) is opened at the first runtime call, so device_info() on a
// machine without a driver or device returns the reason instead of raising.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <memory>
#include <string>

#include "bindings/arrays.h"
#include "cuda/kernels.h"
#include "cuda/model.h"

namespace py = pybind11;
using namespace xsil;
using namespace xsil::cuda;

namespace {

py::dict device_info() {
  py::dict r;
  int drv = 0, rt = 0;
  cudaDriverGetVersion(&drv);
  cudaRuntimeGetVersion(&rt);
  r["driver_version"] = drv;
  r["runtime_version"] = rt;
  py::list devs;
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear
    std::string why = (e == cudaErrorInsufficientDriver && drv == 0) ? "no CUDA driver"
                      : e == cudaErrorNoDevice                      ? "no device"
                      : e == cudaErrorInsufficientDriver            ? "CUDA driver too old for this runtime"
                                                                    : "CUDA unusable";
    r["ok"] = false;
    r["reason"] = (why == "no CUDA driver")
                      ? why + " (libcuda could not be loaded: no NVIDIA driver on this machine; the runtime reports " +
                            cudaGetErrorName(e) + ")"
                      : why + " (" + cudaGetErrorName(e) + ": " + cudaGetErrorString(e) + ")";
    r["devices"] = devs;
    return r;
  }
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, i) != cudaSuccess) {
      cudaGetLastError();
      continue;
    }
    py::dict d;
    d["index"] = i;
    d["name"] = std::string(p.name);
    d["total_memory"] = (int64_t)p.totalGlobalMem;
    d["compute_capability"] = py::make_tuple(p.major, p.minor);
    d["sm_count"] = p.multiProcessorCount;
    d["l2_bytes"] = p.l2CacheSize;
    devs.append(d);
  }
  r["ok"] = count > 0;
  r["reason"] = count > 0 ? std::to_string(count) + " CUDA device(s)" : std::string("no device");
  r["devices"] = devs;
  return r;
}

// RAII device buffer for the kernel-test entry points.
struct DBuf {
  void* p = nullptr;
  explicit DBuf(size_t n) { check(cudaMalloc(&p, std::max<size_t>(n, 16)), "cudaMalloc"); }
  ~DBuf() { if (p) cudaFree(p); }
  template <class T> T* as() const { return (T*)p; }
};

template <class T>
py::array_t<T, py::array::c_style | py::array::forcecast> arr(const py::array& a) {
  return py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(a);
}

void up(DBuf& b, const void* h, size_t n) { check(cudaMemcpy(b.p, h, n, cudaMemcpyHostToDevice), "upload"); }
void down(void* h, const DBuf& b, size_t n) { check(cudaMemcpy(h, b.p, n, cudaMemcpyDeviceToHost), "download"); }
void sync(const char* k) { check(cudaDeviceSynchronize(), k); }

Fmt parse_fmt(const std::string& f) {
  for (Fmt t : {Fmt::F32, Fmt::F16, Fmt::Q4_0, Fmt::Q4_1, Fmt::Q5_0, Fmt::Q5_1, Fmt::Q8_0, Fmt::Q4_K, Fmt::Q5_K,
                Fmt::Q6_K})
    if (f == cuda_fmt_name(t)) return t;
  throw std::invalid_argument("[cuda] weight type '" + f + "' is not supported (supported: " + kCudaTypeList + ")");
}

bool is_q(Fmt f) { return cuda_block_quant(f); }

// GGUF bytes of n_rows x n in format f (f16/f32 dense); n must be a multiple of the block size (checked
// by the callers through dev_matrix_sizes or block_multiple).
int64_t gguf_nbytes(Fmt f, int64_t n_rows, int64_t n) {
  if (f == Fmt::F32) return n_rows * n * 4;
  if (f == Fmt::F16) return n_rows * n * 2;
  const FmtInfo* fi = fmt_info(f);
  return n_rows * (n / fi->block_size) * fi->type_size;
}

GemmPath parse_path(const std::string& p) {
  if (p == "auto") return GemmPath::Auto;
  if (p == "dp4a") return GemmPath::Dp4a;
  if (p == "mma") return GemmPath::Mma;
  throw std::invalid_argument("[cuda:matmul] path must be 'auto', 'dp4a' or 'mma', got '" + p + "'");
}

// y[M, N] = x[M, K] . W^T, W given as GGUF rows (uint8 bytes).
py::array_t<float> py_matmul(const py::array& w, const std::string& fmt, int64_t N, int64_t K, const py::array& x,
                             const std::string& path) {
  const Fmt f = parse_fmt(fmt);
  const GemmPath gp = parse_path(path);
  auto xa = arr<float>(x);
  if (xa.ndim() != 2 || xa.shape(1) != K) throw std::invalid_argument("[cuda:matmul] x must be [M, K]");
  const int64_t M = xa.shape(0);
  auto wa = py::array::ensure(w, py::array::c_style);
  size_t qb, db;
  dev_matrix_sizes(f, N, K, &qb, &db);
  const int64_t want = is_q(f) ? gguf_nbytes(f, N, K) : (int64_t)qb;
  if (wa.nbytes() != want)
    throw std::invalid_argument("[cuda:matmul] w has " + std::to_string(wa.nbytes()) + " bytes, expected " +
                                std::to_string(want));
  std::vector<uint8_t> hq(qb);
  std::vector<uint16_t> hd(db / 2 + 1);
  repack_host(f, wa.data(), N, K, hq.data(), hd.data());
  DBuf dq(qb), dd(db), dx(M * K * 4), dy(M * N * 4), xqs(M * K), xd(M * K / 32 * 4 + 4), xs(M * K / 32 * 4 + 4);
  up(dq, hq.data(), qb);
  if (db) up(dd, hd.data(), db);
  up(dx, xa.data(), M * K * 4);
  DevMatrix dm{f, N, K, dq.p, dd.as<uint16_t>()};
  DevQ8a q{xqs.as<int8_t>(), xd.as<float>(), xs.as<float>()};
  if (is_q(f)) quantize_q8a(dx.as<float>(), q, M, K, 0);
  matmul(dm, dx.as<float>(), q, dy.as<float>(), M, 0, gp);
  sync("matmul");
  py::array_t<float> y({(py::ssize_t)M, (py::ssize_t)N});
  down(y.mutable_data(), dy, M * N * 4);
  return y;
}

py::tuple py_quantize(const py::array& x) {
  auto xa = arr<float>(x);
  if (xa.ndim() != 2 || xa.shape(1) % 32) throw std::invalid_argument("[cuda:quantize_q8a] x must be [M, K], K % 32 == 0");
  const int64_t M = xa.shape(0), K = xa.shape(1);
  DBuf dx(M * K * 4), qs(M * K), d(M * K / 32 * 4), s(M * K / 32 * 4);
  up(dx, xa.data(), M * K * 4);
  quantize_q8a(dx.as<float>(), DevQ8a{qs.as<int8_t>(), d.as<float>(), s.as<float>()}, M, K, 0);
  sync("quantize_q8a");
  py::array_t<int8_t> hq({(py::ssize_t)M, (py::ssize_t)K});
  py::array_t<float> hd({(py::ssize_t)M, (py::ssize_t)(K / 32)}), hs({(py::ssize_t)M, (py::ssize_t)(K / 32)});
  down(hq.mutable_data(), qs, M * K);
  down(hd.mutable_data(), d, M * K / 32 * 4);
  down(hs.mutable_data(), s, M * K / 32 * 4);
  return py::make_tuple(hq, hd, hs);
}

py::array_t<float> py_rms_norm(const py::array& x, const py::array& w, float eps) {
  auto xa = arr<float>(x);
  auto wa = arr<float>(w);
  if (xa.ndim() != 2 || wa.ndim() != 1 || wa.shape(0) != xa.shape(1))
    throw std::invalid_argument("[cuda:rms_norm] x must be [rows, n] and w [n]");
  const int64_t R = xa.shape(0), n = xa.shape(1);
  DBuf dx(R * n * 4), dw(n * 4), dy(R * n * 4);
  up(dx, xa.data(), R * n * 4);
  up(dw, wa.data(), n * 4);
  rms_norm(dx.as<float>(), dw.as<float>(), dy.as<float>(), R, n, eps, 0);
  sync("rms_norm");
  py::array_t<float> y({(py::ssize_t)R, (py::ssize_t)n});
  down(y.mutable_data(), dy, R * n * 4);
  return y;
}

py::array_t<float> py_rope(const py::array& x, int64_t pos0, const std::string& mode, float base, float scale,
                           const py::object& freq_factors) {
  auto xa = arr<float>(x);
  if (xa.ndim() != 3) throw std::invalid_argument("[cuda:rope] x must be [n_tok, n_vec, head_dim]");
  RopeParams rp;
  rp.mode = mode == "normal" ? RopeMode::Normal : mode == "neox" ? RopeMode::Neox : RopeMode::None;
  if (mode != "normal" && mode != "neox") throw std::invalid_argument("[cuda:rope] mode must be 'normal' or 'neox'");
  rp.freq_base = base;
  rp.freq_scale = scale;
  const std::vector<float> ff = pyargs::rope_freq_factors_arg(freq_factors, "cuda:rope");
  pyargs::set_rope_freq_factors(rp, ff);
  check_rope_freq_factors(rp, xa.shape(2), "cuda:rope");
  DBuf dff(ff.size() * 4);
  if (!ff.empty()) up(dff, ff.data(), ff.size() * 4);
  const size_t bytes = xa.nbytes();
  DBuf dx(bytes);
  up(dx, xa.data(), bytes);
  rope(dx.as<float>(), xa.shape(0), xa.shape(1), xa.shape(2), pos0, rp, ff.empty() ? nullptr : dff.as<float>(), 0);
  sync("rope");
  py::array_t<float> y({xa.shape(0), xa.shape(1), xa.shape(2)});
  down(y.mutable_data(), dx, bytes);
  return y;
}

py::array_t<float> py_swiglu(const py::array& g, const py::array& u) {
  auto ga = arr<float>(g);
  auto ua = arr<float>(u);
  if (ga.size() != ua.size() || ga.size() == 0) throw std::invalid_argument("[cuda:swiglu] g and u must match");
  const int64_t n = ga.size();
  DBuf dg(n * 4), du(n * 4);
  up(dg, ga.data(), n * 4);
  up(du, ua.data(), n * 4);
  swiglu(dg.as<float>(), du.as<float>(), n, 0);
  sync("swiglu");
  py::array_t<float> y(n);
  down(y.mutable_data(), dg, n * 4);
  return y;
}

py::array_t<float> py_get_rows(const py::array& w, const std::string& fmt, int64_t n_rows, int64_t n,
                               const py::array& tokens) {
  const Fmt f = parse_fmt(fmt);
  auto ta = arr<int32_t>(tokens);
  auto wa = py::array::ensure(w, py::array::c_style);
  if (is_q(f) && n % fmt_info(f)->block_size)
    throw std::invalid_argument(std::string("[cuda:get_rows] n must be a multiple of ") +
                                std::to_string(fmt_info(f)->block_size) + " for " + cuda_fmt_name(f));
  const int64_t want = gguf_nbytes(f, n_rows, n);
  if (wa.nbytes() != want) throw std::invalid_argument("[cuda:get_rows] w has the wrong size");
  const int64_t T = ta.size();
  for (int64_t i = 0; i < T; ++i)
    if (ta.data()[i] < 0 || ta.data()[i] >= n_rows) throw std::invalid_argument("[cuda:get_rows] token out of range");
  DBuf dw(want), dt(T * 4), dy(T * n * 4);
  up(dw, wa.data(), want);
  up(dt, ta.data(), T * 4);
  get_rows(dw.p, f, n_rows, n, dt.as<int32_t>(), T, dy.as<float>(), 0);
  sync("get_rows");
  py::array_t<float> y({(py::ssize_t)T, (py::ssize_t)n});
  down(y.mutable_data(), dy, T * n * 4);
  return y;
}

// q [n_q, n_heads, hd]; k, v [n_keys, n_kv, hd] (stored as fp16 on the device, already rotated);
// query i sits at position n_keys - n_q + i and sees keys [0, its position].

// Fused norm: returns (x + add, rmsnorm(x + add) * w, qs, d, s).
py::tuple py_rms_norm_q(const py::array& x, const py::array& add, const py::array& w, float eps) {
  auto xa = arr<float>(x);
  auto aa = arr<float>(add);
  auto wa = arr<float>(w);
  if (xa.ndim() != 2 || aa.ndim() != 2 || aa.shape(0) != xa.shape(0) || aa.shape(1) != xa.shape(1) || wa.ndim() != 1 ||
      wa.shape(0) != xa.shape(1) || xa.shape(1) % 32)
    throw std::invalid_argument("[cuda:rms_norm] x, add [rows, n] (n % 32 == 0), w [n]");
  const int64_t R = xa.shape(0), n = xa.shape(1);
  DBuf dx(R * n * 4), da(R * n * 4), dw(n * 4), dy(R * n * 4), qs(R * n), d(R * n / 32 * 4), s(R * n / 32 * 4);
  up(dx, xa.data(), R * n * 4);
  up(da, aa.data(), R * n * 4);
  up(dw, wa.data(), n * 4);
  rms_norm_q(dx.as<float>(), da.as<float>(), dw.as<float>(), dy.as<float>(),
             DevQ8a{qs.as<int8_t>(), d.as<float>(), s.as<float>()}, R, n, eps, 0);
  sync("rms_norm");
  py::array_t<float> hx({R, n}), hy({R, n}), hd({R, n / 32}), hs({R, n / 32});
  py::array_t<int8_t> hq({R, n});
  down(hx.mutable_data(), dx, R * n * 4);
  down(hy.mutable_data(), dy, R * n * 4);
  down(hq.mutable_data(), qs, R * n);
  down(hd.mutable_data(), d, R * n / 32 * 4);
  down(hs.mutable_data(), s, R * n / 32 * 4);
  return py::make_tuple(hx, hy, hq, hd, hs);
}

// Fused SwiGLU + quantization: returns (silu(g) * u, qs, d, s) for g, u [rows, n].
py::tuple py_swiglu_q(const py::array& g, const py::array& u) {
  auto ga = arr<float>(g);
  auto ua = arr<float>(u);
  if (ga.ndim() != 2 || ua.ndim() != 2 || ga.shape(0) != ua.shape(0) || ga.shape(1) != ua.shape(1) || ga.shape(1) % 32)
    throw std::invalid_argument("[cuda:swiglu] g, u [rows, n], n % 32 == 0");
  const int64_t R = ga.shape(0), n = ga.shape(1);
  DBuf dg(R * n * 4), du(R * n * 4), qs(R * n), d(R * n / 32 * 4), s(R * n / 32 * 4);
  up(dg, ga.data(), R * n * 4);
  up(du, ua.data(), R * n * 4);
  swiglu_q(dg.as<float>(), du.as<float>(), DevQ8a{qs.as<int8_t>(), d.as<float>(), s.as<float>()}, R, n, 0);
  sync("swiglu");
  py::array_t<float> hg({R, n}), hd({R, n / 32}), hs({R, n / 32});
  py::array_t<int8_t> hq({R, n});
  down(hg.mutable_data(), dg, R * n * 4);
  down(hq.mutable_data(), qs, R * n);
  down(hd.mutable_data(), d, R * n / 32 * 4);
  down(hs.mutable_data(), s, R * n / 32 * 4);
  return py::make_tuple(hg, hq, hd, hs);
}

// Fused RoPE(k) + fp16 KV write at positions pos0..: returns the cache rows (k, v) as float32
// [n_tok, n_kv, hd] read back from fp16.

// Fused RoPE(q, k) + KV write: returns (rotated q, cache k bits, cache v bits) for q [n_tok, H, hd].

// Bandwidth bench: times `iters` Q4_0 GEMVs (M = 1) over an N x K matrix of random bytes and `iters`
// device-to-device copies of the same number of bytes, with CUDA events. Returns GB/s of each.
py::dict bench_gemv(const std::string& fmt, int64_t N, int64_t K, int iters) {
  const Fmt f = parse_fmt(fmt);
  size_t qb, db;
  dev_matrix_sizes(f, N, K, &qb, &db);
  DBuf dq(qb), dd(db), dx(K * 4), dy(N * 4), xqs(K), xd(K / 32 * 4 + 4), xs(K / 32 * 4 + 4), csrc(qb + db), cpy(qb + db);
  check(cudaMemset(dq.p, 0x5a, qb), "memset");
  check(cudaMemset(csrc.p, 0x5a, qb + db), "memset");
  {
    std::vector<uint16_t> hd(db / 2, 0x2000);  // small fp16 scales
    up(dd, hd.data(), db);
    std::vector<float> hx(K, 0.5f);
    up(dx, hx.data(), K * 4);
  }
  DevMatrix dm{f, N, K, dq.p, dd.as<uint16_t>()};
  DevQ8a q{xqs.as<int8_t>(), xd.as<float>(), xs.as<float>()};
  cudaEvent_t a, b;
  check(cudaEventCreate(&a), "event");
  check(cudaEventCreate(&b), "event");
  auto time_it = [&](auto&& fn) {
    for (int i = 0; i < 3; ++i) fn();
    check(cudaEventRecord(a, 0), "event");
    for (int i = 0; i < iters; ++i) fn();
    check(cudaEventRecord(b, 0), "event");
    check(cudaEventSynchronize(b), "event");
    float ms = 0;
    check(cudaEventElapsedTime(&ms, a, b), "event");
    return ms / iters;
  };
  const float ms_gemv = time_it([&] {
    quantize_q8a(dx.as<float>(), q, 1, K, 0);
    matmul(dm, dx.as<float>(), q, dy.as<float>(), 1, 0);
  });
  const float ms_copy = time_it([&] { copy_d2d(cpy.p, csrc.p, qb + db, 0); });
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  py::dict r;
  const double bytes = (double)(qb + db);
  r["bytes"] = bytes;
  r["gemv_us"] = ms_gemv * 1e3;
  r["gemv_GBps"] = bytes / (ms_gemv * 1e-3) / 1e9;
  // a copy reads and writes each byte: count both directions, as bandwidth tests do
  r["copy_us"] = ms_copy * 1e3;
  r["copy_GBps"] = 2 * bytes / (ms_copy * 1e-3) / 1e9;
  return r;
}

// GEMM throughput: times `iters` matmuls (activation quantization included) of M x K activations by
// an N x K matrix of random bytes with the given path ('dp4a' or 'mma'). Returns us and GFLOP/s.
py::dict bench_gemm(const std::string& fmt, int64_t N, int64_t K, int64_t M, const std::string& path, int iters) {
  const Fmt f = parse_fmt(fmt);
  const GemmPath gp = parse_path(path);
  if (!is_q(f)) throw std::invalid_argument("[cuda:bench_gemm] quantized formats only");
  if (M < 1 || iters < 1) throw std::invalid_argument("[cuda:bench_gemm] M and iters must be >= 1");
  size_t qb, db;
  dev_matrix_sizes(f, N, K, &qb, &db);
  DBuf dq(qb), dd(db), dx(M * K * 4), dy(M * N * 4), xqs(M * K), xd(M * K / 32 * 4), xs(M * K / 32 * 4);
  check(cudaMemset(dq.p, 0x5a, qb), "memset");
  check(cudaMemset(dd.p, 0x10, db), "memset");  // fp16 0x1010: small scales
  {
    std::vector<float> hx(M * K);
    for (int64_t i = 0; i < M * K; ++i) hx[i] = (float)((i * 7919) % 201 - 100) / 100.0f;
    up(dx, hx.data(), M * K * 4);
  }
  DevMatrix dm{f, N, K, dq.p, dd.as<uint16_t>()};
  DevQ8a q{xqs.as<int8_t>(), xd.as<float>(), xs.as<float>()};
  cudaEvent_t a, b;
  check(cudaEventCreate(&a), "event");
  check(cudaEventCreate(&b), "event");
  auto run = [&] {
    quantize_q8a(dx.as<float>(), q, M, K, 0);
    matmul(dm, dx.as<float>(), q, dy.as<float>(), M, 0, gp);
  };
  for (int i = 0; i < 2; ++i) run();
  check(cudaEventRecord(a, 0), "event");
  for (int i = 0; i < iters; ++i) run();
  check(cudaEventRecord(b, 0), "event");
  check(cudaEventSynchronize(b), "event");
  float ms = 0;
  check(cudaEventElapsedTime(&ms, a, b), "event");
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  const double us = ms * 1e3 / iters;
  py::dict r;
  r["us"] = us;
  r["GFLOPs"] = 2.0 * (double)M * (double)N * (double)K / (us * 1e-6) / 1e9;
  return r;
}

// --- model ---------------------------------------------------------------------------------------
struct PyCudaModel {
  std::unique_ptr<CudaLlama> m;
};

HostWeight hw(const py::dict& weights, const std::string& name, bool optional, py::list& keep) {
  HostWeight w;
  if (!weights.contains(name)) {
    if (optional) return w;
    throw std::invalid_argument("[model] tensor " + name + " is missing");
  }
  py::tuple t = weights[py::str(name)].cast<py::tuple>();
  if (t.size() != 4) throw std::invalid_argument("[model] weights[" + name + "] must be (data, fmt, rows, cols)");
  const std::string f = t[1].cast<std::string>();
  try {
    w.fmt = parse_fmt(f);
  } catch (const std::invalid_argument&) {
    throw std::invalid_argument("[model] tensor " + name + " has type " + f + "; the CUDA backend supports " +
                                kCudaTypeList);
  }
  w.rows = t[2].cast<int64_t>();
  w.cols = t[3].cast<int64_t>();
  py::array a = py::array::ensure(t[0], py::array::c_style);
  if (!a) throw std::invalid_argument("[model] tensor " + name + " must be a C-contiguous array");
  w.data = a.data();
  w.nbytes = a.nbytes();
  keep.append(a);
  return w;
}

std::unique_ptr<PyCudaModel> make_model(const py::dict& cfgd, const py::dict& weights, int64_t n_ctx, int device,
                                        const std::string& kv_dtype, int page_size, int64_t kv_budget_tokens) {
  CudaKVOptions kvo;
  kvo.dtype = parse_kv_dtype(kv_dtype, "model");
  kvo.page_size = page_size;
  kvo.budget_tokens = kv_budget_tokens;
  CudaLlamaConfig c;
  c.n_embd = cfgd["n_embd"].cast<int64_t>();
  c.n_layer = cfgd["n_layer"].cast<int64_t>();
  c.n_head = cfgd["n_head"].cast<int64_t>();
  c.n_head_kv = cfgd["n_head_kv"].cast<int64_t>();
  c.head_dim = cfgd["head_dim"].cast<int64_t>();
  c.n_ff = cfgd["n_ff"].cast<int64_t>();
  c.n_vocab = cfgd["n_vocab"].cast<int64_t>();
  c.rms_eps = cfgd["rms_eps"].cast<float>();
  c.rope.mode = cfgd["rope_mode"].cast<std::string>() == "neox" ? RopeMode::Neox : RopeMode::Normal;
  c.rope.freq_base = cfgd["rope_freq_base"].cast<float>();
  c.rope.freq_scale = cfgd["rope_freq_scale"].cast<float>();
  // RoPE frequency factors: the model's cache copies (and uploads) them, so a local is enough.
  const std::vector<float> ff =
      pyargs::rope_freq_factors_arg(cfgd.contains("rope_freq_factors") ? py::object(cfgd["rope_freq_factors"]) : py::object(py::none()),
                                    "model");
  pyargs::set_rope_freq_factors(c.rope, ff);
  c.qk_norm = cfgd.contains("qk_norm") && cfgd["qk_norm"].cast<bool>();
  if (c.n_layer <= 0 || c.n_layer > 4096) throw std::invalid_argument("[model] n_layer out of range");
  py::list keep;
  HostWeight tok = hw(weights, "token_embd.weight", false, keep);
  HostWeight onorm = hw(weights, "output_norm.weight", false, keep);
  HostWeight out = hw(weights, "output.weight", true, keep);
  std::vector<HostLayer> layers(c.n_layer);
  for (int64_t i = 0; i < c.n_layer; ++i) {
    const std::string b = "blk." + std::to_string(i) + ".";
    HostLayer& L = layers[i];
    L.attn_norm = hw(weights, b + "attn_norm.weight", false, keep);
    L.wq = hw(weights, b + "attn_q.weight", false, keep);
    L.wk = hw(weights, b + "attn_k.weight", false, keep);
    L.wv = hw(weights, b + "attn_v.weight", false, keep);
    L.wo = hw(weights, b + "attn_output.weight", false, keep);
    L.bq = hw(weights, b + "attn_q.bias", true, keep);
    L.bk = hw(weights, b + "attn_k.bias", true, keep);
    L.bv = hw(weights, b + "attn_v.bias", true, keep);
    L.ffn_norm = hw(weights, b + "ffn_norm.weight", false, keep);
    L.w_gate = hw(weights, b + "ffn_gate.weight", false, keep);
    L.w_up = hw(weights, b + "ffn_up.weight", false, keep);
    L.w_down = hw(weights, b + "ffn_down.weight", false, keep);
    L.q_norm = hw(weights, b + "attn_q_norm.weight", true, keep);
    L.k_norm = hw(weights, b + "attn_k_norm.weight", true, keep);
  }
  auto pm = std::make_unique<PyCudaModel>();
  {
    py::gil_scoped_release nogil;
    pm->m = std::make_unique<CudaLlama>(c, tok, onorm, out, layers, n_ctx, device, kvo);
  }
  return pm;  // weights are on the device: the host arrays are no longer needed
}

py::array_t<float> model_forward(PyCudaModel& pm, const py::array& tokens, bool all_logits) {
  if (!pm.m) throw std::runtime_error("[cuda] model is closed");
  auto ta = arr<int32_t>(tokens);
  if (ta.ndim() != 1 || ta.shape(0) < 1) throw std::invalid_argument("[forward] tokens must be a non-empty 1-D array");
  const int64_t n = ta.shape(0), V = pm.m->config().n_vocab;
  py::array_t<float> out = all_logits ? py::array_t<float>({(py::ssize_t)n, (py::ssize_t)V})
                                      : py::array_t<float>({(py::ssize_t)V});
  float* po = out.mutable_data();
  const int32_t* pt = ta.data();
  {
    py::gil_scoped_release nogil;
    pm.m->forward(pt, n, po, all_logits);
  }
  return out;
}

}  // namespace

namespace xsil::cuda {
void register_kv(py::module_& m);  // bind_kv.cpp
}

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "xsil CUDA backend: device query, kernels (for tests) and the device-resident Llama forward";
  m.def("device_info", &device_info, "CUDA driver/runtime versions and devices; never raises (ok/reason)");
  m.def("matmul", &py_matmul, py::arg("w"), py::arg("fmt"), py::arg("N"), py::arg("K"), py::arg("x"),
        py::arg("path") = "auto",
        "y = x . W^T on the device (W: GGUF rows as bytes); path: 'auto', 'dp4a' or 'mma' (tensor cores)");
  m.def("mma_status", &mma_status, "the tensor-core prefill GEMM: 'on (...)' or 'off: <reason>'");
  m.def("set_mma", [](bool on) { set_mma_enabled(on, "turned off by set_mma(False)"); }, py::arg("on"),
        "switch the tensor-core prefill GEMM on or off (process-wide)");
  m.def("mma_self_check", [](const std::string& fmt) { return mma_self_check(parse_fmt(fmt), 0); }, py::arg("fmt"),
        "run the first-use self-check of the tensor-core GEMM for a format ('' when it passes or already ran)");
  m.def("bench_gemm", &bench_gemm, py::arg("fmt"), py::arg("N"), py::arg("K"), py::arg("M"), py::arg("path"),
        py::arg("iters") = 20);
  m.def("quantize_q8a", &py_quantize, py::arg("x"), "(qs, d, s) of x quantized per 32 on the device");
  m.def("rms_norm", &py_rms_norm, py::arg("x"), py::arg("w"), py::arg("eps"));
  m.def("rope", &py_rope, py::arg("x"), py::arg("pos0"), py::arg("mode"), py::arg("freq_base") = 10000.0f,
        py::arg("freq_scale") = 1.0f, py::arg("freq_factors") = py::none());
  m.def("swiglu", &py_swiglu, py::arg("g"), py::arg("u"));
  m.def("get_rows", &py_get_rows, py::arg("w"), py::arg("fmt"), py::arg("n_rows"), py::arg("n"), py::arg("tokens"));
  m.def("rms_norm_q", &py_rms_norm_q, py::arg("x"), py::arg("add"), py::arg("w"), py::arg("eps"));
  m.def("swiglu_q", &py_swiglu_q, py::arg("g"), py::arg("u"));
  xsil::cuda::register_kv(m);
  m.def("bench_gemv", &bench_gemv, py::arg("fmt"), py::arg("N"), py::arg("K"), py::arg("iters") = 50);
  py::class_<PyCudaModel>(m, "LlamaModel", py::module_local())
      .def(py::init(&make_model), py::arg("config"), py::arg("weights"), py::arg("n_ctx"), py::arg("device") = 0,
           py::arg("kv_dtype") = "f16", py::arg("page_size") = 16, py::arg("kv_budget_tokens") = 0)
      .def("forward", &model_forward, py::arg("tokens"), py::arg("all_logits") = true)
      .def("reset", [](PyCudaModel& p) { if (p.m) p.m->reset(); })
      .def("truncate", [](PyCudaModel& p, int64_t n) { if (p.m) p.m->truncate(n); })
      .def("close", [](PyCudaModel& p) {
        py::gil_scoped_release nogil;
        p.m.reset();
      })
      .def_property(
          "graphs", [](const PyCudaModel& p) { return p.m && p.m->graphs(); },
          [](PyCudaModel& p, bool on) { if (p.m) p.m->set_graphs(on); },
          "decode replays a captured CUDA graph of the whole forward (default True)")
      .def_property_readonly("n_past", [](const PyCudaModel& p) { return p.m ? p.m->n_past() : 0; })
      .def_property_readonly("n_ctx", [](const PyCudaModel& p) { return p.m ? p.m->n_ctx() : 0; })
      .def_property_readonly("weight_bytes", [](const PyCudaModel& p) { return p.m ? p.m->weight_bytes() : 0; })
      .def_property_readonly("kv_bytes", [](const PyCudaModel& p) { return p.m ? p.m->kv_bytes() : 0; })
      .def_property_readonly("kv_stats", [](const PyCudaModel& p) {
        py::dict d;
        if (!p.m) return d;
        const CudaKVCache& c = p.m->cache();
        const KVStats s = c.stats();
        d["pages_total"] = s.pages_total;
        d["pages_used"] = s.pages_used;
        d["page_bytes"] = s.page_bytes;
        d["pool_bytes"] = s.pool_bytes;
        d["budget_tokens"] = s.budget_tokens;
        d["bytes_per_token"] = s.bytes_per_token;
        d["page_size"] = c.params().page_size;
        d["kv_dtype"] = std::string(kv_dtype_name(c.params().k_dtype));
        return d;
      }, "the paged device KV cache: pages, bytes, dtype")
      .def_property_readonly("device", [](const PyCudaModel& p) { return p.m ? p.m->device() : -1; });
}
