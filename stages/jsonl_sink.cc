#include "stages/jsonl_sink.h"

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>

#include <fmt/core.h>

#include "stages/record_json.h"

namespace mailrail::stages {
namespace {

constexpr std::size_t kWriteThreshold = 1 << 20;

void Bump(std::atomic<std::uint64_t>& counter, std::uint64_t by = 1) {
  counter.store(counter.load(std::memory_order_relaxed) + by, std::memory_order_relaxed);
}

}  // namespace

Outcome FinalOutcome(const Message& msg) {
  if (msg.outcome != Outcome::kInFlight) return msg.outcome;
  if (msg.parse_failed) return Outcome::kQuarantinedUnparseable;
  switch (msg.record.action) {
    case FilterAction::kDrop: return Outcome::kDroppedByRule;
    case FilterAction::kQuarantine: return Outcome::kQuarantinedByRule;
    default: return Outcome::kForwarded;
  }
}

void CountOutcome(Outcome outcome, OutcomeCounters& c) {
  switch (outcome) {
    case Outcome::kForwarded: Bump(c.forwarded); break;
    case Outcome::kDuplicate: Bump(c.duplicates); break;
    case Outcome::kDroppedByRule: Bump(c.dropped_by_rule); break;
    case Outcome::kQuarantinedByRule: Bump(c.quarantined_by_rule); break;
    case Outcome::kQuarantinedUnparseable: Bump(c.quarantined_unparseable); break;
    case Outcome::kDeadLettered: Bump(c.dead_lettered); break;
    case Outcome::kInFlight: MR_CHECK(false) << "message counted while still in flight"; break;
  }
}

base::Result<std::unique_ptr<JsonlSink>> JsonlSink::Create(std::string path, engine::Channel<Message*>* in,
                                                           MessagePool* pool) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return base::MakeError("sink.open", "cannot open JSONL sink " + path + ": " + std::strerror(errno));
  return std::unique_ptr<JsonlSink>(new JsonlSink(std::move(path), fd, in, pool));
}

JsonlSink::JsonlSink(std::string path, int fd, engine::Channel<Message*>* in, MessagePool* pool)
    : path_(std::move(path)), fd_(fd), in_(in), pool_(pool) {
  buffer_.reserve(2 * kWriteThreshold);
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
  if (sync && ::fdatasync(fd_) != 0) {
    return base::MakeError("sink.sync", "fdatasync " + path_ + ": " + std::strerror(errno));
  }
  if (sync) durable_lsn_.store(buffered_lsn_, std::memory_order_release);
  return base::OkStatus();
}

std::size_t JsonlSink::RunOnce() {
  std::array<Message*, 64> batch{};
  const std::size_t n = in_->PopBatch(batch);
  for (std::size_t i = 0; i < n; ++i) {
    Message* msg = batch[i];
    const Outcome outcome = FinalOutcome(*msg);
    CountOutcome(outcome, counters_);
    if (outcome == Outcome::kForwarded) {
      AppendRecordJson(*msg, buffer_);
      buffer_ += '\n';
      Bump(counters_.forwarded_bytes, msg->raw.size());
    }
    buffered_lsn_ = std::max(buffered_lsn_, msg->lsn);
    pool_->Release(msg);
  }
  const bool drained = n == 0 && in_->IsDrained();
  if (buffer_.size() >= kWriteThreshold || (n == 0 && !buffer_.empty()) || drained) {
    // A sink that cannot write is fatal for this run: nothing may be counted as forwarded that
    // is not in the file. The error names the file; the WAL keeps every message for a rerun.
    if (auto status = WriteBuffer(drained); !status) {
      fmt::print(stderr, "mailrail: {}\n", status.error().message);
      std::abort();
    }
  }
  if (drained) finished_ = true;
  return n;
}

}  // namespace mailrail::stages
