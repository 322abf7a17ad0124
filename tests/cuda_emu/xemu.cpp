// xemu runtime: fibers for CUDA threads, guarded device allocations, synchronous streams with graph
// capture. See include/xemu.h for the model and its limits.
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>

#include "xemu.h"

namespace xemu {

thread_local uint3 tl_threadIdx{0, 0, 0}, tl_blockIdx{0, 0, 0};
thread_local dim3 tl_blockDim{1, 1, 1}, tl_gridDim{1, 1, 1};

// ---- fp16 ---------------------------------------------------------------------------------------
float half_bits_to_float(unsigned short h) {
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1F, man = h & 0x3FF;
  uint32_t bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: value = man * 2^-24
      float f = (float)man * 5.9604644775390625e-08f;
      std::memcpy(&bits, &f, 4);
      bits |= sign;
    }
  } else if (exp == 31) {
    bits = sign | 0x7F800000u | (man << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

unsigned short float_to_half_bits_rn(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t ax = x & 0x7FFFFFFFu;
  if (ax >= 0x7F800000u) return (unsigned short)(sign | 0x7C00u | (ax > 0x7F800000u ? 0x200u : 0u));
  if (ax >= 0x477FF000u) return (unsigned short)(sign | 0x7C00u);  // rounds to >= 65520: inf
  if (ax < 0x38800000u) {  // below the smallest normal half (2^-14): subnormal or zero
    // value / 2^-24 rounded to nearest even, computed exactly in double
    float a;
    std::memcpy(&a, &ax, 4);
    const double q = (double)a * 16777216.0;
    double r = std::nearbyint(q);  // default rounding mode: nearest even
    return (unsigned short)(sign | (uint32_t)r);
  }
  // normal: rebias exponent, round the 13 dropped mantissa bits to nearest even
  uint32_t h = ((ax >> 13) - (112u << 10));
  const uint32_t rest = ax & 0x1FFFu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
  return (unsigned short)(sign | h);
}

// ---- errors -------------------------------------------------------------------------------------
namespace {
thread_local cudaError_t g_last = cudaSuccess;
std::string g_last_why;
cudaError_t fail(cudaError_t e, const std::string& why) {
  g_last = e;
  g_last_why = why;
  if (std::getenv("XSIL_EMU_VERBOSE")) std::fprintf(stderr, "xemu: %s\n", why.c_str());
  return e;
}
}  // namespace

void set_launch_error(cudaError_t e, const std::string& why) { fail(e, why); }

// ---- device memory ------------------------------------------------------------------------------
namespace {
struct Alloc {
  void* map = nullptr;  // mapping base
  size_t map_bytes = 0;
  size_t bytes = 0;     // requested
};
std::mutex g_mem_mu;
std::map<uintptr_t, Alloc> g_allocs;  // user pointer -> allocation
size_t g_live_bytes = 0;
const size_t kPage = (size_t)sysconf(_SC_PAGESIZE);
constexpr size_t kTotalMem = (size_t)8 << 30;

// The allocation containing p (or ending exactly at p when end_ok), or nullptr.
const std::pair<const uintptr_t, Alloc>* find_alloc(const void* p, bool end_ok) {
  const uintptr_t a = (uintptr_t)p;
  auto it = g_allocs.upper_bound(a);
  if (it == g_allocs.begin()) return nullptr;
  --it;
  const uintptr_t lo = it->first, hi = lo + it->second.bytes;
  if (a >= lo && (a < hi || (end_ok && a == hi))) return &*it;
  return nullptr;
}
bool is_device(const void* p) {
  std::lock_guard<std::mutex> lk(g_mem_mu);
  return find_alloc(p, false) != nullptr;
}
// [p, p + n) inside one live allocation
bool device_range(const void* p, size_t n) {
  std::lock_guard<std::mutex> lk(g_mem_mu);
  const auto* a = find_alloc(p, false);
  if (!a) return n == 0 && find_alloc(p, true) != nullptr;
  return (uintptr_t)p + n <= a->first + a->second.bytes;
}
}  // namespace

std::string check_device_pointer(const void* p) {
  if (p == nullptr) return "";
  std::lock_guard<std::mutex> lk(g_mem_mu);
  if (find_alloc(p, true)) return "";
  char buf[96];
  std::snprintf(buf, sizeof buf, "is a host pointer (%p), not device memory from cudaMalloc", p);
  return buf;
}

}  // namespace xemu

using namespace xemu;

cudaError_t cudaMalloc(void** p, size_t bytes) {
  if (!p) return fail(cudaErrorInvalidValue, "cudaMalloc: null result pointer");
  *p = nullptr;
  if (bytes == 0) return cudaSuccess;
  std::lock_guard<std::mutex> lk(g_mem_mu);
  if (g_live_bytes + bytes > kTotalMem) return fail(cudaErrorMemoryAllocation, "cudaMalloc: out of emulated memory");
  const size_t body = (bytes + 15) & ~(size_t)15;
  const size_t data_pages = (body + kPage - 1) / kPage;
  const size_t map_bytes = (data_pages + 1) * kPage;
  void* m = mmap(nullptr, map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return fail(cudaErrorMemoryAllocation, "cudaMalloc: mmap failed");
  uint8_t* guard = (uint8_t*)m + data_pages * kPage;
  mprotect(guard, kPage, PROT_NONE);
  uint8_t* user = guard - body;
  // fresh device memory is not zero on a GPU: fill with a pattern so reads of unwritten memory show
  std::memset(user, 0xA5, body);
  g_allocs[(uintptr_t)user] = Alloc{m, map_bytes, bytes};
  g_live_bytes += bytes;
  *p = user;
  return cudaSuccess;
}

cudaError_t cudaFree(void* p) {
  if (!p) return cudaSuccess;
  std::lock_guard<std::mutex> lk(g_mem_mu);
  auto it = g_allocs.find((uintptr_t)p);
  if (it == g_allocs.end()) return fail(cudaErrorInvalidDevicePointer, "cudaFree: not a device allocation");
  munmap(it->second.map, it->second.map_bytes);
  g_live_bytes -= it->second.bytes;
  g_allocs.erase(it);
  return cudaSuccess;
}

cudaError_t cudaMallocHost(void** p, size_t bytes) {
  *p = std::malloc(bytes ? bytes : 1);
  return *p ? cudaSuccess : fail(cudaErrorMemoryAllocation, "cudaMallocHost failed");
}
cudaError_t cudaFreeHost(void* p) {
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t* f, size_t* t) {
  std::lock_guard<std::mutex> lk(g_mem_mu);
  if (f) *f = kTotalMem - g_live_bytes;
  if (t) *t = kTotalMem;
  return cudaSuccess;
}

// ---- streams, graphs, events --------------------------------------------------------------------
struct CUstream_st {
  bool capturing = false;
  std::vector<std::function<void()>> ops;
};
struct CUgraph_st {
  std::vector<std::function<void()>> ops;
};
struct CUgraphExec_st {
  std::vector<std::function<void()>> ops;
};
struct CUevent_st {
  std::chrono::steady_clock::time_point t;
};

namespace xemu {
bool enqueue_if_capturing(cudaStream_t st, std::function<void()> op) {
  if (!st || !st->capturing) return false;
  st->ops.push_back(std::move(op));
  return true;
}
}  // namespace xemu

namespace {
cudaError_t do_copy(void* dst, const void* src, size_t n, cudaMemcpyKind kind, const char* who) {
  if (n == 0) return cudaSuccess;
  if (!dst || !src) return fail(cudaErrorInvalidValue, std::string(who) + ": null pointer");
  const bool dd = device_range(dst, n), sd = device_range(src, n);
  const bool dst_dev_any = is_device(dst), src_dev_any = is_device(src);
  if ((dst_dev_any && !dd) || (src_dev_any && !sd))
    return fail(cudaErrorInvalidValue, std::string(who) + ": copy runs past the end of a device allocation");
  bool ok = true;
  switch (kind) {
    case cudaMemcpyHostToDevice: ok = dd && !src_dev_any; break;
    case cudaMemcpyDeviceToHost: ok = sd && !dst_dev_any; break;
    case cudaMemcpyDeviceToDevice: ok = dd && sd; break;
    case cudaMemcpyHostToHost: ok = !dst_dev_any && !src_dev_any; break;
    default: ok = true;
  }
  if (!ok) return fail(cudaErrorInvalidValue, std::string(who) + ": pointers do not match the copy direction");
  std::memmove(dst, src, n);
  return cudaSuccess;
}
}  // namespace

cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind kind) {
  return do_copy(dst, src, n, kind, "cudaMemcpy");
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind kind, cudaStream_t st) {
  if (st && st->capturing) {
    st->ops.push_back([=]() { do_copy(dst, src, n, kind, "cudaMemcpyAsync (graph)"); });
    return cudaSuccess;
  }
  return do_copy(dst, src, n, kind, "cudaMemcpyAsync");
}
cudaError_t cudaMemset(void* p, int v, size_t n) {
  if (n == 0) return cudaSuccess;
  if (!device_range(p, n)) return fail(cudaErrorInvalidValue, "cudaMemset: not a device range");
  std::memset(p, v, n);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t st) {
  if (st && st->capturing) {
    st->ops.push_back([=]() { cudaMemset(p, v, n); });
    return cudaSuccess;
  }
  return cudaMemset(p, v, n);
}

cudaError_t cudaStreamCreate(cudaStream_t* s) {
  *s = new CUstream_st();
  return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) { return cudaStreamCreate(s); }
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  delete s;
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  if (s && s->capturing) return fail(cudaErrorStreamCaptureUnsupported, "cudaStreamSynchronize while capturing");
  return cudaSuccess;
}
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode) {
  if (!s) return fail(cudaErrorStreamCaptureUnsupported, "capture on the legacy default stream");
  if (s->capturing) return fail(cudaErrorInvalidValue, "stream already capturing");
  s->capturing = true;
  s->ops.clear();
  return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* g) {
  if (!s || !s->capturing) return fail(cudaErrorInvalidValue, "stream not capturing");
  s->capturing = false;
  *g = new CUgraph_st{std::move(s->ops)};
  s->ops.clear();
  return cudaSuccess;
}
cudaError_t cudaStreamIsCapturing(cudaStream_t s, cudaStreamCaptureStatus* st) {
  *st = (s && s->capturing) ? cudaStreamCaptureStatusActive : cudaStreamCaptureStatusNone;
  return cudaSuccess;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* e, cudaGraph_t g, unsigned long long) {
  if (!g) return fail(cudaErrorInvalidValue, "cudaGraphInstantiate: null graph");
  *e = new CUgraphExec_st{g->ops};
  return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t s) {
  if (!e) return fail(cudaErrorInvalidValue, "cudaGraphLaunch: null graph");
  if (s && s->capturing) {
    auto ops = e->ops;
    s->ops.push_back([ops]() {
      for (auto& op : ops) op();
    });
    return cudaSuccess;
  }
  for (auto& op : e->ops) op();
  return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t g) {
  delete g;
  return cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e) {
  delete e;
  return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t* e) {
  *e = new CUevent_st();
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) { return cudaEventCreate(e); }
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete e;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  if (s && s->capturing) {
    s->ops.push_back([e]() { e->t = std::chrono::steady_clock::now(); });
    return cudaSuccess;
  }
  e->t = std::chrono::steady_clock::now();
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
  *ms = std::chrono::duration<float, std::milli>(b->t - a->t).count();
  return cudaSuccess;
}
cudaError_t cudaFuncSetAttribute(const void*, int, int) { return cudaSuccess; }

