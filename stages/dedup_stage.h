#pragma once
// DedupStage: drops messages whose dedup key was seen within the window, forwards the rest.
//
// Inputs/outputs (all Channel<Message*>):
//   in    parsed messages, in LSN order;
//   out   messages to filter: new keys, and messages with parse_failed (passed through untouched:
//         the filter quarantines them);
//   done  messages whose journey ends here, for the terminal stage that records their LSN as
//         finished and releases them: duplicates (outcome = Outcome::kDuplicate) and recovered
//         messages at or below forwarded_through_lsn (re-fed after a restart only to rebuild the
//         set; their outcome was settled before the crash: kSettledBeforeRestart).
//   done may be the same channel as out: every message then leaves through out in input (LSN)
//   order, and the next stage passes on those whose outcome is already final.
//   Every popped message leaves through exactly one of out/done and is counted once in
//   DedupCounters, so in == forwarded + passed_unparsed + duplicates + rebuilt.
// Workers: with one dedup thread the stage keys messages itself and holds every shard. With
//   several, a DedupRouter keys them (keyed_upstream) and sends each to the worker holding its
//   shard (set.owner of set.owners); the worker is named "dedup-<owner>" and must route in line
//   (done == out) so the filter can merge the workers' outputs back into order.
// Restart: a recovered message whose key is found with its own LSN is the same message seen
//   again (it was in the snapshot), not a duplicate. The set is loaded at construction from
//   load_snapshots (default: snapshot_path; each file gives the shards this worker holds) and
//   written to snapshot_path (crash-atomically, with the highest LSN covered) every
//   snapshot_interval, one shard per batch, and whole when the input is drained at clean
//   shutdown. Behind a router, the covered LSN also advances to the router's routed_through_lsn
//   whenever the worker's input is empty (everything routed to it up to there is in the set),
//   so an idle worker does not hold back WAL retention.
// Duplicates log: when duplicates_log_path is set, one line per duplicate is appended,
//   "<lsn> <original_lsn> <dedup_key hex> <message_id>", written once per batch (no fsync: the
//   log is for inspection, the counters are authoritative). Several workers may share one file:
//   it is opened O_APPEND and each batch is one write(), so lines stay whole, but lines of
//   different workers are not in LSN order.
// Threading: Stage contract (one thread). Counters are single-writer relaxed atomics written by
//   that thread (base::BumpSingleWriter, plain stores of gauges once per batch) and read with
//   relaxed loads from any thread (Report, the stats socket). Blocking: only while writing a
//   snapshot (measured ~0.1 s per million keys including fsync, bench_dedup
//   BM_DedupSnapshot_WriteThenLoad; periodic snapshots spread it over one batch per shard, plus
//   the final fsync).

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/base/result.h"
#include "engine/stage.h"
#include "stages/dedup_key.h"
#include "stages/dedup_set.h"
#include "stages/dedup_snapshot.h"
#include "stages/message.h"

namespace mailrail::stages {

struct DedupStageConfig {
  DedupSetConfig set;
  DedupKeyConfig key;
  std::string snapshot_path;                                 // "": no snapshot
  std::chrono::milliseconds snapshot_interval{30 * 1000};  // 0: only at clean shutdown
  std::uint64_t forwarded_through_lsn = 0;  // recovered messages at or below only rebuild the set
  std::string duplicates_log_path;          // "": no log
  // Snapshot files to load at start (FindDedupSnapshotLayout); empty: snapshot_path if present.
  std::vector<std::string> load_snapshots;
  bool keyed_upstream = false;  // behind a DedupRouter: record.dedup_key is set (unless parse_failed)
  // Behind a router: the highest LSN it has routed (release-stored by the router after pushing).
  const std::atomic<std::uint64_t>* routed_through_lsn = nullptr;
};

struct DedupCounters {
  std::atomic<std::uint64_t> in{0};
  std::atomic<std::uint64_t> forwarded{0};
  std::atomic<std::uint64_t> passed_unparsed{0};
  std::atomic<std::uint64_t> duplicates{0};
  std::atomic<std::uint64_t> rebuilt{0};
  DedupKeyCounts keys;  // when the stage keys messages itself (one worker)
  std::atomic<std::uint64_t> snapshots_written{0};
  std::atomic<std::uint64_t> snapshot_errors{0};
  std::atomic<std::uint64_t> set_size{0};
  std::atomic<std::uint64_t> bytes_reserved{0};
  std::atomic<std::uint64_t> expired_by_count{0};  // evicted as the oldest of a full window
  std::atomic<std::uint64_t> expired_by_age{0};    // older than max_age_ms
  std::atomic<std::int64_t> snapshot_unix_ms{0};   // when the newest durable snapshot was written; 0: none
};

class DedupStage final : public engine::Stage {
 public:
  using MessageChannel = engine::Channel<Message*>;

