#include "storage/wal_format.h"

#include <gtest/gtest.h>

#include <vector>

namespace mailrail::storage {
namespace {

std::vector<std::byte> Encode(const WalMessage& m, std::uint64_t lsn) {
  std::vector<std::byte> buf(RecordFootprint(m.payload_bytes()));
  EXPECT_EQ(EncodeMessageRecord(buf.data(), lsn, m), buf.size());
  return buf;
}

WalMessage Sample() {
  WalMessage m;
  m.input_kind = 1;
  m.source_kind = 2;
  m.source_id = "INBOX@imap.example";
  m.position = "4711";
  m.received_at_ms = 1'763'892'000'123;
  m.raw = "From: a@example.com\r\nSubject: hi\r\n\r\nbody\r\n";
  return m;
}

TEST(WalFormatTest, MessageRecordRoundTrips) {
  const WalMessage m = Sample();
  const auto buf = Encode(m, 42);
  EXPECT_EQ(buf.size() % kRecordAlign, 0u);
  RecordHeader h;
  ASSERT_EQ(CheckRecord(buf, &h), RecordCheck::kValid);
  EXPECT_EQ(h.lsn, 42u);
  EXPECT_EQ(h.type, RecordType::kMessage);
  EXPECT_EQ(h.length, m.payload_bytes());
  WalMessage out;
  ASSERT_TRUE(DecodeMessagePayload(std::span(buf).subspan(kRecordHeaderBytes, h.length), &out));
  EXPECT_EQ(out.input_kind, 1);
  EXPECT_EQ(out.source_kind, 2);
  EXPECT_EQ(out.source_id, m.source_id);
  EXPECT_EQ(out.position, m.position);
  EXPECT_EQ(out.received_at_ms, m.received_at_ms);
  EXPECT_EQ(out.raw, m.raw);
}

TEST(WalFormatTest, EmptyRawAndEmptyMetadataRoundTrip) {
  WalMessage m;
  const auto buf = Encode(m, 1);
  EXPECT_EQ(buf.size(), RecordFootprint(kMessageMetaBytes));
  RecordHeader h;
  ASSERT_EQ(CheckRecord(buf, &h), RecordCheck::kValid);
  WalMessage out;
  ASSERT_TRUE(DecodeMessagePayload(std::span(buf).subspan(kRecordHeaderBytes, h.length), &out));
  EXPECT_TRUE(out.raw.empty());
  EXPECT_TRUE(out.source_id.empty());
}

TEST(WalFormatTest, EveryFlippedByteOfARecordIsDetected) {
  const WalMessage m = Sample();
  const auto good = Encode(m, 7);
  const std::size_t covered = kRecordHeaderBytes + m.payload_bytes();  // the alignment gap is not covered
  for (std::size_t i = 0; i < covered; ++i) {
    for (std::uint8_t bit : {0x01, 0x80}) {
      auto bad = good;
      bad[i] ^= std::byte{bit};
      RecordHeader h;
      EXPECT_NE(CheckRecord(bad, &h), RecordCheck::kValid) << "flip at byte " << i;
    }
  }
}

TEST(WalFormatTest, TruncatedRecordIsReportedAsTruncated) {
  const auto buf = Encode(Sample(), 3);
  RecordHeader h;
  EXPECT_EQ(CheckRecord(std::span(buf).first(20), &h), RecordCheck::kTruncated);
  EXPECT_EQ(CheckRecord(std::span(buf).first(kRecordHeaderBytes + 4), &h), RecordCheck::kTruncated);
  std::vector<std::byte> zeros(64);
  EXPECT_EQ(CheckRecord(zeros, &h), RecordCheck::kBadMagic);
}

TEST(WalFormatTest, HugeLengthIsRejectedBeforeReading) {
  auto buf = Encode(Sample(), 3);
  StoreLe<std::uint32_t>(buf.data() + 20, 0xFFFFFFF0u);
  RecordHeader h;
  EXPECT_EQ(CheckRecord(buf, &h), RecordCheck::kBadLength);
}

TEST(WalFormatTest, CheckpointAndPaddingRecords) {
  std::vector<std::byte> buf(RecordFootprint(kCheckpointPayloadBytes));
  EncodeCheckpointRecord(buf.data(), 99, 123);
  RecordHeader h;
  ASSERT_EQ(CheckRecord(buf, &h), RecordCheck::kValid);
  EXPECT_EQ(h.type, RecordType::kCheckpoint);
  std::uint64_t lsn = 0;
  std::int64_t at = 0;
  ASSERT_TRUE(DecodeCheckpointPayload(std::span(buf).subspan(kRecordHeaderBytes, h.length), &lsn, &at));
  EXPECT_EQ(lsn, 99u);
  EXPECT_EQ(at, 123);

  std::vector<std::byte> pad(kRecordHeaderBytes);
  EncodePaddingHeader(pad.data(), 4000);  // the 4000 bytes are never written
  ASSERT_EQ(CheckRecord(pad, &h), RecordCheck::kValid);
  EXPECT_EQ(h.type, RecordType::kPadding);
  EXPECT_EQ(h.length, 4000u);
  pad[25] ^= std::byte{1};
  EXPECT_EQ(CheckRecord(pad, &h), RecordCheck::kBadChecksum);
}

TEST(WalFormatTest, SegmentHeaderAndFileName) {
  std::byte header[kSegmentHeaderBytes];
  EncodeSegmentHeader(header, 12345, 1);
  EXPECT_EQ(CheckSegmentHeader(std::span(header, kSegmentHeaderBytes)), 12345u);
  header[9] ^= std::byte{4};
  EXPECT_EQ(CheckSegmentHeader(std::span(header, kSegmentHeaderBytes)), 0u);

  EXPECT_EQ(SegmentFileName(1), "wal-00000000000000000001.log");
  EXPECT_EQ(ParseSegmentFileName(SegmentFileName(18446744073709551615ull)), 18446744073709551615ull);
  EXPECT_EQ(ParseSegmentFileName("wal-0000000000000000000x.log"), 0u);
  EXPECT_EQ(ParseSegmentFileName("checkpoint"), 0u);
}

}  // namespace
}  // namespace mailrail::storage
