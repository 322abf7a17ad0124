// xemu: a CUDA-on-CPU emulator for testing xsil's CUDA sources on machines without a GPU.
//
// The CUDA sources (csrc/cuda) are compiled unchanged by a host C++ compiler with this directory
// first on the include path (it shadows <cuda_runtime.h> and <cuda_fp16.h>), after one mechanical
// rewrite done by build.py: `k<<<grid, block, smem, stream>>>(args)` becomes
// `::xemu::launch(k, "k", grid, block, smem, stream)(args)`.
//
// Execution model. The blocks of a grid are spread over a few OS threads (XEMU_THREADS); the threads
// of a block run as fibers that switch only at barriers: __syncthreads() waits for every
// live thread of the block, a warp shuffle / __syncwarp() for every live lane of its warp. A block
// whose live threads can make no progress (divergent barriers) is reported as an error, not a hang.
// __shared__ variables are thread_local function statics (one block runs at a time on an OS thread),
// so they keep values between blocks where a GPU would leave them undefined.
//
// Memory. cudaMalloc maps fresh pages and ends every allocation at a PROT_NONE guard page (the
// allocation's end is 16-byte aligned), so a kernel that reads or writes past an allocation faults
// (SIGSEGV) instead of passing silently. Launches check that every pointer argument of the kernel is
// null or points into a live device allocation, and cudaMemcpy checks that each side lies where its
// direction says; both turn a host/device mix-up into an error (cudaErrorInvalidValue / a thrown
// launch error) the way a real GPU would fault.
//
// Not emulated: timing, concurrency between streams (everything is synchronous), memory ordering
// races, undefined shared-memory contents, warp-divergent shuffles with partial masks (the mask is
// ignored: all live lanes of the warp take part), texture/surface memory, inline PTX.
#pragma once
#ifndef XSIL_CUDA_EMU
#define XSIL_CUDA_EMU 1
#endif

#include <math.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// ---- qualifiers ---------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
// no __noinline__: libstdc++ spells __attribute__((__noinline__)), which such a macro would break
#define __launch_bounds__(...)
#define __shared__ static thread_local
#define __constant__ static
#define __align__(n) __attribute__((aligned(n)))
#define __managed__

