#include "storage/concurrent_wal_writer.h"

#include <algorithm>

namespace mailrail::storage {

base::Result<std::unique_ptr<ConcurrentWalWriter>> ConcurrentWalWriter::Open(WalConfig config) {
  auto writer = WalWriter::Open(std::move(config));
  if (!writer) return writer.error();
  return std::unique_ptr<ConcurrentWalWriter>(new ConcurrentWalWriter(std::move(writer.value())));
}

ConcurrentWalWriter::ConcurrentWalWriter(std::unique_ptr<WalWriter> writer)
    : writer_(std::move(writer)), thread_([this] { CommitLoop(); }) {}

ConcurrentWalWriter::~ConcurrentWalWriter() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
    writer_->Wake();
  }
  thread_.join();
}

void ConcurrentWalWriter::WakeCommitThreadLocked() {
  // A thread waiting for an in-flight group wakes on its completion anyway.
  if (commit_thread_sleeping_ && !writer_->commit_in_flight()) {
    commit_thread_sleeping_ = false;
    writer_->Wake();
  }
}

base::Result<std::uint64_t> ConcurrentWalWriter::AppendAndWait(const WalMessage& m) {
  std::unique_lock lock(mutex_);
  std::uint64_t lsn = 0;
  bool retried_full = false;
  for (;;) {
    const auto appended = writer_->TryAppend(m, Clock::now());
    switch (appended.status) {
      case WalWriter::AppendStatus::kAppended:
        lsn = appended.lsn;
        break;
      case WalWriter::AppendStatus::kGroupFull:
        WakeCommitThreadLocked();
        durable_.wait(lock);
        continue;
      case WalWriter::AppendStatus::kDiskFull:
        if (!retried_full) {  // retention may free space for a forwarded LSN set meanwhile
          retried_full = true;
          writer_->Poll(Clock::now());
          continue;
        }
        return base::MakeError("wal.full", "WAL disk budget reached; retry later");
      case WalWriter::AppendStatus::kTooLarge:
        return base::MakeError("wal.too_large", "record larger than a WAL segment can hold");
      case WalWriter::AppendStatus::kFailed:
        return base::MakeError("wal.failed", writer_->failure()->message);
    }
    break;
  }
  WakeCommitThreadLocked();
  durable_.wait(lock, [&] { return writer_->durable_lsn() >= lsn || writer_->failure() != nullptr; });
  if (writer_->durable_lsn() < lsn) return base::MakeError("wal.failed", writer_->failure()->message);
  return lsn;
}

void ConcurrentWalWriter::CommitLoop() {
  std::unique_lock lock(mutex_);
  for (;;) {
    const std::uint64_t before = writer_->durable_lsn();
    const bool was_in_flight = writer_->commit_in_flight();
    writer_->Poll(Clock::now());
    if (writer_->durable_lsn() != before || (was_in_flight && !writer_->commit_in_flight()) ||
        writer_->failure() != nullptr) {
      durable_.notify_all();
    }
    if (stop_ && (!writer_->has_unsubmitted() || writer_->failure() != nullptr) && !writer_->commit_in_flight()) {
      break;
    }
    std::chrono::microseconds timeout(100'000);
    if (writer_->commit_in_flight()) {
      timeout = std::chrono::microseconds(10'000);  // woken by the completion's event fd
    } else if (writer_->has_unsubmitted()) {
      const auto until = writer_->next_deadline() - Clock::now();
      timeout = std::max(std::chrono::microseconds(0), std::chrono::duration_cast<std::chrono::microseconds>(until));
      if (stop_) timeout = std::chrono::microseconds(0);
    }
    if (writer_->failure() != nullptr) timeout = std::chrono::microseconds(100'000);
    if (timeout.count() == 0 && writer_->has_unsubmitted() && !writer_->commit_in_flight()) {
      if (stop_) writer_->Flush();
      continue;
    }
    commit_thread_sleeping_ = true;
    lock.unlock();
    writer_->WaitForEvent(timeout);
    lock.lock();
    commit_thread_sleeping_ = false;
  }
}

}  // namespace mailrail::storage
