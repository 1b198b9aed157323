#pragma once
// WalRecoverySource: at start-up, feeds every WAL record after the forward checkpoint back into
// the pipeline as Messages (recovered = true, lsn set), in LSN order. Its output goes to the
// WalStage's recovery input, which passes these through (they are already durable) and takes no
// new input until this source has finished, so recovered messages precede new ones.
//
// Range: records with checkpoint < lsn < end_lsn, where end_lsn is the WalWriter's first new LSN
//   (WalWriter::open_report().next_lsn): open the writer first (it cuts the torn tail), then this.
// Damage: the reader skips damaged records and segments and reports them (report()); a record
//   whose checksum is valid but whose payload does not decode is skipped and counted.
// Backpressure: takes a Message from the pool only when one is free (MessagePool::TryAcquire);
//   otherwise returns 0 and retries, so a 1 GB log never needs 1 GB of memory.
// Threading: an engine::Stage (one thread at a time); RequestStop from any thread stops feeding
//   (the rest stays in the WAL for the next start).

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "engine/base/result.h"
#include "engine/stage.h"
#include "stages/message.h"
#include "storage/wal_reader.h"

namespace mailrail::stages {

class WalRecoverySource final : public engine::Stage {
 public:
  static base::Result<std::unique_ptr<WalRecoverySource>> Open(const std::string& wal_dir, std::uint64_t checkpoint_lsn,
                                                               std::uint64_t end_lsn, MessagePool* pool,
                                                               engine::Channel<Message*>* output);

  std::string_view name() const override { return "wal-recovery"; }
  std::size_t RunOnce() override;
  bool IsFinished() const override;
  void RequestStop() override { stop_.store(true, std::memory_order_release); }

  // Complete once IsFinished(). Read from the stage's thread, or after the Topology has stopped.
  const storage::WalScanReport& report() const { return reader_.report(); }
  std::uint64_t recovered() const { return recovered_.load(std::memory_order_relaxed); }
  std::uint64_t undecodable() const { return undecodable_; }

 private:
  WalRecoverySource(storage::WalReader reader, MessagePool* pool, engine::Channel<Message*>* output);

  storage::WalReader reader_;
  MessagePool* pool_;
  engine::Outbox<Message*> outbox_;
  storage::RecordView view_;
  bool has_view_ = false;  // view_ read but not yet turned into a Message (pool was empty)
  bool done_ = false;
  std::atomic<bool> stop_{false};
  std::atomic<std::uint64_t> recovered_{0};
  std::uint64_t undecodable_ = 0;
};

}  // namespace mailrail::stages
