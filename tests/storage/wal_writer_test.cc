#include "storage/wal_writer.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "storage/checkpoint.h"
#include "tests/storage/wal_test_util.h"

namespace mailrail::storage {
namespace {

using testing::AppendAll;
using testing::Body;
using testing::Msg;
using testing::ReadAll;
using testing::ScratchDir;
using testing::SmallConfig;

std::vector<std::string> Bodies(std::size_t n, std::size_t size, std::uint64_t seed = 0) {
  std::vector<std::string> out;
  for (std::size_t i = 0; i < n; ++i) out.push_back(Body(seed + i, size + (i * 13) % 97));
  return out;
}

std::unique_ptr<WalWriter> MustOpen(WalConfig config) {
  auto w = WalWriter::Open(std::move(config));
  EXPECT_TRUE(w.has_value()) << (w ? "" : w.error().message);
  return w ? std::move(w.value()) : nullptr;
}

TEST(WalWriterTest, AppendedRecordsReadBackInOrderAfterDurability) {
  ScratchDir dir;
  const auto bodies = Bodies(200, 300);
  {
    auto w = MustOpen(SmallConfig(dir.path()));
    ASSERT_NE(w, nullptr);
    EXPECT_EQ(w->open_report().next_lsn, 1u);
    const auto lsns = AppendAll(*w, bodies);
    ASSERT_EQ(lsns.size(), bodies.size());
    for (std::size_t i = 0; i < lsns.size(); ++i) EXPECT_EQ(lsns[i], i + 1);
    EXPECT_EQ(w->durable_lsn(), bodies.size());
    EXPECT_GT(w->stats().groups.load(), 0u);
    EXPECT_EQ(w->stats().records.load(), bodies.size());
  }
  const auto back = ReadAll(dir.path());
  EXPECT_EQ(back.raws, bodies);
  EXPECT_FALSE(back.report.has_damage());
  EXPECT_TRUE(back.report.tail_segment.empty());
}

TEST(WalWriterTest, DurableLsnAdvancesOnlyThroughCompletedGroups) {
  ScratchDir dir;
  auto w = MustOpen(SmallConfig(dir.path()));
  ASSERT_NE(w, nullptr);
  const std::string body = Body(1, 100);
  auto a = w->TryAppend(Msg(body), Clock::now());
  ASSERT_EQ(a.status, WalWriter::AppendStatus::kAppended);
  EXPECT_EQ(w->durable_lsn(), 0u);  // appended, not yet submitted
  EXPECT_TRUE(w->has_unsubmitted());
  w->Poll(Clock::now());            // linger 0: submitted now
  EXPECT_TRUE(w->commit_in_flight());
  auto b = w->TryAppend(Msg(body), Clock::now());  // gathered into the next group
  ASSERT_EQ(b.status, WalWriter::AppendStatus::kAppended);
  while (w->durable_lsn() < a.lsn) {
    w->WaitForEvent(std::chrono::milliseconds(100));
    w->Poll(Clock::now());
  }
  EXPECT_LT(w->durable_lsn(), b.lsn + 1);
  w->Flush();
  EXPECT_EQ(w->durable_lsn(), b.lsn);
}

TEST(WalWriterTest, LingerHoldsTheGroupUntilItsDeadline) {
  ScratchDir dir;
  WalConfig config = SmallConfig(dir.path());
  config.max_linger = std::chrono::microseconds(500);
  auto w = MustOpen(config);
  ASSERT_NE(w, nullptr);
  const Clock::time_point t0 = Clock::now();
  ASSERT_EQ(w->TryAppend(Msg("x"), t0).status, WalWriter::AppendStatus::kAppended);
  EXPECT_EQ(w->next_deadline(), t0 + std::chrono::microseconds(500));
  w->Poll(t0 + std::chrono::microseconds(100));
  EXPECT_FALSE(w->commit_in_flight());
  w->Poll(t0 + std::chrono::microseconds(500));
  EXPECT_TRUE(w->commit_in_flight());
  w->Flush();
  EXPECT_EQ(w->durable_lsn(), 1u);
}

TEST(WalWriterTest, GroupBytesAreBounded) {
  ScratchDir dir;
  auto w = MustOpen(SmallConfig(dir.path()));  // 16 KiB groups
  ASSERT_NE(w, nullptr);
  const std::string body = Body(1, 4000);
  int appended = 0;
  while (w->TryAppend(Msg(body), Clock::now()).status == WalWriter::AppendStatus::kAppended) ++appended;
  const std::size_t footprint = RecordFootprint(testing::Msg(body).payload_bytes());
  EXPECT_EQ(appended, static_cast<int>((16384 - kRecordHeaderBytes) / footprint));  // the next waits
  w->Poll(Clock::now());
  EXPECT_EQ(w->TryAppend(Msg(body), Clock::now()).status, WalWriter::AppendStatus::kAppended);
  w->Flush();
  EXPECT_EQ(w->durable_lsn(), static_cast<std::uint64_t>(appended) + 1);
}

TEST(WalWriterTest, SegmentsRollOverAndStayContiguous) {
  ScratchDir dir;
  const auto bodies = Bodies(400, 1000);  // ~430 KiB over 64 KiB segments
  {
    auto w = MustOpen(SmallConfig(dir.path()));
    ASSERT_NE(w, nullptr);
    ASSERT_EQ(AppendAll(*w, bodies).size(), bodies.size());
    EXPECT_GE(w->stats().segments_created.load(), 7u);
  }
  auto listed = ListSegments(dir.path());
  ASSERT_TRUE(listed.has_value());
  EXPECT_GE(listed->size(), 7u);
  const auto back = ReadAll(dir.path());
  EXPECT_EQ(back.raws, bodies);
  EXPECT_FALSE(back.report.has_damage());
  // Reading after an LSN starts in the right segment and skips exactly the earlier records.
  const auto tail = ReadAll(dir.path(), 250);
  ASSERT_EQ(tail.lsns.size(), 150u);
  EXPECT_EQ(tail.lsns.front(), 251u);
  EXPECT_EQ(tail.raws.front(), bodies[250]);
}

TEST(WalWriterTest, ReopenContinuesLsnsInANewSegment) {
  ScratchDir dir;
  const auto first = Bodies(30, 200);
  const auto second = Bodies(20, 200, 1000);
  {
    auto w = MustOpen(SmallConfig(dir.path()));
    ASSERT_NE(w, nullptr);
    AppendAll(*w, first);
  }
  {
    auto w = MustOpen(SmallConfig(dir.path()));
    ASSERT_NE(w, nullptr);
    EXPECT_EQ(w->open_report().last_lsn, 30u);
    EXPECT_EQ(w->open_report().next_lsn, 31u);
    EXPECT_EQ(w->open_report().tail_bytes_cut, 0u);
    const auto lsns = AppendAll(*w, second);
    EXPECT_EQ(lsns.front(), 31u);
  }
  const auto back = ReadAll(dir.path());
  ASSERT_EQ(back.raws.size(), 50u);
  EXPECT_EQ(back.raws[30], second[0]);
  EXPECT_FALSE(back.report.has_damage());
}

TEST(WalWriterTest, ReopenWithoutWritesDoesNotPileUpSegments) {
  ScratchDir dir;
  {
    auto w = MustOpen(SmallConfig(dir.path()));
    AppendAll(*w, Bodies(5, 100));
  }
  for (int i = 0; i < 3; ++i) MustOpen(SmallConfig(dir.path()));
  auto listed = ListSegments(dir.path());
  ASSERT_TRUE(listed.has_value());
  EXPECT_EQ(listed->size(), 2u);  // the written one and one fresh, empty segment
  auto w = MustOpen(SmallConfig(dir.path()));
  EXPECT_EQ(w->open_report().next_lsn, 6u);
}

// A crash can tear the last record at any byte: zeros from that byte on (the preallocated file
// keeps its size). Recovery must keep every earlier record, cut the torn one, report it, and
// continue with the next LSN.
TEST(WalWriterTest, TornTailAtEveryByteOfTheLastRecordIsCut) {
  ScratchDir dir;
  auto bodies = Bodies(4, 150);
  bodies.push_back("Subject: torn\r\n\r\nshort last record");
  std::uint64_t last_offset = 0;
  std::uint64_t last_end = 0;
  {
    auto w = MustOpen(SmallConfig(dir.path()));
    AppendAll(*w, bodies);
  }
  auto listed = ListSegments(dir.path());
  ASSERT_TRUE(listed.has_value());
  const std::string path = dir.path() + "/" + listed->back().second;
  {
    auto seg = SegmentReader::Open(path);
    ASSERT_TRUE(seg.has_value());
    RecordView v;
    while (seg->Next(&v)) {
      last_offset = v.offset;
      last_end = v.offset + kRecordHeaderBytes + v.header.length;
    }
  }
  const auto original = testing::ReadFile(path);
  ASSERT_GT(last_end, last_offset);
  for (std::uint64_t cut = last_offset; cut < last_end; ++cut) {
    ScratchDir copy;
    auto bytes = original;
    std::fill(bytes.begin() + static_cast<std::ptrdiff_t>(cut), bytes.end(), std::byte{0});
    testing::WriteFile(copy.path() + "/" + listed->back().second, bytes);
    auto w = MustOpen(SmallConfig(copy.path()));
    ASSERT_NE(w, nullptr);
    const WalOpenReport& r = w->open_report();
    EXPECT_EQ(r.last_lsn, 4u) << "cut at " << cut;
    EXPECT_EQ(r.next_lsn, 5u) << "cut at " << cut;
    if (cut - last_offset >= 4) {  // the magic survived: a torn record is reported
      EXPECT_EQ(r.tail_records_cut, 1u) << "cut at " << cut;
      EXPECT_GT(r.tail_bytes_cut, 0u) << "cut at " << cut;
    } else {
      EXPECT_LE(r.tail_records_cut, 1u);
    }
    EXPECT_EQ(r.tail_valid_records_after, 0u);
    // New appends continue after the cut and everything earlier reads back intact.
    const std::string fresh = "after the cut";
    ASSERT_EQ(AppendAll(*w, {fresh}).front(), 5u);
    w.reset();
    const auto back = ReadAll(copy.path());
    ASSERT_EQ(back.raws.size(), 5u) << "cut at " << cut;
    EXPECT_TRUE(std::equal(bodies.begin(), bodies.begin() + 4, back.raws.begin()));
    EXPECT_EQ(back.raws[4], fresh);
    EXPECT_FALSE(back.report.has_damage()) << "cut at " << cut;
  }
  // A file truncated (not zeroed) inside the last record recovers the same way.
  for (std::uint64_t cut : {last_offset + 1, last_offset + 39, last_offset + 41, last_end - 1}) {
    ScratchDir copy;
    auto bytes = original;
    bytes.resize(cut);
    testing::WriteFile(copy.path() + "/" + listed->back().second, bytes);
    auto w = MustOpen(SmallConfig(copy.path()));
    ASSERT_NE(w, nullptr);
    EXPECT_EQ(w->open_report().next_lsn, 5u) << "truncated at " << cut;
  }
}

TEST(WalWriterTest, CheckpointIsReadBackAndSurvivesAStaleTempFile) {
  ScratchDir dir;
  auto none = ReadCheckpoint(dir.path());
  ASSERT_TRUE(none.has_value());
  EXPECT_EQ(none.value(), 0u);
  ASSERT_TRUE(WriteCheckpoint(dir.path(), 17).has_value());
  ASSERT_TRUE(WriteCheckpoint(dir.path(), 42).has_value());
  EXPECT_EQ(ReadCheckpoint(dir.path()).value(), 42u);
  // A crash between writing the temp file and the rename leaves the old checkpoint in force.
  testing::WriteFile(dir.path() + "/checkpoint.tmp", std::vector<std::byte>(7, std::byte{0x55}));
  EXPECT_EQ(ReadCheckpoint(dir.path()).value(), 42u);
  ASSERT_TRUE(WriteCheckpoint(dir.path(), 43).has_value());
  EXPECT_EQ(ReadCheckpoint(dir.path()).value(), 43u);
  // A damaged checkpoint file is an error, never a silent 0.
  auto bytes = testing::ReadFile(dir.path() + "/checkpoint");
  bytes[45] ^= std::byte{1};
  testing::WriteFile(dir.path() + "/checkpoint", bytes);
  auto damaged = ReadCheckpoint(dir.path());
  ASSERT_FALSE(damaged.has_value());
  EXPECT_EQ(damaged.error().code, "wal.checkpoint_damaged");
}

TEST(WalWriterTest, LsnsAreNeverReusedEvenWhenEverySegmentWasRetained) {
  ScratchDir dir;
  ASSERT_TRUE(WriteCheckpoint(dir.path(), 500).has_value());
  auto w = MustOpen(SmallConfig(dir.path()));
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->open_report().next_lsn, 501u);
}

TEST(WalWriterTest, RetentionDeletesOnlySegmentsAtOrBelowTheCheckpoint) {
  ScratchDir dir;
  auto w = MustOpen(SmallConfig(dir.path()));
  ASSERT_NE(w, nullptr);
  AppendAll(*w, Bodies(400, 1000));
  auto before = ListSegments(dir.path()).value();
  ASSERT_GE(before.size(), 5u);
  const std::uint64_t forwarded = before[3].first - 1;  // segments 0..2 are entirely forwarded
  ASSERT_TRUE(WriteCheckpoint(dir.path(), forwarded + 5).has_value());
  w->set_forwarded_lsn(forwarded + 5);
  w->Poll(Clock::now());  // queues the unlinks (io_uring, off the caller's thread)
  w->Flush();             // waits for them
  auto after = ListSegments(dir.path()).value();
  EXPECT_EQ(after.size(), before.size() - 3);
  EXPECT_EQ(after.front().first, before[3].first);
  EXPECT_EQ(w->stats().segments_deleted.load(), 3u);
  // Everything after the checkpoint is still readable.
  const auto back = ReadAll(dir.path(), forwarded + 5);
  EXPECT_EQ(back.lsns.size(), 400 - (forwarded + 5));
  EXPECT_FALSE(back.report.has_damage());
}

TEST(WalWriterTest, KeepForwardedDelaysDeletion) {
  ScratchDir dir;
  WalConfig config = SmallConfig(dir.path());
  config.keep_forwarded = std::chrono::seconds(3600);
  auto w = MustOpen(config);
  AppendAll(*w, Bodies(200, 1000));
  const std::size_t before = ListSegments(dir.path())->size();
  w->set_forwarded_lsn(200);
  w->Poll(Clock::now());
  w->Flush();
  EXPECT_EQ(ListSegments(dir.path())->size(), before);
  w->Poll(Clock::now() + std::chrono::hours(2));
  w->Flush();
  EXPECT_EQ(ListSegments(dir.path())->size(), 1u);  // only the segment being written remains
}

TEST(WalWriterTest, DiskBudgetPushesBackAndRecoversWhenRetentionFreesSpace) {
  ScratchDir dir;
  WalConfig config = SmallConfig(dir.path());
  config.disk_budget_bytes = 4 * config.segment_bytes;
  auto w = MustOpen(config);
  ASSERT_NE(w, nullptr);
  const std::string body = Body(3, 1000);
  std::uint64_t appended = 0;
  WalWriter::AppendStatus status = WalWriter::AppendStatus::kAppended;
  for (int i = 0; i < 1000; ++i) {
    auto r = w->TryAppend(Msg(body), Clock::now());
    status = r.status;
    if (r.status == WalWriter::AppendStatus::kGroupFull) {
      w->Flush();
      continue;
    }
    if (r.status != WalWriter::AppendStatus::kAppended) break;
    ++appended;
    w->Poll(Clock::now());
  }
  ASSERT_EQ(status, WalWriter::AppendStatus::kDiskFull);
  EXPECT_TRUE(w->is_full());
  w->Flush();
  EXPECT_EQ(w->durable_lsn(), appended);  // everything accepted before the limit is durable
  EXPECT_GT(appended, 150u);
  EXPECT_LT(appended, 300u);
  EXPECT_EQ(w->stats().disk_full_events.load(), 1u);
  // Still full while nothing is forwarded.
  EXPECT_EQ(w->TryAppend(Msg(body), Clock::now() + std::chrono::seconds(1)).status,
            WalWriter::AppendStatus::kDiskFull);
  // The forward stage catches up: retention frees segments and appends resume once the unlinks
  // completed (the budget counts a segment until its space is free).
  w->set_forwarded_lsn(appended);
  w->Poll(Clock::now());
  w->Flush();
  auto r = w->TryAppend(Msg(body), Clock::now());
  ASSERT_EQ(r.status, WalWriter::AppendStatus::kAppended);
  EXPECT_EQ(r.lsn, appended + 1);
  EXPECT_FALSE(w->is_full());
  w->Flush();
  w.reset();
  const auto back = ReadAll(dir.path(), appended - 1);
  ASSERT_EQ(back.lsns.size(), 2u);
  EXPECT_EQ(back.lsns.back(), appended + 1);
}

TEST(WalWriterTest, RecordLargerThanASegmentIsRejected) {
  ScratchDir dir;
  auto w = MustOpen(SmallConfig(dir.path()));
  const std::string huge(w->max_message_bytes() + 1, 'x');
  EXPECT_EQ(w->TryAppend(Msg(huge, ""), Clock::now()).status, WalWriter::AppendStatus::kTooLarge);
  WalMessage fits = Msg(std::string(w->max_message_bytes(), 'y'), "");
  fits.source_id = "";
  EXPECT_EQ(w->TryAppend(fits, Clock::now()).status, WalWriter::AppendStatus::kAppended);
  w->Flush();
  EXPECT_EQ(w->durable_lsn(), 1u);
}

TEST(WalWriterTest, SyncNoneStillWritesReadableRecords) {
  ScratchDir dir;
  WalConfig config = SmallConfig(dir.path());
  config.sync = WalConfig::Sync::kNone;
  const auto bodies = Bodies(50, 100);
  {
    auto w = MustOpen(config);
    AppendAll(*w, bodies);
  }
  EXPECT_EQ(ReadAll(dir.path()).raws, bodies);
}

}  // namespace
}  // namespace mailrail::storage
