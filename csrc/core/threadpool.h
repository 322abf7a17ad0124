// Persistent thread pool: workers are created once and reused by every kernel call. The calling
// thread takes part in the work, so a pool of size n has n - 1 workers.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace xsil {

class ThreadPool {
 public:
  // Process-wide pool; its size defaults to the number of online CPUs (or XSIL_NUM_THREADS).
  static ThreadPool& global();

  ~ThreadPool();
  int num_threads() const { return n_threads_; }
  // Resize the pool (total threads, caller included). n >= 1.
  void set_num_threads(int n);
  // Run fn(task, thread) for every task in [0, n_tasks) on up to `threads` threads (0 = pool size).
  // Tasks are handed out dynamically; `thread` is in [0, threads) and identifies per-thread scratch.
  // Calls from several host threads at once are serialized; a call made from inside a task runs
  // inline on the calling thread.
  void parallel_for(int64_t n_tasks, int threads, const std::function<void(int64_t, int)>& fn);
  // The number of CPUs the OS reports online.
  static int hardware_threads();

 private:
  explicit ThreadPool(int n);
  void start_workers(int n_workers);
  void stop_workers();
  void worker_loop(int index, uint64_t seen);
  void run_tasks(int thread);
  static constexpr int kClosed = -(1 << 30);

  int n_threads_ = 1;
  std::vector<std::thread> workers_;
  std::mutex call_mu_;     // serializes parallel_for calls and resizes
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<uint64_t> generation_{0};
  bool stop_ = false;
  // current job. A worker joins by taking a ticket (tickets_ counts the worker slots still open,
  // its value names the slot = thread index); inside_ counts workers between "about to claim" and
  // "done". The caller, once every task is taken and its own are done, closes the tickets and
  // waits only for workers already inside: a worker that is descheduled and has not joined yet
  // never makes the caller wait.
  const std::function<void(int64_t, int)>* fn_ = nullptr;
  int64_t n_tasks_ = 0;
  std::atomic<int64_t> next_task_{0};
  std::atomic<int> tickets_{0};
  std::atomic<int> inside_{0};
};

}  // namespace xsil
