#pragma once
// SpscRing<T>: bounded single-producer/single-consumer ring of trivially copyable T.
//
// Threading: exactly one thread at a time calls the producer methods (TryPush, TryPushBatch) and
//   exactly one thread at a time calls the consumer methods (TryPop, TryPopBatch). They may be the
//   same thread (stages sharing a thread). size_approx() and empty_approx() may be called from any
//   thread and are exact only when both sides are quiescent.
// Blocking: never. A full ring makes TryPush return false and the caller decides (stall the stage,
//   park, apply backpressure upstream); nothing is ever dropped by the ring.
// Memory ordering:
//   - The producer writes slots, then publishes head_ with a release store. The consumer loads
//     head_ with acquire before reading those slots, so the slot writes happen-before the reads.
//   - The consumer copies slots out, then frees them by storing tail_ with release. The producer
//     loads tail_ with acquire before overwriting those slots, so the consumer's reads
//     happen-before the producer's next writes to the same slots.
//   - Each side keeps its own index in a private copy: only that side ever writes it.
//   - Each side keeps a private cached copy of the other side's index and reloads it (acquire)
//     only when the cache says full (producer) or empty (consumer). The shared cache line then
//     moves once per batch, not once per item. No read-modify-write, no CAS, no lock.
// Layout: head_ with the producer's cache of tail_, and tail_ with the consumer's cache of head_,
//   sit kFalseSharingDistance apart so the two sides never write the same cache line.
// Capacity: a power of two. Indices are free-running uint64_t (they never wrap in practice:
//   2^64 items at 10^9/s is 584 years); slot = index & mask_, full when head - tail == capacity.

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <span>
#include <type_traits>

#include "engine/base/cache_line.h"
#include "engine/base/check.h"

namespace mailrail::engine {

template <typename T>
class SpscRing {
  static_assert(std::is_trivially_copyable_v<T>, "SpscRing copies items with memcpy");

 public:
  explicit SpscRing(std::size_t capacity)
      : capacity_(capacity),
        mask_(capacity - 1),
        publish_every_(std::max<std::size_t>(1, std::min<std::size_t>(capacity / 8, 64))),
        slots_(new T[capacity]) {
    MR_CHECK(capacity >= 2 && (capacity & (capacity - 1)) == 0)
        << "SpscRing capacity must be a power of two >= 2, got " << capacity;
  }
  SpscRing(const SpscRing&) = delete;
  SpscRing& operator=(const SpscRing&) = delete;

  // Producer. Returns false when the ring is full.
  bool TryPush(const T& item) {
    const std::uint64_t head = producer_.head.load(std::memory_order_relaxed);
    if (head - producer_.cached_tail == capacity_) {
      producer_.cached_tail = consumer_.tail.load(std::memory_order_acquire);
      if (head - producer_.cached_tail == capacity_) return false;
    }
    slots_[head & mask_] = item;
    producer_.head.store(head + 1, std::memory_order_release);
    return true;
  }

  // Producer. Pushes as many leading items as fit (possibly 0) with one index publish and
  // returns how many were pushed; the caller keeps the rest.
  std::size_t TryPushBatch(std::span<const T> items) {
    const std::uint64_t head = producer_.head.load(std::memory_order_relaxed);
    std::size_t free_slots = capacity_ - (head - producer_.cached_tail);
    if (free_slots < items.size()) {
      producer_.cached_tail = consumer_.tail.load(std::memory_order_acquire);
      free_slots = capacity_ - (head - producer_.cached_tail);
    }
    const std::size_t n = std::min(free_slots, items.size());
    if (n == 0) return 0;
    CopyIn(head, items.data(), n);
    producer_.head.store(head + n, std::memory_order_release);
    return n;
  }

