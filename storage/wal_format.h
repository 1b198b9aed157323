#pragma once
// On-disk format of the write-ahead log. Read by wal_reader.cc, written by wal_writer.cc, and
// mirrored in docs/parts/wal.md. All integers are little-endian.
//
// The log is a directory of segment files named wal-<first lsn, 20 decimal digits>.log. A new
// segment is preallocated to its full size with fallocate, so the unwritten rest reads as zeros.
//
// Segment header (64 bytes, at offset 0):
//   offset size  field
//   0      4     magic      0x53574D52 ("RMWS" in memory order: 'R' 'M' 'W' 'S')
//   4      4     version    1
//   8      8     first_lsn  LSN of the first record the segment holds
//   16     8     created_ms Unix ms when the segment was created
//   24     32    reserved   (zero)
//   56     8     xxh3_64 of bytes [0, 56)
//
// Record (from offset 64 on, each record starts 8-byte aligned; the gap is zero):
//   offset size  field
//   0      4     magic      0x4C57524D ("MRWL")
//   4      16    xxh3_128 of bytes [20, 40 + length): header fields and payload (low64, high64)
//   20     4     length     of the payload in bytes
//   24     8     lsn        1, 2, 3, ... increasing by one across segments, never reused
//   32     2     type       1 message | 2 checkpoint | 3 padding
//   34     6     reserved   (zero)
//   40     …     payload
//   The magic sits outside the checksum (it is a constant checked directly); the checksum comes
//   before the fields it covers so that it covers one contiguous range.
//
// Payload of a message record (type 1):
//   0      1     input kind   (stages::InputKind: 0 RFC 822, 1 Graph JSON)
//   1      1     source kind  (stages::SourceKind: 0 replay, 1 webhook, 2 IMAP, 3 Graph)
//   2      2     source id length  (bytes, <= 65535)
//   4      2     position length   (bytes, <= 65535)
//   6      2     reserved (zero)
//   8      8     received_at  Unix ms
//   16     …     source id, then position, then the raw message bytes (the rest of the payload)
//
// Payload of a checkpoint record (type 2): forwarded_through_lsn (8), written_at Unix ms (8).
//   A checkpoint record is never in a segment: it is the whole content of the file `checkpoint`,
//   replaced crash-atomically (write checkpoint.tmp, fsync, rename, fsync the directory).
//   Its lsn field equals forwarded_through_lsn.
// Padding record (type 3): written when the next record does not fit in the segment; its length
//   covers the rest of the segment, whose bytes are never written, so its checksum covers the
//   header fields [20, 40) only. A segment ends at a padding record, at end of file, or (only in
//   the newest segment) at the first invalid record. If fewer than 40 bytes remain, no padding is
//   written and the segment ends at the zeros.
//
// Torn tail: a crash while a group is in flight can leave the newest segment with a partly
// written record (bad checksum), zeros, or stale bytes. No such record was ever acknowledged
// (fdatasync had not returned), so recovery cuts the newest segment at the end of its last valid
// record, reports the bytes and record headers cut, and starts a fresh segment for new writes.
// A record is valid only if its magic, checksum and expected LSN (previous + 1) all match; an
// invalid record in an older segment is corruption: reported, the rest of that segment skipped,
// and the scan continues with the next segment.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>

