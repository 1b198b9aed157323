#include "engine/slot_pool.h"

#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

namespace mailrail::engine {
namespace {

struct TestSlot : PoolSlot {
  std::string bytes;
  void Reset() { bytes.clear(); }
};

TEST(SlotPoolTest, SlotLimitAppliesBackpressureUntilRelease) {
  SlotPool<TestSlot> pool(2, 1 << 20);
  TestSlot* a = pool.TryAcquire(10);
  TestSlot* b = pool.TryAcquire(10);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(pool.TryAcquire(10), nullptr);
  pool.Release(a);
  TestSlot* c = pool.TryAcquire(10);
  EXPECT_EQ(c, a);  // reused, not reallocated
  EXPECT_EQ(pool.slots_in_flight(), 2u);
}

TEST(SlotPoolTest, ByteBudgetAppliesBackpressureButAdmitsOneOversizedMessage) {
  SlotPool<TestSlot> pool(8, 100);
  TestSlot* big = pool.TryAcquire(500);  // larger than the budget, but nothing else in flight
  ASSERT_NE(big, nullptr);
  EXPECT_EQ(pool.TryAcquire(1), nullptr);
  pool.Release(big);
  EXPECT_EQ(pool.bytes_in_flight(), 0u);
  TestSlot* a = pool.TryAcquire(60);
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(pool.TryAcquire(50), nullptr);
  EXPECT_NE(pool.TryAcquire(40), nullptr);
  EXPECT_EQ(pool.bytes_in_flight(), 100u);
}

TEST(SlotPoolTest, ReleasedSlotsAreResetButKeepCapacity) {
  SlotPool<TestSlot> pool(1, 1 << 20);
  TestSlot* s = pool.TryAcquire(1);
  s->bytes.assign(4096, 'x');
  const std::size_t capacity = s->bytes.capacity();
  pool.Release(s);
  TestSlot* again = pool.TryAcquire(1);
  EXPECT_TRUE(again->bytes.empty());
  EXPECT_EQ(again->bytes.capacity(), capacity);
}

TEST(SlotPoolTest, ReleaseFromAnotherThreadIsSafe) {
  SlotPool<TestSlot> pool(16, 1 << 20);
  constexpr int kRounds = 100000;
  moodycamel::ConcurrentQueue<TestSlot*> handoff;
  std::thread releaser([&] {
    int released = 0;
    TestSlot* s = nullptr;
    while (released < kRounds) {
      if (handoff.try_dequeue(s)) {
        EXPECT_EQ(s->bytes, "m");
        pool.Release(s);
        ++released;
      }
    }
  });
  for (int i = 0; i < kRounds;) {
    TestSlot* s = pool.TryAcquire(1);
    if (s == nullptr) continue;
    EXPECT_TRUE(s->bytes.empty());
    s->bytes = "m";
    handoff.enqueue(s);
    ++i;
  }
  releaser.join();
  EXPECT_EQ(pool.slots_in_flight(), 0u);
  EXPECT_EQ(pool.bytes_in_flight(), 0u);
}

}  // namespace
}  // namespace mailrail::engine
