#include "net/event_loop.h"

#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "engine/base/check.h"

namespace mailrail::net {
namespace {

std::uint64_t CurrentThreadId() {
  return static_cast<std::uint64_t>(std::hash<std::thread::id>{}(std::this_thread::get_id())) | 1;
}

}  // namespace

// Keeps one 8-byte read of the eventfd armed; each completion runs the posted tasks.
class EventLoop::TaskReader final : public CompletionHandler {
 public:
  explicit TaskReader(EventLoop* loop) : loop_(loop) {}
  void OnCompletion(const io_uring_cqe&, unsigned) override {
    loop_->RunTasks();
    loop_->ArmTaskRead();
  }

 private:
  EventLoop* loop_;
};

// One io_uring timeout; deletes itself when it fires.
class EventLoop::Timer final : public CompletionHandler {
 public:
  Timer(EventLoop* loop, std::chrono::milliseconds delay, std::function<void()> fn)
      : loop_(loop), fn_(std::move(fn)) {
    spec_.tv_sec = delay.count() / 1000;
    spec_.tv_nsec = (delay.count() % 1000) * 1000000;
  }
  __kernel_timespec* spec() { return &spec_; }
  void OnCompletion(const io_uring_cqe&, unsigned) override {
    std::unique_ptr<Timer> self(this);
    loop_->timers_.erase(this);
    fn_();
  }

