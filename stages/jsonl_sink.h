#pragma once
// JsonlSink: the terminal stage of embedded runs and replays. Writes one JSON line per forwarded
// message (stages/record_json.h) to a file, counts every message by its final outcome, and
// releases every message to the pool.
//
// Every message reaches the terminal stage, whatever happened to it upstream (duplicate, dropped
// or quarantined by a rule, unparseable): the terminal stage is where each message's end state
// is counted, exactly once, and where messages leave the pipeline in LSN order.
// Durability: the file is written in large appends and fdatasync'ed at most every sync_interval
//   and when the stream ends; after each fdatasync the on_durable callback gets the highest LSN
//   whose line (or final outcome) is on disk, which is what the forward checkpoint records.
//   A line torn by a crash (the file does not end in a newline) is cut when the sink opens: it was
//   never checkpointed, so the restarted pipeline writes it again.
// Threading: the stage's thread; counters are read by anyone with relaxed loads.

#include <atomic>
#include <chrono>
#include <functional>
#include <cstdint>
#include <string>

#include "engine/base/result.h"
#include "engine/histogram.h"
#include "engine/stage.h"
#include "stages/message.h"

namespace mailrail::stages {

// Final outcomes, counted by the terminal stage.
struct OutcomeCounters {
  std::atomic<std::uint64_t> forwarded{0};
  std::atomic<std::uint64_t> duplicates{0};
  std::atomic<std::uint64_t> dropped_by_rule{0};
  std::atomic<std::uint64_t> quarantined_by_rule{0};
  std::atomic<std::uint64_t> quarantined_unparseable{0};
  std::atomic<std::uint64_t> dead_lettered{0};
  std::atomic<std::uint64_t> forwarded_bytes{0};

  std::uint64_t total() const {
    return forwarded.load(std::memory_order_relaxed) + duplicates.load(std::memory_order_relaxed) +
           dropped_by_rule.load(std::memory_order_relaxed) + quarantined_by_rule.load(std::memory_order_relaxed) +
           quarantined_unparseable.load(std::memory_order_relaxed) + dead_lettered.load(std::memory_order_relaxed);
  }
};

// The outcome a message has when it reaches the terminal stage, from what upstream decided.
Outcome FinalOutcome(const Message& msg);
// Adds one message with `outcome` to the counters (single writer: the terminal stage).
void CountOutcome(Outcome outcome, OutcomeCounters& counters);
// Reports outcome counters and the end-to-end latency histogram of a terminal stage.
void ReportOutcomes(const OutcomeCounters& counters, const engine::LatencyHistogram& latency,
                    engine::Snapshot& snapshot);

class JsonlSink final : public engine::Stage {
 public:
  using DurableCallback = std::function<void(std::uint64_t lsn)>;

  static base::Result<std::unique_ptr<JsonlSink>> Create(std::string path, engine::Channel<Message*>* in,
                                                         MessagePool* pool, DurableCallback on_durable = {},
                                                         std::chrono::milliseconds sync_interval = std::chrono::milliseconds(100));
  ~JsonlSink() override;

  std::string_view name() const override { return "forward"; }
  std::size_t RunOnce() override;
  bool IsFinished() const override { return finished_; }
  engine::Clock::time_point next_deadline() const override;

  void Report(engine::Snapshot& snapshot) const override;

  const OutcomeCounters& counters() const { return counters_; }
  std::uint64_t durable_lsn() const { return durable_lsn_.load(std::memory_order_acquire); }

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
