// Corruption: bytes flipped or files truncated at random places in closed segments. `wal verify`
// must find it, recovery must report it without crashing, and no record before the damage may be
// lost. The seed is printed; set WAL_CORRUPTION_SEED to replay a failure.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <random>

#include "storage/wal_tools.h"
#include "storage/wal_writer.h"
#include "tests/storage/wal_test_util.h"

namespace mailrail::storage {
namespace {

using testing::ScratchDir;

struct RecordSpan {
  std::uint64_t lsn;
  std::uint64_t offset;
  std::uint64_t covered_end;  // offset + header + payload
};

class WalCorruptionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* env = std::getenv("WAL_CORRUPTION_SEED");
    seed_ = env != nullptr ? std::strtoull(env, nullptr, 10) : std::random_device{}();
    std::printf("WAL_CORRUPTION_SEED=%llu\n", static_cast<unsigned long long>(seed_));
    RecordProperty("seed", std::to_string(seed_));
    std::mt19937_64 rng(seed_);
    auto w = WalWriter::Open(testing::SmallConfig(original_.path()));
    ASSERT_TRUE(w.has_value());
    for (std::size_t i = 0; i < 300; ++i) bodies_.push_back(testing::Body(i, 200 + rng() % 1500));
    ASSERT_EQ(testing::AppendAll(**w, bodies_).size(), bodies_.size());
    segments_ = ListSegments(original_.path()).value();
    ASSERT_GE(segments_.size(), 5u);
  }

  std::vector<RecordSpan> Records(const std::string& path) {
    std::vector<RecordSpan> out;
    auto seg = SegmentReader::Open(path);
    RecordView v;
    while (seg->Next(&v)) out.push_back({v.header.lsn, v.offset, v.offset + kRecordHeaderBytes + v.header.length});
    return out;
  }

  void CopyOriginal(const std::string& to) {
    for (const auto& entry : std::filesystem::directory_iterator(original_.path())) {
      std::filesystem::copy_file(entry.path(), to + "/" + entry.path().filename().string());
    }
  }

  // After damage in a closed segment whose first damaged LSN is `first_bad`: verify fails,
  // recovery does not crash and reports damage, and every record before first_bad reads back.
  void ExpectDetectedAndEarlierRecordsKept(const std::string& dir, std::uint64_t first_bad) {
    auto verified = VerifyWal(dir);
    ASSERT_TRUE(verified.has_value());
    EXPECT_FALSE(verified->ok()) << FormatVerification(*verified);

    auto w = WalWriter::Open(testing::SmallConfig(dir));
    ASSERT_TRUE(w.has_value()) << w.error().message;
    EXPECT_EQ(w.value()->open_report().next_lsn, bodies_.size() + 1);  // the newest segment was intact
    w.value().reset();

    const auto back = testing::ReadAll(dir);
    EXPECT_TRUE(back.report.has_damage());
    std::size_t i = 0;
    for (; i < back.lsns.size() && back.lsns[i] < first_bad; ++i) {
      ASSERT_EQ(back.lsns[i], i + 1);
      ASSERT_EQ(back.raws[i], bodies_[i]);
    }
    EXPECT_EQ(i, first_bad - 1) << "records before the damage were lost";
    // Records read after the damage are intact copies of what was written.
    for (; i < back.lsns.size(); ++i) EXPECT_EQ(back.raws[i], bodies_[back.lsns[i] - 1]);
    // The newest segment is undamaged: its last record is still there.
    ASSERT_FALSE(back.lsns.empty());
    EXPECT_EQ(back.lsns.back(), bodies_.size());
  }

  std::uint64_t seed_ = 0;
  ScratchDir original_;
  std::vector<std::string> bodies_;
  std::vector<std::pair<std::uint64_t, std::string>> segments_;
};

