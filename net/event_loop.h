#pragma once
// EventLoop: one io_uring instance driven by one network thread. Sockets, timers and cross-thread
// wake-ups all complete through the same ring, so the thread sleeps in exactly one place
// (io_uring_submit_and_wait) and every iteration submits everything prepared since the last one
// with a single syscall (batched submission).
//
// Setup: the ring prefers IORING_SETUP_DEFER_TASKRUN + SINGLE_ISSUER (completions are produced
//   only when the loop thread enters the kernel, no inter-processor signals), then COOP_TASKRUN,
//   then the default. With SINGLE_ISSUER only the loop thread may submit: other threads use Post().
// Threading: Run() is called by exactly one thread, the loop thread; every other method except
//   Post() and Stop() must be called on that thread (from inside a completion or a posted task).
//   Post() and Stop() may be called from any thread.
// Completions: an operation is prepared with Prepare(handler, tag), which stores the handler
//   pointer (8-byte aligned) with a 3-bit tag in the SQE's user_data. When the CQE arrives the loop
//   calls handler->OnCompletion(cqe, tag). A handler must outlive every operation it prepared;
//   objects that own sockets count their pending operations and free themselves only when the
//   last one has completed (see HttpServer's connections).
// Provided buffers: when the kernel accepts io_uring_register_buf_ring, the loop owns a ring of
//   `buffer_count` buffers of `buffer_size` bytes in group kBufferGroup; multishot receives pick
//   buffers from it and the consumer returns each one with RecycleBuffer() once it has copied or
//   parsed the bytes. has_buffer_ring() is false when registration failed: callers then receive
//   into their own buffers with single-shot recv.
// Timers: RunAfter() arms one io_uring timeout per call; timers are not cancellable (callers
//   guard their callbacks with a generation number or a weak reference when needed).
// Cross-thread work: Post() appends a task under a mutex and writes an eventfd only when the queue
//   was empty, so a burst of posts costs one wake-up. The loop keeps one read of the eventfd armed.
// Memory ordering: the mutex orders the task contents between poster and loop; stop_ is an atomic
//   read by the loop after every wake-up.

#include <liburing.h>
// <linux/fs.h>, pulled in by liburing, defines BLOCK_SIZE, which collides with the member of that
// name in moodycamel::ConcurrentQueue (engine/slot_pool.h); mailrail never uses the macro.
#undef BLOCK_SIZE

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <unordered_set>
#include <vector>

#include "engine/base/result.h"

namespace mailrail::net {

using Clock = std::chrono::steady_clock;

class CompletionHandler {
 public:
  virtual void OnCompletion(const io_uring_cqe& cqe, unsigned tag) = 0;

 protected:
  ~CompletionHandler() = default;
};

struct EventLoopConfig {
  unsigned ring_entries = 1024;   // submission queue entries (completion queue is twice that)
  unsigned buffer_count = 1024;   // provided receive buffers, a power of two
  unsigned buffer_size = 16384;   // bytes per provided buffer
  bool use_buffer_ring = true;    // false forces the single-shot receive fallback (tests)
  bool use_fast_task_work = true; // DEFER_TASKRUN / COOP_TASKRUN when the kernel has them
};

class EventLoop {
 public:
  static constexpr std::uint16_t kBufferGroup = 1;
  static constexpr unsigned kMaxTag = 7;

  static base::Result<std::unique_ptr<EventLoop>> Create(const EventLoopConfig& config);
  ~EventLoop();
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  // Loop thread: runs until Stop(). Returns after the current iteration's completions ran.
  void Run();

  // Any thread.
  void Post(std::function<void()> task);
  void Stop();

  // Loop thread only. -----------------------------------------------------------------------
  // A zeroed SQE whose completion goes to handler->OnCompletion(cqe, tag). Never returns null:
  // when the submission queue is full it submits what is queued first.
  io_uring_sqe* Prepare(CompletionHandler* handler, unsigned tag);
  // An SQE whose completion is ignored (cancellations, fire-and-forget closes).
  io_uring_sqe* PrepareIgnored();

  bool has_buffer_ring() const { return buffer_ring_ != nullptr; }
  unsigned buffer_size() const { return config_.buffer_size; }
  // The provided buffer a completion used (cqe.flags has IORING_CQE_F_BUFFER).
  std::span<char> BufferOf(const io_uring_cqe& cqe, std::size_t bytes);
  void RecycleBuffer(const io_uring_cqe& cqe);

  void RunAfter(std::chrono::milliseconds delay, std::function<void()> fn);
  // Runs `hook` after every batch of completions, before the loop submits and sleeps again: the
  // place to flush work gathered from many completions in one go (e.g. one ring push per batch).
  void AddBatchEndHook(std::function<void()> hook);
  // Time of the current iteration's wake-up (cheap; refreshed once per batch of completions).
  Clock::time_point now() const { return now_; }
  bool is_loop_thread() const;

 private:
  class TaskReader;
  class Timer;

  explicit EventLoop(const EventLoopConfig& config);
  base::Status Init();
  void SetUpBufferRing();
  void ArmTaskRead();
  void RunTasks();

  EventLoopConfig config_;
  io_uring ring_{};
  bool ring_ready_ = false;
  bool needs_enable_ = false;  // created disabled (single issuer): Run() enables it
  std::vector<std::function<void()>> batch_end_hooks_;
  std::unordered_set<Timer*> timers_;  // armed, not yet fired (freed at destruction)
  int event_fd_ = -1;
  std::uint64_t event_value_ = 0;
  std::unique_ptr<TaskReader> task_reader_;

  io_uring_buf_ring* buffer_ring_ = nullptr;
  std::size_t buffer_ring_bytes_ = 0;
  std::unique_ptr<char[]> buffers_;

  Clock::time_point now_ = Clock::now();
  std::atomic<bool> stop_{false};
  std::atomic<std::uint64_t> thread_id_{0};

  std::mutex tasks_mutex_;
  std::vector<std::function<void()>> tasks_;
  std::vector<std::function<void()>> running_tasks_;
};

}  // namespace mailrail::net
