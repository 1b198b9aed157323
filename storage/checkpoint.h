#pragma once
// Forward checkpoint: "every record through LSN N has been forwarded and acknowledged downstream
// (or is durable in the dead-letter log)". Stored as one checkpoint record (storage/wal_format.h)
// in the file DIR/checkpoint, replaced crash-atomically: write DIR/checkpoint.tmp, fsync it,
// rename it over DIR/checkpoint, fsync DIR. After a crash the file holds either the old or the
// new checkpoint, never a mix; a checkpoint.tmp left behind is ignored and overwritten.
//
// Threading: WriteCheckpoint from one thread at a time (the forward stage); ReadCheckpoint from
//   any thread. Blocking: both do file I/O; WriteCheckpoint waits for two fsyncs, so callers
//   checkpoint per batch acknowledgement, not per record.

#include <cstdint>
#include <string>

#include "engine/base/result.h"

namespace mailrail::storage {

// Durably records forwarded_through_lsn in `dir`.
base::Status WriteCheckpoint(const std::string& dir, std::uint64_t forwarded_through_lsn);
// The recorded LSN; 0 when no checkpoint exists yet. An unreadable or damaged file is an error
// (never silently 0, which would re-forward the whole log without saying why).
base::Result<std::uint64_t> ReadCheckpoint(const std::string& dir);

// fsyncs a directory so that entries created, renamed or removed in it are durable.
base::Status SyncDirectory(const std::string& dir);

}  // namespace mailrail::storage
