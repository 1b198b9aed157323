#pragma once
// SourceOutlet: the two hand-overs a mailbox source on the network loop (ImapSource,
// GraphSource) shares with the pipeline.
//  - Into the ingest ring: TryHold takes a slot from the pool, moves the bytes into it, fills the
//    source fields (ack sink = the source) and keeps it; all messages held during one loop
//    iteration enter the SPSC ring with one PushBatch at the end of the iteration (a batch-end
//    hook). What does not fit stays held, in order, and `refill` runs after 1 ms so the source
//    can also retry what it could not fill. TryHold returns false (and keeps the bytes) when the
//    ring has no room beside those held or the pool no slot; the source then calls RetrySoon.
//  - Back from the WAL: OnDurable (WAL thread) queues the acks under a mutex and posts one task
//    per burst; the task hands them to `on_acks` on the loop thread, in the order the WAL sent them.
// Threading: everything but OnDurable on the loop thread (the only producer of the ring).
// Lifetime: loop and channel outlive the outlet; timers and tasks still pending when it is
//   destroyed do nothing. Install() at most once: the loop keeps the hook (it must not run after
//   the outlet is gone, i.e. destroy the outlet only after the loop stopped).

#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/channel.h"
#include "net/event_loop.h"
#include "stages/message.h"

namespace mailrail::net {

class SourceOutlet {
 public:
  using Refill = std::function<void()>;
  using AcksHandler = std::function<void(std::span<const stages::DurableAck>)>;

  SourceOutlet(EventLoop* loop, stages::MessagePool* pool, engine::Channel<stages::Message*>* channel,
               stages::DurableAckSink* source, Refill refill, AcksHandler on_acks);
  ~SourceOutlet() { *alive_ = false; }
  SourceOutlet(const SourceOutlet&) = delete;
  SourceOutlet& operator=(const SourceOutlet&) = delete;

  void Install();
  bool TryHold(std::string& raw, stages::InputKind kind, stages::SourceKind source_kind, std::string_view source_id,
               std::string position, std::uint64_t ack_token);
  std::size_t held() const { return held_.size(); }
  void RetrySoon();
  void OnDurable(std::span<const stages::DurableAck> acks);

 private:
  void PushHeld();
  void DrainAcks();

  EventLoop* loop_;
  stages::MessagePool* pool_;
  engine::Channel<stages::Message*>* channel_;
  stages::DurableAckSink* source_;
  Refill refill_;
  AcksHandler on_acks_;
  std::vector<stages::Message*> held_;
  bool retry_armed_ = false;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);

  std::mutex acks_mutex_;
  std::vector<stages::DurableAck> acks_;           // guarded by acks_mutex_
  std::vector<stages::DurableAck> draining_acks_;  // loop thread
};

}  // namespace mailrail::net
