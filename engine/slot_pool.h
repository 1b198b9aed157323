#pragma once
// SlotPool<T>: a bounded pool of reusable objects for in-flight messages. The handle that travels
// through the rings is a plain T* (pointer-sized, trivially copyable): whoever popped it from a
// ring owns it, exactly one stage at a time, and the last stage gives it back with Release.
// Slots are reused, never freed while the pool lives, and keep the capacity of their buffers
// (T::Reset must clear contents, not capacity), so steady state allocates nothing per message.
//
// Budget: at most max_slots slots in flight, and at most byte_budget bytes charged by the slots in
//   flight (the ingest charges a slot with the size of the message it carries). TryAcquire returns
//   nullptr when either limit is reached: that is the backpressure signal for ingest, which then
//   stops reading its source until slots come back. One message larger than the whole budget is
//   still admitted when nothing else is in flight, so no message is ever unadmittable.
// Threading: TryAcquire from any thread (usually the ingest thread); Release from any thread.
//   The free list is a moodycamel::ConcurrentQueue (lock-free MPMC), because releases come from
//   whichever stage finishes a message (sink, dedup, filter) while acquires come from ingest.
// Memory ordering: the queue's enqueue/dequeue synchronise the slot contents between releaser and
//   acquirer; the two budget counters are relaxed RMWs whose only job is admission accounting.

#include <concurrentqueue/concurrentqueue.h>

#include <atomic>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>

#include "engine/base/check.h"

namespace mailrail::engine {

// Base of pooled types: remembers what the slot was charged.
struct PoolSlot {
  std::size_t charged_bytes = 0;
};

template <typename T>
  requires std::derived_from<T, PoolSlot>
class SlotPool {
 public:
  SlotPool(std::size_t max_slots, std::size_t byte_budget)
      : max_slots_(max_slots), byte_budget_(byte_budget), free_(max_slots) {
    MR_CHECK(max_slots > 0) << "SlotPool needs at least one slot";
  }
  SlotPool(const SlotPool&) = delete;
  SlotPool& operator=(const SlotPool&) = delete;

  // Returns a reset slot charged with `bytes`, or nullptr when the budget is exhausted.
  T* TryAcquire(std::size_t bytes) {
    const std::size_t in_flight = bytes_in_flight_.fetch_add(bytes, std::memory_order_relaxed);
    if (in_flight != 0 && in_flight + bytes > byte_budget_) {
      bytes_in_flight_.fetch_sub(bytes, std::memory_order_relaxed);
      return nullptr;
    }
    T* slot = nullptr;
    if (!free_.try_dequeue(slot)) {
      if (created_.fetch_add(1, std::memory_order_relaxed) >= max_slots_) {
        created_.fetch_sub(1, std::memory_order_relaxed);
        bytes_in_flight_.fetch_sub(bytes, std::memory_order_relaxed);
        return nullptr;
      }
      slot = Create();
    }
    slot->charged_bytes = bytes;
    slots_in_flight_.fetch_add(1, std::memory_order_relaxed);
    return slot;
  }

  // Charges an acquired slot for bytes it grew by (a message whose size was unknown up front).
  void Charge(T* slot, std::size_t more_bytes) {
    slot->charged_bytes += more_bytes;
    bytes_in_flight_.fetch_add(more_bytes, std::memory_order_relaxed);
  }

  void Release(T* slot) {
    bytes_in_flight_.fetch_sub(slot->charged_bytes, std::memory_order_relaxed);
    slots_in_flight_.fetch_sub(1, std::memory_order_relaxed);
    slot->charged_bytes = 0;
    slot->Reset();
    free_.enqueue(slot);
  }

  std::size_t bytes_in_flight() const { return bytes_in_flight_.load(std::memory_order_relaxed); }
  std::size_t slots_in_flight() const { return slots_in_flight_.load(std::memory_order_relaxed); }
  std::size_t max_slots() const { return max_slots_; }
  std::size_t byte_budget() const { return byte_budget_; }

 private:
  T* Create() {
    std::lock_guard lock(storage_mutex_);  // only while the pool grows to max_slots
    return &storage_.emplace_back();
  }

  const std::size_t max_slots_;
  const std::size_t byte_budget_;
  moodycamel::ConcurrentQueue<T*> free_;
  std::atomic<std::size_t> created_{0};
  std::atomic<std::size_t> bytes_in_flight_{0};
  std::atomic<std::size_t> slots_in_flight_{0};
  std::mutex storage_mutex_;
  std::deque<T> storage_;  // stable addresses; slots live as long as the pool
};

}  // namespace mailrail::engine