// ---- vector types -------------------------------------------------------------------------------
struct uint3 { unsigned x, y, z; };
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(16) int4 { int x, y, z, w; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(8) int2 { int x, y; };
struct alignas(8) float2 { float x, y; };
struct alignas(4) char4 { signed char x, y, z, w; };
struct alignas(4) uchar4 { unsigned char x, y, z, w; };
struct alignas(4) short2 { short x, y; };
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline float2 make_float2(float x, float y) { return {x, y}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }

// ---- built-in variables (set by the scheduler before it resumes a fiber) -------------------------
namespace xemu {
extern thread_local uint3 tl_threadIdx, tl_blockIdx;
extern thread_local dim3 tl_blockDim, tl_gridDim;
}  // namespace xemu
#define threadIdx (::xemu::tl_threadIdx)
#define blockIdx (::xemu::tl_blockIdx)
#define blockDim (::xemu::tl_blockDim)
#define gridDim (::xemu::tl_gridDim)
static constexpr int warpSize = 32;

// ---- fp16 ---------------------------------------------------------------------------------------
struct __half {
  unsigned short __x;
};
struct alignas(4) __half2 {
  __half x, y;
};
namespace xemu {
float half_bits_to_float(unsigned short h);
unsigned short float_to_half_bits_rn(float f);  // round to nearest even, IEEE binary16
}  // namespace xemu
inline __half __ushort_as_half(unsigned short v) { return __half{v}; }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline float __half2float(__half h) { return xemu::half_bits_to_float(h.__x); }
inline __half __float2half_rn(float f) { return __half{xemu::float_to_half_bits_rn(f)}; }
inline __half __float2half(float f) { return __float2half_rn(f); }
inline float __low2float(__half2 h) { return __half2float(h.x); }
inline float __high2float(__half2 h) { return __half2float(h.y); }
inline float2 __half22float2(__half2 h) { return {__half2float(h.x), __half2float(h.y)}; }
inline __half2 __floats2half2_rn(float a, float b) { return {__float2half_rn(a), __float2half_rn(b)}; }

// ---- device intrinsics --------------------------------------------------------------------------
template <class A, class B>
inline auto max(A a, B b) -> std::common_type_t<A, B> {
  return a > b ? a : b;
}
template <class A, class B>
inline auto min(A a, B b) -> std::common_type_t<A, B> {
  return a < b ? a : b;
}
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
// round-to-nearest single operations (never contracted: the build uses -ffp-contract=off)
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned i; std::memcpy(&i, &f, 4); return i; }
inline float __uint_as_float(unsigned i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int __float2int_rn(float f) { return (int)nearbyintf(f); }
inline int __dp4a(int a, int b, int c) {
  for (int i = 0; i < 4; ++i) c += (int)(int8_t)(a >> (8 * i)) * (int)(int8_t)(b >> (8 * i));
  return c;
}
inline unsigned __dp4a(unsigned a, unsigned b, unsigned c) {
  for (int i = 0; i < 4; ++i) c += ((a >> (8 * i)) & 0xFFu) * ((b >> (8 * i)) & 0xFFu);
  return c;
}
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
  const uint64_t v = ((uint64_t)y << 32) | x;
  unsigned r = 0;
  for (int i = 0; i < 4; ++i) r |= (unsigned)((v >> (8 * ((s >> (4 * i)) & 7))) & 0xFF) << (8 * i);
  return r;
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
template <class T> inline T __ldg(const T* p) { return *p; }
template <class T> inline T __ldcs(const T* p) { return *p; }
template <class T> inline T __ldcg(const T* p) { return *p; }
template <class T> inline T __ldlu(const T* p) { return *p; }
template <class T> inline void __stcs(T* p, T v) { *p = v; }
template <class T> inline void __stcg(T* p, T v) { *p = v; }
inline void __threadfence() {}
inline void __threadfence_block() {}

// Blocks of a grid run on several OS threads: atomics are real (compare-and-swap on the bits).
namespace xemu {
template <class T, class F>
inline T atomic_rmw(T* p, F f) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "atomics on 4- or 8-byte types");
  using U = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  U* up = reinterpret_cast<U*>(p);
  U old = __atomic_load_n(up, __ATOMIC_SEQ_CST), nw;
  T o;
  do {
    std::memcpy(&o, &old, sizeof(T));
    const T n = f(o);
    std::memcpy(&nw, &n, sizeof(T));
  } while (!__atomic_compare_exchange_n(up, &old, nw, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
  return o;
}
}  // namespace xemu
template <class T> inline T atomicAdd(T* p, T v) { return xemu::atomic_rmw(p, [v](T o) { return o + v; }); }
template <class T> inline T atomicSub(T* p, T v) { return xemu::atomic_rmw(p, [v](T o) { return o - v; }); }
template <class T> inline T atomicMax(T* p, T v) { return xemu::atomic_rmw(p, [v](T o) { return o > v ? o : v; }); }
template <class T> inline T atomicMin(T* p, T v) { return xemu::atomic_rmw(p, [v](T o) { return o < v ? o : v; }); }
template <class T> inline T atomicExch(T* p, T v) { return xemu::atomic_rmw(p, [v](T) { return v; }); }
template <class T> inline T atomicCAS(T* p, T cmp, T v) {
  return xemu::atomic_rmw(p, [cmp, v](T o) { return o == cmp ? v : o; });
}
inline unsigned atomicInc(unsigned* p, unsigned lim) {
  return xemu::atomic_rmw(p, [lim](unsigned o) { return o >= lim ? 0u : o + 1; });
}

// ---- barriers and warp collectives --------------------------------------------------------------
namespace xemu {
void block_barrier();                                   // __syncthreads
void warp_barrier();                                    // __syncwarp
// Every live lane of the calling warp passes `bytes` bytes; all_lanes receives 32 * bytes, lane i's
// at offset i * bytes (a lane that has exited leaves the last bytes it passed). Synchronizes the warp.
void warp_allgather(const void* mine, void* all_lanes, size_t bytes);
int lane_id();
int live_mask();  // bit i = lane i of the calling warp still running

template <class T>
inline T shfl_from(T v, int src) {
  static_assert(sizeof(T) <= 16, "shuffle of a type wider than 16 bytes");
  alignas(16) unsigned char all[32][16];
  warp_allgather(&v, all, 16 > sizeof(T) ? sizeof(T) : 16);
  T r;
  std::memcpy(&r, reinterpret_cast<unsigned char*>(all) + (size_t)src * sizeof(T), sizeof(T));
  return r;
}
}  // namespace xemu

inline void __syncthreads() { xemu::block_barrier(); }
inline void __syncwarp(unsigned = 0xffffffffu) { xemu::warp_barrier(); }
template <class T> inline T __shfl_sync(unsigned, T v, int src, int width = 32) {
  const int lane = xemu::lane_id();
  return xemu::shfl_from(v, (lane & ~(width - 1)) + (src & (width - 1)));
}
template <class T> inline T __shfl_xor_sync(unsigned, T v, int mask, int width = 32) {
  const int lane = xemu::lane_id();
  int src = lane ^ mask;
  if ((src & ~(width - 1)) != (lane & ~(width - 1))) src = lane;
  return xemu::shfl_from(v, src);
}
template <class T> inline T __shfl_down_sync(unsigned, T v, unsigned d, int width = 32) {
  const int lane = xemu::lane_id();
  const int seg = lane & ~(width - 1);
  const int src = (lane - seg) + (int)d < width ? lane + (int)d : lane;
  return xemu::shfl_from(v, src);
}
template <class T> inline T __shfl_up_sync(unsigned, T v, unsigned d, int width = 32) {
  const int lane = xemu::lane_id();
  const int seg = lane & ~(width - 1);
  const int src = (lane - seg) >= (int)d ? lane - (int)d : lane;
  return xemu::shfl_from(v, src);
}
inline unsigned __ballot_sync(unsigned, int pred) {
  int all[32] = {0};
  const int mine = pred ? 1 : 0;
  xemu::warp_allgather(&mine, all, sizeof(int));
  const int live = xemu::live_mask();
  unsigned r = 0;
  for (int i = 0; i < 32; ++i)
    if (((live >> i) & 1) && all[i]) r |= 1u << i;
  return r;
}
inline int __any_sync(unsigned m, int pred) { return __ballot_sync(m, pred) != 0; }
inline int __all_sync(unsigned m, int pred) {
  return __ballot_sync(m, pred) == (unsigned)xemu::live_mask();
}
inline unsigned __activemask() { return (unsigned)xemu::live_mask(); }

// ---- runtime API ------------------------------------------------------------------------------
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevicePointer = 17,
  cudaErrorInvalidMemcpyDirection = 21,
  cudaErrorInsufficientDriver = 35,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidDevice = 101,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorNotReady = 600,
  cudaErrorIllegalAddress = 700,
  cudaErrorLaunchFailure = 719,
  cudaErrorStreamCaptureUnsupported = 900,
  cudaErrorStreamCaptureInvalidated = 901,
  cudaErrorUnknown = 999,
};
typedef cudaError_t cudaError;
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};
enum cudaStreamCaptureMode {
  cudaStreamCaptureModeGlobal = 0,
  cudaStreamCaptureModeThreadLocal = 1,
  cudaStreamCaptureModeRelaxed = 2,
};
enum cudaStreamCaptureStatus {
  cudaStreamCaptureStatusNone = 0,
  cudaStreamCaptureStatusActive = 1,
  cudaStreamCaptureStatusInvalidated = 2,
};
#define cudaStreamDefault 0x00
#define cudaStreamNonBlocking 0x01
#define cudaHostAllocDefault 0x00
#define cudaEventDefault 0x00