TEST_F(WalCorruptionTest, FlippedByteInAClosedSegmentIsFoundAndContained) {
  std::mt19937_64 rng(seed_ ^ 0x5eed);
  for (int round = 0; round < 20; ++round) {
    ScratchDir dir;
    CopyOriginal(dir.path());
    const auto& [first_lsn, name] = segments_[rng() % (segments_.size() - 1)];  // never the newest
    const std::string path = dir.path() + "/" + name;
    const auto records = Records(path);
    ASSERT_FALSE(records.empty());
    auto bytes = testing::ReadFile(path);
    std::uint64_t offset = 0;
    std::uint64_t first_bad = 0;
    if (rng() % 8 == 0) {
      offset = rng() % kSegmentHeaderBytes;  // the segment header
      first_bad = first_lsn;
    } else {
      const RecordSpan& r = records[rng() % records.size()];
      offset = r.offset + rng() % (r.covered_end - r.offset);
      first_bad = r.lsn;
    }
    bytes[offset] ^= std::byte{static_cast<unsigned char>(1u << (rng() % 8))};
    testing::WriteFile(path, bytes);
    SCOPED_TRACE("round " + std::to_string(round) + ": " + name + " offset " + std::to_string(offset));
    ExpectDetectedAndEarlierRecordsKept(dir.path(), first_bad);
  }
}

TEST_F(WalCorruptionTest, TruncatedClosedSegmentIsFoundAndContained) {
  std::mt19937_64 rng(seed_ ^ 0x7a11);
  for (int round = 0; round < 20; ++round) {
    ScratchDir dir;
    CopyOriginal(dir.path());
    const auto& [first_lsn, name] = segments_[rng() % (segments_.size() - 1)];
    const std::string path = dir.path() + "/" + name;
    const auto records = Records(path);
    const std::uint64_t data_end = records.back().covered_end;
    const std::uint64_t cut = kSegmentHeaderBytes + rng() % (data_end - kSegmentHeaderBytes);
    std::filesystem::resize_file(path, cut);
    std::uint64_t first_bad = first_lsn;
    for (const RecordSpan& r : records) {
      if (r.covered_end <= cut) first_bad = r.lsn + 1;
    }
    SCOPED_TRACE("round " + std::to_string(round) + ": " + name + " cut at " + std::to_string(cut));
    ExpectDetectedAndEarlierRecordsKept(dir.path(), first_bad);
  }
}

TEST_F(WalCorruptionTest, MissingSegmentIsReportedAsALsnGap) {
  ScratchDir dir;
  CopyOriginal(dir.path());
  std::filesystem::remove(dir.path() + "/" + segments_[2].second);
  ExpectDetectedAndEarlierRecordsKept(dir.path(), segments_[2].first);
  const auto back = testing::ReadAll(dir.path());
  ASSERT_FALSE(back.report.damage.empty());
  EXPECT_EQ(back.report.damage.front().what, "lsn_gap");
  EXPECT_EQ(back.report.damage.front().lost_first_lsn, segments_[2].first);
  EXPECT_EQ(back.report.damage.front().lost_last_lsn, segments_[3].first - 1);
}

TEST_F(WalCorruptionTest, UndamagedLogVerifiesAndInspects) {
  auto verified = VerifyWal(original_.path());
  ASSERT_TRUE(verified.has_value());
  EXPECT_TRUE(verified->ok()) << FormatVerification(*verified);
  EXPECT_EQ(verified->report.records, bodies_.size());
  auto inspection = InspectWal(original_.path());
  ASSERT_TRUE(inspection.has_value());
  EXPECT_EQ(inspection->records, bodies_.size());
  EXPECT_EQ(inspection->segments.size(), segments_.size());
  EXPECT_EQ(inspection->first_lsn, 1u);
  EXPECT_EQ(inspection->last_lsn, bodies_.size());
  EXPECT_NE(FormatInspection(*inspection).find("records: 300"), std::string::npos);
}

}  // namespace
}  // namespace mailrail::storage