// ---- device queries -----------------------------------------------------------------------------
cudaError_t cudaGetLastError() {
  const cudaError_t e = g_last;
  g_last = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return g_last; }
const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInsufficientDriver: return "cudaErrorInsufficientDriver";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    default: return "cudaErrorUnknown";
  }
}
const char* cudaGetErrorString(cudaError_t e) {
  thread_local std::string s;
  s = std::string("xemu: ") + cudaGetErrorName(e) + (g_last_why.empty() ? "" : " (" + g_last_why + ")");
  return s.c_str();
}
cudaError_t cudaDriverGetVersion(int* v) {
  *v = 13000;
  return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int* v) {
  *v = 13000;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) {
  return d == 0 ? cudaSuccess : fail(cudaErrorInvalidDevice, "cudaSetDevice: the emulator has one device");
}
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d) {
  if (d != 0) return fail(cudaErrorInvalidDevice, "cudaGetDeviceProperties: the emulator has one device");
  std::memset(p, 0, sizeof *p);
  std::snprintf(p->name, sizeof p->name, "xsil CUDA emulator (CPU fibers, not a GPU)");
  p->totalGlobalMem = kTotalMem;
  p->sharedMemPerBlock = 48 << 10;
  p->sharedMemPerBlockOptin = 227 << 10;
  p->sharedMemPerMultiprocessor = 228 << 10;
  p->regsPerBlock = 65536;
  p->warpSize = 32;
  p->maxThreadsPerBlock = 1024;
  p->maxThreadsDim[0] = p->maxThreadsDim[1] = 1024;
  p->maxThreadsDim[2] = 64;
  p->maxGridSize[0] = 0x7FFFFFFF;
  p->maxGridSize[1] = p->maxGridSize[2] = 65535;
  p->major = 9;
  p->minor = 0;
  p->multiProcessorCount = 4;
  p->l2CacheSize = 4 << 20;
  p->maxThreadsPerMultiProcessor = 2048;
  return cudaSuccess;
}

