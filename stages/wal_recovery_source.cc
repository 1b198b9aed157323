#include "stages/wal_recovery_source.h"

#include <chrono>

namespace mailrail::stages {

base::Result<std::unique_ptr<WalRecoverySource>> WalRecoverySource::Open(const std::string& wal_dir,
                                                                         std::uint64_t checkpoint_lsn,
                                                                         std::uint64_t end_lsn, MessagePool* pool,
                                                                         engine::Channel<Message*>* output) {
  auto reader = storage::WalReader::Open(wal_dir, {.after_lsn = checkpoint_lsn, .end_lsn = end_lsn});
  if (!reader) return reader.error();
  return std::unique_ptr<WalRecoverySource>(new WalRecoverySource(std::move(reader.value()), pool, output));
}

WalRecoverySource::WalRecoverySource(storage::WalReader reader, MessagePool* pool, engine::Channel<Message*>* output)
    : reader_(std::move(reader)), pool_(pool), outbox_(output) {}

std::size_t WalRecoverySource::RunOnce() {
  if (!outbox_.Flush()) return 0;
  std::size_t produced = 0;
  while (!done_ && produced < 64) {
    if (stop_.load(std::memory_order_acquire)) {
      done_ = true;
      break;
    }
    if (!has_view_) {
      if (!reader_.Next(&view_)) {
        done_ = true;
        break;
      }
      has_view_ = true;
    }
    storage::WalMessage record;
    if (!storage::DecodeMessagePayload(view_.payload, &record) || record.input_kind > 1 || record.source_kind > 3) {
      ++undecodable_;
      has_view_ = false;
      continue;
    }
    Message* msg = pool_->TryAcquire(record.raw.size());
    if (msg == nullptr) break;  // the pool is the memory budget: retry when messages come back
    msg->raw.assign(record.raw);
    msg->kind = static_cast<InputKind>(record.input_kind);
    msg->source.kind = static_cast<SourceKind>(record.source_kind);
    msg->source.id.assign(record.source_id);
    msg->source.position.assign(record.position);
    msg->received_at_ms = record.received_at_ms;
    msg->accepted_ns = engine::NowNs();
    msg->lsn = view_.header.lsn;
    msg->recovered = true;
    has_view_ = false;
    outbox_.Add(msg);
    ++produced;
  }
  outbox_.Flush();
  recovered_.store(recovered_.load(std::memory_order_relaxed) + produced, std::memory_order_relaxed);
  return produced;
}

bool WalRecoverySource::IsFinished() const { return done_ && outbox_.empty(); }

}  // namespace mailrail::stages
