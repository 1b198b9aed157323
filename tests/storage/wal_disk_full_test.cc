// Disk full for real: the WAL on a small tmpfs (tests/storage/wal_tmpfs_full_test.sh mounts one
// and passes it in MAILRAIL_WAL_TMPFS_DIR; without it the test is skipped). fallocate of a new
// segment fails with ENOSPC: appends report kDiskFull, everything accepted before stays durable,
// and appends resume once retention frees space.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>

#include "storage/wal_writer.h"
#include "tests/storage/wal_test_util.h"

namespace mailrail::storage {
namespace {

TEST(WalDiskFullTest, EnospcOnATmpfsPushesBackAndRecoversWhenSpaceReturns) {
  const char* root = std::getenv("MAILRAIL_WAL_TMPFS_DIR");
  if (root == nullptr) GTEST_SKIP() << "MAILRAIL_WAL_TMPFS_DIR not set (run tests/storage/wal_tmpfs_full_test.sh)";
  const std::string dir = std::string(root) + "/wal";
  std::filesystem::remove_all(dir);
  WalConfig config;
  config.dir = dir;
  config.segment_bytes = 256 << 10;  // the script mounts 1 MiB: room for three segments and change
  config.max_group_bytes = 64 << 10;
  auto opened = WalWriter::Open(config);
  ASSERT_TRUE(opened.has_value()) << opened.error().message;
  WalWriter& w = *opened.value();
  const std::string body = testing::Body(9, 3000);
  std::uint64_t accepted = 0;
  WalWriter::AppendStatus status = WalWriter::AppendStatus::kAppended;
  for (int i = 0; i < 10'000; ++i) {
    const auto r = w.TryAppend(testing::Msg(body), Clock::now());
    status = r.status;
    if (status == WalWriter::AppendStatus::kGroupFull) {
      w.Flush();
      continue;
    }
    if (status != WalWriter::AppendStatus::kAppended) break;
    accepted = r.lsn;
    w.Poll(Clock::now());
  }
  ASSERT_EQ(status, WalWriter::AppendStatus::kDiskFull);
  EXPECT_TRUE(w.is_full());
  EXPECT_EQ(w.failure(), nullptr);  // full is backpressure, not a failure
  w.Flush();
  EXPECT_EQ(w.durable_lsn(), accepted);
  const auto before = testing::ReadAll(dir);
  ASSERT_EQ(before.lsns.size(), accepted);
  EXPECT_FALSE(before.report.has_damage());

  // The forward stage catches up; retention deletes forwarded segments and the log moves on.
  w.set_forwarded_lsn(accepted);
  w.Poll(Clock::now());
  w.FinishRetention();
  const auto r = w.TryAppend(testing::Msg(body), Clock::now());
  ASSERT_EQ(r.status, WalWriter::AppendStatus::kAppended);
  EXPECT_EQ(r.lsn, accepted + 1);
  w.Flush();
  EXPECT_FALSE(w.is_full());
  opened.value().reset();
  const auto after = testing::ReadAll(dir, accepted);
  ASSERT_EQ(after.lsns.size(), 1u);
  EXPECT_EQ(after.lsns[0], accepted + 1);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace mailrail::storage
