#pragma once
// Dedup snapshot: the dedup set written to one file, so a restart remembers the window.
//
// File layout (little-endian):
//   offset size  field
//   0      8     magic "MRDEDUP1"
//   8      4     shard count
//   12     4     reserved (zero)
//   16     8     covered LSN: every message with an LSN at or below it had its key inserted
//   24     8     reserved (zero)
//   32     ...   per shard, in shard order: u64 n, then n entries oldest first, each
//                u64 key64 | u64 lsn | i64 time_ms (time of the entry's age mark)
//   end-8  8     XXH3-64 of every byte before it
// Crash atomicity: written to PATH.tmp, fsync'd, renamed over PATH, then the directory fsync'd,
// so PATH is always either the previous complete snapshot or the new one. A file whose checksum
// or size does not match is rejected as a whole (never half-loaded).
// Loading re-inserts the entries in order with their times, so ages survive the restart, and
// needs the same shard count (the shard bits are implied, not stored); capacity may differ (a
// smaller one keeps the newest entries).
// Several dedup workers: each writes its own file, <base>.<w>-of-<N> (one worker: <base>), with
// the shards it does not hold written empty, so the files of one worker count (a "layout")
// together hold the set, and any file loads into any split (each worker keeps the shards it
// holds). FindDedupSnapshotLayout picks what to load at start, whatever the worker count was.
// Incremental writing: DedupSnapshotWriter writes one shard per Step(), so the owning stage can
// interleave batches and stall for one shard at a time. Shards written later may hold keys
// inserted after the covered LSN; that is harmless (a superset of what the LSN promises).
// Threading: everything runs on the thread that owns the set; it blocks on disk I/O.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/base/result.h"
#include "stages/dedup_set.h"

namespace mailrail::stages {

class ChecksumWriter;

class DedupSnapshotWriter {
 public:
  static base::Result<std::unique_ptr<DedupSnapshotWriter>> Begin(const DedupSet& set, std::uint64_t covered_lsn,
                                                                  const std::string& path);
  ~DedupSnapshotWriter();  // unfinished: removes PATH.tmp, PATH keeps the previous snapshot
  DedupSnapshotWriter(const DedupSnapshotWriter&) = delete;
  DedupSnapshotWriter& operator=(const DedupSnapshotWriter&) = delete;

  // Writes the next shard (buffered); true once every shard is written.
  bool Step(const DedupSet& set);
  // Trailer, fsync, rename over PATH, fsync the directory.
  base::Status Finish();

 private:
  DedupSnapshotWriter(int fd, std::string path);
  int fd_;
  std::string path_;
  std::unique_ptr<ChecksumWriter> out_;
  std::size_t next_shard_ = 0;
};

// Writes the whole snapshot at once.
base::Status WriteDedupSnapshot(const DedupSet& set, std::uint64_t covered_lsn, const std::string& path);

// Loads PATH into `set` (which should be empty): the entries of the shards `set` holds. Returns
// the covered LSN; error code "dedup.snapshot_missing" when there is no file, other codes when it
// is unusable.
base::Result<std::uint64_t> LoadDedupSnapshot(const std::string& path, DedupSet& set);

// The file worker `worker` of `workers` writes: `base` for one worker, else base.<w>-of-<N>.
std::string DedupSnapshotPath(const std::string& base, std::size_t worker, std::size_t workers);

// The snapshot files to load at start: of every layout (worker count) whose files all exist, the
// one whose lowest covered LSN (read from the headers) is highest, preferring `workers` on a tie;
// empty when there is none. Files of other layouts stay on disk: a set loaded from them and
// snapshotted again covers at least their LSN, so they are never picked over the newer files.
std::vector<std::string> FindDedupSnapshotLayout(const std::string& base, std::size_t workers);

}  // namespace mailrail::stages
