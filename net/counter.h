#pragma once
// Counter: a statistic written by one thread (its owner) and read by any thread.
// Threading: Add() only from the owning thread; value() from any thread.
// Memory ordering: relaxed load + relaxed store, no read-modify-write: the owner is the only
//   writer, so nothing is lost, and readers see some recent value, which is all a metric needs.
//   This keeps per-event cost at a plain add with no locked instruction.

#include <atomic>
#include <cstdint>

namespace mailrail::net {

class Counter {
 public:
  void Add(std::uint64_t n = 1) {
    value_.store(value_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  void Set(std::uint64_t v) { value_.store(v, std::memory_order_relaxed); }
  std::uint64_t value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<std::uint64_t> value_{0};
};

}  // namespace mailrail::net
