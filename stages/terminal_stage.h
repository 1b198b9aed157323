#pragma once
// TerminalStage: the last stage of the pipeline, where messages leave it. Every message reaches
// the terminal stage, whatever happened to it upstream (duplicate, dropped or quarantined by a
// rule, unparseable): it is where each message's end state is counted, exactly once, where every
// message is released to the pool, and where the forward checkpoint comes from.
//
// Two implementations: stages::JsonlSink (a local file, for embedded runs and replays) and
// net::HttpForwardStage (batches to the downstream service).
// Checkpoint contract: durable_lsn() is the highest LSN L such that every message with LSN <= L
//   has reached its end state durably (written and synced, acknowledged by the downstream, or
//   dead-lettered, or settled upstream). It only grows. The stage calls its on_durable callback
//   with the new value before publishing it, so durable_lsn() never runs ahead of the checkpoint.
// Threading: counters() and durable_lsn() may be read from any thread (relaxed / acquire loads);
//   everything else is the stage's thread.

#include <atomic>
#include <cstdint>
#include <functional>

#include "engine/histogram.h"
#include "engine/stage.h"
#include "stages/message.h"

namespace mailrail::stages {

// Final outcomes, counted by the terminal stage. Single writer: the terminal stage's thread.
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
// The end-to-end latency of the messages a terminal stage finishes (accepted -> end state), and
// the three parts it splits into, so that a slow tail can be traced to where it waited:
//   accepted_to_logged  ingest and queueing until appended to the WAL (paced replay: from the
//                       scheduled send time, so a source falling behind shows here);
//   logged_to_durable   the WAL group commit (write + fdatasync, and waiting for the group ahead);
//   durable_to_end      parse, dedup, filter, the rings between them, and the sink or downstream.
// Messages recovered from the WAL at start-up count end to end only.
// Threading: single writer, the terminal stage's thread; Report() may run on any thread.
class LatencyParts {
 public:
  // Records the parts up to durability, known once the message reaches the terminal stage.
  void RecordUntilDurable(const Message& msg);
  // Records the end state reached at end_ns: end to end, and the part after durability.
  void RecordEnd(std::int64_t accepted_ns, std::int64_t durable_ns, std::int64_t end_ns);
  void Report(engine::Snapshot& snapshot) const;

 private:
  engine::LatencyHistogram end_to_end_;
  engine::LatencyHistogram accepted_to_logged_;
  engine::LatencyHistogram logged_to_durable_;
  engine::LatencyHistogram durable_to_end_;
};

// Reports outcome counters and the latency histograms of a terminal stage.
void ReportOutcomes(const OutcomeCounters& counters, const LatencyParts& latency, engine::Snapshot& snapshot);

class TerminalStage : public engine::Stage {
 public:
  // Called with the new durable LSN (see the checkpoint contract above), on the stage's thread or
  // on one thread the stage owns (JsonlSink's sync thread): never on two threads at once.
  using DurableCallback = std::function<void(std::uint64_t lsn)>;

  std::string_view name() const override { return "forward"; }
  virtual const OutcomeCounters& counters() const = 0;
  virtual std::uint64_t durable_lsn() const = 0;
};

}  // namespace mailrail::stages
