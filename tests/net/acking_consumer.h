#pragma once
// AckingConsumer: a stand-in for the WAL stage in net tests and the webhook benchmark. It pops
// Messages from the ingest channel on its own thread, assigns increasing LSNs, reports them to
// each message's DurableAckSink (as the WAL does after fdatasync) and releases the messages.
// It records what it saw when asked to. Pause() stops popping, to exercise backpressure.
//
// Threading: one consumer thread; Pause/Resume/seen() from any thread.

#include <atomic>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "engine/channel.h"
#include "engine/waiter.h"
#include "stages/message.h"

namespace mailrail::net::testing {

struct SeenMessage {
  std::string raw;
  stages::InputKind kind;
  stages::SourceKind source_kind;
  std::string source_id;
  std::string position;
  std::uint64_t lsn;
};

class AckingConsumer {
 public:
  AckingConsumer(engine::Channel<stages::Message*>* channel, stages::MessagePool* pool, bool record)
      : channel_(channel), pool_(pool), record_(record) {
    channel_->set_waiters(nullptr, &waiter_);
    thread_ = std::thread([this] { Run(); });
  }
  ~AckingConsumer() {
    stop_.store(true);
    waiter_.Notify();
    thread_.join();
  }
  void Pause() { paused_.store(true); }
  void Resume() {
    paused_.store(false);
    waiter_.Notify();
  }
  std::vector<SeenMessage> seen() {
    std::lock_guard lock(mutex_);
    return seen_;
  }
  std::uint64_t acked() const { return next_lsn_.load() - 1; }

 private:
  void Run() {
    stages::Message* batch[64];
    std::vector<stages::DurableAck> acks;
    while (!stop_.load()) {
      const std::size_t n = paused_.load() ? 0 : channel_->PopBatch(std::span(batch));
      if (n == 0) {
        const std::uint32_t ticket = waiter_.PrepareToPark();
        if (stop_.load() || (!paused_.load() && channel_->size_approx() > 0)) {
          waiter_.CancelPark();
          continue;
        }
        waiter_.Park(ticket, std::chrono::milliseconds(50));
        continue;
      }
      // One "commit group": acks per sink in LSN order, then the messages go back to the pool.
      for (std::size_t i = 0; i < n; ++i) {
        stages::Message* m = batch[i];
        m->lsn = next_lsn_.fetch_add(1);
        if (record_) {
          std::lock_guard lock(mutex_);
          seen_.push_back({m->raw, m->kind, m->source.kind, m->source.id, m->source.position, m->lsn});
        }
      }
      std::size_t i = 0;
      while (i < n) {
        stages::DurableAckSink* sink = batch[i]->ack_sink;
        acks.clear();
        std::size_t j = i;
        for (; j < n && batch[j]->ack_sink == sink; ++j) acks.push_back({batch[j]->ack_token, batch[j]->lsn});
        if (sink != nullptr) sink->OnDurable(acks);
        i = j;
      }
      for (std::size_t k = 0; k < n; ++k) pool_->Release(batch[k]);
    }
  }

  engine::Channel<stages::Message*>* channel_;
  stages::MessagePool* pool_;
  const bool record_;
  engine::Waiter waiter_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> paused_{false};
  std::atomic<std::uint64_t> next_lsn_{1};
  std::mutex mutex_;
  std::vector<SeenMessage> seen_;
  std::thread thread_;
};

}  // namespace mailrail::net::testing
