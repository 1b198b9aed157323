#pragma once
// DedupShard / DedupSet: the dedup stage's memory of recently seen message fingerprints, with a
// sliding window by count and by age (oldest entries expire first), written by hand for memory
// density and cache behaviour.
//
// Layout of one shard (the whole set is 2^k shards, the shard chosen by the top k bits of
// Fingerprint::low; the shard bits are implied and never stored):
//   ring    capacity entries in insertion (FIFO) order: key64 = Fingerprint::high (8 B) and the low
//           32 bits of the LSN of the message that first carried the key (4 B). The full LSN is
//           rebuilt from the shard's highest LSN, exact while the window spans < 2^32 LSNs.
//   table   buckets of one cache line each: 12 one-byte tags (0 = free, else 0x80 | 7 hash bits),
//           an overflow count, and 12 uint32 references to ring slots. A key's home bucket is
//           fastrange(key64, buckets); probing goes to the next bucket only while the bucket's
//           overflow count (entries homed at or before it that were placed past it) is non-zero,
//           so deletions need no tombstones (the F14 scheme). Tags are compared 16 at a time with
//           SSE2; a tag hit is confirmed against the ring's key64, so a false duplicate needs a
//           collision on 64 stored + shard bits (probability ~1e-19 per lookup at 10 M keys).
//   marks   (sequence, time) pairs, one per age_granularity, for expiry by age: entries between
//           two marks were inserted within one granularity, so they expire at most one
//           granularity late.
//   Buckets are sized for a load of at most 0.75 at full capacity and never resize: the table
//   holds at most `capacity` live keys, because the ring evicts the oldest before it overwrites.
//   Memory: 64 / (12 * 0.75) + 12 ≈ 19.1 bytes per key of capacity, all allocated up front.
//
// Threading: a DedupShard is owned by one thread (no locks, no atomics). DedupSet is a plain
//   container of shards; whoever calls its batch methods must own every shard it touches. Each
//   dedup stage owns one DedupSet: the whole logical set, or, with several dedup workers, the
//   shards s with s % owners == owner (the others are not allocated; a query for a key of a
//   shard the set does not hold is a routing bug and aborts). Shard indices are always those
//   of the whole logical set, so a snapshot written by any split loads into any other.
// Blocking: never; no allocation after construction except the marks deque (one entry per
//   age granularity).

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <span>
#include <vector>

#include "stages/record.h"

namespace mailrail::stages {

struct DedupSetConfig {
  std::size_t shards = 4;                                  // power of two, 1..4096
  std::uint64_t capacity = 8'000'000;                      // keys remembered, over all shards
  std::int64_t max_age_ms = 7LL * 24 * 3600 * 1000;        // 0: no limit by age
  std::int64_t age_granularity_ms = 60'000;                // expiry by age is this coarse
  std::size_t owner = 0;                                   // this set holds shards s with
  std::size_t owners = 1;                                  //   s % owners == owner (1..shards)
};

// Shard of `key` in a set of 2^shard_bits shards: the top shard_bits bits of Fingerprint::low.
inline std::size_t DedupShardOf(const Fingerprint& key, unsigned shard_bits) {
  return shard_bits == 0 ? 0 : static_cast<std::size_t>(key.low >> (64 - shard_bits));
}

struct DedupQuery {
  Fingerprint key;
  std::uint64_t lsn = 0;      // the message's WAL LSN, remembered for the duplicates log
  std::int64_t time_ms = 0;   // when it was accepted (Unix ms), for expiry by age
};

struct DedupAnswer {
  bool duplicate = false;
  std::uint64_t original_lsn = 0;  // when duplicate: LSN of the message that first had the key
};

// One entry as written to and read from a snapshot, oldest first.
struct DedupEntry {
  std::uint64_t key64 = 0;
  std::uint64_t lsn = 0;
  std::int64_t time_ms = 0;  // time of the entry's age mark (a lower bound, granularity-coarse)
};

class DedupShard {
 public:
  DedupShard(std::uint64_t capacity, std::int64_t age_granularity_ms);
  DedupShard(const DedupShard&) = delete;
  DedupShard& operator=(const DedupShard&) = delete;

