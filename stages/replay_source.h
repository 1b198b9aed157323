#pragma once
// ReplaySource: the source stage that replays captured dumps (mbox, Maildir, trees of .eml files,
// single message files, Graph JSONL; each optionally gzip-compressed) into the pipeline.
//
// Reading goes through FileReader (io_uring, pooled buffers, several reads in flight); splitting
// through DumpSplitter. Each message gets a pooled Message (backpressure: when the pool's budget
// is exhausted the source stops reading until messages are released), a SourceRef of
// (path, byte offset), and this source as its DurableAckSink: the checkpoint of how far the replay
// got advances only over messages the WAL reported durable, so a restarted replay resumes after
// the last durable message and re-sends at most what was not yet durable.
// Pacing: as fast as possible, a fixed rate (messages/s), or the dump's own timestamps (mbox
// "From " line dates, Graph receivedDateTime) with gaps divided by a factor. A paced message's
// Message::accepted_ns is its scheduled send time, not the time the source got round to it, so
// end-to-end latency includes any time the pipeline made the source fall behind schedule.
//
// Threading: RunOnce/IsFinished/next_deadline on the stage's thread; OnDurable on the WAL's thread
//   (it only publishes the highest durable token with a release store); RequestStop any thread.
// Memory ordering: acked_token_ is stored with release by OnDurable and loaded with acquire by
//   the source thread, which then owns the in-flight positions up to that token.

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/base/result.h"
#include "engine/stage.h"
#include "stages/dump_splitter.h"
#include "stages/file_reader.h"
#include "stages/inflater.h"
#include "stages/message.h"

namespace mailrail::stages {

enum class DumpFormat { kAuto, kMbox, kMboxo, kMaildir, kEml, kGraphJsonl };

base::Result<DumpFormat> ParseDumpFormat(std::string_view name);

// One file to replay, with how to split it.
struct ReplayInput {
  std::string path;
  SplitFormat split = SplitFormat::kSingle;
  bool gzip = false;
  InputKind kind = InputKind::kRfc822;
};

// Expands the command-line paths (files, Maildirs, trees) into files in a stable order.
base::Result<std::vector<ReplayInput>> ExpandReplayPaths(const std::vector<std::string>& paths, DumpFormat format);

struct ReplayOptions {
  std::vector<ReplayInput> inputs;
  double rate = 0;               // messages/s; 0: as fast as possible
  double pace = 0;               // replay the dump's own timing sped up by this factor; 0: off
  std::string checkpoint_path;   // empty: no checkpoint
  std::size_t max_message_bytes = 64 << 20;
  std::size_t batch = 64;        // messages per RunOnce
  // Reading starts once this returns true (set: the WAL recovery has finished, so the replay
  // cannot take the pool's slots from the recovery the WAL stage is waiting for).
  std::function<bool()> start_gate;
};

// Counters owned by the source thread; read by stats with relaxed loads.
struct ReplayCounters {
  std::atomic<std::uint64_t> messages{0};
  std::atomic<std::uint64_t> bytes{0};
  std::atomic<std::uint64_t> files{0};
  std::atomic<std::uint64_t> unreadable_files{0};
  std::atomic<std::uint64_t> rejected_too_large{0};
  std::atomic<std::uint64_t> skipped_before_checkpoint{0};
  std::atomic<std::uint64_t> durable{0};
};

class ReplaySource final : public engine::Stage, public DurableAckSink {
 public:
  static base::Result<std::unique_ptr<ReplaySource>> Create(ReplayOptions options, MessagePool* pool,
                                                            engine::Channel<Message*>* out);

  std::string_view name() const override { return "ingest"; }
  unsigned cost_hint() const override { return 11; }  // splitting and copying out of the read buffer
  std::size_t RunOnce() override;
  bool IsFinished() const override;
  void RequestStop() override { stop_.store(true, std::memory_order_release); }
  engine::Clock::time_point next_deadline() const override { return deadline_; }

  void OnDurable(std::span<const DurableAck> acks) override;
  void Report(engine::Snapshot& snapshot) const override;

  // Writes the checkpoint now (crash-atomic). Called periodically by RunOnce and by the owner
  // after the pipeline drained.
  base::Status WriteCheckpoint();

  // Before Start: raises the resume offsets to what the WAL already holds for these inputs (records
  // with lsn < end_lsn). Messages made durable after the last checkpoint write are then not sent
  // again under a new LSN after a crash.
  base::Status AdoptWalPositions(const std::string& wal_dir, std::uint64_t end_lsn);
  // Highest LSN whose source position the written checkpoint file covers. Any thread. WAL segments
  // above it must be kept: AdoptWalPositions needs them after a crash.
  std::uint64_t checkpointed_lsn() const { return checkpointed_lsn_.load(std::memory_order_acquire); }

  const ReplayCounters& counters() const { return counters_; }

 private:
  ReplaySource(ReplayOptions options, MessagePool* pool, engine::Channel<Message*>* out,
               std::unique_ptr<FileReader> reader);
  void LoadCheckpoint();
  bool FillSplitter();          // feeds the next piece; false when none is ready
  bool EmitPending();           // turns the pending split message into a Message; false if starved
  void StartFile(std::size_t index);
  void AdvanceCheckpoint();

  // A message emitted but not yet reported durable: what the checkpoint becomes once it is.
  struct InFlight {
    std::uint64_t token;
    std::size_t file;
    std::uint64_t resume_offset;  // where a restart would begin in that file
    bool last_of_file;
  };

  ReplayOptions options_;
  MessagePool* pool_;
  engine::Outbox<Message*> outbox_;
  std::unique_ptr<FileReader> reader_;
  DumpSplitter splitter_;
  Inflater inflater_;
  std::optional<std::size_t> current_file_;
  bool current_file_read_ = false;   // every piece of the current file was fed
  std::vector<std::uint64_t> resume_offsets_;  // per input, from the checkpoint
  std::vector<bool> done_files_;               // per input, from the checkpoint
  std::vector<std::size_t> reader_inputs_;     // input index of each file given to the reader
  std::optional<SplitMessage> pending_;
  bool pending_is_last_of_file_ = false;

  std::uint64_t next_token_ = 1;
  std::deque<InFlight> in_flight_;
  std::atomic<std::uint64_t> acked_token_{0};
  std::atomic<std::uint64_t> acked_lsn_{0};         // stored after acked_token_ (release)
  std::uint64_t advanced_lsn_ = 0;                  // source thread: LSN the offsets cover
  std::atomic<std::uint64_t> checkpointed_lsn_{0};
  std::vector<std::uint64_t> checkpoint_offsets_;  // per input: durable resume offset
  std::vector<bool> checkpoint_done_;
  bool checkpoint_dirty_ = false;
  engine::Clock::time_point last_checkpoint_write_{};

  // Pacing.
  engine::Clock::time_point start_time_{};
  std::optional<std::int64_t> first_timestamp_ms_;
  std::uint64_t paced_count_ = 0;
  engine::Clock::time_point deadline_ = engine::Clock::time_point::max();

  std::atomic<bool> stop_{false};
  bool started_ = false;  // start_gate has opened
  ReplayCounters counters_;
};

}  // namespace mailrail::stages