// ---- the fiber scheduler ------------------------------------------------------------------------
// Context switch: on x86-64 a minimal switch of the callee-saved registers (swapcontext also makes a
// signal-mask system call per switch, which made switching the emulator's main cost); elsewhere
// ucontext. The FP control state (MXCSR, x87 control word) is not switched: kernels never change it.
#if defined(__x86_64__)
extern "C" void xemu_switch(void** save_sp, void* new_sp);
asm(R"(
.text
.globl xemu_switch
.hidden xemu_switch
.type xemu_switch,@function
xemu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size xemu_switch,.-xemu_switch
)");
#define XEMU_FAST_SWITCH 1
#endif

namespace xemu {
namespace {

constexpr size_t kStack = 256 << 10;
enum class St { Run, WaitBlock, WaitWarp, Done };

struct Fiber {
#if XEMU_FAST_SWITCH
  void* sp = nullptr;
#else
  ucontext_t ctx;
#endif
  void* stack = nullptr;
  St st = St::Run;
  uint3 tid{0, 0, 0};
};

struct Warp {
  int live = 0, waiting = 0;
  unsigned live_mask = 0;
  alignas(16) unsigned char buf[2][32][64];
  unsigned phase[32];  // per lane: exchanges done
};

struct BlockRun {
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  int n = 0, live = 0, waiting_block = 0, cur = -1;
#if XEMU_FAST_SWITCH
  void* sched_sp = nullptr;
#else
  ucontext_t sched;
#endif
  const std::function<void()>* body = nullptr;
};

thread_local BlockRun* g_run = nullptr;
thread_local std::vector<void*> g_stacks;

void fiber_entry() {
  BlockRun* r = g_run;
  (*r->body)();
  Fiber& f = r->fibers[r->cur];
  f.st = St::Done;
#if XEMU_FAST_SWITCH
  xemu_switch(&f.sp, r->sched_sp);  // never resumed
  __builtin_trap();
#endif
  // (ucontext) returning resumes uc_link, the scheduler
}

void yield_to_sched() {
  BlockRun* r = g_run;
#if XEMU_FAST_SWITCH
  xemu_switch(&r->fibers[r->cur].sp, r->sched_sp);
#else
  swapcontext(&r->fibers[r->cur].ctx, &r->sched);
#endif
}

// A fresh fiber on stack [base, base + size) that starts in fiber_entry.
void init_fiber(BlockRun& r, Fiber& f, void* base, size_t size, const void* proto) {
#if XEMU_FAST_SWITCH
  (void)r;
  uintptr_t top = ((uintptr_t)base + size) & ~(uintptr_t)15;
  uint64_t* sp = (uint64_t*)top;
  *--sp = 0;                              // fake return address of fiber_entry (keeps ABI alignment)
  *--sp = (uint64_t)(uintptr_t)&fiber_entry;  // xemu_switch's ret lands here
  for (int i = 0; i < 6; ++i) *--sp = 0;  // rbp rbx r12 r13 r14 r15
  *--sp = *(const uint64_t*)proto;        // mxcsr + x87 control word of the launching thread
  f.sp = sp;
#else
  f.ctx = *(const ucontext_t*)proto;
  f.ctx.uc_stack.ss_sp = base;
  f.ctx.uc_stack.ss_size = size;
  f.ctx.uc_link = &r.sched;
  makecontext(&f.ctx, fiber_entry, 0);
#endif
}

void resume(BlockRun& r, Fiber& f) {
#if XEMU_FAST_SWITCH
  xemu_switch(&r.sched_sp, f.sp);
#else
  swapcontext(&r.sched, &f.ctx);
#endif
}

// Releases the block barrier and the barrier of warp w when all their live participants arrived.
bool release(BlockRun& r, int w) {
  bool any = false;
  if (r.live > 0 && r.waiting_block == r.live) {
    for (auto& f : r.fibers)
      if (f.st == St::WaitBlock) f.st = St::Run;
    r.waiting_block = 0;
    any = true;
  }
  Warp& W = r.warps[w];
  if (W.live > 0 && W.waiting == W.live) {
    for (int l = 0; l < 32; ++l) {
      const size_t i = (size_t)w * 32 + l;
      if (i < r.fibers.size() && r.fibers[i].st == St::WaitWarp) r.fibers[i].st = St::Run;
    }
    W.waiting = 0;
    any = true;
  }
  return any;
}

}  // namespace

int lane_id() { return g_run ? g_run->cur & 31 : 0; }
int live_mask() { return g_run ? (int)g_run->warps[g_run->cur / 32].live_mask : 1; }

void block_barrier() {
  BlockRun* r = g_run;
  if (!r) return;
  r->fibers[r->cur].st = St::WaitBlock;
  ++r->waiting_block;
  yield_to_sched();
}

void warp_barrier() {
  BlockRun* r = g_run;
  if (!r) return;
  r->fibers[r->cur].st = St::WaitWarp;
  ++r->warps[r->cur / 32].waiting;
  yield_to_sched();
}

void warp_allgather(const void* mine, void* all, size_t bytes) {
  BlockRun* r = g_run;
  if (!r) {
    std::memcpy(all, mine, bytes);
    return;
  }
  if (bytes > 64) throw std::logic_error("xemu: warp_allgather of more than 64 bytes per lane");
  Warp& W = r->warps[r->cur / 32];
  const int lane = r->cur & 31;
  // Double-buffered: exchange k uses buffer k % 2. A lane can only write exchange k + 2 after every
  // lane passed the barrier of exchange k + 1, i.e. after every lane read exchange k: one barrier per
  // exchange is enough.
  const int g = W.phase[lane]++ & 1;
  std::memcpy(W.buf[g][lane], mine, bytes);
  warp_barrier();  // every live lane has written
  // every slot, including lanes that wrote this exchange and then exited before this lane resumed
  for (int l = 0; l < 32; ++l) std::memcpy((unsigned char*)all + (size_t)l * bytes, W.buf[g][l], bytes);
}

namespace {

// Runs blocks first, first + step, ... of the grid on the calling OS thread.
void run_blocks(const char* name, dim3 grid, dim3 block, const std::function<void()>& body, uint64_t first,
                uint64_t step) {
  const uint64_t nthr = (uint64_t)block.x * block.y * block.z;
  BlockRun r;
  r.n = (int)nthr;
  r.fibers.resize(nthr);
  r.warps.resize((nthr + 31) / 32);
  r.body = &body;
  while (g_stacks.size() < nthr) {
    void* s = mmap(nullptr, kStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (s == MAP_FAILED) throw std::runtime_error("xemu: cannot map a fiber stack");
    g_stacks.push_back(s);
  }
  tl_blockDim = block;
  tl_gridDim = grid;
#if XEMU_FAST_SWITCH
  uint64_t proto = 0;
  asm volatile("stmxcsr (%0)\n\tfnstcw 4(%0)" : : "r"(&proto) : "memory");
#else
  ucontext_t proto;
  getcontext(&proto);
#endif
  g_run = &r;
  struct Reset {
    ~Reset() { g_run = nullptr; }
  } reset;
  const uint64_t nblocks = (uint64_t)grid.x * grid.y * grid.z;
  std::vector<int> fwd_order, rev_order;
  for (int i = 0; i < r.n; ++i) fwd_order.push_back(i);
  for (int w = (int)r.warps.size() - 1; w >= 0; --w)
    for (int l = 0; l < 32 && w * 32 + l < r.n; ++l) rev_order.push_back(w * 32 + l);
  for (uint64_t b = first; b < nblocks; b += step) {
    const unsigned bx = (unsigned)(b % grid.x), by = (unsigned)((b / grid.x) % grid.y),
                   bz = (unsigned)(b / ((uint64_t)grid.x * grid.y));
    tl_blockIdx = uint3{bx, by, bz};
    r.live = r.n;
    r.waiting_block = 0;
    for (auto& W : r.warps) {
      W.live = 0;
      W.waiting = 0;
      W.live_mask = 0;
      std::memset(W.phase, 0, sizeof W.phase);
    }
    for (int i = 0; i < r.n; ++i) {
      Fiber& f = r.fibers[i];
      f.st = St::Run;
      f.tid = uint3{(unsigned)i % block.x, ((unsigned)i / block.x) % block.y, (unsigned)i / (block.x * block.y)};
      init_fiber(r, f, g_stacks[i], kStack, &proto);
      Warp& W = r.warps[i / 32];
      ++W.live;
      W.live_mask |= 1u << (i & 31);
    }
    // Odd blocks run their warps last-to-first between barriers: a read of another warp's shared
    // memory writes without a __syncthreads() in between then sees stale data in one of the orders.
    const std::vector<int>& order = (b & 1) ? rev_order : fwd_order;
    while (r.live > 0) {
      bool progress = false;
      for (int i : order) {
        Fiber& f = r.fibers[i];
        if (f.st != St::Run) continue;
        r.cur = i;
        tl_threadIdx = f.tid;
        resume(r, f);
        progress = true;
        if (f.st == St::Done) {
          --r.live;
          Warp& W = r.warps[i / 32];
          --W.live;
          W.live_mask &= ~(1u << (i & 31));
        }
        release(r, i / 32);
      }
      if (!progress) {
        int wb = 0, ww = 0;
        for (auto& f : r.fibers) {
          wb += f.st == St::WaitBlock;
          ww += f.st == St::WaitWarp;
        }
        throw std::runtime_error(std::string("[cuda:") + name + "] xemu: deadlock in block (" + std::to_string(bx) +
                                 "," + std::to_string(by) + "," + std::to_string(bz) + "): " + std::to_string(wb) +
                                 " threads at __syncthreads, " + std::to_string(ww) + " at a warp barrier, " +
                                 std::to_string(r.live) + " live (divergent barrier)");
      }
    }
  }
}

// Worker OS threads for the blocks of a grid (XEMU_THREADS, default: the CPU count, at most 8).
// __shared__ is thread_local, so blocks on different threads do not share it.
class Pool {
 public:
  static Pool& get() {
    static Pool p;
    return p;
  }
  int size() const { return (int)workers_.size() + 1; }
  // fn(t) for t in [0, size()), t = 0 on the caller; rethrows the first exception.
  void run(const std::function<void(int)>& fn) {
    {
      std::unique_lock<std::mutex> lk(mu_);
      fn_ = &fn;
      pending_ = (int)workers_.size();
      ++gen_;
      err_ = nullptr;
    }
    cv_.notify_all();
    std::exception_ptr mine;
    try {
      fn(0);
    } catch (...) {
      mine = std::current_exception();
    }
    std::unique_lock<std::mutex> lk(mu_);
    done_.wait(lk, [&] { return pending_ == 0; });
    fn_ = nullptr;
    if (mine) std::rethrow_exception(mine);
    if (err_) std::rethrow_exception(err_);
  }

 private:
  Pool() {
    int n = (int)std::thread::hardware_concurrency();
    if (const char* e = std::getenv("XEMU_THREADS")) n = std::atoi(e);
    n = std::max(1, std::min(n, 8));
    for (int t = 1; t < n; ++t) workers_.emplace_back([this, t] { loop(t); });
  }
  ~Pool() {
    {
      std::unique_lock<std::mutex> lk(mu_);
      stop_ = true;
      ++gen_;
    }
    cv_.notify_all();
    for (auto& w : workers_) w.join();
  }
  void loop(int t) {
    uint64_t seen = 0;
    for (;;) {
      const std::function<void(int)>* fn;
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return gen_ != seen; });
        seen = gen_;
        if (stop_) return;
        fn = fn_;
      }
      std::exception_ptr e;
      try {
        (*fn)(t);
      } catch (...) {
        e = std::current_exception();
      }
      std::unique_lock<std::mutex> lk(mu_);
      if (e && !err_) err_ = e;
      if (--pending_ == 0) done_.notify_all();
    }
  }
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_, done_;
  const std::function<void(int)>* fn_ = nullptr;
  int pending_ = 0;
  uint64_t gen_ = 0;
  bool stop_ = false;
  std::exception_ptr err_;
};

}  // namespace

