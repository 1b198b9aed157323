#pragma once
// Small helpers shared by the stages' statistics.
//
// BumpSingleWriter: adds to a counter that has exactly one writing thread and any number of
//   readers. A relaxed load + store (no locked read-modify-write) is enough because no other
//   thread writes it; readers see monotonic values with relaxed loads.
// UnixMs: wall-clock milliseconds since the Unix epoch (for records and logs, not for intervals:
//   use the steady clock for those).

#include <atomic>
#include <chrono>
#include <cstdint>

namespace mailrail::base {

inline void BumpSingleWriter(std::atomic<std::uint64_t>& counter, std::uint64_t by = 1) {
  counter.store(counter.load(std::memory_order_relaxed) + by, std::memory_order_relaxed);
}

inline std::int64_t UnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace mailrail::base
