#pragma once
// ConcurrentWalWriter: the thread-safe front end of WalWriter for many appenders that each wait
// for their own record (network threads, bench_wal). AppendAndWait encodes the record into the
// open group under a mutex; then one waiting appender at a time is the leader: it drives
// WalWriter::Poll (submit, reap) and waits on the ring's completion queue while a group is in
// flight (WalWriter::WaitForCompletion), outside the mutex, so that the others keep appending to the next group (group commit). The
// others park on their own semaphore in a waiter list; after each completed group the leader
// wakes exactly the waiters whose records are now durable (no thundering herd: on a small machine
// every spurious wake-up delays the io-wq worker that runs the next fdatasync), and when it stops
// leading it hands leadership to the oldest waiter. There is no commit thread: a completion wakes
// the leader directly.
//
// Threading: AppendAndWait and set_forwarded_lsn from any number of threads. Construction and
//   destruction from one thread, with no AppendAndWait running.
// Blocking: AppendAndWait blocks until durability (typically one fdatasync) and, while both
//   groups are full, until one completes. It never blocks for disk space: a full disk budget
//   returns the error "wal.full" at once so that the caller can push back (HTTP 503).
// Memory ordering: the mutex orders appends, commits and the durable LSN; the condition variable
//   is notified after every completed group.

#include <cstdint>
#include <memory>
#include <mutex>
#include <semaphore>
#include <vector>

#include "engine/base/result.h"
#include "storage/wal_writer.h"

namespace mailrail::storage {

class ConcurrentWalWriter {
 public:
  static base::Result<std::unique_ptr<ConcurrentWalWriter>> Open(WalConfig config);
  ~ConcurrentWalWriter();
  ConcurrentWalWriter(const ConcurrentWalWriter&) = delete;
  ConcurrentWalWriter& operator=(const ConcurrentWalWriter&) = delete;

  // Appends `m` and returns its LSN once it is durable. Errors: "wal.full" (disk budget or space
  // reached: nothing was appended, retry later), "wal.too_large", "wal.failed".
  base::Result<std::uint64_t> AppendAndWait(const WalMessage& m);

  void set_forwarded_lsn(std::uint64_t lsn) { writer_->set_forwarded_lsn(lsn); }
  bool is_full() const { return writer_->is_full(); }
  const WalWriterStats& stats() const { return writer_->stats(); }
  const WalOpenReport& open_report() const { return writer_->open_report(); }

 private:
  // A parked appender: woken when its record is durable (lsn <= durable), or, for lsn 0 (waiting
  // for room in a full group), after any completion; or when it is handed leadership.
  struct Waiter {
    std::uint64_t lsn = 0;
    std::binary_semaphore wake{0};
  };

  explicit ConcurrentWalWriter(std::unique_ptr<WalWriter> writer) : writer_(std::move(writer)) {}
  // Leads commits until `lsn` is durable or the writer failed. Called and returns with `lock` held.
  void Lead(std::unique_lock<std::mutex>& lock, std::uint64_t lsn);
  // Parks until woken (see Waiter). Called and returns with `lock` held.
  void Park(std::unique_lock<std::mutex>& lock, std::uint64_t lsn);
  // Wakes the waiters a completion satisfies. With `lock` held.
  void WakeDurable();
  // Wakes the oldest waiter so that it leads, if any waits. With `lock` held.
  void HandOver();

  std::unique_ptr<WalWriter> writer_;
  std::mutex mutex_;
  std::vector<Waiter*> waiters_;  // in arrival order
  bool has_leader_ = false;
};

}  // namespace mailrail::storage