namespace mailrail::storage {

inline constexpr std::uint32_t kSegmentMagic = 0x53574D52;
inline constexpr std::uint32_t kSegmentVersion = 1;
inline constexpr std::size_t kSegmentHeaderBytes = 64;
inline constexpr std::uint32_t kRecordMagic = 0x4C57524D;
inline constexpr std::size_t kRecordHeaderBytes = 40;
inline constexpr std::size_t kRecordAlign = 8;
inline constexpr std::size_t kChecksumBegin = 20;  // checksum covers [20, 40 + length)
inline constexpr std::size_t kMessageMetaBytes = 16;
inline constexpr std::size_t kCheckpointPayloadBytes = 16;
inline constexpr std::uint32_t kMaxPayloadBytes = 1u << 30;

enum class RecordType : std::uint16_t { kMessage = 1, kCheckpoint = 2, kPadding = 3 };

constexpr std::size_t AlignRecord(std::size_t n) { return (n + kRecordAlign - 1) & ~(kRecordAlign - 1); }
// Bytes a record with this payload occupies in a segment, alignment gap included.
constexpr std::size_t RecordFootprint(std::size_t payload) { return AlignRecord(kRecordHeaderBytes + payload); }

// A message as the log stores it. Views into caller-owned memory.
struct WalMessage {
  std::uint8_t input_kind = 0;
  std::uint8_t source_kind = 0;
  std::string_view source_id;
  std::string_view position;
  std::int64_t received_at_ms = 0;
  std::string_view raw;

  std::size_t payload_bytes() const { return kMessageMetaBytes + source_id.size() + position.size() + raw.size(); }
};

// Decoded record header.
struct RecordHeader {
  std::uint32_t length = 0;
  std::uint64_t lsn = 0;
  RecordType type = RecordType::kMessage;
};

// Little-endian loads and stores (x86-64 is little-endian; memcpy keeps them alignment-safe).
template <typename T>
inline T LoadLe(const std::byte* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}
template <typename T>
inline void StoreLe(std::byte* p, T v) {
  std::memcpy(p, &v, sizeof(T));
}

// Encodes a message record at `out` (which must hold RecordFootprint(m.payload_bytes()) bytes):
// header, payload, zero alignment gap, checksum. Returns the bytes written (the footprint).
// MR_CHECKs that the id and position fit their 16-bit lengths (callers validate first).
std::size_t EncodeMessageRecord(std::byte* out, std::uint64_t lsn, const WalMessage& m);
// Encodes a checkpoint record (footprint RecordFootprint(kCheckpointPayloadBytes)).
std::size_t EncodeCheckpointRecord(std::byte* out, std::uint64_t forwarded_lsn, std::int64_t written_at_ms);
// Encodes the 40-byte header of a padding record whose length covers `payload` unwritten bytes.
void EncodePaddingHeader(std::byte* out, std::uint32_t payload);
// Encodes a segment header into 64 bytes.
void EncodeSegmentHeader(std::byte* out, std::uint64_t first_lsn, std::int64_t created_ms);

enum class RecordCheck : std::uint8_t {
  kValid,
  kBadMagic,     // no record starts here (zeros, garbage)
  kTruncated,    // header or payload runs past the end of the data
  kBadLength,    // length beyond kMaxPayloadBytes or a type that is unknown
  kBadChecksum,  // bytes damaged or never fully written
};
std::string_view RecordCheckName(RecordCheck check);

// Validates the record at the start of `bytes` (magic, sizes, type, checksum) and decodes its
// header. For a padding record only the header is checked and `bytes` may end before its payload.
RecordCheck CheckRecord(std::span<const std::byte> bytes, RecordHeader* header);

// Validates a segment header; returns its first LSN, or 0 when the header is invalid.
std::uint64_t CheckSegmentHeader(std::span<const std::byte> bytes);

// Decodes a message payload; false if the lengths are inconsistent (with a valid checksum that
// means a writer bug or a foreign file, reported as corruption).
bool DecodeMessagePayload(std::span<const std::byte> payload, WalMessage* out);
bool DecodeCheckpointPayload(std::span<const std::byte> payload, std::uint64_t* forwarded_lsn,
                             std::int64_t* written_at_ms);

// Segment file names: wal-00000000000000000001.log. Parse returns 0 for a foreign name.
std::string SegmentFileName(std::uint64_t first_lsn);
std::uint64_t ParseSegmentFileName(std::string_view name);
inline constexpr std::string_view kCheckpointFileName = "checkpoint";

}  // namespace mailrail::storage
