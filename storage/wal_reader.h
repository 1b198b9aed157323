#pragma once
// Reading the WAL: SegmentReader walks one segment file, WalReader walks the directory in LSN
// order. Both validate every record (magic, checksum, expected LSN) and never trust a length they
// have not checked against the file size, so any bytes on disk are safe to feed them.
//
// Threading: a reader is used by one thread. Several readers may read the same files, also while
//   a WalWriter appends to the newest segment (give WalReader an end_lsn below the writer's first
//   new LSN so it never reads what is being written).
// Ownership and lifetime: segments are mapped read-only (mmap); a RecordView points into the
//   mapping and is valid until the next call to Next() on the same reader, or its destruction.
// Blocking: reads the disk through page faults.

#include <cstdint>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "engine/base/result.h"
#include "storage/wal_format.h"

namespace mailrail::storage {

struct RecordView {
  RecordHeader header;
  std::span<const std::byte> payload;
  std::uint64_t offset = 0;  // within the segment file
};

// Why a segment scan stopped, and what lies after the stop point.
struct SegmentEnd {
  std::uint64_t offset = 0;         // end of the last valid record (or of the header)
  bool clean = true;                // end of file, padding, or only zeros after `offset`
  RecordCheck reason = RecordCheck::kValid;  // first invalid record's check (when !clean)
  bool lsn_mismatch = false;        // the invalid record had a valid checksum but the wrong LSN
  std::uint64_t bytes_after = 0;    // from `offset` to the last non-zero byte, 8-aligned
  std::uint64_t headers_after = 0;  // record magics found after `offset` (records cut)
  std::uint64_t valid_after = 0;    // of those, records whose checksum is valid
};

class SegmentReader {
 public:
  static base::Result<SegmentReader> Open(const std::string& path);
  SegmentReader(SegmentReader&&) noexcept;
  SegmentReader& operator=(SegmentReader&&) noexcept;
  ~SegmentReader();

  bool header_valid() const { return first_lsn_ != 0; }
  std::uint64_t first_lsn() const { return first_lsn_; }
  std::uint64_t file_bytes() const { return size_; }
  // The next valid message or checkpoint record; false at the end of the segment, then end()
  // says why. A segment with an invalid header has no records.
  bool Next(RecordView* out);
  const SegmentEnd& end() const { return end_; }
  std::uint64_t records() const { return records_; }
  std::uint64_t last_lsn() const { return next_lsn_ - 1; }  // first_lsn - 1 when empty
  const std::string& path() const { return path_; }

 private:
  SegmentReader() = default;
  void Finish(std::uint64_t offset, bool clean, RecordCheck reason);

  std::string path_;
  const std::byte* data_ = nullptr;
  std::uint64_t size_ = 0;
  std::uint64_t offset_ = 0;
  std::uint64_t first_lsn_ = 0;
  std::uint64_t next_lsn_ = 0;
  std::uint64_t records_ = 0;
  bool finished_ = false;
  SegmentEnd end_;
};

// Damage found in the log: corruption in a segment that is not the newest (or one whose header
// is bad), or a gap in LSNs between segments.
struct WalDamage {
  std::string segment;       // file name
  std::uint64_t offset = 0;  // where the valid data stops in that segment
  std::string what;          // "bad_checksum", "bad_header", "lsn_gap", ...
  std::uint64_t bytes_after = 0;
  std::uint64_t lost_first_lsn = 0;  // LSNs that could not be read (0 when unknown)
  std::uint64_t lost_last_lsn = 0;
};

struct WalScanReport {
  std::size_t segments = 0;
  std::uint64_t first_lsn = 0;   // first valid record seen (0: none)
  std::uint64_t last_lsn = 0;    // last valid record seen
  std::uint64_t records = 0;     // valid records seen, including skipped ones <= after_lsn
  std::uint64_t bytes = 0;       // bytes of valid records
  // Newest segment: what a recovery cuts (never acknowledged).
  std::string tail_segment;
  std::uint64_t tail_offset = 0;
  std::uint64_t tail_bytes_cut = 0;
  std::uint64_t tail_records_cut = 0;
  std::uint64_t tail_valid_records_after = 0;  // > 0: the damage is not a plain torn write
  std::vector<WalDamage> damage;
  bool has_damage() const { return !damage.empty() || tail_valid_records_after > 0; }
};

// Lists the segment files in `dir`, sorted by first LSN: (first lsn from the name, file name).
base::Result<std::vector<std::pair<std::uint64_t, std::string>>> ListSegments(const std::string& dir);

class WalReader {
 public:
  struct Options {
    std::uint64_t after_lsn = 0;  // deliver records with lsn > after_lsn
    std::uint64_t end_lsn = std::numeric_limits<std::uint64_t>::max();  // ... and lsn < end_lsn
  };
  static base::Result<WalReader> Open(const std::string& dir, Options options);

  // The next valid message record in range; false at the end of the log.
  bool Next(RecordView* out);
  // What the scan has found so far (complete once Next returned false).
  const WalScanReport& report() const { return report_; }

 private:
  WalReader() = default;
  bool OpenNextSegment();
  void CloseSegment(bool newest);

  std::string dir_;
  Options options_;
  std::vector<std::pair<std::uint64_t, std::string>> segments_;
  std::size_t next_segment_ = 0;
  std::unique_ptr<SegmentReader> current_;
  std::uint64_t expected_lsn_ = 0;  // next LSN expected across segments (0: unknown)
  WalScanReport report_;
};

}  // namespace mailrail::storage