struct CUstream_st;
struct CUevent_st;
struct CUgraph_st;
struct CUgraphExec_st;
typedef CUstream_st* cudaStream_t;
typedef CUevent_st* cudaEvent_t;
typedef CUgraph_st* cudaGraph_t;
typedef CUgraphExec_st* cudaGraphExec_t;

struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem;
  size_t sharedMemPerBlock;
  int regsPerBlock;
  int warpSize;
  int maxThreadsPerBlock;
  int maxThreadsDim[3];
  int maxGridSize[3];
  int clockRate;
  int major;
  int minor;
  int multiProcessorCount;
  int l2CacheSize;
  int memoryBusWidth;
  int memoryClockRate;
  size_t sharedMemPerMultiprocessor;
  size_t sharedMemPerBlockOptin;
  int maxThreadsPerMultiProcessor;
};

cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorName(cudaError_t e);
const char* cudaGetErrorString(cudaError_t e);
cudaError_t cudaDriverGetVersion(int* v);
cudaError_t cudaRuntimeGetVersion(int* v);
cudaError_t cudaGetDeviceCount(int* n);
cudaError_t cudaGetDevice(int* d);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaMemGetInfo(size_t* free_b, size_t* total_b);
cudaError_t cudaMalloc(void** p, size_t bytes);
template <class T> inline cudaError_t cudaMalloc(T** p, size_t bytes) { return cudaMalloc((void**)p, bytes); }
cudaError_t cudaFree(void* p);
cudaError_t cudaMallocHost(void** p, size_t bytes);
template <class T> inline cudaError_t cudaMallocHost(T** p, size_t bytes) { return cudaMallocHost((void**)p, bytes); }
cudaError_t cudaFreeHost(void* p);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t st = nullptr);
cudaError_t cudaMemset(void* p, int v, size_t bytes);
cudaError_t cudaMemsetAsync(void* p, int v, size_t bytes, cudaStream_t st = nullptr);
cudaError_t cudaStreamCreate(cudaStream_t* s);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode);
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* g);
cudaError_t cudaStreamIsCapturing(cudaStream_t s, cudaStreamCaptureStatus* st);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* e, cudaGraph_t g, unsigned long long flags = 0);
cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t s);
cudaError_t cudaGraphDestroy(cudaGraph_t g);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e);
cudaError_t cudaEventCreate(cudaEvent_t* e);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = nullptr);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b);
cudaError_t cudaFuncSetAttribute(const void*, int, int);

