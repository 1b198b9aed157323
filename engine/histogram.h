#pragma once
// LatencyHistogram: log-bucketed histogram of non-negative values (nanoseconds, bytes, group
// sizes) with 8 sub-buckets per power of two, so any quantile it reports is within 12.5% of the
// true value. 520 buckets, fixed memory, no allocation when recording.
//
// Threading: one writer (the thread that records); any thread may read with Snapshot(), which
//   copies buckets with relaxed loads (a snapshot taken while recording may be a few counts off
//   between buckets, never torn within one). Writers store with relaxed load+store, not RMW: a
//   histogram is never shared by two writers (per-thread counters, aggregated on read).

#include <array>
#include <atomic>
#include <bit>
#include <cstdint>

namespace mailrail::engine {

class LatencyHistogram {
 public:
  static constexpr int kSubBucketBits = 3;
  static constexpr int kBuckets = (64 - kSubBucketBits + 1) << kSubBucketBits;

  void Record(std::uint64_t value) {
    auto& b = buckets_[BucketOf(value)];
    b.store(b.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    if (value > max_.load(std::memory_order_relaxed)) max_.store(value, std::memory_order_relaxed);
  }

  // A plain copy for reading and merging.
  struct Snapshot {
    std::array<std::uint64_t, kBuckets> buckets{};
    std::uint64_t max = 0;

    void Merge(const Snapshot& other) {
      for (int i = 0; i < kBuckets; ++i) buckets[i] += other.buckets[i];
      if (other.max > max) max = other.max;
    }
    std::uint64_t count() const {
      std::uint64_t n = 0;
      for (auto b : buckets) n += b;
      return n;
    }
    // Upper bound of the bucket holding the q-quantile (0 < q <= 1), capped at max; 0 if empty.
    std::uint64_t Quantile(double q) const {
      const std::uint64_t total = count();
      if (total == 0) return 0;
      auto rank = static_cast<std::uint64_t>(q * static_cast<double>(total));
      if (rank == 0) rank = 1;
      std::uint64_t seen = 0;
      for (int i = 0; i < kBuckets; ++i) {
        seen += buckets[i];
        if (seen >= rank) return std::min(UpperBoundOf(i), max);
      }
      return max;
    }
  };

  Snapshot Take() const {
    Snapshot s;
    for (int i = 0; i < kBuckets; ++i) s.buckets[i] = buckets_[i].load(std::memory_order_relaxed);
    s.max = max_.load(std::memory_order_relaxed);
    return s;
  }

  static int BucketOf(std::uint64_t value) {
    if (value < (1u << kSubBucketBits)) return static_cast<int>(value);
    const int magnitude = 63 - std::countl_zero(value);  // >= kSubBucketBits
    const int sub = static_cast<int>((value >> (magnitude - kSubBucketBits)) & ((1u << kSubBucketBits) - 1));
    return ((magnitude - kSubBucketBits + 1) << kSubBucketBits) + sub;
  }
  static std::uint64_t UpperBoundOf(int bucket) {
    if (bucket < (1 << kSubBucketBits)) return static_cast<std::uint64_t>(bucket);
    const int magnitude = (bucket >> kSubBucketBits) + kSubBucketBits - 1;
    const std::uint64_t sub = static_cast<std::uint64_t>(bucket & ((1 << kSubBucketBits) - 1));
    const std::uint64_t low = (std::uint64_t{1} << magnitude) | (sub << (magnitude - kSubBucketBits));
    return low + (std::uint64_t{1} << (magnitude - kSubBucketBits)) - 1;
  }

 private:
  std::array<std::atomic<std::uint64_t>, kBuckets> buckets_{};
  std::atomic<std::uint64_t> max_{0};
};

}  // namespace mailrail::engine
