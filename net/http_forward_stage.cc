#include "net/http_forward_stage.h"

#include <algorithm>
#include <array>

#include "engine/base/check.h"
#include "engine/base/counters.h"
#include "stages/record_json.h"

namespace mailrail::net {

base::Result<std::unique_ptr<HttpForwardStage>> HttpForwardStage::Create(HttpForwardConfig config,
                                                                         engine::Channel<stages::Message*>* in,
                                                                         stages::MessagePool* pool,
                                                                         DurableCallback on_durable) {
  std::unique_ptr<HttpForwardStage> stage(new HttpForwardStage(std::move(config), in, pool, std::move(on_durable)));
  auto loop = EventLoop::Create({.ring_entries = 256, .buffer_count = 64, .buffer_size = 16384});
  if (!loop) return loop.error();
  stage->loop_ = std::move(loop).value();
  auto client = ForwardClient::Create(stage->loop_.get(), stage->config_.client);
  if (!client) return client.error();
  stage->client_ = std::move(client).value();
  stage->loop_thread_ = std::thread([loop = stage->loop_.get()] { loop->Run(); });
  return stage;
}

HttpForwardStage::HttpForwardStage(HttpForwardConfig config, engine::Channel<stages::Message*>* in,
                                   stages::MessagePool* pool, DurableCallback on_durable)
    : config_(std::move(config)),
      in_(in),
      pool_(pool),
      on_durable_(std::move(on_durable)),
      last_checkpoint_(engine::Clock::now()) {}

HttpForwardStage::~HttpForwardStage() {
  if (loop_thread_.joinable()) {
    loop_->Post([this] {
      client_->Shutdown();
      loop_->Stop();
    });
    loop_thread_.join();
  }
}

bool HttpForwardStage::HandOver() {
  while (handed_ < pending_.size()) {
    const PendingItem& first = pending_[handed_];
    if (first.json_begin == first.json_end) {
      client_->Skip(first.lsn);
      last_lsn_ = first.lsn;
      ++handed_;
      continue;
    }
    records_.clear();
    for (std::size_t i = handed_; i < pending_.size() && pending_[i].json_begin != pending_[i].json_end; ++i) {
      const PendingItem& item = pending_[i];
      records_.push_back({item.lsn, std::string_view(json_).substr(item.json_begin, item.json_end - item.json_begin)});
    }
    const std::size_t taken = client_->Append(records_);
    for (std::size_t i = 0; i < taken; ++i) {
      const PendingItem& item = pending_[handed_ + i];
      in_flight_.push_back({item.lsn, item.accepted_ns, item.durable_ns, item.raw_bytes});
    }
    if (taken > 0) last_lsn_ = pending_[handed_ + taken - 1].lsn;
    handed_ += taken;
    if (taken < records_.size()) return false;  // the client's budget is full: wait for a completion
  }
  pending_.clear();
  json_.clear();
  handed_ = 0;
  return true;
}

void HttpForwardStage::CollectAcknowledgements(bool final) {
  const ForwardStats& stats = client_->stats();
  counters_.forwarded.store(stats.records_acknowledged.value(), std::memory_order_relaxed);
  counters_.dead_lettered.store(stats.records_dead_lettered.value(), std::memory_order_relaxed);
  const std::uint64_t acknowledged = client_->acknowledged_through();
  if (acknowledged > acknowledged_) {
    acknowledged_ = acknowledged;
    const std::int64_t now_ns = engine::NowNs();
    while (!in_flight_.empty() && in_flight_.front().lsn <= acknowledged) {
      const InFlight& r = in_flight_.front();
      latency_.RecordEnd(r.accepted_ns, r.durable_ns, now_ns);
      base::BumpSingleWriter(counters_.forwarded_bytes, r.raw_bytes);
      in_flight_.pop_front();
    }
  }
  if (acknowledged_ > durable_lsn_.load(std::memory_order_relaxed) &&
      (final || engine::Clock::now() - last_checkpoint_ >= config_.checkpoint_interval)) {
    if (on_durable_) on_durable_(acknowledged_);  // the checkpoint first: durable_lsn() never runs ahead of it
    durable_lsn_.store(acknowledged_, std::memory_order_release);
    last_checkpoint_ = engine::Clock::now();
  }
}

std::size_t HttpForwardStage::RunOnce() {
  if (!waiter_set_) {
    // The topology has wired the input by the first run: completions wake this stage's thread.
    client_->set_room_waiter(in_->consumer_waiter());
    waiter_set_ = true;
  }
  std::size_t n = 0;
  if (HandOver()) {
    std::array<stages::Message*, 64> batch{};
    n = in_->PopBatch(batch);
    for (std::size_t i = 0; i < n; ++i) {
      stages::Message* msg = batch[i];
      PendingItem item{msg->lsn, json_.size(), json_.size(), msg->accepted_ns, msg->durable_ns, msg->raw.size()};
      const stages::Outcome outcome = stages::FinalOutcome(*msg);
      if (outcome == stages::Outcome::kForwarded) {
        latency_.RecordUntilDurable(*msg);
        stages::AppendRecordJson(*msg, json_);
        item.json_end = json_.size();
      } else {
        stages::CountOutcome(outcome, counters_);
      }
      pending_.push_back(item);
      pool_->Release(msg);
    }
    if (n > 0) {
      base::BumpSingleWriter(taken_, n);
      HandOver();
    }
  }
  const bool input_done = n == 0 && pending_.empty() && in_->IsDrained();
  if (input_done && !flushed_) {
    client_->Flush();  // the last, partly filled batch goes now rather than after the linger
    flushed_ = true;
  }
  const bool all_settled = input_done && client_->idle() && client_->acknowledged_through() >= last_lsn_;
  CollectAcknowledgements(all_settled);
  if (all_settled) finished_ = true;
  return n;
}

engine::Clock::time_point HttpForwardStage::next_deadline() const {
  // An acknowledgement not yet checkpointed must reach the checkpoint file within the interval.
  return acknowledged_ > durable_lsn_.load(std::memory_order_relaxed) ? last_checkpoint_ + config_.checkpoint_interval
                                                                       : engine::Clock::time_point::max();
}

void HttpForwardStage::Report(engine::Snapshot& s) const {
  auto v = [](const Counter& c) { return static_cast<double>(c.value()); };
  const ForwardStats& stats = client_->stats();
  s.Counter("stage_messages_in", static_cast<double>(taken_.load(std::memory_order_relaxed)), {{"stage", "forward"}},
            "messages the stage took from its input");
  s.Gauge("forward_durable_lsn", static_cast<double>(durable_lsn()), {},
          "highest LSN whose outcome is durable downstream (the forward checkpoint)");
  s.Counter("forward_attempts", v(stats.attempts), {}, "batch POSTs started (first tries and retries)");
  s.Counter("forward_batches", v(stats.batches_acknowledged), {{"result", "acknowledged"}},
            "batches by how they ended");
  s.Counter("forward_batches", v(stats.batches_dead_lettered), {{"result", "dead_lettered"}});
  s.Counter("forward_retries", v(stats.retries), {}, "batch attempts scheduled again after a failure");
  s.Counter("forward_failures", v(stats.responses_429), {{"reason", "429"}}, "failed batch attempts by reason");
  s.Counter("forward_failures", v(stats.responses_5xx), {{"reason", "5xx"}});
  s.Counter("forward_failures", v(stats.responses_other_4xx), {{"reason", "4xx"}});
  s.Counter("forward_failures", v(stats.transport_errors), {{"reason", "transport"}});
  s.Counter("forward_failures", v(stats.dead_letter_write_errors), {{"reason", "dead_letter_write"}});
  s.Counter("forward_circuit_opens", v(stats.circuit_opens), {}, "times the circuit breaker opened");
  s.Counter("forward_batches_recut", v(stats.batches_recut), {},
            "batches cut at a range remembered from before a restart (same Idempotency-Key as before)");
  s.Counter("forward_failures", v(stats.batch_journal_write_errors), {{"reason", "batch_journal_write"}});
  s.Gauge("forward_circuit_state", static_cast<double>(static_cast<int>(client_->circuit_state())), {},
          "0 closed, 1 open, 2 half-open");
  s.Gauge("forward_buffered_bytes", static_cast<double>(client_->buffered_bytes()), {},
          "record bytes in open, sealed and in-flight batches");
  ReportOutcomes(counters_, latency_, s);
}

}  // namespace mailrail::net
