#pragma once
// SyncJobStore: the per-mailbox sync jobs (backfills and scheduled incremental syncs) of the
// control API, kept in memory and persisted in an append-only journal in the data directory.
//
// Journal format (<data_dir>/sync_jobs.journal), one line per saved state of a job; the last line
// of a job id is its current state:
//
//   v1 TAB job_id TAB user_id TAB kind TAB status TAB months TAB total TAB processed TAB parsed
//      TAB failed TAB created_ms TAB updated_ms TAB completed_ms TAB error TAB xxh32 LF
//
//   kind    backfill | incremental
//   status  pending | processing | completed | failed
//   xxh32   8 lower-case hex digits of XXH32 (seed 0) over every byte of the line before it
//
// user_id and error never contain tabs or line breaks (the writer replaces them in error; user ids
// are checked by the config loader). Every Save appends whole lines with one write and fdatasync.
// A crash can only leave the last line short (no LF) or damaged: Open cuts such a tail and reports
// it (torn_tail_bytes). A damaged line before the last is an error naming the file and line: the
// store does not guess which job states were lost.
// Compaction: when the journal holds more than 4 lines per live job (plus 1,000), Open and Save
// rewrite it with one line per job (write journal.tmp, fdatasync, rename, fsync the directory),
// keeping the newest history_per_user jobs of each user.
//
// Threading: not thread-safe; one thread (the daemon's network loop) owns the store.
// Blocking: Open reads the file; Save waits for fdatasync (a few ms), so callers batch job
//   updates into one SaveAll.

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/base/result.h"

namespace mailrail::storage {

enum class SyncJobKind { kBackfill, kIncremental };
enum class SyncJobStatus { kPending, kProcessing, kCompleted, kFailed };

std::string_view SyncJobKindName(SyncJobKind kind);
std::string_view SyncJobStatusName(SyncJobStatus status);

struct SyncJob {
  std::string job_id;
  std::string user_id;
  SyncJobKind kind = SyncJobKind::kBackfill;
  SyncJobStatus status = SyncJobStatus::kPending;
  unsigned months = 0;              // backfill window; 0 for incremental jobs
  std::uint64_t total = 0;          // messages the job's searches found
  std::uint64_t processed = 0;      // of those, durable in the WAL
  std::uint64_t parsed = 0;         // of those, past the terminal stage (end state durable)
  std::uint64_t failed = 0;         // found but never ingested (too large, expunged before the fetch)
  std::int64_t created_ms = 0;
  std::int64_t updated_ms = 0;
  std::int64_t completed_ms = 0;    // 0 while not completed or failed
  std::string error;                // why the job failed; empty otherwise

  bool is_active() const { return status == SyncJobStatus::kPending || status == SyncJobStatus::kProcessing; }
};

class SyncJobStore {
 public:
  // Reads (or creates) the journal at `path`. A damaged file is an error naming file and line.
  static base::Result<SyncJobStore> Open(std::string path, std::size_t history_per_user);

  // Records the job's current state durably (appends, fdatasync); replaces the job in memory.
  base::Status Save(const SyncJob& job);
  base::Status SaveAll(std::span<const SyncJob> jobs);

  // The newest job of the user; nullptr when the user has none.
  const SyncJob* Latest(std::string_view user_id) const;
  // The user's jobs, newest first, at most `limit`.
  std::vector<const SyncJob*> History(std::string_view user_id, std::size_t limit) const;
  // Every user's jobs in creation order.
  const std::map<std::string, std::vector<SyncJob>, std::less<>>& jobs_by_user() const { return by_user_; }

  std::uint64_t torn_tail_bytes() const { return torn_tail_bytes_; }
  std::size_t journal_lines() const { return journal_lines_; }

 private:
  SyncJobStore(std::string path, std::size_t history_per_user)
      : path_(std::move(path)), history_per_user_(history_per_user) {}
  base::Status Load();
  void Apply(SyncJob job);
  base::Status Append(const std::string& lines, std::size_t count);
  base::Status CompactIfLarge();
  std::size_t live_jobs() const;

  std::string path_;
  std::size_t history_per_user_;
  std::map<std::string, std::vector<SyncJob>, std::less<>> by_user_;  // creation order
  std::uint64_t torn_tail_bytes_ = 0;
  std::size_t journal_lines_ = 0;
};

// One journal line for `job`, LF included (exposed for tests).
std::string EncodeSyncJobLine(const SyncJob& job);

}  // namespace mailrail::storage
