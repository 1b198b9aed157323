#pragma once
// HttpForwardStage: the terminal stage (stages/terminal_stage.h) that sends clean records to the
// downstream persistence service in batches, through a ForwardClient running on the stage's own
// network thread (one EventLoop).
//
// Flow: each message taken from the input is settled at once when upstream ended its journey
//   (duplicate, dropped, quarantined: its LSN is Skip()ped, so the checkpoint can pass it), or
//   serialized (stages/record_json.h) and appended to the client's open batch. Either way the
//   message goes back to the pool immediately: the batch holds the record's JSON, and the WAL
//   holds the message until the checkpoint passes it.
// Backpressure: when the client's byte budget is full, the stage keeps the records it could not
//   append (in LSN order) and takes no new input; the client notifies the stage's thread waiter
//   whenever a batch completes, which also wakes the stage to publish acknowledgements.
// Outcomes: forwarded = records the downstream acknowledged (2xx); dead_lettered = records of
//   batches that went to the dead-letter log (refused, or retries exhausted). Both come from the
//   client's counters, so a record counts only once its fate is known.
// Checkpoint: durable_lsn() follows ForwardClient::acknowledged_through(); on_durable is called
//   at most every checkpoint_interval (and once at the end of the stream), since each call
//   writes and syncs the checkpoint file.
// End-to-end latency: accepted (WAL ingest) → acknowledged by the downstream.
// Finished: input drained, every record appended and the last batch acknowledged or
//   dead-lettered. With a downstream that never answers, retries end in the dead-letter log after
//   max_attempts, so the stage finishes in bounded time.
// Threading: RunOnce/IsFinished/next_deadline on the stage's thread; Report, counters,
//   durable_lsn and circuit_state from any thread. The destructor shuts the client down and
//   joins the network thread; batches not yet acknowledged are re-fed from the WAL next start.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "engine/base/result.h"
#include "engine/histogram.h"
#include "net/event_loop.h"
#include "net/forward_client.h"
#include "stages/message.h"
#include "stages/terminal_stage.h"

namespace mailrail::net {

struct HttpForwardConfig {
  ForwardConfig client;  // downstream URL, batching, retries, breaker, dead-letter directory
  std::chrono::milliseconds checkpoint_interval{100};
};

class HttpForwardStage final : public stages::TerminalStage {
 public:
  static base::Result<std::unique_ptr<HttpForwardStage>> Create(HttpForwardConfig config,
                                                                engine::Channel<stages::Message*>* in,
                                                                stages::MessagePool* pool,
                                                                DurableCallback on_durable = {});
  ~HttpForwardStage() override;

  std::size_t RunOnce() override;
  bool IsFinished() const override { return finished_; }
  engine::Clock::time_point next_deadline() const override;
  unsigned cost_hint() const override { return 4; }
  void Report(engine::Snapshot& snapshot) const override;

  const stages::OutcomeCounters& counters() const override { return counters_; }
  std::uint64_t durable_lsn() const override { return durable_lsn_.load(std::memory_order_acquire); }
  CircuitState circuit_state() const { return client_->circuit_state(); }
  const ForwardStats& client_stats() const { return client_->stats(); }

 private:
  // A message handed to the stage and not yet handed to the client, in LSN order.
  struct PendingItem {
    std::uint64_t lsn = 0;
    std::size_t json_begin = 0;  // in json_; json_end == json_begin: settled upstream (Skip)
    std::size_t json_end = 0;
    std::int64_t accepted_ns = 0;
    std::int64_t durable_ns = 0;
    std::size_t raw_bytes = 0;
  };
  // A record handed to the client and not yet acknowledged: for latency and byte counts.
  struct InFlight {
    std::uint64_t lsn = 0;
    std::int64_t accepted_ns = 0;
    std::int64_t durable_ns = 0;
    std::size_t raw_bytes = 0;
  };

  HttpForwardStage(HttpForwardConfig config, engine::Channel<stages::Message*>* in, stages::MessagePool* pool,
                   DurableCallback on_durable);
  // Hands pending items to the client in order; false when the client's budget stopped it.
  bool HandOver();
  // Publishes what the downstream acknowledged since the last call; `final` forces the checkpoint.
  void CollectAcknowledgements(bool final);

  HttpForwardConfig config_;
  engine::Channel<stages::Message*>* in_;
  stages::MessagePool* pool_;
  DurableCallback on_durable_;
  std::unique_ptr<EventLoop> loop_;
  std::unique_ptr<ForwardClient> client_;
  std::thread loop_thread_;

  std::string json_;
  std::vector<PendingItem> pending_;
  std::size_t handed_ = 0;  // pending_[0, handed_) are with the client
  std::vector<ForwardRecord> records_;  // scratch for Append
  std::deque<InFlight> in_flight_;
  std::uint64_t last_lsn_ = 0;  // highest LSN handed to the client
  std::uint64_t acknowledged_ = 0;
  bool waiter_set_ = false;
  bool flushed_ = false;
  bool finished_ = false;
  engine::Clock::time_point last_checkpoint_{};
  std::atomic<std::uint64_t> taken_{0};
  std::atomic<std::uint64_t> durable_lsn_{0};
  stages::OutcomeCounters counters_;
  stages::LatencyParts latency_;  // end state: acknowledged by the downstream (or dead-lettered)
};

}  // namespace mailrail::net
