#pragma once
// Waiter: lets one thread sleep when it has nothing to do, and lets any other thread wake it with
// no syscall unless it is actually asleep.
//
// Threading: PrepareToPark, CancelPark and Park are called only by the owning thread; Notify by
//   any thread (usually the producer or consumer on the other side of a ring).
// Protocol (an event count):
//   owner:    ticket = PrepareToPark();   // exchange(parked_, 1)
//             if (RecheckForWork()) CancelPark(); else Park(ticket, timeout);
//   notifier: publish work (release store); Notify();  // fetch_or(parked_, 0); if set: bump + wake
// Memory ordering: both sides touch parked_ with an acq_rel read-modify-write, and RMWs on one
//   atomic are totally ordered. If the notifier's RMW comes first, the owner's exchange reads its
//   value and so synchronizes-with it: the work published before Notify is visible to the owner's
//   recheck. If the owner's exchange comes first, the notifier reads 1 and bumps epoch_ and wakes.
//   Either the recheck finds the work or the owner is woken (the store-buffer case that plain
//   stores and loads would lose). Park sleeps only while epoch_ still equals the ticket, so a
//   wake between the recheck and the futex call is never lost. RMWs rather than seq_cst fences
//   because ThreadSanitizer understands them and fences it does not.
// Cost: Notify on a busy (unparked) owner is one locked RMW on a line the owner does not write
//   while busy, no syscall.

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

  bool is_parked() const { return parked_.load(std::memory_order_relaxed) != 0; }

 private:
  std::atomic<std::uint32_t> epoch_{0};
  std::atomic<std::uint32_t> parked_{0};
};

// Pause hint for spin loops.
inline void CpuRelax() { __builtin_ia32_pause(); }

}  // namespace mailrail::engine
