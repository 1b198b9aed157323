#include "stages/dedup_set.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

namespace mailrail::stages {
namespace {

Fingerprint Key(std::uint64_t i) {
  std::uint64_t z = i * 0x9E3779B97F4A7C15ULL + 1;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return Fingerprint{z ^ (z >> 31), (z * 0xD6E8FEB86659FD93ULL) ^ (z >> 17)};
}

DedupSetConfig Config(std::uint64_t capacity, std::size_t shards = 4, std::int64_t max_age_ms = 0) {
  DedupSetConfig c;
  c.capacity = capacity;
  c.shards = shards;
  c.max_age_ms = max_age_ms;
  c.age_granularity_ms = 1000;
  return c;
}

TEST(DedupSetTest, InsertThenFindReturnsOriginalLsn) {
  DedupSet set(Config(10'000));
  for (std::uint64_t i = 0; i < 5000; ++i) {
    ASSERT_FALSE(set.InsertOrFind({Key(i), 100 + i, 0}).duplicate) << i;
  }
  EXPECT_EQ(set.size(), 5000u);
  for (std::uint64_t i = 0; i < 5000; ++i) {
    const DedupAnswer a = set.InsertOrFind({Key(i), 900'000 + i, 0});
    ASSERT_TRUE(a.duplicate) << i;
    EXPECT_EQ(a.original_lsn, 100 + i);
  }
  EXPECT_EQ(set.size(), 5000u);
  EXPECT_FALSE(set.Contains(Key(5000)));
}

TEST(DedupSetTest, BatchSeesDuplicatesWithinTheSameBatch) {
  DedupSet set(Config(1000));
  std::vector<DedupQuery> q{{Key(1), 1, 0}, {Key(2), 2, 0}, {Key(1), 3, 0}, {Key(3), 4, 0}, {Key(2), 5, 0}};
  std::vector<DedupAnswer> a(q.size());
  set.InsertOrFindBatch(q, a);
  EXPECT_FALSE(a[0].duplicate);
  EXPECT_FALSE(a[1].duplicate);
  EXPECT_TRUE(a[2].duplicate);
  EXPECT_EQ(a[2].original_lsn, 1u);
  EXPECT_FALSE(a[3].duplicate);
  EXPECT_TRUE(a[4].duplicate);
  EXPECT_EQ(a[4].original_lsn, 2u);
}

TEST(DedupSetTest, KeysSpreadOverShardsByFingerprintBits) {
  DedupSet set(Config(40'000, 8));
  for (std::uint64_t i = 0; i < 20'000; ++i) set.InsertOrFind({Key(i), i, 0});
  for (std::size_t s = 0; s < 8; ++s) {
    EXPECT_GT(set.shard(s).size(), 2000u) << s;
    EXPECT_LT(set.shard(s).size(), 3000u) << s;
  }
  const Fingerprint k = Key(7);
  EXPECT_EQ(set.ShardOf(k), k.low >> 61);
  EXPECT_TRUE(set.shard(set.ShardOf(k)).Contains(k.high));
}

TEST(DedupSetTest, CountWindowExpiresOldestFirst) {
  DedupSet set(Config(1000, 1));
  for (std::uint64_t i = 0; i < 1500; ++i) ASSERT_FALSE(set.InsertOrFind({Key(i), i, 0}).duplicate);
  EXPECT_EQ(set.size(), 1000u);
  EXPECT_EQ(set.evicted_by_count(), 500u);
  for (std::uint64_t i = 0; i < 500; ++i) EXPECT_FALSE(set.Contains(Key(i))) << i;
  for (std::uint64_t i = 500; i < 1500; ++i) EXPECT_TRUE(set.Contains(Key(i))) << i;
}

TEST(DedupSetTest, LongRunOfEvictionsKeepsTableConsistent) {
  // Many wraps of a small ring exercise overflow counts and deletion without tombstones.
  DedupSet set(Config(256, 1));
  for (std::uint64_t i = 0; i < 200'000; ++i) {
    ASSERT_FALSE(set.InsertOrFind({Key(i), i, 0}).duplicate) << i;
    if (i >= 256 && i % 97 == 0) {
      ASSERT_TRUE(set.InsertOrFind({Key(i - 255), 0, 0}).duplicate) << i;
      ASSERT_FALSE(set.Contains(Key(i - 256))) << i;
    }
  }
  EXPECT_EQ(set.size(), 256u);
}

TEST(DedupSetTest, AgeWindowExpiresOldEntries) {
  DedupSet set(Config(100'000, 2, /*max_age_ms=*/60'000));
  const std::int64_t t0 = 1'700'000'000'000;
  for (std::uint64_t i = 0; i < 100; ++i) set.InsertOrFind({Key(i), i, t0});
  for (std::uint64_t i = 100; i < 200; ++i) set.InsertOrFind({Key(i), i, t0 + 30'000});
  EXPECT_EQ(set.size(), 200u);
  // 61 s after t0 (+ granularity): the first hundred are out of the window, the rest are in.
  set.InsertOrFind({Key(1000), 1000, t0 + 62'000});
  EXPECT_EQ(set.evicted_by_age(), 100u);
  for (std::uint64_t i = 0; i < 100; ++i) EXPECT_FALSE(set.Contains(Key(i))) << i;
  for (std::uint64_t i = 100; i < 200; ++i) EXPECT_TRUE(set.Contains(Key(i))) << i;
  EXPECT_TRUE(set.InsertOrFind({Key(150), 5, t0 + 62'000}).duplicate);
  set.ExpireOlderThan(t0 + 100'000);
  EXPECT_EQ(set.size(), 0u);
}

TEST(DedupSetTest, LsnIsRebuiltAcrossThe32BitBoundary) {
  DedupSet set(Config(100, 1));
  const std::uint64_t base = (5ULL << 32) - 3;
  for (std::uint64_t i = 0; i < 6; ++i) set.InsertOrFind({Key(i), base + i, 0});
  for (std::uint64_t i = 0; i < 6; ++i) EXPECT_EQ(set.InsertOrFind({Key(i), 0, 0}).original_lsn, base + i);
}

TEST(DedupSetTest, EntriesAreOldestFirstAndReportMemory) {
  DedupSet set(Config(1200, 1));
  for (std::uint64_t i = 0; i < 1300; ++i) set.InsertOrFind({Key(i), i + 1, 0});
  const auto entries = set.shard(0).Entries();
  ASSERT_EQ(entries.size(), 1200u);
  EXPECT_EQ(entries.front().key64, Key(100).high);
  EXPECT_EQ(entries.front().lsn, 101u);
  EXPECT_EQ(entries.back().key64, Key(1299).high);
  EXPECT_LE(set.bytes_per_key(), 24.0);
}

}  // namespace
}  // namespace mailrail::stages