  // Loads the snapshot when one exists; a missing file starts empty, an unusable one is an error.
  static base::Result<std::unique_ptr<DedupStage>> Create(DedupStageConfig config, MessageChannel* in,
                                                          MessageChannel* out, MessageChannel* done);
  ~DedupStage() override;
  DedupStage(const DedupStage&) = delete;
  DedupStage& operator=(const DedupStage&) = delete;

  std::string_view name() const override { return name_; }
  std::size_t RunOnce() override;
  bool IsFinished() const override { return finished_; }
  unsigned cost_hint() const override { return 2; }
  // Keys held, capacity, bytes per key, duplicates, expired entries, snapshot LSN and age, keys by
  // kind (when it keys messages itself); labelled worker="<owner>".
  void Report(engine::Snapshot& snapshot) const override;

  const DedupCounters& counters() const { return counters_; }
  std::uint64_t snapshot_lsn() const { return snapshot_lsn_; }  // covered LSN of the loaded snapshot
  // Covered LSN of the newest complete snapshot on disk (loaded or written since); any thread.
  // The WAL must keep the records after it, from which a restart rebuilds the rest of the set.
  std::uint64_t durable_snapshot_lsn() const { return durable_snapshot_lsn_.load(std::memory_order_acquire); }
  const DedupSet& set() const { return set_; }
  // Writes the snapshot now (the stage thread only, or before Start / after Wait).
  base::Status WriteSnapshot();

 private:
  DedupStage(DedupStageConfig config, MessageChannel* in, MessageChannel* out, MessageChannel* done);
  void LogDuplicate(const Message& message, std::uint64_t original_lsn);
  void StepPeriodicSnapshot();
  void Finish(Message* m) { (done_.channel() == out_.channel() ? out_ : done_).Add(m); }
  void NoteSnapshotDurable(std::uint64_t covered_lsn, std::int64_t unix_ms);

  static constexpr std::size_t kBatch = 64;
  DedupStageConfig config_;
  std::string name_;
  MessageChannel* in_;
  engine::Outbox<Message*> out_;
  engine::Outbox<Message*> done_;
  DedupSet set_;
  std::unique_ptr<DedupKeyer> keyer_;  // nullptr when keyed_upstream
  std::array<Message*, kBatch> batch_{};
  std::array<DedupQuery, kBatch> queries_{};
  std::array<DedupAnswer, kBatch> answers_{};
  std::array<std::uint8_t, kBatch> query_of_{};  // index into queries_, or kNoQuery
  std::uint64_t max_lsn_ = 0;
  std::uint64_t snapshot_lsn_ = 0;
  std::uint64_t periodic_snapshot_lsn_ = 0;  // covered LSN of the periodic snapshot in progress
  std::atomic<std::uint64_t> durable_snapshot_lsn_{0};
  engine::Clock::time_point next_snapshot_;
  std::unique_ptr<DedupSnapshotWriter> periodic_snapshot_;  // in progress, one shard per batch
  int duplicates_log_fd_ = -1;
  std::string log_buffer_;
  bool finished_ = false;
  DedupCounters counters_;
};

}  // namespace mailrail::stages
