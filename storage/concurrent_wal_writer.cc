#include "storage/concurrent_wal_writer.h"

#include <algorithm>

namespace mailrail::storage {

base::Result<std::unique_ptr<ConcurrentWalWriter>> ConcurrentWalWriter::Open(WalConfig config) {
  auto writer = WalWriter::Open(std::move(config));
  if (!writer) return writer.error();
  return std::unique_ptr<ConcurrentWalWriter>(new ConcurrentWalWriter(std::move(writer.value())));
}

ConcurrentWalWriter::~ConcurrentWalWriter() = default;

void ConcurrentWalWriter::Park(std::unique_lock<std::mutex>& lock, std::uint64_t lsn) {
  Waiter waiter;
  waiter.lsn = lsn;
  waiters_.push_back(&waiter);
  lock.unlock();
  waiter.wake.acquire();  // whoever woke us removed us from waiters_
  lock.lock();
}

void ConcurrentWalWriter::WakeDurable() {
  const std::uint64_t durable = writer_->durable_lsn();
  const bool failed = writer_->failure() != nullptr;
  std::erase_if(waiters_, [&](Waiter* w) {
    if (w->lsn > durable && !failed) return false;
    w->wake.release();
    return true;
  });
}

void ConcurrentWalWriter::HandOver() {
  if (waiters_.empty()) return;
  Waiter* next = waiters_.front();
  waiters_.erase(waiters_.begin());
  next->wake.release();
}

void ConcurrentWalWriter::Lead(std::unique_lock<std::mutex>& lock, std::uint64_t lsn) {
  has_leader_ = true;
  while (writer_->durable_lsn() < lsn && writer_->failure() == nullptr) {
    const std::uint64_t before = writer_->durable_lsn();
    writer_->Poll(Clock::now());  // reap, then submit the open group if none is in flight
    if (writer_->durable_lsn() != before || writer_->failure() != nullptr) WakeDurable();
    if (writer_->durable_lsn() >= lsn) break;
    std::chrono::microseconds timeout(10'000);  // a completion ends the wait sooner
    if (!writer_->commit_in_flight()) {  // lingering: sleep until the group's deadline
      timeout = std::max(std::chrono::microseconds(0), std::chrono::duration_cast<std::chrono::microseconds>(
                                                            writer_->next_deadline() - Clock::now()));
    }
    lock.unlock();
    if (writer_->commit_in_flight()) {
      writer_->WaitForCompletion(timeout);  // only the leader touches the ring while unlocked
    } else {
      writer_->WaitForEvent(timeout);
    }
    lock.lock();
  }
  has_leader_ = false;
  WakeDurable();
  HandOver();  // a follower whose record is not yet durable takes over
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
        if (!has_leader_) {
          writer_->Poll(Clock::now());  // submits the full group if none is in flight
          if (writer_->commit_in_flight()) Lead(lock, writer_->last_appended_lsn());
        } else {
          Park(lock, 0);
        }
        continue;
      case WalWriter::AppendStatus::kDiskFull:
        if (!retried_full && !has_leader_) {  // retention may free space for a new forwarded LSN
          retried_full = true;
          writer_->Poll(Clock::now());
          writer_->FinishRetention();
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
  while (writer_->durable_lsn() < lsn && writer_->failure() == nullptr) {
    if (!has_leader_) {
      Lead(lock, lsn);
    } else {
      Park(lock, lsn);
    }
  }
  if (writer_->durable_lsn() < lsn) return base::MakeError("wal.failed", writer_->failure()->message);
  return lsn;
}

}  // namespace mailrail::storage
