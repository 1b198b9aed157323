#pragma once
// ConcurrentWalWriter: the thread-safe front end of WalWriter for many appenders that each wait
// for their own record (network threads, bench_wal). AppendAndWait encodes the record into the
// open group under a mutex and sleeps until the group holding it is durable; one commit thread
// owned by this object drives WalWriter::Poll and sleeps on its event fd while a group is in
// flight, so concurrent appenders are gathered into the next group (group commit).
//
// Threading: AppendAndWait and set_forwarded_lsn from any number of threads. The constructor and
//   destructor from one thread; the destructor flushes what was appended and joins the thread.
// Blocking: AppendAndWait blocks until durability (typically one fdatasync) and, while both
//   groups are full, until one completes. It never blocks for disk space: a full disk budget
//   returns the error "wal.full" at once so that the caller can push back (HTTP 503).
// Memory ordering: the mutex orders appends, commits and the durable LSN; the condition variable
//   is notified after every completed group.

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>

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
  explicit ConcurrentWalWriter(std::unique_ptr<WalWriter> writer);
  void CommitLoop();
  void WakeCommitThreadLocked();

  std::unique_ptr<WalWriter> writer_;
  std::mutex mutex_;
  std::condition_variable durable_;
  bool stop_ = false;
  bool commit_thread_sleeping_ = false;
  std::thread thread_;
};

}  // namespace mailrail::storage
