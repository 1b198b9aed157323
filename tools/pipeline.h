#pragma once
// Pipeline: what every mailrail process runs between its source and its terminal stage,
//
//   source ─► wal ─► parse ─► dedup ─► filter ─► [attachments] ─► terminal (HTTP downstream or JSONL file)
//   WAL recovery ─┘                      │              │             └─ forward checkpoint: "forwarded through LSN N"
//                                        │              └─ <data_dir>/attachments or S3 (only with a store configured)
//                                        └─ quarantine store (<data_dir>/quarantine)
//
// wired into one engine::Topology. With [dedup] threads = N > 1, dedup is a DedupRouter and N
// DedupStage workers, each holding the shards s % N == w and its own snapshot file, and the
// filter merges their outputs back into order:  parse ─► dedup-route ═N═► dedup-w ═N═► filter.
// Every message travels the whole chain in LSN order: dedup and
// filter mark the messages whose journey ends with them (duplicate, dropped, quarantined) and pass
// them on, so the terminal stage counts every outcome once and its checkpoint is simply the
// highest LSN it has made durable.
// Open() opens the WAL in <data_dir>/wal (cutting a torn tail), reads the forward checkpoint and
// the dedup snapshot, and prepares a WalRecoverySource that re-feeds every record after
// min(forward checkpoint, dedup snapshot LSN) before new input is taken: records up to the
// checkpoint only rebuild the dedup set, the rest are processed again. A restarted process thus
// resumes exactly where the last one stopped, and a duplicate of a message seen before the
// restart is still caught. The terminal stage fdatasyncs its output periodically and then durably
// advances the forward checkpoint; the WAL deletes segments below both that checkpoint and the
// last dedup snapshot (and the source's resume floor).
//
// Threading: build and Start from one thread; RequestStop from any; Report from any while running.
// Ownership: owns the WAL writer, the message pool, the topology and through it every stage.

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/base/result.h"
#include "engine/stats.h"
#include "engine/topology.h"
#include "net/http_forward_stage.h"
#include "net/s3_object_store.h"
#include "stages/attachment_stage.h"
#include "stages/dedup_router.h"
#include "stages/dedup_stage.h"
#include "stages/filter_stage.h"
#include "stages/jsonl_sink.h"
#include "stages/message.h"
#include "stages/parse_stage.h"
#include "stages/quarantine_store.h"
#include "stages/terminal_stage.h"
#include "stages/wal_recovery_source.h"
#include "stages/wal_stage.h"
#include "storage/wal_writer.h"

namespace mailrail::tools {

// [attachments]: which store keeps attachment bytes (docs/operations.md has every key).
struct AttachmentStoreSettings {
  std::string store = "none";  // none | disk (<data_dir>/attachments) | s3
  stages::AttachmentStageConfig stage;
  std::uint64_t budget_bytes = 0;  // disk store; 0: unlimited
  std::size_t max_in_flight = 32;  // objects being written at once
  net::S3StoreConfig s3;           // s3.max_in_flight is max_in_flight
};

struct PipelineSettings {
  std::string data_dir = "mailrail-data";
  engine::TopologyConfig topology;
  storage::WalConfig wal;  // wal.dir is replaced by <data_dir>/wal when empty
  std::size_t ring_capacity = 4096;
  std::size_t in_flight_messages = 65536;
  std::size_t in_flight_bytes = 256u << 20;
  // Terminal stage: the HTTP forward stage when set (client.dead_letter_dir empty:
  // <data_dir>/dlq; batch cuts remembered in <data_dir>/forward.batches), else a JSONL file at
  // jsonl_path (empty: <data_dir>/records.jsonl).
  std::optional<net::HttpForwardConfig> http_forward;
  std::string jsonl_path;
  // snapshot_path empty: <data_dir>/dedup.snapshot; forwarded_through_lsn is set by Open.
  stages::DedupStageConfig dedup;
  bool dedup_duplicates_log = false;  // <data_dir>/duplicates.log
  std::size_t dedup_threads = 1;      // dedup workers (1..dedup.set.shards)
  // rules: a file or "builtin:default"; quarantine is opened by Open in <data_dir>/quarantine.
  stages::FilterStageConfig filter;
  AttachmentStoreSettings attachments;
};

class Pipeline {
 public:
  static base::Result<std::unique_ptr<Pipeline>> Open(const PipelineSettings& settings);
  ~Pipeline();