  // Hints the CPU to fetch key64's home bucket.
  void Prefetch(std::uint64_t key64) const { __builtin_prefetch(&buckets_[Home(key64)], 1, 3); }
  // Finds key64; when absent inserts it (evicting the oldest entry when full).
  DedupAnswer InsertOrFind(std::uint64_t key64, std::uint64_t lsn, std::int64_t time_ms);
  bool Contains(std::uint64_t key64) const;
  // Expires every entry inserted before cutoff_ms (to within one age granularity).
  void ExpireOlderThan(std::int64_t cutoff_ms);

  // Entries oldest first, for snapshots.
  std::vector<DedupEntry> Entries() const;

  std::uint64_t size() const { return head_ - tail_; }
  std::uint64_t capacity() const { return capacity_; }
  std::uint64_t evicted_by_count() const { return evicted_by_count_; }
  std::uint64_t evicted_by_age() const { return evicted_by_age_; }
  std::size_t bytes_reserved() const;

 private:
  static constexpr int kSlots = 12;
  struct alignas(64) Bucket {
    std::uint8_t tags[kSlots];
    std::uint16_t overflow;
    std::uint16_t unused;
    std::uint32_t refs[kSlots];
  };
  static_assert(sizeof(Bucket) == 64);
  struct Mark {
    std::uint64_t seq;
    std::int64_t time_ms;
  };

  std::size_t Home(std::uint64_t key64) const {
    return static_cast<std::size_t>((static_cast<unsigned __int128>(key64) * num_buckets_) >> 64);
  }
  static std::uint8_t Tag(std::uint64_t key64) { return static_cast<std::uint8_t>(0x80 | (key64 & 0x7F)); }
  std::size_t Next(std::size_t b) const { return b + 1 == num_buckets_ ? 0 : b + 1; }
  std::uint64_t FullLsn(std::uint32_t low) const;
  void Place(std::uint64_t key64, std::uint32_t ref);
  void EvictOldest();

  std::uint64_t capacity_;
  std::int64_t age_granularity_ms_;
  std::size_t num_buckets_;
  std::unique_ptr<Bucket[]> buckets_;
  std::unique_ptr<std::uint64_t[]> keys_;
  std::unique_ptr<std::uint32_t[]> lsn_low_;
  std::uint64_t head_ = 0;  // sequence number of the next insert
  std::uint64_t tail_ = 0;  // sequence number of the oldest live entry
  std::uint64_t head_slot_ = 0;
  std::uint64_t tail_slot_ = 0;
  std::uint64_t max_lsn_ = 0;
  std::deque<Mark> marks_;
  std::uint64_t evicted_by_count_ = 0;
  std::uint64_t evicted_by_age_ = 0;
};

class DedupSet {
 public:
  explicit DedupSet(const DedupSetConfig& config);

  // Answers every query in order (a key repeated within the batch is a duplicate of its first
  // occurrence), prefetching ahead so that the cache misses of several keys overlap. Expires by
  // age first, against the newest time_ms in the batch.
  void InsertOrFindBatch(std::span<const DedupQuery> queries, std::span<DedupAnswer> answers);
  DedupAnswer InsertOrFind(const DedupQuery& query);
  bool Contains(const Fingerprint& key) const;
  void ExpireOlderThan(std::int64_t cutoff_ms);

  std::size_t shard_count() const { return shards_.size(); }  // of the whole logical set
  std::size_t ShardOf(const Fingerprint& key) const { return DedupShardOf(key, shard_bits_); }
  bool owns(std::size_t shard) const { return shards_[shard] != nullptr; }
  DedupShard& shard(std::size_t i) { return *shards_[i]; }
  const DedupShard& shard(std::size_t i) const { return *shards_[i]; }
  const DedupSetConfig& config() const { return config_; }

  std::uint64_t size() const;
  std::uint64_t evicted_by_count() const;
  std::uint64_t evicted_by_age() const;
  std::size_t bytes_reserved() const;
  // Keys the shards this set holds can remember (the whole capacity when it holds every shard).
  std::uint64_t capacity() const { return capacity_; }
  // Reserved bytes divided by capacity: the memory cost of one remembered key.
  double bytes_per_key() const { return static_cast<double>(bytes_reserved()) / static_cast<double>(capacity_); }

 private:
  DedupShard& OwnedShardOf(const Fingerprint& key) const;

  DedupSetConfig config_;
  unsigned shard_bits_ = 0;
  std::uint64_t capacity_ = 0;
  std::vector<std::unique_ptr<DedupShard>> shards_;  // nullptr: held by another worker
  std::int64_t newest_time_ms_ = 0;
};

}  // namespace mailrail::stages
