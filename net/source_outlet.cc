#include "net/source_outlet.h"

#include "engine/base/counters.h"
#include "engine/stage.h"

namespace mailrail::net {

SourceOutlet::SourceOutlet(EventLoop* loop, stages::MessagePool* pool, engine::Channel<stages::Message*>* channel,
                           stages::DurableAckSink* source, Refill refill, AcksHandler on_acks)
    : loop_(loop),
      pool_(pool),
      channel_(channel),
      source_(source),
      refill_(std::move(refill)),
      on_acks_(std::move(on_acks)) {}

bool SourceOutlet::TryHold(std::string& raw, stages::InputKind kind, stages::SourceKind source_kind,
                           std::string_view source_id, std::string position, std::uint64_t ack_token) {
  if (channel_->capacity() - channel_->size_approx() <= held_.size()) return false;
  stages::Message* m = pool_->TryAcquire(raw.size());
  if (m == nullptr) return false;
  m->raw.swap(raw);
  m->kind = kind;
  m->source.kind = source_kind;
  m->source.id.assign(source_id);
  m->source.position = std::move(position);
  m->received_at_ms = base::UnixMs();
  m->accepted_ns = engine::NowNs();
  m->ack_sink = source_;
  m->ack_token = ack_token;
  held_.push_back(m);
  return true;
}

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
