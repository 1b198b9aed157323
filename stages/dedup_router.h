#pragma once
// DedupRouter: with several dedup threads, computes each message's dedup key, numbers it, and
// hands it to the dedup worker that holds the key's shard.
//
//   parse ─► DedupRouter ─┬─► dedup-0 ─┐
//                         ├─► dedup-1 ─┼─► filter (merges by Message::route_seq)
//                         └─► dedup-2 ─┘
//
// Routing: shard = top bits of the key (DedupShardOf, the same shards as one DedupSet of
//   `shards`); worker = shard % workers, so every copy of a key meets the same worker, which
//   holds those shards alone (no locks). Unparseable messages (no key) go to worker 0.
// Order: route_seq = 1, 2, 3, ... in input (LSN) order. Every message goes to exactly one worker
//   and each worker keeps order, so the filter restores the input order by taking the next
//   sequence number, which is always at the head of exactly one worker's output.
// Keying happens here (one DedupKeyer, so bad Message-ID detection sees every message); the
//   workers run with DedupStageConfig::keyed_upstream.
// routed_through_lsn: the highest LSN routed, release-stored after the batch carrying it was
//   pushed (so a worker that then finds its input empty knows it has taken all of its share).
// Backpressure: a worker's full input keeps what is pending for it; the router takes no new
//   input until every per-worker outbox has drained, and flushes all of them on every call (so a
//   full worker never stops the others from getting what they need to make progress).
// Threading: Stage contract (one thread). Counters single-writer, relaxed readers.

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "engine/stage.h"
#include "stages/dedup_key.h"
#include "stages/message.h"

namespace mailrail::stages {

class DedupRouter final : public engine::Stage {
 public:
  using MessageChannel = engine::Channel<Message*>;

  // shards: the dedup set's shard count (a power of two); outputs.size() workers, 2..shards.
  DedupRouter(const DedupKeyConfig& key, std::size_t shards, MessageChannel* in, std::vector<MessageChannel*> outputs);

  std::string_view name() const override { return "dedup-route"; }
  std::size_t RunOnce() override;
  bool IsFinished() const override;
  unsigned cost_hint() const override { return 1; }
  void Report(engine::Snapshot& snapshot) const override;

  const std::atomic<std::uint64_t>& routed_through_lsn() const { return routed_through_lsn_; }
  // Messages routed to each worker; any thread (relaxed).
  std::uint64_t routed(std::size_t worker) const { return routed_[worker].load(std::memory_order_relaxed); }

 private:
  bool FlushAll();
  void PublishRouted();

  MessageChannel* in_;
  std::vector<engine::Outbox<Message*>> outboxes_;
  DedupKeyer keyer_;
  unsigned shard_bits_;
  std::array<Message*, 64> batch_{};
  std::uint64_t next_seq_ = 1;
  std::uint64_t max_lsn_ = 0;
  std::uint64_t published_lsn_ = 0;
  std::atomic<std::uint64_t> routed_through_lsn_{0};
  std::unique_ptr<std::atomic<std::uint64_t>[]> routed_;  // per worker
  DedupKeyCounts keys_;
};

}  // namespace mailrail::stages
