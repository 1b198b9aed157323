#pragma once
// JsonlSink: the terminal stage of embedded runs and replays. Writes one JSON line per forwarded
// message (stages/record_json.h) to a file, counts every message by its final outcome, and
// releases every message to the pool.
//
// Every message reaches the terminal stage, whatever happened to it upstream (duplicate, dropped
// or quarantined by a rule, unparseable): the terminal stage is where each message's end state
// is counted, exactly once, and where messages leave the pipeline in LSN order.
// Durability: the file is written in large appends and fdatasync'ed when the stream ends (and by
//   Sync()); `durable_lsn()` is the highest LSN whose line is on disk, for the forward checkpoint.
// Threading: the stage's thread; counters are read by anyone with relaxed loads.

#include <atomic>
#include <cstdint>
#include <string>

#include "engine/base/result.h"
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

class JsonlSink final : public engine::Stage {
 public:
  static base::Result<std::unique_ptr<JsonlSink>> Create(std::string path, engine::Channel<Message*>* in,
                                                         MessagePool* pool);
  ~JsonlSink() override;

  std::string_view name() const override { return "forward"; }
  std::size_t RunOnce() override;
  bool IsFinished() const override { return finished_; }

  const OutcomeCounters& counters() const { return counters_; }
  std::uint64_t durable_lsn() const { return durable_lsn_.load(std::memory_order_acquire); }

 private:
  JsonlSink(std::string path, int fd, engine::Channel<Message*>* in, MessagePool* pool);
  base::Status WriteBuffer(bool sync);

  std::string path_;
  int fd_;
  engine::Channel<Message*>* in_;
  MessagePool* pool_;
  std::string buffer_;
  std::uint64_t buffered_lsn_ = 0;  // highest LSN in buffer_
  std::atomic<std::uint64_t> durable_lsn_{0};
  bool finished_ = false;
  OutcomeCounters counters_;
};

}  // namespace mailrail::stages
