#pragma once
// SyncJobManager: the per-mailbox sync jobs of the replaced service's API
// (/api/v1/email-sync/...): backfills started by the API, incremental syncs on a schedule, their
// progress and history, persisted in a storage::SyncJobStore so that they survive restarts.
//
// Jobs and counts, in mailrail terms (MailboxSyncProgress of the source's current run):
//   total_emails         messages the job's searches found (IMAP: UIDs of UID SEARCH, within the
//                        backfill window and under the size limit; Graph: items of the job's
//                        delta rounds, not @removed)
//   processed_emails     of those, durable in the WAL (accepted: nothing can lose them any more)
//   parsed_transactions  of those, whose end state is durable at the terminal stage (forwarded
//                        and acknowledged, or settled as duplicate / dropped / quarantined)
//   failed_emails        found but never ingested (over the size limit, expunged before the fetch)
//   progress             100 × (parsed_transactions + failed_emails) / total_emails (100 when 0)
// Status: pending until the source's first search of the job completed; processing until every
// found message is settled or failed, then completed. A job interrupted by a restart resumes
// (backfill: from the source's checkpoint); a job whose user has no mailbox any more fails.
// Schedule: every incremental_interval after a user's latest job was created, if that user has a
// completed backfill and no active job, an incremental job runs (SyncNow).
//
// Threading: every method on the loop thread (the daemon's network loop, which also runs the
//   sources); Start arms a timer there. Blocking: job creation and state changes are saved with
//   fdatasync on that thread (one write per tick for all running jobs).
// Ownership: loop, store and sources outlive the manager.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "net/control_api.h"
#include "net/event_loop.h"
#include "net/mailbox_sync_source.h"
#include "storage/sync_job_store.h"

namespace mailrail::net {

struct SyncJobsConfig {
  std::chrono::seconds incremental_interval{1800};
  std::chrono::milliseconds progress_interval{1000};  // how often running jobs are updated and saved
};

using SyncJobLog = std::function<void(std::string_view event, const std::vector<std::pair<std::string_view, std::string>>& fields)>;

class SyncJobManager {
 public:
  SyncJobManager(EventLoop* loop, storage::SyncJobStore* store, std::vector<MailboxSyncSource*> sources,
                 std::function<std::uint64_t()> terminal_durable_lsn, SyncJobsConfig config, SyncJobLog log);
  ~SyncJobManager();
  SyncJobManager(const SyncJobManager&) = delete;
  SyncJobManager& operator=(const SyncJobManager&) = delete;

  // Resumes jobs interrupted by a restart and starts the progress and schedule timer.
  void Start();

  // The four routes. months: 1..120 (validated by the caller's route; 400 otherwise).
  ControlReply StartBackfill(std::string_view user_id, unsigned months);
  ControlReply Status(std::string_view user_id) const;
  ControlReply History(std::string_view user_id, std::size_t limit) const;
  ControlReply Stats() const;

 private:
  MailboxSyncSource* SourceOf(std::string_view user_id) const;
  storage::SyncJob NewJob(std::string_view user_id, storage::SyncJobKind kind, unsigned months);
  void Tick();
  // Applies the source's progress to a copy of `job`; true when something changed.
  bool Update(storage::SyncJob& job, MailboxSyncSource* source);
  void Save(std::span<const storage::SyncJob> jobs);

  EventLoop* loop_;
  storage::SyncJobStore* store_;
  std::vector<MailboxSyncSource*> sources_;
  std::function<std::uint64_t()> terminal_durable_lsn_;
  SyncJobsConfig config_;
  SyncJobLog log_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

// The JSON of one job as the status and history routes answer it.
void AppendSyncJobJson(const storage::SyncJob& job, std::string& out);

}  // namespace mailrail::net
