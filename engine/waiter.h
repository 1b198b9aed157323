#pragma once
// Waiter: lets one thread sleep when it has nothing to do, and lets any other thread wake it with
// no syscall unless it is actually asleep.
//
// Threading: PrepareToPark, CancelPark and Park are called only by the owning thread; Notify by
//   any thread (usually the producer or consumer on the other side of a ring).
// Protocol (an event count):
//   owner:    ticket = PrepareToPark();   // parked = true; seq_cst fence
//             if (RecheckForWork()) CancelPark(); else Park(ticket, timeout);
//   notifier: publish work (release store); Notify();  // seq_cst fence; if parked: bump + wake
// Memory ordering: the owner's store of parked_ and the notifier's publication of work are each
//   followed by a seq_cst fence before the other side's load, so at least one side sees the other
//   (store-buffer litmus test): either the owner's recheck finds the work, or the notifier sees
//   parked_ and bumps epoch_. Park sleeps only while epoch_ still equals the ticket, so a wake
//   between the recheck and the futex call is never lost.
// Cost: Notify on a busy (unparked) owner is one fence and one shared load, no syscall.

#include <atomic>
#include <chrono>
#include <cstdint>

namespace mailrail::engine {

class Waiter {
 public:
  std::uint32_t PrepareToPark();
  void CancelPark();
  // Sleeps until Notify or timeout (whichever first); may return spuriously. Clears parked.
  void Park(std::uint32_t ticket, std::chrono::nanoseconds timeout);
  void Notify();

  bool is_parked() const { return parked_.load(std::memory_order_relaxed); }

 private:
  std::atomic<std::uint32_t> epoch_{0};
  std::atomic<bool> parked_{false};
};

// Pause hint for spin loops.
inline void CpuRelax() { __builtin_ia32_pause(); }

}  // namespace mailrail::engine
