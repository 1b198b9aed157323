#include "engine/waiter.h"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <climits>

namespace mailrail::engine {
namespace {

void FutexWait(std::atomic<std::uint32_t>* word, std::uint32_t expected,
               std::chrono::nanoseconds timeout) {
  timespec ts{};
  ts.tv_sec = static_cast<time_t>(timeout.count() / 1'000'000'000);
  ts.tv_nsec = static_cast<long>(timeout.count() % 1'000'000'000);
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAIT_PRIVATE, expected, &ts,
          nullptr, 0);
}

void FutexWakeAll(std::atomic<std::uint32_t>* word) {
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr,
          nullptr, 0);
}

}  // namespace

std::uint32_t Waiter::PrepareToPark() {
  const std::uint32_t ticket = epoch_.load(std::memory_order_acquire);
  parked_.exchange(1, std::memory_order_acq_rel);
  return ticket;
}

void Waiter::CancelPark() { parked_.store(0, std::memory_order_relaxed); }

void Waiter::Park(std::uint32_t ticket, std::chrono::nanoseconds timeout) {
  if (epoch_.load(std::memory_order_acquire) == ticket) {
    FutexWait(&epoch_, ticket, timeout);
  }
  parked_.store(0, std::memory_order_relaxed);
}

void Waiter::Notify() {
  if (parked_.fetch_or(0, std::memory_order_acq_rel) != 0) {
    epoch_.fetch_add(1, std::memory_order_release);
    FutexWakeAll(&epoch_);
  }
}

}  // namespace mailrail::engine
