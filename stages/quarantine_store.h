#pragma once
// QuarantineStore: messages quarantined by a rule or as unparseable, kept on disk with their
// reason, listable, readable and re-drivable.
//
// On disk: DIR/quarantine.log, append-only, records aligned to 8 bytes:
//   offset size  field
//   0      4     magic 0x3151524D ("MRQ1")
//   4      4     type: 1 = message, 2 = redriven marker
//   8      8     id (message: assigned in order from 1; marker: the message's id)
//   16     8     lsn of the message (WAL)
//   24     8     time_ms (Unix ms when quarantined / redriven)
//   32     4     reason length R (marker: 0)
//   36     4     raw length N (marker: 0)
//   40     8     XXH3-64 of bytes [0, 40), the reason and the raw bytes
//   48     R+N   reason, then the raw message bytes; zero padding to a multiple of 8
// Durability: Append() buffers; Sync() writes and fdatasyncs. The filter stage calls Sync()
//   before it reports a quarantined message as finished, so a finished quarantined message is
//   never lost. Open() reads every record; the first invalid one (torn write at a crash) and all
//   after it are cut, and the cut is reported (cut_bytes). Only records never synced can be cut.
// Access: one writer process at a time (an exclusive flock on the log; a second writer gets
//   "quarantine.busy"). Readers (`mailrail quarantine list/show` beside a running daemon) open
//   with Access::kReader: they read the records complete so far and never cut or write; the
//   writer records re-drives (MarkRedriven) when a re-driven message reaches the filter.
// Threading: every method may be called from any thread; one mutex serialises them (appends are
//   rare: one per quarantined message, synced once per filter batch).

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "engine/base/result.h"

namespace mailrail::stages {

struct QuarantineEntry {
  std::uint64_t id = 0;
  std::uint64_t lsn = 0;
  std::int64_t time_ms = 0;
  std::string reason;
  std::uint64_t raw_bytes = 0;
  bool redriven = false;
  std::uint64_t offset = 0;  // of the record in quarantine.log
};

class QuarantineStore {
 public:
  enum class Access : std::uint8_t { kWriter, kReader };
  static base::Result<std::unique_ptr<QuarantineStore>> Open(const std::string& dir, Access access = Access::kWriter);
  ~QuarantineStore();
  QuarantineStore(const QuarantineStore&) = delete;
  QuarantineStore& operator=(const QuarantineStore&) = delete;

  // Buffers one quarantined message; returns its id. Durable after the next Sync(). A message
  // whose non-zero LSN is already in the store (re-filtered after a restart) is not stored twice:
  // the existing id is returned.
  std::uint64_t Append(std::uint64_t lsn, std::int64_t time_ms, std::string_view reason, std::string_view raw);
  base::Status Sync();

  std::vector<QuarantineEntry> List() const;
  base::Result<std::string> ReadRaw(std::uint64_t id) const;
  // Records that the message was handed back for processing (durably); it stays readable.
  base::Status MarkRedriven(std::uint64_t id, std::int64_t time_ms);

  std::uint64_t cut_bytes() const { return cut_bytes_; }

 private:
  QuarantineStore(int fd, std::string path, bool writer) : fd_(fd), path_(std::move(path)), writer_(writer) {}
  void Encode(std::uint32_t type, std::uint64_t id, std::uint64_t lsn, std::int64_t time_ms, std::string_view reason,
              std::string_view raw);
  base::Status SyncLocked();

  mutable std::mutex mutex_;
  int fd_;
  std::string path_;
  bool writer_;
  std::uint64_t file_bytes_ = 0;  // synced + written
  std::string pending_;
  std::vector<QuarantineEntry> entries_;
  std::unordered_map<std::uint64_t, std::uint64_t> id_by_lsn_;
  std::uint64_t cut_bytes_ = 0;
};

}  // namespace mailrail::stages