  // The channel the (single) source pushes into, and the pool it takes messages from.
  engine::Channel<stages::Message*>* ingest() const { return ingest_; }
  stages::MessagePool& pool() { return *pool_; }
  // Largest message the WAL accepts; sources reject larger ones (counted) before ingest.
  std::size_t max_message_bytes() const;

  // Adds the source stage; call once, before Start. Without one, the ingest channel is fed by a
  // thread outside the topology (the network loop), which calls CloseIngest when it stops.
  void AddSource(std::unique_ptr<engine::Stage> source);
  void CloseIngest() { ingest_->Close(); }
  // True once every record the WAL held at start has been re-fed. Sources start taking input
  // only then, so they cannot take the message pool from the recovery. Any thread.
  bool recovery_finished() const { return recovered_->is_closed(); }
  // Blocks until recovery_finished() (after Start).
  void WaitForRecovery() const { recovered_->WaitClosed(); }
  // WAL segments above the returned LSN are kept even once forwarded (the source still needs them
  // to find its resume position after a crash). Called on the terminal stage's thread; set before Start.
  void set_retention_floor(std::function<std::uint64_t()> floor) { retention_floor_ = std::move(floor); }
  base::Status Start();
  void RequestStop() { topology_.RequestStop(); }
  void Wait();

  void Report(engine::Snapshot& snapshot) const;
  // Which stages run on which thread and CPU; valid after Start.
  const std::vector<engine::ThreadPlan>& thread_plan() const { return topology_.plan(); }
  const storage::WalOpenReport& wal_open_report() const { return writer_->open_report(); }
  const stages::WalRecoverySource& recovery() const { return *recovery_; }
  const stages::TerminalStage& sink() const { return *sink_; }
  // The HTTP forward stage, or null when the terminal stage is a JSONL file.
  const net::HttpForwardStage* http_forward() const { return http_forward_; }
  const stages::ParseStage& parse() const { return *parse_; }
  // One per dedup thread, in worker order.
  const std::vector<stages::DedupStage*>& dedup_workers() const { return dedup_; }
  stages::FilterStage& filter() { return *filter_; }
  const stages::QuarantineStore& quarantine() const { return *quarantine_; }
  // The attachment stage, or null when no store is configured.
  const stages::AttachmentStage* attachments() const { return attachments_; }
  const storage::WalWriter& wal() const { return *writer_; }

 private:
  explicit Pipeline(const PipelineSettings& settings);
  // Creates the dedup stage(s) between parsed_ and deduped_ (Open's part for dedup).
  base::Status OpenDedup(std::uint64_t checkpoint_lsn);
  // Creates the attachment stage between filtered_ and stored_ when a store is configured.
  base::Status OpenAttachments();

  PipelineSettings settings_;
  std::unique_ptr<stages::MessagePool> pool_;
  std::unique_ptr<storage::WalWriter> writer_;
  engine::Topology topology_;
  engine::Channel<stages::Message*>* ingest_ = nullptr;
  engine::Channel<stages::Message*>* recovered_ = nullptr;
  engine::Channel<stages::Message*>* durable_ = nullptr;
  engine::Channel<stages::Message*>* parsed_ = nullptr;
  std::vector<engine::Channel<stages::Message*>*> dedup_in_;  // router -> worker (several workers)
  std::vector<engine::Channel<stages::Message*>*> deduped_;   // worker -> filter
  engine::Channel<stages::Message*>* filtered_ = nullptr;
  engine::Channel<stages::Message*>* stored_ = nullptr;  // attachments -> forward (with a store)
  stages::WalRecoverySource* recovery_ = nullptr;
  stages::ParseStage* parse_ = nullptr;
  std::unique_ptr<stages::QuarantineStore> quarantine_;
  std::unique_ptr<stages::DedupRouter> pending_router_;  // added to the topology by Start
  std::vector<std::unique_ptr<stages::DedupStage>> pending_dedup_;
  std::unique_ptr<stages::FilterStage> pending_filter_;
  std::unique_ptr<stages::AttachmentStage> pending_attachments_;
  stages::AttachmentStage* attachments_ = nullptr;
  std::vector<stages::DedupStage*> dedup_;
  stages::FilterStage* filter_ = nullptr;
  std::unique_ptr<stages::TerminalStage> pending_sink_;  // added to the topology by Start
  stages::TerminalStage* sink_ = nullptr;
  net::HttpForwardStage* http_forward_ = nullptr;
  bool has_source_ = false;
  std::function<std::uint64_t()> retention_floor_;
};

}  // namespace mailrail::tools
