#include "engine/spsc_ring.h"

#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <thread>
#include <vector>

namespace mailrail::engine {
namespace {

TEST(SpscRingTest, EmptyRingPopsNothing) {
  SpscRing<std::uint64_t> ring(4);
  std::uint64_t out = 0;
  EXPECT_FALSE(ring.TryPop(out));
  std::array<std::uint64_t, 3> batch{};
  EXPECT_EQ(ring.TryPopBatch(batch), 0u);
  EXPECT_EQ(ring.size_approx(), 0u);
}

TEST(SpscRingTest, FullRingRefusesPushAndKeepsContents) {
  SpscRing<std::uint64_t> ring(4);
  for (std::uint64_t i = 0; i < 4; ++i) ASSERT_TRUE(ring.TryPush(i));
  EXPECT_FALSE(ring.TryPush(99));
  std::array<std::uint64_t, 2> more{7, 8};
  EXPECT_EQ(ring.TryPushBatch(more), 0u);
  EXPECT_EQ(ring.size_approx(), 4u);
  for (std::uint64_t i = 0; i < 4; ++i) {
    std::uint64_t out = 0;
    ASSERT_TRUE(ring.TryPop(out));
    EXPECT_EQ(out, i);
  }
  std::uint64_t out = 0;
  EXPECT_FALSE(ring.TryPop(out));
}

TEST(SpscRingTest, BatchPushIsPartialWhenNearlyFull) {
  SpscRing<std::uint64_t> ring(8);
  std::array<std::uint64_t, 6> in{1, 2, 3, 4, 5, 6};
  ASSERT_EQ(ring.TryPushBatch(in), 6u);
  EXPECT_EQ(ring.TryPushBatch(in), 2u);  // only two slots left
  std::array<std::uint64_t, 8> out{};
  ASSERT_EQ(ring.TryPopBatch(out), 8u);
  EXPECT_EQ(out, (std::array<std::uint64_t, 8>{1, 2, 3, 4, 5, 6, 1, 2}));
}

TEST(SpscRingTest, BatchPopPreservesOrderAcrossWrap) {
  SpscRing<std::uint64_t> ring(8);
  std::array<std::uint64_t, 6> in{1, 2, 3, 4, 5, 6};
  std::array<std::uint64_t, 6> out{};
  ASSERT_EQ(ring.TryPushBatch(in), 6u);
  ASSERT_EQ(ring.TryPopBatch(std::span(out).first(4)), 4u);
  std::array<std::uint64_t, 5> second{7, 8, 9, 10, 11};
  ASSERT_EQ(ring.TryPushBatch(second), 5u);  // slots 6,7 then wraps to 0,1,2
  std::array<std::uint64_t, 7> rest{};
  ASSERT_EQ(ring.TryPopBatch(rest), 7u);
  EXPECT_EQ(rest, (std::array<std::uint64_t, 7>{5, 6, 7, 8, 9, 10, 11}));
}

TEST(SpscRingTest, MixedSingleAndBatchAcrossManyWraps) {
  SpscRing<std::uint32_t> ring(16);
  std::uint32_t next_in = 0, next_out = 0;
  for (int round = 0; round < 1000; ++round) {
    std::vector<std::uint32_t> batch(round % 13);
    for (auto& v : batch) v = next_in++;
    ASSERT_EQ(ring.TryPushBatch(batch), batch.size());
    ASSERT_TRUE(ring.TryPush(next_in++));
    std::vector<std::uint32_t> out(batch.size() + 1);
    ASSERT_EQ(ring.TryPopBatch(out), out.size());
    for (auto v : out) ASSERT_EQ(v, next_out++);
  }
}

TEST(SpscRingTest, TwoThreadsSingleItemsTenMillionInOrder) {
  constexpr std::uint64_t kItems = 10'000'000;
  SpscRing<std::uint64_t> ring(1024);
  std::thread producer([&] {
    for (std::uint64_t i = 0; i < kItems;) {
      if (ring.TryPush(i)) ++i;
    }
  });
  std::uint64_t expected = 0;
  std::uint64_t out = 0;
  while (expected < kItems) {
    if (ring.TryPop(out)) {
      ASSERT_EQ(out, expected);
      ++expected;
    }
  }
  producer.join();
  EXPECT_FALSE(ring.TryPop(out));
}

TEST(SpscRingTest, TwoThreadsBatchesTenMillionInOrder) {
  constexpr std::uint64_t kItems = 10'000'000;
  SpscRing<std::uint64_t> ring(512);
  std::thread producer([&] {
    std::array<std::uint64_t, 37> batch{};  // odd size so batches straddle the wrap point
    std::uint64_t next = 0;
    while (next < kItems) {
      const std::size_t want = std::min<std::uint64_t>(batch.size(), kItems - next);
      for (std::size_t i = 0; i < want; ++i) batch[i] = next + i;
      std::size_t pushed = 0;
      while (pushed < want) pushed += ring.TryPushBatch(std::span(batch).subspan(pushed, want - pushed));
      next += want;
    }
  });
  std::array<std::uint64_t, 64> out{};
  std::uint64_t expected = 0;
  std::uint64_t sum = 0;
  while (expected < kItems) {
    const std::size_t n = ring.TryPopBatch(out);
    for (std::size_t i = 0; i < n; ++i) {
      ASSERT_EQ(out[i], expected);
      sum += out[i];
      ++expected;
    }
  }
  producer.join();
  EXPECT_EQ(sum, kItems * (kItems - 1) / 2);
}

TEST(SpscRingTest, RejectsCapacityThatIsNotAPowerOfTwo) {
  EXPECT_DEATH(SpscRing<int> ring(12), "power of two");
}

}  // namespace
}  // namespace mailrail::engine