// XEMU_PROFILE=1: seconds spent per kernel name, printed to stderr at exit.
struct Profile {
  std::mutex mu;
  std::map<std::string, std::pair<double, long>> t;
  bool on = std::getenv("XEMU_PROFILE") != nullptr;
  static Profile& get() {
    static Profile p;
    return p;
  }
  ~Profile() {
    if (!on) return;
    std::vector<std::pair<double, std::string>> v;
    for (auto& [k, x] : t) v.push_back({x.first, k});
    std::sort(v.rbegin(), v.rend());
    for (auto& [sec, k] : v) std::fprintf(stderr, "xemu profile: %8.3f s %7ld launches  %s\n", sec, t[k].second, k.c_str());
  }
  struct Scope {
    const char* name;
    std::chrono::steady_clock::time_point t0;
    explicit Scope(const char* n) : name(n), t0(std::chrono::steady_clock::now()) {}
    ~Scope() {
      Profile& p = get();
      if (!p.on) return;
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::lock_guard<std::mutex> lk(p.mu);
      auto& e = p.t[name];
      e.first += s;
      ++e.second;
    }
  };
};

void run_grid(const char* name, dim3 grid, dim3 block, std::function<void()> body) {
  const uint64_t nthr = (uint64_t)block.x * block.y * block.z;
  if (nthr == 0 || nthr > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 ||
      grid.z > 65535) {
    set_launch_error(cudaErrorInvalidConfiguration,
                     std::string(name) + ": invalid launch configuration grid (" + std::to_string(grid.x) + "," +
                         std::to_string(grid.y) + "," + std::to_string(grid.z) + ") block (" +
                         std::to_string(block.x) + "," + std::to_string(block.y) + "," + std::to_string(block.z) +
                         ")");
    return;
  }
  if (g_run) throw std::logic_error("xemu: kernel launched from inside a kernel");
  Profile::Scope prof(name);
  const uint64_t nblocks = (uint64_t)grid.x * grid.y * grid.z;
  Pool& pool = Pool::get();
  // a parallel launch pays a wake-up of the workers: worth it only with some work per worker
  if (pool.size() == 1 || nblocks * nthr < 4096) {
    run_blocks(name, grid, block, body, 0, 1);
    return;
  }
  const int T = pool.size();
  pool.run([&](int t) { run_blocks(name, grid, block, body, (uint64_t)t, (uint64_t)T); });
}

}  // namespace xemu
