#pragma once
// WalStage: the durability point of the pipeline, between ingest and parse. It appends each
// message's raw bytes and source metadata to the WAL, sets Message::lsn, and pushes a message
// downstream only once the commit group holding it is durable (fdatasync returned). After each
// durable group it tells every source, through Message::ack_sink, which of its messages are now
// durable (one OnDurable call per sink per group, acks in LSN order), so sources acknowledge
// upstream only then.
//
// Inputs: an optional channel from WalRecoverySource, drained completely (until closed) before
//   the first new message is taken, so recovered messages precede new input; recovered messages
//   are already in the log and pass through untouched. Then the ingest channel.
// Backpressure: when the open group is full, or the WAL's disk budget is reached
//   (WalWriter::is_full), or too many messages await durability or the output ring, the stage
//   stops popping its input; the ring fills and ingest pushes back. Nothing is dropped.
// Threading: an engine::Stage: one thread at a time (the Topology's). The WalWriter is used by
//   this stage only (except its thread-safe set_forwarded_lsn/is_full/stats). OnDurable runs on
//   this thread and must not block.
// Ownership: the WalWriter is owned by the caller and outlives the stage; messages are owned by
//   the stage from pop until push.
// Blocking: never waits for the disk. While a group is in flight next_deadline() is ~50 µs ahead
//   so that a parked thread reaps the completion promptly (see docs/parts/wal.md for the eventfd
//   alternative). Segment creation at rollover is synchronous (a few ms per segment).
// Failure: a message larger than the WAL can hold is a wiring bug (ingest caps message size at
//   WalWriter::max_message_bytes()) and aborts via MR_CHECK. A failed write or fdatasync aborts
//   the process with the error printed: the page cache can no longer be trusted, and a restart
//   recovers from the log.

#include <atomic>
#include <cstdint>
#include <vector>

#include "engine/stage.h"
#include "stages/message.h"
#include "storage/wal_writer.h"

namespace mailrail::stages {

struct WalStageStats {
  std::atomic<std::uint64_t> appended{0};
  std::atomic<std::uint64_t> released{0};  // pushed downstream after durability
  std::atomic<std::uint64_t> recovered_passed{0};
  std::atomic<std::uint64_t> acks{0};
  std::atomic<std::uint64_t> full_stalls{0};  // RunOnce calls that held input for a full disk
};

class WalStage final : public engine::Stage {
 public:
  WalStage(storage::WalWriter* writer, engine::Channel<Message*>* recovered, engine::Channel<Message*>* input,
           engine::Channel<Message*>* output, std::size_t max_pending = 8192);

  std::string_view name() const override { return "wal"; }
  std::size_t RunOnce() override;
  bool IsFinished() const override;
  engine::Clock::time_point next_deadline() const override;
  unsigned cost_hint() const override { return 6; }
  // Messages in and out, and the WalWriter's figures: records, bytes and commits made durable,
  // group sizes and commit latency (histograms), durable and retention LSNs, segments and disk use.
  void Report(engine::Snapshot& snapshot) const override;

  const WalStageStats& stats() const { return stats_; }

 private:
  struct SinkAcks {
    DurableAckSink* sink = nullptr;
    std::vector<DurableAck> acks;
  };

  std::size_t ReleaseDurable();
  std::size_t PassRecovered();
  std::size_t AppendInput(storage::Clock::time_point now);
  // Appends held_[held_next_...]; returns how many were appended.
  std::size_t AppendHeld(storage::Clock::time_point now);

  storage::WalWriter* writer_;
  engine::Channel<Message*>* recovered_;
  engine::Channel<Message*>* input_;
  engine::Outbox<Message*> outbox_;
  std::size_t max_pending_;
  // Appended, not yet durable, in LSN order: a ring of pointers (no allocation per message).
  std::vector<Message*> pending_;
  std::size_t pending_head_ = 0;
  std::size_t pending_size_ = 0;
  // Popped from the input but not yet appended (the group or the disk budget was full).
  std::vector<Message*> held_;
  std::size_t held_next_ = 0;
  std::vector<SinkAcks> sink_acks_;
  WalStageStats stats_;
};

}  // namespace mailrail::stages
