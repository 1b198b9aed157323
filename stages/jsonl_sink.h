#pragma once
// JsonlSink: the terminal stage (stages/terminal_stage.h) of embedded runs and replays. Writes
// one JSON line per forwarded message (stages/record_json.h) to a file, counts every message by
// its final outcome, and releases every message to the pool.
// Durability: the file is written in large appends and fdatasync'ed at most every sync_interval
//   and when the stream ends; after each fdatasync the on_durable callback gets the highest LSN
//   whose line (or final outcome) is on disk, which is what the forward checkpoint records.
//   A line torn by a crash (the file does not end in a newline) is cut when the sink opens: it was
//   never checkpointed, so the restarted pipeline writes it again.
// Threading: the stage's thread; counters are read by anyone with relaxed loads.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>

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
  base::Status WriteBuffer(bool sync);

  std::string path_;
  int fd_;
  engine::Channel<Message*>* in_;
  MessagePool* pool_;
  std::string buffer_;
  DurableCallback on_durable_;
  std::chrono::milliseconds sync_interval_;
  engine::Clock::time_point last_sync_{};
  std::uint64_t buffered_lsn_ = 0;  // highest LSN handled (written or counted)
  std::uint64_t synced_lsn_ = 0;    // highest LSN covered by the last fdatasync
  std::atomic<std::uint64_t> durable_lsn_{0};
  bool finished_ = false;
  OutcomeCounters counters_;
  engine::LatencyHistogram latency_ns_;  // accepted -> written to the sink
};

}  // namespace mailrail::stages
