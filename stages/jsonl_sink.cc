#include "stages/jsonl_sink.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <string.h>

#include <fmt/core.h>

#include "engine/base/counters.h"
#include "stages/record_json.h"

namespace mailrail::stages {
namespace {

constexpr std::size_t kWriteThreshold = 1 << 20;

}  // namespace

void JsonlSink::Report(engine::Snapshot& s) const {
  s.Counter("stage_messages_in", static_cast<double>(counters_.total()), {{"stage", "forward"}},
            "messages the stage took from its input");
  s.Gauge("forward_durable_lsn", static_cast<double>(durable_lsn()), {},
          "highest LSN whose outcome is durable downstream (the forward checkpoint)");
  ReportOutcomes(counters_, latency_, s);
}

base::Result<std::unique_ptr<JsonlSink>> JsonlSink::Create(std::string path, engine::Channel<Message*>* in,
                                                           MessagePool* pool, DurableCallback on_durable,
                                                           std::chrono::milliseconds sync_interval) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return base::MakeError("sink.open", "cannot open JSONL sink " + path + ": " + std::strerror(errno));
  // Cut a line torn by a crash: everything after the last newline.
  const off_t size = ::lseek(fd, 0, SEEK_END);
  off_t keep = size;
  char tail[4096];
  while (keep > 0) {
    const off_t from = std::max<off_t>(0, keep - static_cast<off_t>(sizeof(tail)));
    const ssize_t n = ::pread(fd, tail, static_cast<std::size_t>(keep - from), from);
    if (n <= 0) break;
    const char* nl = static_cast<const char*>(memrchr(tail, '\n', static_cast<std::size_t>(n)));
    if (nl != nullptr) {
      keep = from + (nl - tail) + 1;
      break;
    }
    keep = from;
  }
  if (keep != size) {
    if (::ftruncate(fd, keep) != 0 || ::fdatasync(fd) != 0) {
      const std::string message = std::strerror(errno);
      ::close(fd);
      return base::MakeError("sink.repair", "cannot cut the torn last line of " + path + ": " + message);
    }
    fmt::print(stderr, "mailrail: sink {}: cut {} bytes of a line torn by a crash (they are written again)\n", path,
               size - keep);
  }
  return std::unique_ptr<JsonlSink>(new JsonlSink(std::move(path), fd, in, pool, std::move(on_durable), sync_interval));
}

JsonlSink::JsonlSink(std::string path, int fd, engine::Channel<Message*>* in, MessagePool* pool,
                     DurableCallback on_durable, std::chrono::milliseconds sync_interval)
    : path_(std::move(path)),
      fd_(fd),
      in_(in),
      pool_(pool),
      on_durable_(std::move(on_durable)),
      sync_interval_(sync_interval),
      last_sync_(engine::Clock::now()) {
  buffer_.reserve(2 * kWriteThreshold);
  sync_thread_ = std::thread([this] { SyncLoop(); });
}

engine::Clock::time_point JsonlSink::next_deadline() const {
  // Unsynced work must reach the disk (and the checkpoint) within sync_interval even when idle.
  // A sync in flight wakes the thread when it completes.
  return buffered_lsn_ > requested_lsn_ ? last_sync_ + sync_interval_ : engine::Clock::time_point::max();
}

JsonlSink::~JsonlSink() {
  // A sink stopped before its stream ended still makes durable what it has. The topology (its
  // thread, waiter and input channel) may be gone already: no wake-up from here on.
  if (!buffer_.empty()) (void)WriteBuffer();
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
    sync_request_ = std::max(sync_request_, buffered_lsn_);
  }
  sync_wanted_.notify_one();
  sync_thread_.join();  // after the last requested sync
  ::close(fd_);
}

void JsonlSink::RequestSync() {
  requested_lsn_ = buffered_lsn_;
  last_sync_ = engine::Clock::now();
  {
    std::lock_guard lock(mutex_);
    sync_request_ = requested_lsn_;
  }
  sync_wanted_.notify_one();
}

std::uint64_t JsonlSink::SyncedThrough() {
  std::lock_guard lock(mutex_);
  return synced_lsn_;
}

void JsonlSink::SyncLoop() {
  std::unique_lock lock(mutex_);
  for (;;) {
    sync_wanted_.wait(lock, [&] { return stopping_ || sync_request_ > synced_lsn_; });
    if (sync_request_ <= synced_lsn_) return;  // stopping, and every request is done
    const std::uint64_t lsn = sync_request_;   // later requests coalesce into the next round
    lock.unlock();
    // A sink that cannot sync is fatal for this run, as one that cannot write: nothing may be
    // checkpointed that is not on disk, and the WAL keeps every message for a rerun.
    if (::fdatasync(fd_) != 0) {
      fmt::print(stderr, "mailrail: fdatasync {}: {}\n", path_, std::strerror(errno));
      std::abort();
    }
    if (on_durable_) on_durable_(lsn);  // the checkpoint first: durable_lsn() never runs ahead of it
    durable_lsn_.store(lsn, std::memory_order_release);
    lock.lock();
    synced_lsn_ = lsn;
    // Under the mutex, which the stage also holds to decide that it is finished: once it is (and
    // its thread may exit and the topology go), this thread never touches its waiter again.
    if (!stopping_) {
      if (engine::Waiter* waiter = in_->consumer_waiter(); waiter != nullptr) waiter->Notify();
    }
  }
}

base::Status JsonlSink::WriteBuffer() {
  std::size_t done = 0;
  while (done < buffer_.size()) {
    const ssize_t n = ::write(fd_, buffer_.data() + done, buffer_.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return base::MakeError("sink.write", "writing " + path_ + ": " + std::strerror(errno));
    }
    done += static_cast<std::size_t>(n);
  }
  buffer_.clear();
  return base::OkStatus();
}

std::size_t JsonlSink::RunOnce() {
  std::array<Message*, 64> batch{};
  const std::size_t n = in_->PopBatch(batch);
  const std::int64_t now_ns =
      n == 0 ? 0 : engine::NowNs();
  for (std::size_t i = 0; i < n; ++i) {
    Message* msg = batch[i];
    latency_.RecordUntilDurable(*msg);
    latency_.RecordEnd(msg->accepted_ns, msg->durable_ns, now_ns);
    const Outcome outcome = FinalOutcome(*msg);
    CountOutcome(outcome, counters_);
    if (outcome == Outcome::kForwarded) {
      AppendRecordJson(*msg, buffer_);
      buffer_ += '\n';
      base::BumpSingleWriter(counters_.forwarded_bytes, msg->raw.size());
    }
    buffered_lsn_ = std::max(buffered_lsn_, msg->lsn);
    pool_->Release(msg);
  }
  const bool drained = n == 0 && in_->IsDrained();
  const bool sync_due =
      buffered_lsn_ > requested_lsn_ && (drained || engine::Clock::now() - last_sync_ >= sync_interval_);
  if (buffer_.size() >= kWriteThreshold || (n == 0 && !buffer_.empty()) || sync_due) {
    // A sink that cannot write is fatal for this run: nothing may be counted as forwarded that
    // is not in the file. The error names the file; the WAL keeps every message for a rerun.
    if (auto status = WriteBuffer(); !status) {
      fmt::print(stderr, "mailrail: {}\n", status.error().message);
      std::abort();
    }
  }
  if (sync_due) RequestSync();
  if (drained && SyncedThrough() >= buffered_lsn_) finished_ = true;
  return n;
}

}  // namespace mailrail::stages
