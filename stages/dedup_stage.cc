#include "stages/dedup_stage.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
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
  if (set.owners == 0 || set.owners > set.shards || set.owner >= set.owners) {
    return invalid("threads", "must be between 1 and dedup.shards (each thread holds whole shards)");
  }
  if (set.max_age_ms < 0) return invalid("max_age_ms", "must be >= 0 (0: no limit by age)");
  if (set.age_granularity_ms <= 0) return invalid("age_granularity_ms", "must be > 0");
  if ((config.key.recent_ids & (config.key.recent_ids - 1)) != 0 || config.key.recent_ids == 0) {
    return invalid("key.recent_ids", "must be a power of two");
  }
  if (set.owners > 1 && (!config.keyed_upstream || out != done)) {
    return base::MakeError("dedup.config", "a dedup worker of several needs keys from a router and done == out");
  }
  std::unique_ptr<DedupStage> stage(new DedupStage(std::move(config), in, out, done));
  std::vector<std::string> sources = stage->config_.load_snapshots;
  if (sources.empty() && !stage->config_.snapshot_path.empty()) sources.push_back(stage->config_.snapshot_path);
  std::uint64_t covered = UINT64_MAX;
  std::int64_t written_ms = 0;
  for (const std::string& path : sources) {
    auto loaded = LoadDedupSnapshot(path, stage->set_);
    if (!loaded.has_value()) {
      if (loaded.error().code == "dedup.snapshot_missing") continue;
      return loaded.error();
    }
    // Every file covers only its own shards: the set is covered up to the lowest of them.
    covered = std::min(covered, loaded.value());
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0) {
      written_ms = std::max<std::int64_t>(written_ms, st.st_mtim.tv_sec * 1000LL + st.st_mtim.tv_nsec / 1'000'000);
    }
  }
  if (covered != UINT64_MAX) {
    stage->snapshot_lsn_ = stage->max_lsn_ = covered;
    stage->NoteSnapshotDurable(covered, written_ms);
    stage->counters_.set_size.store(stage->set_.size(), std::memory_order_relaxed);
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
      keyer_(config_.keyed_upstream ? nullptr : std::make_unique<DedupKeyer>(config_.key)),
      next_snapshot_(engine::Clock::now() + config_.snapshot_interval) {
  name_ = config_.set.owners == 1 ? "dedup" : "dedup-" + std::to_string(config_.set.owner);
  counters_.bytes_reserved.store(set_.bytes_reserved(), std::memory_order_relaxed);
}

void DedupStage::NoteSnapshotDurable(std::uint64_t covered_lsn, std::int64_t unix_ms) {
  counters_.snapshot_unix_ms.store(unix_ms, std::memory_order_relaxed);
  durable_snapshot_lsn_.store(covered_lsn, std::memory_order_release);
}

DedupStage::~DedupStage() {
  if (duplicates_log_fd_ >= 0) ::close(duplicates_log_fd_);
}

std::size_t DedupStage::RunOnce() {
  if (!out_.Flush() || !done_.Flush()) return 0;
  // Read before popping: if the input then turns out empty, every message routed up to here has
  // been taken (the router release-stores this after pushing them), so its key is in the set.
  const std::uint64_t routed =
      config_.routed_through_lsn != nullptr ? config_.routed_through_lsn->load(std::memory_order_acquire) : 0;
  const std::size_t n = in_->PopBatch(batch_);
  if (n == 0) {
    max_lsn_ = std::max(max_lsn_, routed);
    if (!finished_ && in_->IsDrained()) {
      // The router closed the input after its last publish: the final value is visible now.
      if (config_.routed_through_lsn != nullptr) {
        max_lsn_ = std::max(max_lsn_, config_.routed_through_lsn->load(std::memory_order_acquire));
      }
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
    if (keyer_ != nullptr) {
      const DedupKey key = keyer_->KeyOf(m);
      m.record.dedup_key = key.fingerprint;
      counters_.keys.Count(key.kind);
    }
    queries_[queries] = DedupQuery{m.record.dedup_key, m.lsn, m.received_at_ms != 0 ? m.received_at_ms : now_ms};
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
  counters_.expired_by_count.store(set_.evicted_by_count(), std::memory_order_relaxed);
  counters_.expired_by_age.store(set_.evicted_by_age(), std::memory_order_relaxed);
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
    NoteSnapshotDurable(periodic_snapshot_lsn_, base::UnixMs());
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
    NoteSnapshotDurable(max_lsn_, base::UnixMs());
  }
  return status;
}

void DedupStage::Report(engine::Snapshot& s) const {
  const DedupCounters& c = counters_;
  auto v = [](const auto& n) { return static_cast<double>(n.load(std::memory_order_relaxed)); };
  const engine::Labels worker{{"worker", std::to_string(config_.set.owner)}};
  s.Counter("stage_messages_in", v(c.in), {{"stage", "dedup"}, {"worker", std::to_string(config_.set.owner)}},
            "messages the stage took from its input");
  s.Gauge("dedup_keys_held", v(c.set_size), worker, "keys in the dedup window");
  s.Gauge("dedup_capacity", static_cast<double>(set_.capacity()), worker, "keys the dedup window can hold");
  s.Gauge("dedup_bytes_per_key", static_cast<double>(c.bytes_reserved.load(std::memory_order_relaxed)) /
                                     static_cast<double>(set_.capacity()),
          worker, "memory reserved per key of capacity");
  s.Counter("dedup_duplicates", v(c.duplicates), worker, "duplicates found (never forwarded)");
  s.Counter("dedup_expired", v(c.expired_by_count), {{"worker", worker[0].second}, {"reason", "count"}},
            "keys that left the window, by reason");
  s.Counter("dedup_expired", v(c.expired_by_age), {{"worker", worker[0].second}, {"reason", "age"}});
  s.Counter("dedup_rebuilt", v(c.rebuilt), worker, "recovered messages re-fed only to rebuild the set");
  s.Counter("dedup_snapshots_written", v(c.snapshots_written), worker);
  s.Counter("dedup_snapshot_errors", v(c.snapshot_errors), worker);
  s.Gauge("dedup_snapshot_lsn", static_cast<double>(durable_snapshot_lsn()), worker,
          "LSN covered by the newest durable snapshot");
  if (const std::int64_t at = c.snapshot_unix_ms.load(std::memory_order_relaxed); at != 0) {
    s.Gauge("dedup_snapshot_age_seconds", static_cast<double>(std::max<std::int64_t>(0, base::UnixMs() - at)) / 1000.0,
            worker, "seconds since the newest durable snapshot was written");
  }
  if (keyer_ != nullptr) c.keys.Report(s);
}

}  // namespace mailrail::stages
