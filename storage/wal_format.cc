#include "storage/wal_format.h"

#include <xxhash.h>

#include <charconv>

#include "engine/base/check.h"

namespace mailrail::storage {
namespace {

XXH128_hash_t RecordChecksum(const std::byte* record, std::size_t covered_end) {
  return XXH3_128bits(record + kChecksumBegin, covered_end - kChecksumBegin);
}

void StoreChecksum(std::byte* record, std::size_t covered_end) {
  const XXH128_hash_t h = RecordChecksum(record, covered_end);
  StoreLe<std::uint64_t>(record + 4, h.low64);
  StoreLe<std::uint64_t>(record + 12, h.high64);
}

void StoreHeader(std::byte* out, std::uint32_t length, std::uint64_t lsn, RecordType type) {
  StoreLe<std::uint32_t>(out, kRecordMagic);
  StoreLe<std::uint32_t>(out + 20, length);
  StoreLe<std::uint64_t>(out + 24, lsn);
  StoreLe<std::uint16_t>(out + 32, static_cast<std::uint16_t>(type));
  std::memset(out + 34, 0, 6);
}

// Zeroes the alignment gap after a payload that ends at `end` within a record of `footprint`.
void ZeroGap(std::byte* record, std::size_t end, std::size_t footprint) {
  if (footprint > end) std::memset(record + end, 0, footprint - end);
}

}  // namespace

std::size_t EncodeMessageRecord(std::byte* out, std::uint64_t lsn, const WalMessage& m) {
  MR_CHECK(m.source_id.size() <= 0xFFFF && m.position.size() <= 0xFFFF)
      << "WAL source metadata too long: id=" << m.source_id.size() << " position=" << m.position.size();
  const std::size_t payload = m.payload_bytes();
  MR_CHECK(payload <= kMaxPayloadBytes) << "WAL payload too large: " << payload;
  StoreHeader(out, static_cast<std::uint32_t>(payload), lsn, RecordType::kMessage);
  std::byte* p = out + kRecordHeaderBytes;
  p[0] = std::byte{m.input_kind};
  p[1] = std::byte{m.source_kind};
  StoreLe<std::uint16_t>(p + 2, static_cast<std::uint16_t>(m.source_id.size()));
  StoreLe<std::uint16_t>(p + 4, static_cast<std::uint16_t>(m.position.size()));
  StoreLe<std::uint16_t>(p + 6, 0);
  StoreLe<std::int64_t>(p + 8, m.received_at_ms);
  p += kMessageMetaBytes;
  std::memcpy(p, m.source_id.data(), m.source_id.size());
  p += m.source_id.size();
  std::memcpy(p, m.position.data(), m.position.size());
  p += m.position.size();
  std::memcpy(p, m.raw.data(), m.raw.size());
  const std::size_t end = kRecordHeaderBytes + payload;
  const std::size_t footprint = RecordFootprint(payload);
  ZeroGap(out, end, footprint);
  StoreChecksum(out, end);
  return footprint;
}

std::size_t EncodeCheckpointRecord(std::byte* out, std::uint64_t forwarded_lsn, std::int64_t written_at_ms) {
  StoreHeader(out, kCheckpointPayloadBytes, forwarded_lsn, RecordType::kCheckpoint);
  StoreLe<std::uint64_t>(out + kRecordHeaderBytes, forwarded_lsn);
  StoreLe<std::int64_t>(out + kRecordHeaderBytes + 8, written_at_ms);
  const std::size_t end = kRecordHeaderBytes + kCheckpointPayloadBytes;
  StoreChecksum(out, end);
  return RecordFootprint(kCheckpointPayloadBytes);
}

void EncodePaddingHeader(std::byte* out, std::uint32_t payload) {
  StoreHeader(out, payload, 0, RecordType::kPadding);
  StoreChecksum(out, kRecordHeaderBytes);
}

void EncodeSegmentHeader(std::byte* out, std::uint64_t first_lsn, std::int64_t created_ms) {
  std::memset(out, 0, kSegmentHeaderBytes);
  StoreLe<std::uint32_t>(out, kSegmentMagic);
  StoreLe<std::uint32_t>(out + 4, kSegmentVersion);
  StoreLe<std::uint64_t>(out + 8, first_lsn);
  StoreLe<std::int64_t>(out + 16, created_ms);
  StoreLe<std::uint64_t>(out + 56, XXH3_64bits(out, 56));
}

std::string_view RecordCheckName(RecordCheck check) {
  switch (check) {
    case RecordCheck::kValid: return "valid";
    case RecordCheck::kBadMagic: return "bad_magic";
    case RecordCheck::kTruncated: return "truncated";
    case RecordCheck::kBadLength: return "bad_length";
    case RecordCheck::kBadChecksum: return "bad_checksum";
  }
  return "unknown";
}

RecordCheck CheckRecord(std::span<const std::byte> bytes, RecordHeader* header) {
  if (bytes.size() < kRecordHeaderBytes) {
    return bytes.size() >= 4 && LoadLe<std::uint32_t>(bytes.data()) == kRecordMagic ? RecordCheck::kTruncated
                                                                                      : RecordCheck::kBadMagic;
  }
  const std::byte* p = bytes.data();
  if (LoadLe<std::uint32_t>(p) != kRecordMagic) return RecordCheck::kBadMagic;
  header->length = LoadLe<std::uint32_t>(p + 20);
  header->lsn = LoadLe<std::uint64_t>(p + 24);
  const std::uint16_t type = LoadLe<std::uint16_t>(p + 32);
  if (type < 1 || type > 3 || header->length > kMaxPayloadBytes) return RecordCheck::kBadLength;
  header->type = static_cast<RecordType>(type);
  std::size_t covered_end = kRecordHeaderBytes;
  if (header->type != RecordType::kPadding) {
    covered_end += header->length;
    if (covered_end > bytes.size()) return RecordCheck::kTruncated;
  }
  const XXH128_hash_t h = RecordChecksum(p, covered_end);
  if (h.low64 != LoadLe<std::uint64_t>(p + 4) || h.high64 != LoadLe<std::uint64_t>(p + 12)) {
    return RecordCheck::kBadChecksum;
  }
  return RecordCheck::kValid;
}

std::uint64_t CheckSegmentHeader(std::span<const std::byte> bytes) {
  if (bytes.size() < kSegmentHeaderBytes) return 0;
  const std::byte* p = bytes.data();
  if (LoadLe<std::uint32_t>(p) != kSegmentMagic || LoadLe<std::uint32_t>(p + 4) != kSegmentVersion) return 0;
  if (LoadLe<std::uint64_t>(p + 56) != XXH3_64bits(p, 56)) return 0;
  return LoadLe<std::uint64_t>(p + 8);
}

bool DecodeMessagePayload(std::span<const std::byte> payload, WalMessage* out) {
  if (payload.size() < kMessageMetaBytes) return false;
  const std::byte* p = payload.data();
  const std::size_t id_len = LoadLe<std::uint16_t>(p + 2);
  const std::size_t pos_len = LoadLe<std::uint16_t>(p + 4);
  if (kMessageMetaBytes + id_len + pos_len > payload.size()) return false;
  out->input_kind = static_cast<std::uint8_t>(p[0]);
  out->source_kind = static_cast<std::uint8_t>(p[1]);
  out->received_at_ms = LoadLe<std::int64_t>(p + 8);
  const char* c = reinterpret_cast<const char*>(p);
  out->source_id = std::string_view(c + kMessageMetaBytes, id_len);
  out->position = std::string_view(c + kMessageMetaBytes + id_len, pos_len);
  out->raw = std::string_view(c + kMessageMetaBytes + id_len + pos_len,
                              payload.size() - kMessageMetaBytes - id_len - pos_len);
  return true;
}

bool DecodeCheckpointPayload(std::span<const std::byte> payload, std::uint64_t* forwarded_lsn,
                             std::int64_t* written_at_ms) {
  if (payload.size() != kCheckpointPayloadBytes) return false;
  *forwarded_lsn = LoadLe<std::uint64_t>(payload.data());
  *written_at_ms = LoadLe<std::int64_t>(payload.data() + 8);
  return true;
}

std::string SegmentFileName(std::uint64_t first_lsn) {
  char digits[21];
  auto [end, ec] = std::to_chars(digits, digits + sizeof(digits), first_lsn);
  MR_CHECK(ec == std::errc()) << "to_chars failed";
  const std::size_t n = static_cast<std::size_t>(end - digits);
  std::string name = "wal-";
  name.append(20 - n, '0');
  name.append(digits, n);
  name += ".log";
  return name;
}

std::uint64_t ParseSegmentFileName(std::string_view name) {
  if (name.size() != 28 || name.substr(0, 4) != "wal-" || name.substr(24) != ".log") return 0;
  std::uint64_t lsn = 0;
  auto [ptr, ec] = std::from_chars(name.data() + 4, name.data() + 24, lsn);
  if (ec != std::errc() || ptr != name.data() + 24) return 0;
  return lsn;
}

}  // namespace mailrail::storage
