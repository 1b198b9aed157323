#include "stages/dedup_router.h"

#include <algorithm>
#include <bit>
#include <string>

#include "engine/base/check.h"
#include "engine/base/counters.h"
#include "stages/dedup_set.h"

namespace mailrail::stages {

DedupRouter::DedupRouter(const DedupKeyConfig& key, std::size_t shards, MessageChannel* in,
                         std::vector<MessageChannel*> outputs)
    : in_(in),
      keyer_(key),
      shard_bits_(static_cast<unsigned>(std::countr_zero(shards))),
      routed_(std::make_unique<std::atomic<std::uint64_t>[]>(outputs.size())) {
  MR_CHECK(std::has_single_bit(shards) && outputs.size() >= 2 && outputs.size() <= shards)
      << "dedup router: " << outputs.size() << " workers for " << shards << " shards";
  for (MessageChannel* out : outputs) outboxes_.emplace_back(out);
  for (std::size_t w = 0; w < outputs.size(); ++w) routed_[w].store(0, std::memory_order_relaxed);
}

bool DedupRouter::FlushAll() {
  bool all = true;
  for (auto& outbox : outboxes_) all = outbox.Flush() && all;  // every one, even after a full one
  return all;
}

void DedupRouter::PublishRouted() {
  // Only once every routed message is pushed: before that, a worker could find its input empty
  // with part of its share still pending here.
  if (max_lsn_ != published_lsn_) {
    published_lsn_ = max_lsn_;
    routed_through_lsn_.store(max_lsn_, std::memory_order_release);
  }
}

std::size_t DedupRouter::RunOnce() {
  if (!FlushAll()) return 0;
  PublishRouted();
  const std::size_t n = in_->PopBatch(batch_);
  if (n == 0) return 0;
  const std::size_t workers = outboxes_.size();
  for (std::size_t i = 0; i < n; ++i) {
    Message* m = batch_[i];
    m->route_seq = next_seq_++;
    max_lsn_ = std::max(max_lsn_, m->lsn);
    std::size_t worker = 0;
    if (!m->parse_failed) {
      const DedupKey key = keyer_.KeyOf(*m);
      m->record.dedup_key = key.fingerprint;
      keys_.Count(key.kind);
      worker = DedupShardOf(key.fingerprint, shard_bits_) % workers;
    }
    base::BumpSingleWriter(routed_[worker]);
    outboxes_[worker].Add(m);
  }
  if (FlushAll()) PublishRouted();
  return n;
}

bool DedupRouter::IsFinished() const {
  if (!in_->IsDrained()) return false;
  for (const auto& outbox : outboxes_) {
    if (!outbox.empty()) return false;
  }
  return true;
}

void DedupRouter::Report(engine::Snapshot& s) const {
  for (std::size_t w = 0; w < outboxes_.size(); ++w) {
    s.Counter("dedup_routed", static_cast<double>(routed(w)), {{"worker", std::to_string(w)}},
              "messages the router sent to each dedup worker");
  }
  keys_.Report(s);
}

}  // namespace mailrail::stages
