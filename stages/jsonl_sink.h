#pragma once
// JsonlSink: the terminal stage (stages/terminal_stage.h) of embedded runs and replays. Writes
// one JSON line per forwarded message (stages/record_json.h) to a file, counts every message by
// its final outcome, and releases every message to the pool.
// Durability: the file is written in large appends and fdatasync'ed at most every sync_interval
//   and when the stream ends; after each fdatasync the on_durable callback gets the highest LSN
//   whose line (or final outcome) is on disk, which is what the forward checkpoint records.
//   A line torn by a crash (the file does not end in a newline) is cut when the sink opens: it was
//   never checkpointed, so the restarted pipeline writes it again.
// Threading: RunOnce on the stage's thread, which only appends (write(2) into the page cache).
//   The fdatasync and the on_durable callback run on the sink's own sync thread, one sync at a
//   time, so the stage's thread (on a small machine also ingest's and the WAL's) never waits for
//   the disk; the sync thread wakes the stage's thread through its input channel's consumer
//   waiter when a sync completes. Counters are read by anyone with relaxed loads.
// Memory ordering: durable_lsn_ is stored with release after on_durable returned, for readers on
//   any thread. The sync request and the synced LSN pass under mutex_, and the sync thread wakes
//   the stage's thread under it too: the stage decides it is finished under mutex_, so no wake-up
//   reaches a waiter the topology may have destroyed after the stage's thread exited.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>

#include "engine/base/result.h"
#include "engine/histogram.h"
#include "stages/message.h"
#include "stages/terminal_stage.h"

namespace mailrail::stages {

class JsonlSink final : public TerminalStage {
 public:
  static base::Result<std::unique_ptr<JsonlSink>> Create(std::string path, engine::Channel<Message*>* in,
                                                         MessagePool* pool, DurableCallback on_durable = {},
                                                         std::chrono::milliseconds sync_interval = std::chrono::milliseconds(100));
  ~JsonlSink() override;

  std::size_t RunOnce() override;
  bool IsFinished() const override { return finished_; }
  unsigned cost_hint() const override { return 4; }
  engine::Clock::time_point next_deadline() const override;

  void Report(engine::Snapshot& snapshot) const override;

  const OutcomeCounters& counters() const override { return counters_; }
  std::uint64_t durable_lsn() const override { return durable_lsn_.load(std::memory_order_acquire); }

 private:
  JsonlSink(std::string path, int fd, engine::Channel<Message*>* in, MessagePool* pool, DurableCallback on_durable,
            std::chrono::milliseconds sync_interval);
  // Appends the buffer to the file (the page cache).
  base::Status WriteBuffer();
  // Asks the sync thread to make everything handled so far durable (if it is not yet asked to).
  void RequestSync();
  // The highest LSN the sync thread has made durable (under mutex_).
  std::uint64_t SyncedThrough();
  void SyncLoop();

  std::string path_;
  int fd_;
  engine::Channel<Message*>* in_;
  MessagePool* pool_;
  std::string buffer_;
  DurableCallback on_durable_;
  std::chrono::milliseconds sync_interval_;
  engine::Clock::time_point last_sync_{};  // when the last sync was requested
  std::uint64_t buffered_lsn_ = 0;   // highest LSN handled (written or counted)
  std::uint64_t requested_lsn_ = 0;  // highest LSN the sync thread was asked to make durable
  std::atomic<std::uint64_t> durable_lsn_{0};
  bool finished_ = false;

  std::mutex mutex_;
  std::condition_variable sync_wanted_;
  std::uint64_t sync_request_ = 0;  // guarded by mutex_: the LSN to make durable next
  std::uint64_t synced_lsn_ = 0;    // guarded by mutex_: made durable and checkpointed
  bool stopping_ = false;           // guarded by mutex_: destruction; no more wake-ups
  std::thread sync_thread_;         // last member: started once everything it uses exists
  OutcomeCounters counters_;
  LatencyParts latency_;  // end state: written to the sink
};

}  // namespace mailrail::stages
