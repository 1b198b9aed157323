#include "stages/dedup_stage.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "engine/base/counters.h"

namespace mailrail::stages {
namespace {

constexpr std::uint8_t kNoQuery = 0xFF;

}  // namespace

base::Result<std::unique_ptr<DedupStage>> DedupStage::Create(DedupStageConfig config, MessageChannel* in,
                                                             MessageChannel* out, MessageChannel* done) {
  // Bad configuration fails here, before any traffic, naming the key.
  const DedupSetConfig& set = config.set;
  auto invalid = [](const std::string& key, const std::string& why) {
    return base::MakeError("dedup.config", "dedup." + key + ": " + why);
  };
  if (set.shards == 0 || (set.shards & (set.shards - 1)) != 0 || set.shards > 4096) {
    return invalid("shards", "must be a power of two between 1 and 4096");
  }
  if (set.capacity < set.shards || set.capacity / set.shards >= (1ULL << 32) - 1) {
    return invalid("capacity", "must be at least the shard count and below 2^32 - 1 keys per shard");
  }
  if (set.max_age_ms < 0) return invalid("max_age_ms", "must be >= 0 (0: no limit by age)");
  if (set.age_granularity_ms <= 0) return invalid("age_granularity_ms", "must be > 0");
  if ((config.key.recent_ids & (config.key.recent_ids - 1)) != 0 || config.key.recent_ids == 0) {
    return invalid("key.recent_ids", "must be a power of two");
  }
  std::unique_ptr<DedupStage> stage(new DedupStage(std::move(config), in, out, done));
  if (!stage->config_.snapshot_path.empty()) {
    auto loaded = LoadDedupSnapshot(stage->config_.snapshot_path, stage->set_);
    if (loaded.has_value()) {
      stage->snapshot_lsn_ = stage->max_lsn_ = loaded.value();
      stage->durable_snapshot_lsn_.store(loaded.value(), std::memory_order_release);
    } else if (loaded.error().code != "dedup.snapshot_missing") {
      return loaded.error();
    }
  }
  if (!stage->config_.duplicates_log_path.empty()) {
    stage->duplicates_log_fd_ =
        ::open(stage->config_.duplicates_log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (stage->duplicates_log_fd_ < 0) {
      return base::MakeError("dedup.log_io", "cannot open duplicates log " + stage->config_.duplicates_log_path +
                                                 ": " + std::strerror(errno));
    }
  }
  return stage;
}

DedupStage::DedupStage(DedupStageConfig config, MessageChannel* in, MessageChannel* out, MessageChannel* done)
    : config_(std::move(config)),
      in_(in),
      out_(out),
      done_(done),
      set_(config_.set),
      keyer_(config_.key),
      next_snapshot_(engine::Clock::now() + config_.snapshot_interval) {
  counters_.bytes_reserved.store(set_.bytes_reserved(), std::memory_order_relaxed);
}

DedupStage::~DedupStage() {
  if (duplicates_log_fd_ >= 0) ::close(duplicates_log_fd_);
}

std::size_t DedupStage::RunOnce() {
  if (!out_.Flush() || !done_.Flush()) return 0;
  const std::size_t n = in_->PopBatch(batch_);
  if (n == 0) {
    if (!finished_ && in_->IsDrained()) {
      if (!config_.snapshot_path.empty() && !WriteSnapshot().has_value()) base::BumpSingleWriter(counters_.snapshot_errors);
      finished_ = true;
    }
    return 0;
  }
  const std::int64_t now_ms = base::UnixMs();
  std::size_t queries = 0;
  for (std::size_t i = 0; i < n; ++i) {
    Message& m = *batch_[i];
    query_of_[i] = kNoQuery;
    if (m.parse_failed) continue;
    const DedupKey key = keyer_.KeyOf(m);
    m.record.dedup_key = key.fingerprint;
    switch (key.kind) {
      case DedupKeyKind::kMessageId: base::BumpSingleWriter(counters_.keys_by_message_id); break;
      case DedupKeyKind::kGraphId: base::BumpSingleWriter(counters_.keys_by_graph_id); break;
      case DedupKeyKind::kContent: base::BumpSingleWriter(counters_.keys_by_content); break;
    }
    queries_[queries] = DedupQuery{key.fingerprint, m.lsn, m.received_at_ms != 0 ? m.received_at_ms : now_ms};
    query_of_[i] = static_cast<std::uint8_t>(queries++);
  }
  set_.InsertOrFindBatch(std::span<const DedupQuery>(queries_.data(), queries),
                         std::span<DedupAnswer>(answers_.data(), queries));
  std::uint64_t forwarded = 0, unparsed = 0, duplicates = 0, rebuilt = 0;
  for (std::size_t i = 0; i < n; ++i) {
    Message* m = batch_[i];
    max_lsn_ = std::max(max_lsn_, m->lsn);
    // Settled before the crash (forwarded, dropped or quarantined): only its key mattered.
    if (m->recovered && m->lsn <= config_.forwarded_through_lsn) {
      ++rebuilt;
      m->outcome = Outcome::kSettledBeforeRestart;
      Finish(m);
      continue;
    }
    if (query_of_[i] == kNoQuery) {
      ++unparsed;
      out_.Add(m);
      continue;
    }
    const DedupAnswer& a = answers_[query_of_[i]];
    // Found with its own LSN: the same message re-fed after a restart, already in the snapshot.
    // Re-driven from quarantine by an operator: its key is known (the quarantined copy) on purpose.
    const bool duplicate =
        a.duplicate && !(m->lsn != 0 && a.original_lsn == m->lsn) && m->source.id != kRedriveSourceId;
    if (duplicate) {
      ++duplicates;
      m->outcome = Outcome::kDuplicate;
      if (duplicates_log_fd_ >= 0) LogDuplicate(*m, a.original_lsn);
      Finish(m);
    } else {
      ++forwarded;
      out_.Add(m);
    }
  }
  if (!log_buffer_.empty()) {
    // Best effort: the log is for inspection; a short write loses log lines, never messages.
    [[maybe_unused]] const ssize_t written = ::write(duplicates_log_fd_, log_buffer_.data(), log_buffer_.size());
    log_buffer_.clear();
  }
  base::BumpSingleWriter(counters_.in, n);
  base::BumpSingleWriter(counters_.forwarded, forwarded);
  base::BumpSingleWriter(counters_.passed_unparsed, unparsed);
  base::BumpSingleWriter(counters_.duplicates, duplicates);
  base::BumpSingleWriter(counters_.rebuilt, rebuilt);
  counters_.set_size.store(set_.size(), std::memory_order_relaxed);
  out_.Flush();
  done_.Flush();
  if (!config_.snapshot_path.empty() && config_.snapshot_interval.count() > 0) StepPeriodicSnapshot();
  return n;
}

void DedupStage::LogDuplicate(const Message& message, std::uint64_t original_lsn) {
  fmt::format_to(std::back_inserter(log_buffer_), "{} {} {:016x}{:016x} {}\n", message.lsn, original_lsn,
                 message.record.dedup_key.high, message.record.dedup_key.low,
                 message.record.message_id.value_or(std::string_view("-")));
}

void DedupStage::StepPeriodicSnapshot() {
  // One shard per batch, so the stage stalls for a shard's worth of writing at a time.
  if (periodic_snapshot_ == nullptr) {
    if (engine::Clock::now() < next_snapshot_) return;
    next_snapshot_ = engine::Clock::now() + config_.snapshot_interval;
    auto writer = DedupSnapshotWriter::Begin(set_, max_lsn_, config_.snapshot_path);
    if (!writer.has_value()) {
      base::BumpSingleWriter(counters_.snapshot_errors);
      return;
    }
    periodic_snapshot_ = std::move(writer.value());
    periodic_snapshot_lsn_ = max_lsn_;
  }
  if (!periodic_snapshot_->Step(set_)) return;
  if (periodic_snapshot_->Finish().has_value()) {
    base::BumpSingleWriter(counters_.snapshots_written);
    durable_snapshot_lsn_.store(periodic_snapshot_lsn_, std::memory_order_release);
  } else {
    base::BumpSingleWriter(counters_.snapshot_errors);
  }
  periodic_snapshot_.reset();
}

base::Status DedupStage::WriteSnapshot() {
  periodic_snapshot_.reset();  // an unfinished periodic one is superseded (its .tmp removed)
  next_snapshot_ = engine::Clock::now() + config_.snapshot_interval;
  counters_.bytes_reserved.store(set_.bytes_reserved(), std::memory_order_relaxed);
  auto status = WriteDedupSnapshot(set_, max_lsn_, config_.snapshot_path);
  if (status.has_value()) {
    base::BumpSingleWriter(counters_.snapshots_written);
    durable_snapshot_lsn_.store(max_lsn_, std::memory_order_release);
  }
  return status;
}

}  // namespace mailrail::stages