// ---- kernel launch ------------------------------------------------------------------------------
namespace xemu {
// Runs grid x block threads of body(linear thread index); throws std::runtime_error naming the
// kernel on a deadlock. Records the op in the stream's graph instead when the stream is capturing.
void run_grid(const char* name, dim3 grid, dim3 block, std::function<void()> body);
bool enqueue_if_capturing(cudaStream_t st, std::function<void()> op);
void set_launch_error(cudaError_t e, const std::string& why);
// "" when p is null or inside a live device allocation, else a description of where p points.
std::string check_device_pointer(const void* p);

template <class T>
inline void check_arg(const char* kernel, int idx, const T& v, std::string& err) {
  if constexpr (std::is_pointer_v<T>) {
    if (!err.empty()) return;
    const std::string why = check_device_pointer((const void*)v);
    if (!why.empty()) err = std::string(kernel) + ": argument " + std::to_string(idx) + " " + why;
  }
}

template <class... P>
struct Launch {
  void (*k)(P...);
  const char* name;
  dim3 grid, block;
  size_t smem;
  cudaStream_t st;
  template <class... A>
  void operator()(A&&... a) const {
    static_assert(sizeof...(A) == sizeof...(P), "kernel launched with the wrong number of arguments");
    std::tuple<std::decay_t<P>...> args(std::forward<A>(a)...);
    std::string err;
    int idx = 0;
    std::apply([&](const auto&... v) { (check_arg(name, idx++, v, err), ...); }, args);
    if (!err.empty()) {
      set_launch_error(cudaErrorInvalidValue, err);
      return;
    }
    auto kk = k;
    const char* nm = name;
    dim3 g = grid, b = block;
    auto op = [kk, nm, g, b, args]() { run_grid(nm, g, b, [kk, &args]() { std::apply(kk, args); }); };
    if (!enqueue_if_capturing(st, op)) op();
  }
};
template <class... P>
inline Launch<P...> launch(void (*k)(P...), const char* name, dim3 grid, dim3 block, size_t smem = 0,
                           cudaStream_t st = nullptr) {
  return Launch<P...>{k, name, grid, block, smem, st};
}
}  // namespace xemu
