#include "net/source_outlet.h"

namespace mailrail::net {

SourceOutlet::SourceOutlet(EventLoop* loop, engine::Channel<stages::Message*>* channel, Refill refill,
                           AcksHandler on_acks)
    : loop_(loop), channel_(channel), refill_(std::move(refill)), on_acks_(std::move(on_acks)) {}

void SourceOutlet::Install() {
  std::weak_ptr<bool> alive = alive_;
  loop_->AddBatchEndHook([this, alive] {
    if (!alive.expired() && !held_.empty()) PushHeld();
  });
}

void SourceOutlet::PushHeld() {
  const std::size_t pushed = channel_->PushBatch(std::span<stages::Message* const>(held_));
  held_.erase(held_.begin(), held_.begin() + static_cast<std::ptrdiff_t>(pushed));
  if (!held_.empty()) RetrySoon();
}

void SourceOutlet::RetrySoon() {
  if (retry_armed_) return;
  retry_armed_ = true;
  std::weak_ptr<bool> alive = alive_;
  loop_->RunAfter(std::chrono::milliseconds(1), [this, alive] {
    if (alive.expired()) return;
    retry_armed_ = false;
    refill_();  // held_ is pushed again at the end of this iteration
  });
}

void SourceOutlet::OnDurable(std::span<const stages::DurableAck> acks) {
  bool was_empty;
  {
    std::lock_guard lock(acks_mutex_);
    was_empty = acks_.empty();
    acks_.insert(acks_.end(), acks.begin(), acks.end());
  }
  std::weak_ptr<bool> alive = alive_;
  if (was_empty) loop_->Post([this, alive] {
    if (!alive.expired()) DrainAcks();
  });
}

void SourceOutlet::DrainAcks() {
  {
    std::lock_guard lock(acks_mutex_);
    draining_acks_.swap(acks_);
  }
  on_acks_(draining_acks_);
  draining_acks_.clear();
}

}  // namespace mailrail::net
