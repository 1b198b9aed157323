#include "stages/jsonl_sink.h"

#include <fcntl.h>
#include <unistd.h>

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
  ReportOutcomes(counters_, latency_ns_, s);
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
}

engine::Clock::time_point JsonlSink::next_deadline() const {
  // Unsynced work must reach the disk (and the checkpoint) within sync_interval even when idle.
  return buffered_lsn_ > synced_lsn_ ? last_sync_ + sync_interval_ : engine::Clock::time_point::max();
}

JsonlSink::~JsonlSink() {
  if (!buffer_.empty()) (void)WriteBuffer(true);
  ::close(fd_);
}

base::Status JsonlSink::WriteBuffer(bool sync) {
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
  if (!sync) return base::OkStatus();
  if (::fdatasync(fd_) != 0) {
    return base::MakeError("sink.sync", "fdatasync " + path_ + ": " + std::strerror(errno));
  }
  last_sync_ = engine::Clock::now();
  if (buffered_lsn_ > synced_lsn_) {
    synced_lsn_ = buffered_lsn_;
    if (on_durable_) on_durable_(synced_lsn_);  // the checkpoint first: durable_lsn() never runs ahead of it
    durable_lsn_.store(synced_lsn_, std::memory_order_release);
  }
  return base::OkStatus();
}

std::size_t JsonlSink::RunOnce() {
  std::array<Message*, 64> batch{};
  const std::size_t n = in_->PopBatch(batch);
  const std::int64_t now_ns =
      n == 0 ? 0 : std::chrono::duration_cast<std::chrono::nanoseconds>(engine::Clock::now().time_since_epoch()).count();
  for (std::size_t i = 0; i < n; ++i) {
    Message* msg = batch[i];
    if (msg->accepted_ns > 0) latency_ns_.Record(static_cast<std::uint64_t>(std::max<std::int64_t>(0, now_ns - msg->accepted_ns)));
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
  const bool sync_due = buffered_lsn_ > synced_lsn_ && engine::Clock::now() - last_sync_ >= sync_interval_;
  if (buffer_.size() >= kWriteThreshold || (n == 0 && !buffer_.empty()) || drained || sync_due) {
    // A sink that cannot write is fatal for this run: nothing may be counted as forwarded that
    // is not in the file. The error names the file; the WAL keeps every message for a rerun.
    if (auto status = WriteBuffer(drained || sync_due); !status) {
      fmt::print(stderr, "mailrail: {}\n", status.error().message);
      std::abort();
    }
  }
  if (drained) finished_ = true;
  return n;
}

}  // namespace mailrail::stages
