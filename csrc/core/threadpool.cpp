#include "core/threadpool.h"

#include <cstdlib>
#include <stdexcept>
#include <string>

#if defined(__x86_64__)
#include <immintrin.h>
#define XSIL_PAUSE() _mm_pause()
#elif defined(__aarch64__)
#define XSIL_PAUSE() __asm__ volatile("yield")
#else
#define XSIL_PAUSE() ((void)0)
#endif

namespace xsil {

namespace {
thread_local bool t_in_pool_task = false;
constexpr int kSpinIters = 20000;  // ~tens of microseconds of spinning before a worker sleeps
}  // namespace

int ThreadPool::hardware_threads() {
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : (int)n;
}

ThreadPool& ThreadPool::global() {
  static ThreadPool* pool = [] {
    int n = hardware_threads();
    if (const char* e = std::getenv("XSIL_NUM_THREADS")) {
      int v = std::atoi(e);
      if (v >= 1 && v <= 1024) n = v;
    }
    return new ThreadPool(n);  // leaked on purpose: no join at static-destruction time
  }();
  return *pool;
}

ThreadPool::ThreadPool(int n) { start_workers(n - 1); n_threads_ = n; }

ThreadPool::~ThreadPool() { stop_workers(); }

void ThreadPool::start_workers(int n_workers) {
  stop_ = false;
  // Each worker starts from the generation current now, so a job published before the thread gets
  // scheduled is still seen as new.
  const uint64_t gen = generation_.load(std::memory_order_acquire);
  for (int i = 0; i < n_workers; ++i) workers_.emplace_back([this, i, gen] { worker_loop(i + 1, gen); });
}

void ThreadPool::stop_workers() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
    generation_.fetch_add(1, std::memory_order_release);
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
  workers_.clear();
}

void ThreadPool::set_num_threads(int n) {
  if (n < 1 || n > 1024)
    throw std::invalid_argument("[threads] thread count " + std::to_string(n) + " is out of range [1, 1024]");
  std::lock_guard<std::mutex> call(call_mu_);
  if (n == n_threads_) return;
  stop_workers();
  start_workers(n - 1);
  n_threads_ = n;
}

void ThreadPool::run_tasks(int thread) {
  const auto& fn = *fn_;
  for (;;) {
    int64_t t = next_task_.fetch_add(1, std::memory_order_relaxed);
    if (t >= n_tasks_) break;
    fn(t, thread);
  }
}

void ThreadPool::worker_loop(int index, uint64_t seen) {
  (void)index;
  for (;;) {
    // Spin briefly: kernel calls come back to back during decoding, and a futex wake costs more
    // than a short decode matmul.
    int spins = 0;
    while (generation_.load(std::memory_order_acquire) == seen && spins < kSpinIters) {
      XSIL_PAUSE();
      ++spins;
    }
    if (generation_.load(std::memory_order_acquire) == seen) {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return generation_.load(std::memory_order_acquire) != seen; });
    }
    seen = generation_.load(std::memory_order_acquire);
    if (stop_) return;
    // Announce, then claim: the caller closes tickets before it waits for inside_ == 0, so a
    // successful claim is always waited for, and a late one finds the tickets closed.
    inside_.fetch_add(1, std::memory_order_seq_cst);
    const int slot = tickets_.fetch_sub(1, std::memory_order_seq_cst);
    if (slot > 0 && generation_.load(std::memory_order_seq_cst) == seen) {
      t_in_pool_task = true;
      run_tasks(slot);  // slot in [1, threads): a unique thread index within this job
      t_in_pool_task = false;
    }
    inside_.fetch_sub(1, std::memory_order_seq_cst);
  }
}

void ThreadPool::parallel_for(int64_t n_tasks, int threads, const std::function<void(int64_t, int)>& fn) {
  if (n_tasks <= 0) return;
  if (threads < 0) throw std::invalid_argument("[threads] thread count " + std::to_string(threads) + " must be >= 1");
  if (t_in_pool_task) {  // nested call: run inline
    for (int64_t t = 0; t < n_tasks; ++t) fn(t, 0);
    return;
  }
  std::lock_guard<std::mutex> call(call_mu_);
  int n = threads == 0 ? n_threads_ : threads;
  if (n > n_threads_) n = n_threads_;
  if ((int64_t)n > n_tasks) n = (int)n_tasks;
  if (n <= 1) {
    t_in_pool_task = true;
    for (int64_t t = 0; t < n_tasks; ++t) fn(t, 0);
    t_in_pool_task = false;
    return;
  }
  fn_ = &fn;
  n_tasks_ = n_tasks;
  next_task_.store(0, std::memory_order_relaxed);
  tickets_.store(n - 1, std::memory_order_seq_cst);
  {
    std::lock_guard<std::mutex> lk(mu_);
    generation_.fetch_add(1, std::memory_order_seq_cst);
  }
  cv_.notify_all();
  t_in_pool_task = true;
  run_tasks(0);
  t_in_pool_task = false;
  // Every task is taken. Close the job to workers that have not joined, then wait for those that did.
  tickets_.store(kClosed, std::memory_order_seq_cst);
  while (inside_.load(std::memory_order_seq_cst) != 0) XSIL_PAUSE();
  fn_ = nullptr;
}

}  // namespace xsil