 private:
  EventLoop* loop_;
  __kernel_timespec spec_{};
  std::function<void()> fn_;
};

EventLoop::EventLoop(const EventLoopConfig& config) : config_(config) {}

base::Result<std::unique_ptr<EventLoop>> EventLoop::Create(const EventLoopConfig& config) {
  std::unique_ptr<EventLoop> loop(new EventLoop(config));
  if (auto status = loop->Init(); !status) return status.error();
  return loop;
}

base::Status EventLoop::Init() {
  // Cheapest completion delivery first: task work deferred to our own io_uring_enter
  // (DEFER_TASKRUN, needs SINGLE_ISSUER; the ring starts disabled and the loop thread enables it,
  // becoming the single issuer), then cooperative task work, then the default (signal-based).
  const unsigned attempts[] = {
      IORING_SETUP_CQSIZE | IORING_SETUP_R_DISABLED | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
      IORING_SETUP_CQSIZE | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
      IORING_SETUP_CQSIZE,
  };
  int rc = -EINVAL;
  for (const unsigned flags : attempts) {
    if (!config_.use_fast_task_work && flags != IORING_SETUP_CQSIZE) continue;
    io_uring_params params{};
    params.flags = flags;
    params.cq_entries = config_.ring_entries * 4;
    rc = io_uring_queue_init_params(config_.ring_entries, &ring_, &params);
    if (rc != -EINVAL) {
      needs_enable_ = (flags & IORING_SETUP_R_DISABLED) != 0;
      break;
    }
  }
  if (rc < 0) {
    return base::MakeError("io_uring_init", std::string("io_uring_queue_init: ") + std::strerror(-rc));
  }
  ring_ready_ = true;
  event_fd_ = ::eventfd(0, EFD_CLOEXEC);
  if (event_fd_ < 0) return base::MakeError("eventfd", std::strerror(errno));
  task_reader_ = std::make_unique<TaskReader>(this);
  if (config_.use_buffer_ring) SetUpBufferRing();
  ArmTaskRead();
  return base::OkStatus();
}

void EventLoop::SetUpBufferRing() {
  const unsigned count = config_.buffer_count;
  MR_CHECK(count > 0 && (count & (count - 1)) == 0) << "buffer_count must be a power of two: " << count;
  buffer_ring_bytes_ = count * sizeof(io_uring_buf);
  void* mem = ::mmap(nullptr, buffer_ring_bytes_, PROT_READ | PROT_WRITE,
                     MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  if (mem == MAP_FAILED) return;
  auto* br = static_cast<io_uring_buf_ring*>(mem);
  io_uring_buf_ring_init(br);
  io_uring_buf_reg reg{};
  reg.ring_addr = reinterpret_cast<std::uintptr_t>(br);
  reg.ring_entries = count;
  reg.bgid = kBufferGroup;
  if (io_uring_register_buf_ring(&ring_, &reg, 0) != 0) {
    ::munmap(mem, buffer_ring_bytes_);  // old kernel: single-shot receives into own buffers
    return;
  }
  buffers_ = std::make_unique<char[]>(static_cast<std::size_t>(count) * config_.buffer_size);
  const int mask = io_uring_buf_ring_mask(count);
  for (unsigned i = 0; i < count; ++i) {
    io_uring_buf_ring_add(br, buffers_.get() + static_cast<std::size_t>(i) * config_.buffer_size,
                          config_.buffer_size, static_cast<unsigned short>(i), mask, static_cast<int>(i));
  }
  io_uring_buf_ring_advance(br, static_cast<int>(count));
  buffer_ring_ = br;
}

EventLoop::~EventLoop() {
  if (ring_ready_) {
    if (buffer_ring_ != nullptr) io_uring_unregister_buf_ring(&ring_, kBufferGroup);
    io_uring_queue_exit(&ring_);
  }
  if (buffer_ring_ != nullptr) ::munmap(buffer_ring_, buffer_ring_bytes_);
  for (Timer* timer : timers_) delete timer;  // never fired: the ring is gone
  if (event_fd_ >= 0) ::close(event_fd_);
}

io_uring_sqe* EventLoop::Prepare(CompletionHandler* handler, unsigned tag) {
  MR_CHECK(tag <= kMaxTag) << "completion tag out of range: " << tag;
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  while (sqe == nullptr) {
    const int rc = io_uring_submit(&ring_);
    MR_CHECK(rc >= 0 || rc == -EINTR || rc == -EAGAIN || rc == -EBUSY)
        << "submission queue full and io_uring_submit failed (before Run() the ring may be disabled: "
        << "prepare fewer than ring_entries operations): " << std::strerror(-rc);
    sqe = io_uring_get_sqe(&ring_);
  }
  io_uring_sqe_set_data64(sqe, reinterpret_cast<std::uint64_t>(handler) | tag);
  return sqe;
}

io_uring_sqe* EventLoop::PrepareIgnored() { return Prepare(nullptr, 0); }

std::span<char> EventLoop::BufferOf(const io_uring_cqe& cqe, std::size_t bytes) {
  MR_CHECK(cqe.flags & IORING_CQE_F_BUFFER) << "completion carries no provided buffer";
  const unsigned bid = cqe.flags >> IORING_CQE_BUFFER_SHIFT;
  return {buffers_.get() + static_cast<std::size_t>(bid) * config_.buffer_size, bytes};
}

void EventLoop::RecycleBuffer(const io_uring_cqe& cqe) {
  if ((cqe.flags & IORING_CQE_F_BUFFER) == 0) return;
  const unsigned bid = cqe.flags >> IORING_CQE_BUFFER_SHIFT;
  io_uring_buf_ring_add(buffer_ring_, buffers_.get() + static_cast<std::size_t>(bid) * config_.buffer_size,
                        config_.buffer_size, static_cast<unsigned short>(bid),
                        io_uring_buf_ring_mask(config_.buffer_count), 0);
  io_uring_buf_ring_advance(buffer_ring_, 1);
}

void EventLoop::RunAfter(std::chrono::milliseconds delay, std::function<void()> fn) {
  auto* timer = new Timer(this, delay, std::move(fn));
  timers_.insert(timer);
  io_uring_prep_timeout(Prepare(timer, 0), timer->spec(), 0, 0);
}

bool EventLoop::is_loop_thread() const {
  return thread_id_.load(std::memory_order_relaxed) == CurrentThreadId();
}

void EventLoop::ArmTaskRead() {
  io_uring_prep_read(Prepare(task_reader_.get(), 0), event_fd_, &event_value_, sizeof(event_value_), 0);
}

void EventLoop::Post(std::function<void()> task) {
  bool was_empty;
  {
    std::lock_guard lock(tasks_mutex_);
    was_empty = tasks_.empty();
    tasks_.push_back(std::move(task));
  }
  if (was_empty) {
    const std::uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(event_fd_, &one, sizeof(one));
  }
}

void EventLoop::Stop() {
  stop_.store(true, std::memory_order_release);
  const std::uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(event_fd_, &one, sizeof(one));
}

void EventLoop::RunTasks() {
  {
    std::lock_guard lock(tasks_mutex_);
    running_tasks_.swap(tasks_);
  }
  for (auto& task : running_tasks_) task();
  running_tasks_.clear();
}

void EventLoop::AddBatchEndHook(std::function<void()> hook) { batch_end_hooks_.push_back(std::move(hook)); }

void EventLoop::Run() {
  thread_id_.store(CurrentThreadId(), std::memory_order_relaxed);
  if (needs_enable_) {
    // liburing 2.3 declares io_uring_enable_rings but does not export it: register directly.
    const long enabled = ::syscall(__NR_io_uring_register, ring_.ring_fd, IORING_REGISTER_ENABLE_RINGS, nullptr, 0);
    MR_CHECK(enabled == 0) << "IORING_REGISTER_ENABLE_RINGS: " << std::strerror(errno);
    needs_enable_ = false;
  }
  constexpr unsigned kBatch = 256;
  io_uring_cqe* batch[kBatch];
  io_uring_cqe copies[kBatch];
  while (!stop_.load(std::memory_order_acquire)) {
    const int rc = io_uring_submit_and_wait(&ring_, 1);
    MR_CHECK(rc >= 0 || rc == -EINTR || rc == -EAGAIN || rc == -EBUSY)
        << "io_uring_submit_and_wait: " << std::strerror(-rc);
    now_ = Clock::now();
    for (;;) {
      const unsigned n = io_uring_peek_batch_cqe(&ring_, batch, kBatch);
      if (n == 0) break;
      for (unsigned i = 0; i < n; ++i) copies[i] = *batch[i];
      io_uring_cq_advance(&ring_, n);
      for (unsigned i = 0; i < n; ++i) {
        const std::uint64_t data = copies[i].user_data;
        auto* handler = reinterpret_cast<CompletionHandler*>(data & ~std::uint64_t{kMaxTag});
        if (handler != nullptr) handler->OnCompletion(copies[i], static_cast<unsigned>(data & kMaxTag));
      }
    }
    for (auto& hook : batch_end_hooks_) hook();
  }
  RunTasks();  // tasks posted before Stop still run (they may release resources)
  thread_id_.store(0, std::memory_order_relaxed);
}

}  // namespace mailrail::net
