#include "stages/dedup_set.h"

#include <emmintrin.h>

#include <algorithm>
#include <bit>
#include <cstring>

#include "engine/base/check.h"

namespace mailrail::stages {
namespace {

constexpr double kMaxLoad = 0.75;
constexpr std::uint32_t kSlotMask = (1u << 12) - 1;

// Bit i set when tags[i] == tag, for the 12 tag bytes at the start of a bucket.
inline std::uint32_t MatchTags(const std::uint8_t* tags, std::uint8_t tag) {
  const __m128i group = _mm_load_si128(reinterpret_cast<const __m128i*>(tags));
  const __m128i eq = _mm_cmpeq_epi8(group, _mm_set1_epi8(static_cast<char>(tag)));
  return static_cast<std::uint32_t>(_mm_movemask_epi8(eq)) & kSlotMask;
}

}  // namespace

DedupShard::DedupShard(std::uint64_t capacity, std::int64_t age_granularity_ms)
    : capacity_(capacity), age_granularity_ms_(std::max<std::int64_t>(age_granularity_ms, 1)) {
  MR_CHECK(capacity_ > 0 && capacity_ < (1ULL << 32)) << "dedup shard capacity out of range: " << capacity_;
  num_buckets_ = static_cast<std::size_t>(static_cast<double>(capacity_) / (kSlots * kMaxLoad)) + 1;
  buckets_.reset(new Bucket[num_buckets_]());  // value-initialised: every tag free, overflow 0
  keys_ = std::make_unique_for_overwrite<std::uint64_t[]>(capacity_);
  lsn_low_ = std::make_unique_for_overwrite<std::uint32_t[]>(capacity_);
}

std::size_t DedupShard::bytes_reserved() const {
  return num_buckets_ * sizeof(Bucket) + capacity_ * (sizeof(std::uint64_t) + sizeof(std::uint32_t)) +
         marks_.size() * sizeof(Mark);
}

std::uint64_t DedupShard::FullLsn(std::uint32_t low) const {
  std::uint64_t lsn = (max_lsn_ & ~0xFFFF'FFFFULL) | low;
  if (lsn > max_lsn_ && lsn >= (1ULL << 32)) lsn -= 1ULL << 32;
  return lsn;
}

bool DedupShard::Contains(std::uint64_t key64) const {
  const std::uint8_t tag = Tag(key64);
  for (std::size_t b = Home(key64);; b = Next(b)) {
    const Bucket& bucket = buckets_[b];
    for (std::uint32_t m = MatchTags(bucket.tags, tag); m != 0; m &= m - 1) {
      if (keys_[bucket.refs[std::countr_zero(m)]] == key64) return true;
    }
    if (bucket.overflow == 0) return false;
  }
}

DedupAnswer DedupShard::InsertOrFind(std::uint64_t key64, std::uint64_t lsn, std::int64_t time_ms) {
  const std::uint8_t tag = Tag(key64);
  const std::size_t home = Home(key64);
  for (std::size_t b = home;; b = Next(b)) {
    const Bucket& bucket = buckets_[b];
    for (std::uint32_t m = MatchTags(bucket.tags, tag); m != 0; m &= m - 1) {
      const std::uint32_t ref = bucket.refs[std::countr_zero(m)];
      if (keys_[ref] == key64) return DedupAnswer{true, FullLsn(lsn_low_[ref])};
    }
    if (bucket.overflow == 0) break;
  }
  // Absent: append to the ring (evicting the oldest when full), then place in the table.
  if (head_ - tail_ == capacity_) {
    // Steady state: every insert evicts. Fetch the bucket of the entry evicted 8 inserts from now.
    const std::uint64_t ahead = tail_slot_ + 8;
    Prefetch(keys_[ahead >= capacity_ ? ahead % capacity_ : ahead]);
    EvictOldest();
    ++evicted_by_count_;
  }
  if (marks_.empty() || time_ms >= marks_.back().time_ms + age_granularity_ms_) {
    marks_.push_back(Mark{head_, marks_.empty() ? time_ms : std::max(time_ms, marks_.back().time_ms)});
  }
  const auto ref = static_cast<std::uint32_t>(head_slot_);
  keys_[ref] = key64;
  lsn_low_[ref] = static_cast<std::uint32_t>(lsn);
  max_lsn_ = std::max(max_lsn_, lsn);
  ++head_;
  if (++head_slot_ == capacity_) head_slot_ = 0;
  Place(key64, ref);
  return DedupAnswer{false, 0};
}

void DedupShard::Place(std::uint64_t key64, std::uint32_t ref) {
  const std::uint8_t tag = Tag(key64);
  const std::size_t home = Home(key64);
  for (std::size_t b = home;; b = Next(b)) {
    Bucket& bucket = buckets_[b];
    const std::uint32_t free = MatchTags(bucket.tags, 0);
    if (free != 0) {
      const int slot = std::countr_zero(free);
      bucket.tags[slot] = tag;
      bucket.refs[slot] = ref;
      // Every bucket passed on the way was full: count the entry as overflowing it.
      for (std::size_t p = home; p != b; p = Next(p)) {
        if (buckets_[p].overflow != 0xFFFF) ++buckets_[p].overflow;  // saturated: stays "maybe"
      }
      return;
    }
  }
}

void DedupShard::EvictOldest() {
  const auto ref = static_cast<std::uint32_t>(tail_slot_);
  const std::uint64_t key64 = keys_[ref];
  const std::uint8_t tag = Tag(key64);
  const std::size_t home = Home(key64);
  for (std::size_t b = home;; b = Next(b)) {
    Bucket& bucket = buckets_[b];
    for (std::uint32_t m = MatchTags(bucket.tags, tag); m != 0; m &= m - 1) {
      const int slot = std::countr_zero(m);
      if (bucket.refs[slot] != ref) continue;
      bucket.tags[slot] = 0;
      for (std::size_t p = home; p != b; p = Next(p)) {
        if (buckets_[p].overflow != 0xFFFF) --buckets_[p].overflow;
      }
      ++tail_;
      if (++tail_slot_ == capacity_) tail_slot_ = 0;
      while (marks_.size() > 1 && marks_[1].seq <= tail_) marks_.pop_front();
      if (tail_ == head_) marks_.clear();
      return;
    }
    MR_CHECK(bucket.overflow != 0) << "dedup shard: oldest ring entry missing from the table";
  }
}

void DedupShard::ExpireOlderThan(std::int64_t cutoff_ms) {
  // A mark is opened when an insert is a granularity newer than the previous mark, so every entry
  // under a mark was inserted before mark.time + granularity: once that is at or before the
  // cutoff, all of them are older than the cutoff.
  while (!marks_.empty()) {
    const bool last = marks_.size() == 1;
    const std::uint64_t end_seq = last ? head_ : marks_[1].seq;
    const std::int64_t end_time = marks_[0].time_ms + age_granularity_ms_;
    if (end_time > cutoff_ms) return;
    // Prefetch the home buckets of the entries about to be evicted, a few ahead.
    constexpr std::uint64_t kAhead = 8;
    for (std::uint64_t seq = tail_; seq < end_seq;) {
      std::uint64_t slot = tail_slot_ + kAhead;
      if (seq + kAhead < end_seq) Prefetch(keys_[slot >= capacity_ ? slot - capacity_ : slot]);
      EvictOldest();
      ++evicted_by_age_;
      ++seq;
    }
    // EvictOldest dropped the mark once its last entry went; a mark can never be left empty.
    MR_CHECK(last ? marks_.empty() : marks_.empty() || marks_.front().seq >= tail_)
        << "dedup shard: age mark outlived its entries";
  }
}

std::vector<DedupEntry> DedupShard::Entries() const {
  std::vector<DedupEntry> out;
  out.reserve(size());
  std::size_t mark = 0;
  std::uint64_t slot = tail_slot_;
  for (std::uint64_t seq = tail_; seq < head_; ++seq) {
    while (mark + 1 < marks_.size() && marks_[mark + 1].seq <= seq) ++mark;
    out.push_back(DedupEntry{keys_[slot], FullLsn(lsn_low_[slot]), marks_.empty() ? 0 : marks_[mark].time_ms});
    if (++slot == capacity_) slot = 0;
  }
  return out;
}

DedupSet::DedupSet(const DedupSetConfig& config) : config_(config) {
  MR_CHECK(std::has_single_bit(config.shards) && config.shards <= 4096)
      << "dedup shards must be a power of two <= 4096: " << config.shards;
  MR_CHECK(config.owners >= 1 && config.owners <= config.shards && config.owner < config.owners)
      << "dedup set owner " << config.owner << " of " << config.owners << " with " << config.shards << " shards";
  shard_bits_ = static_cast<unsigned>(std::countr_zero(config.shards));
  const std::uint64_t per_shard = (config.capacity + config.shards - 1) / config.shards;
  shards_.resize(config.shards);
  for (std::size_t i = config.owner; i < config.shards; i += config.owners) {
    shards_[i] = std::make_unique<DedupShard>(per_shard, config.age_granularity_ms);
    capacity_ += per_shard;
  }
}

DedupShard& DedupSet::OwnedShardOf(const Fingerprint& key) const {
  const std::size_t s = ShardOf(key);
  MR_CHECK(shards_[s] != nullptr) << "dedup: key of shard " << s << " routed to worker " << config_.owner << " of "
                                  << config_.owners;
  return *shards_[s];
}

void DedupSet::InsertOrFindBatch(std::span<const DedupQuery> queries, std::span<DedupAnswer> answers) {
  MR_CHECK(answers.size() >= queries.size()) << "answers span too small";
  std::int64_t newest = newest_time_ms_;
  for (const DedupQuery& q : queries) newest = std::max(newest, q.time_ms);
  if (newest != newest_time_ms_) {
    newest_time_ms_ = newest;
    if (config_.max_age_ms > 0) ExpireOlderThan(newest - config_.max_age_ms);
  }
  constexpr std::size_t kAhead = 8;
  const std::size_t n = queries.size();
  for (std::size_t i = 0; i < std::min(n, kAhead); ++i) OwnedShardOf(queries[i].key).Prefetch(queries[i].key.high);
  for (std::size_t i = 0; i < n; ++i) {
    if (i + kAhead < n) OwnedShardOf(queries[i + kAhead].key).Prefetch(queries[i + kAhead].key.high);
    const DedupQuery& q = queries[i];
    answers[i] = OwnedShardOf(q.key).InsertOrFind(q.key.high, q.lsn, q.time_ms);
  }
}

DedupAnswer DedupSet::InsertOrFind(const DedupQuery& query) {
  DedupAnswer answer;
  InsertOrFindBatch(std::span<const DedupQuery>(&query, 1), std::span<DedupAnswer>(&answer, 1));
  return answer;
}

bool DedupSet::Contains(const Fingerprint& key) const { return OwnedShardOf(key).Contains(key.high); }

void DedupSet::ExpireOlderThan(std::int64_t cutoff_ms) {
  for (auto& shard : shards_) {
    if (shard) shard->ExpireOlderThan(cutoff_ms);
  }
}

std::uint64_t DedupSet::size() const {
  std::uint64_t total = 0;
  for (const auto& shard : shards_) total += shard ? shard->size() : 0;
  return total;
}
std::uint64_t DedupSet::evicted_by_count() const {
  std::uint64_t total = 0;
  for (const auto& shard : shards_) total += shard ? shard->evicted_by_count() : 0;
  return total;
}
std::uint64_t DedupSet::evicted_by_age() const {
  std::uint64_t total = 0;
  for (const auto& shard : shards_) total += shard ? shard->evicted_by_age() : 0;
  return total;
}
std::size_t DedupSet::bytes_reserved() const {
  std::size_t total = sizeof(*this) + shards_.size() * sizeof(shards_[0]);
  for (const auto& shard : shards_) total += shard ? sizeof(DedupShard) + shard->bytes_reserved() : 0;
  return total;
}

}  // namespace mailrail::stages
