#pragma once
// Offline WAL tools behind `mailrail wal inspect DIR` and `mailrail wal verify DIR`, as library
// functions so that tests and the daemon's start-up report can use them too.
//
// Threading: plain functions; they only read the directory (safe beside a running writer, whose
//   newest segment then shows as an unclean tail). Blocking: read every segment.

#include <cstdint>
#include <string>
#include <vector>

#include "engine/base/result.h"
#include "storage/wal_reader.h"

namespace mailrail::storage {

struct SegmentSummary {
  std::string name;
  std::uint64_t file_bytes = 0;
  bool header_valid = false;
  std::uint64_t first_lsn = 0;  // from the header
  std::uint64_t last_lsn = 0;   // last valid record (first_lsn - 1 when empty)
  std::uint64_t records = 0;
  std::uint64_t data_bytes = 0;  // end of the last valid record
  SegmentEnd end;
};

struct WalInspection {
  std::vector<SegmentSummary> segments;
  std::uint64_t records = 0;
  std::uint64_t checkpoint_lsn = 0;
  std::string checkpoint_error;  // non-empty when the checkpoint file is damaged
  std::uint64_t first_lsn = 0;
  std::uint64_t last_lsn = 0;
};

// Reads every segment (checksums included) and the checkpoint.
base::Result<WalInspection> InspectWal(const std::string& dir);

struct WalVerification {
  WalScanReport report;
  std::uint64_t checkpoint_lsn = 0;
  std::vector<std::string> problems;  // empty: the log is sound
  std::vector<std::string> notes;     // e.g. a torn tail, which recovery cuts (not acknowledged)
  bool ok() const { return problems.empty(); }
};

// Checks every checksum and the LSN continuity across segments. A torn tail in the newest
// segment is a note (a crash mid-commit leaves one); damage anywhere else is a problem.
base::Result<WalVerification> VerifyWal(const std::string& dir);

std::string FormatInspection(const WalInspection& inspection);
std::string FormatVerification(const WalVerification& verification);

}  // namespace mailrail::storage
