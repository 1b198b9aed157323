#include "stages/wal_stage.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>

namespace mailrail::stages {
namespace {

constexpr std::size_t kBatch = 64;

storage::WalMessage ToWal(const Message& m) {
  storage::WalMessage w;
  w.input_kind = static_cast<std::uint8_t>(m.kind);
  w.source_kind = static_cast<std::uint8_t>(m.source.kind);
  w.source_id = m.source.id;
  w.position = m.source.position;
  w.received_at_ms = m.received_at_ms;
  w.raw = m.raw;
  return w;
}

[[noreturn]] void DieOnWalFailure(const storage::WalWriter& writer) {
  const base::Error* error = writer.failure();
  std::fprintf(stderr, "mailrail: fatal: the WAL cannot make records durable (%s: %s); exiting so that a restart "
               "recovers from the log\n",
               error != nullptr ? error->code.c_str() : "?", error != nullptr ? error->message.c_str() : "?");
  std::abort();
}

}  // namespace

WalStage::WalStage(storage::WalWriter* writer, engine::Channel<Message*>* recovered, engine::Channel<Message*>* input,
                   engine::Channel<Message*>* output, std::size_t max_pending)
    : writer_(writer), recovered_(recovered), input_(input), outbox_(output), max_pending_(max_pending) {
  std::size_t capacity = 1;
  while (capacity < max_pending_) capacity <<= 1;
  pending_.resize(capacity);
  held_.reserve(kBatch);
}

std::size_t WalStage::RunOnce() {
  const storage::Clock::time_point now = storage::Clock::now();
  writer_->Poll(now);
  if (writer_->failure() != nullptr) DieOnWalFailure(*writer_);
  std::size_t handled = ReleaseDurable();
  if (!outbox_.Flush()) return handled;  // downstream full: take nothing new
  if (recovered_ != nullptr && !recovered_->IsDrained()) return handled + PassRecovered();
  handled += AppendInput(now);
  writer_->Poll(now);  // submit what was appended if no group is in flight
  return handled;
}

std::size_t WalStage::ReleaseDurable() {
  const std::uint64_t durable = writer_->durable_lsn();
  std::size_t released = 0;
  const std::size_t mask = pending_.size() - 1;
  for (SinkAcks& s : sink_acks_) s.acks.clear();
  const std::int64_t now_ns = pending_size_ > 0 && pending_[pending_head_]->lsn <= durable ? engine::NowNs() : 0;
  while (pending_size_ > 0 && pending_[pending_head_]->lsn <= durable) {
    Message* msg = pending_[pending_head_];
    msg->durable_ns = now_ns;
    pending_head_ = (pending_head_ + 1) & mask;
    --pending_size_;
    if (msg->ack_sink != nullptr) {
      auto it = std::find_if(sink_acks_.begin(), sink_acks_.end(),
                             [&](const SinkAcks& s) { return s.sink == msg->ack_sink; });
      if (it == sink_acks_.end()) it = sink_acks_.insert(sink_acks_.end(), SinkAcks{msg->ack_sink, {}});
      it->acks.push_back(DurableAck{msg->ack_token, msg->lsn});
    }
    outbox_.Add(msg);  // read every field needed above first: downstream may release it once pushed
    ++released;
  }
  if (released == 0) return 0;
  std::uint64_t acks = 0;
  for (SinkAcks& s : sink_acks_) {
    if (s.acks.empty()) continue;
    s.sink->OnDurable(s.acks);
    acks += s.acks.size();
  }
  stats_.acks.store(stats_.acks.load(std::memory_order_relaxed) + acks, std::memory_order_relaxed);
  stats_.released.store(stats_.released.load(std::memory_order_relaxed) + released, std::memory_order_relaxed);
  outbox_.Flush();
  return released;
}

std::size_t WalStage::PassRecovered() {
  std::array<Message*, kBatch> batch{};
  const std::size_t n = recovered_->PopBatch(batch);
  for (std::size_t i = 0; i < n; ++i) outbox_.Add(batch[i]);
  outbox_.Flush();
  stats_.recovered_passed.store(stats_.recovered_passed.load(std::memory_order_relaxed) + n,
                                std::memory_order_relaxed);
  return n;
}

std::size_t WalStage::AppendHeld(storage::Clock::time_point now) {
  std::size_t appended = 0;
  const std::int64_t now_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(now.time_since_epoch()).count();
  const std::size_t mask = pending_.size() - 1;
  while (held_next_ < held_.size() && pending_size_ < max_pending_) {
    Message* msg = held_[held_next_];
    auto result = writer_->TryAppend(ToWal(*msg), now);
    if (result.status == storage::WalWriter::AppendStatus::kGroupFull) {
      writer_->Poll(now);  // submits the full group when none is in flight
      result = writer_->TryAppend(ToWal(*msg), now);
    }
    using Status = storage::WalWriter::AppendStatus;
    if (result.status == Status::kGroupFull) break;
    if (result.status == Status::kDiskFull) {
      stats_.full_stalls.store(stats_.full_stalls.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
      break;
    }
    if (result.status == Status::kFailed) DieOnWalFailure(*writer_);
    MR_CHECK(result.status == Status::kAppended)
        << "message of " << msg->raw.size() << " bytes does not fit a WAL segment (max "
        << writer_->max_message_bytes() << "); ingest must cap message size";
    msg->lsn = result.lsn;
    msg->logged_ns = now_ns;
    pending_[(pending_head_ + pending_size_) & mask] = msg;
    ++pending_size_;
    ++held_next_;
    ++appended;
  }
  if (held_next_ == held_.size()) {
    held_.clear();
    held_next_ = 0;
  }
  stats_.appended.store(stats_.appended.load(std::memory_order_relaxed) + appended, std::memory_order_relaxed);
  return appended;
}

std::size_t WalStage::AppendInput(storage::Clock::time_point now) {
  std::size_t handled = AppendHeld(now);
  if (!held_.empty()) return handled;  // still blocked on the group or the disk budget
  const std::size_t room = std::min(kBatch, max_pending_ - pending_size_);
  if (room == 0) return handled;
  held_.resize(room);
  const std::size_t n = input_->PopBatch(std::span<Message*>(held_.data(), room));
  held_.resize(n);
  if (n == 0) return handled;
  AppendHeld(now);
  return handled + n;
}

void WalStage::Report(engine::Snapshot& s) const {
  auto v = [](const std::atomic<std::uint64_t>& n) { return static_cast<double>(n.load(std::memory_order_relaxed)); };
  const storage::WalWriterStats& w = writer_->stats();
  s.Counter("stage_messages_in", v(stats_.appended), {{"stage", "wal"}});
  s.Counter("stage_messages_out", v(stats_.released) + v(stats_.recovered_passed), {{"stage", "wal"}},
            "messages the stage pushed downstream");
  s.Counter("wal_records", v(w.records), {}, "records made durable (write + fdatasync returned)");
  s.Counter("wal_bytes", v(w.bytes), {}, "bytes made durable, record framing included");
  s.Counter("wal_commits", v(w.groups), {}, "commit groups (one write + fdatasync chain each)");
  s.Quantiles("wal_commit_latency_ns", w.commit_latency_ns.Take());
  s.Quantiles("wal_group_records", w.group_records.Take());
  s.Quantiles("wal_group_bytes", w.group_bytes.Take());
  s.Gauge("wal_durable_lsn", v(w.durable_lsn), {}, "highest durable LSN");
  s.Gauge("wal_retention_lsn", static_cast<double>(writer_->forwarded_lsn()), {},
          "segments entirely at or below this LSN may be deleted (forward checkpoint, dedup snapshot, source positions)");
  s.Gauge("wal_disk_bytes", v(w.log_bytes), {}, "bytes allocated by the log's segments");
  s.Gauge("wal_disk_budget_bytes", static_cast<double>(writer_->config().disk_budget_bytes), {},
          "wal.disk_budget (0: only the file system's space)");
  s.Gauge("wal_full", writer_->is_full() ? 1 : 0, {}, "1 while the disk budget or space stops new segments");
  s.Counter("wal_segments_created", v(w.segments_created));
  s.Counter("wal_segments_deleted", v(w.segments_deleted));
  s.Counter("wal_disk_full_events", v(w.disk_full_events));
  s.Counter("wal_full_stalls", v(stats_.full_stalls), {}, "rounds the stage held input for a full log");
  s.Counter("wal_short_write_fallbacks", v(w.short_write_fallbacks));
}

bool WalStage::IsFinished() const {
  return input_->IsDrained() && (recovered_ == nullptr || recovered_->IsDrained()) && held_.empty() &&
         pending_size_ == 0 && outbox_.empty() && !writer_->has_unsubmitted() && !writer_->commit_in_flight();
}

engine::Clock::time_point WalStage::next_deadline() const {
  // While input is held for a full disk budget, retry every few ms: retention runs in Poll.
  if (!held_.empty() && writer_->is_full()) {
    return std::min(writer_->next_deadline(), engine::Clock::now() + std::chrono::milliseconds(5));
  }
  return writer_->next_deadline();
}

}  // namespace mailrail::stages
