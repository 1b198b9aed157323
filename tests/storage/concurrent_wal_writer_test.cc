#include "storage/concurrent_wal_writer.h"

#include <gtest/gtest.h>

#include <set>
#include <thread>

#include "tests/storage/wal_test_util.h"

namespace mailrail::storage {
namespace {

TEST(ConcurrentWalWriterTest, ManyAppendersGetUniqueDurableLsnsAndRecordsReadBack) {
  testing::ScratchDir dir;
  constexpr int kThreads = 8;
  constexpr int kPerThread = 150;
  std::vector<std::vector<std::uint64_t>> lsns(kThreads);
  std::uint64_t groups = 0;
  {
    auto wal = ConcurrentWalWriter::Open(testing::SmallConfig(dir.path()));
    ASSERT_TRUE(wal.has_value());
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; i < kPerThread; ++i) {
          const std::string body = testing::Body(static_cast<std::uint64_t>(t * 1000 + i), 300);
          auto lsn = wal.value()->AppendAndWait(testing::Msg(body, std::to_string(t * 1000 + i)));
          ASSERT_TRUE(lsn.has_value());
          // Durable means readable from disk by a fresh reader right now.
          lsns[t].push_back(lsn.value());
        }
      });
    }
    for (auto& th : threads) th.join();
    groups = wal.value()->stats().groups.load();
  }
  std::set<std::uint64_t> all;
  for (const auto& v : lsns) {
    EXPECT_TRUE(std::is_sorted(v.begin(), v.end()));
    all.insert(v.begin(), v.end());
  }
  EXPECT_EQ(all.size(), static_cast<std::size_t>(kThreads * kPerThread));
  EXPECT_EQ(*all.rbegin(), static_cast<std::uint64_t>(kThreads * kPerThread));
  EXPECT_LT(groups, static_cast<std::uint64_t>(kThreads * kPerThread));  // commits were shared
  const auto back = testing::ReadAll(dir.path());
  ASSERT_EQ(back.raws.size(), static_cast<std::size_t>(kThreads * kPerThread));
  EXPECT_FALSE(back.report.has_damage());
}

TEST(ConcurrentWalWriterTest, DiskBudgetReturnsFullInsteadOfBlocking) {
  testing::ScratchDir dir;
  WalConfig config = testing::SmallConfig(dir.path());
  config.disk_budget_bytes = 2 * config.segment_bytes;
  auto wal = ConcurrentWalWriter::Open(config);
  ASSERT_TRUE(wal.has_value());
  const std::string body = testing::Body(1, 2000);
  std::uint64_t accepted = 0;
  for (int i = 0; i < 200; ++i) {
    auto lsn = wal.value()->AppendAndWait(testing::Msg(body));
    if (!lsn) {
      EXPECT_EQ(lsn.error().code, "wal.full");
      break;
    }
    accepted = lsn.value();
  }
  EXPECT_TRUE(wal.value()->is_full());
  EXPECT_GT(accepted, 20u);
  wal.value()->set_forwarded_lsn(accepted);
  // A full append applies retention before giving up, so the next append succeeds.
  auto next = wal.value()->AppendAndWait(testing::Msg(body));
  ASSERT_TRUE(next.has_value()) << next.error().message;
  EXPECT_EQ(next.value(), accepted + 1);
}

}  // namespace
}  // namespace mailrail::storage
