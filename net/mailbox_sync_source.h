#pragma once
// MailboxSyncSource: what the sync-job layer (net::SyncJobManager) needs from a mailbox poller,
// whatever the protocol (ImapSource, GraphSource). A source knows mailboxes by the user id of the
// replaced service's API; the config keeps a user id to one source.
//
// A "run" is the source's unit of work for one job: StartBackfill and SyncNow each begin a run of
// the user's mailbox (every folder), replacing the previous run's counts; Progress reports the
// current run.
// Threading: every method is called on the source's own loop thread (the daemon's network loop).
// Blocking: never; a run proceeds asynchronously on that loop.

#include <cstdint>
#include <string_view>

namespace mailrail::net {

struct MailboxSyncProgress {
  bool started = false;        // the run's first search (Graph: a delta page per folder) has completed
  std::uint64_t found = 0;     // messages the run's searches found
  std::uint64_t durable = 0;   // of those, durable in the WAL
  std::uint64_t settled = 0;   // of those, with their end state durable at the terminal stage
  std::uint64_t failed = 0;    // found but never ingested (too large, removed before the fetch)
  bool done = false;           // started, and every found message is settled or failed
};

class MailboxSyncSource {
 public:
  virtual ~MailboxSyncSource() = default;
  virtual bool HasMailbox(std::string_view user_id) const = 0;
  // Searches the last `months` (0: everything) and fetches what it finds. resume = true continues
  // a backfill interrupted by a restart from the source's durable checkpoint instead of fetching
  // the whole window again. Returns false for an unknown user.
  virtual bool StartBackfill(std::string_view user_id, unsigned months, bool resume) = 0;
  // Fetches what arrived since the last sync. Returns false for an unknown user.
  virtual bool SyncNow(std::string_view user_id) = 0;
  // `terminal_durable_lsn`: the terminal stage's checkpoint; messages of the run whose WAL LSN is
  // at or below it count as settled.
  virtual MailboxSyncProgress Progress(std::string_view user_id, std::uint64_t terminal_durable_lsn) = 0;
};

}  // namespace mailrail::net