  // Consumer. Returns false when the ring is empty.
  // Freed slots are published lazily: tail_ is stored once every publish_every_ pops, or when the
  // ring is found empty, so the producer's cache line moves once per publish_every_ items instead
  // of once per item (the control-variable batching of MCRingBuffer). The producer may therefore
  // see up to publish_every_ - 1 freed slots as still occupied; it never sees an item early.
  bool TryPop(T& out) {
    const std::uint64_t tail = consumer_.local_tail;
    if (tail == consumer_.cached_head) {
      consumer_.cached_head = producer_.head.load(std::memory_order_acquire);
      if (tail == consumer_.cached_head) {
        PublishTail(tail);
        return false;
      }
    }
    out = slots_[tail & mask_];
    consumer_.local_tail = tail + 1;
    if (tail + 1 - consumer_.published_tail >= publish_every_) PublishTail(tail + 1);
    return true;
  }

  // Consumer. Pops up to out.size() items with one index publish; returns how many.
  std::size_t TryPopBatch(std::span<T> out) {
    const std::uint64_t tail = consumer_.local_tail;
    std::size_t available = consumer_.cached_head - tail;
    if (available < out.size()) {
      consumer_.cached_head = producer_.head.load(std::memory_order_acquire);
      available = consumer_.cached_head - tail;
    }
    const std::size_t n = std::min(available, out.size());
    if (n == 0) {
      PublishTail(tail);
      return 0;
    }
    CopyOut(tail, out.data(), n);
    consumer_.local_tail = tail + n;
    PublishTail(tail + n);
    return n;
  }

  std::size_t capacity() const { return capacity_; }
  // Any thread; a snapshot that may be stale by the time it is used.
  std::size_t size_approx() const {
    const std::uint64_t tail = consumer_.tail.load(std::memory_order_acquire);
    const std::uint64_t head = producer_.head.load(std::memory_order_acquire);
    return head >= tail ? static_cast<std::size_t>(head - tail) : 0;
  }
  bool empty_approx() const { return size_approx() == 0; }

 private:
  void PublishTail(std::uint64_t tail) {
    if (tail != consumer_.published_tail) {
      consumer_.published_tail = tail;
      consumer_.tail.store(tail, std::memory_order_release);
    }
  }

  void CopyIn(std::uint64_t head, const T* items, std::size_t n) {
    const std::size_t first = head & mask_;
    const std::size_t until_end = std::min(n, capacity_ - first);
    std::memcpy(static_cast<void*>(&slots_[first]), items, until_end * sizeof(T));
    std::memcpy(static_cast<void*>(&slots_[0]), items + until_end, (n - until_end) * sizeof(T));
  }
  void CopyOut(std::uint64_t tail, T* out, std::size_t n) const {
    const std::size_t first = tail & mask_;
    const std::size_t until_end = std::min(n, capacity_ - first);
    std::memcpy(static_cast<void*>(out), &slots_[first], until_end * sizeof(T));
    std::memcpy(static_cast<void*>(out + until_end), &slots_[0], (n - until_end) * sizeof(T));
  }

  struct alignas(base::kFalseSharingDistance) ProducerSide {
    std::atomic<std::uint64_t> head{0};
    std::uint64_t cached_tail = 0;  // producer-private
  };
  struct alignas(base::kFalseSharingDistance) ConsumerSide {
    std::atomic<std::uint64_t> tail{0};  // published: slots below it are free for the producer
    std::uint64_t local_tail = 0;        // consumer-private: next slot to read
    std::uint64_t published_tail = 0;    // consumer-private: last value stored to tail
    std::uint64_t cached_head = 0;       // consumer-private
  };

  ProducerSide producer_;
  ConsumerSide consumer_;
  // Read-only after construction; on its own line so neither side's writes evict it.
  alignas(base::kFalseSharingDistance) const std::size_t capacity_;
  const std::size_t mask_;
  const std::size_t publish_every_;  // single-item pops between tail publications
  const std::unique_ptr<T[]> slots_;
};

}  // namespace mailrail::engine
