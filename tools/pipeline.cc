#include "tools/pipeline.h"

#include <filesystem>

#include <fmt/core.h>

#include "storage/checkpoint.h"
#include "storage/disk_object_store.h"

namespace mailrail::tools {

Pipeline::Pipeline(const PipelineSettings& settings) : settings_(settings), topology_(settings.topology) {}

Pipeline::~Pipeline() = default;

base::Result<std::unique_ptr<Pipeline>> Pipeline::Open(const PipelineSettings& settings) {
  std::unique_ptr<Pipeline> p(new Pipeline(settings));
  PipelineSettings& s = p->settings_;
  std::error_code ec;
  std::filesystem::create_directories(s.data_dir, ec);
  if (ec) return base::MakeError("data_dir", "cannot create data directory " + s.data_dir + ": " + ec.message());
  s.wal.dir = (std::filesystem::path(s.data_dir) / "wal").string();
  if (s.jsonl_path.empty()) s.jsonl_path = (std::filesystem::path(s.data_dir) / "records.jsonl").string();

  auto writer = storage::WalWriter::Open(s.wal);
  if (!writer) return writer.error();
  p->writer_ = std::move(writer).value();
  const storage::WalOpenReport& report = p->writer_->open_report();
  if (report.tail_bytes_cut > 0) {
    fmt::print(stderr,
               "mailrail: wal: cut a torn tail of {} bytes ({} records) from {}; those records were never "
               "acknowledged\n",
               report.tail_bytes_cut, report.tail_records_cut, report.tail_segment);
  }
  for (const auto& segment : report.set_aside) {
    fmt::print(stderr, "mailrail: wal: segment with a damaged header set aside as {}\n", segment);
  }

  p->pool_ = std::make_unique<stages::MessagePool>(s.in_flight_messages, s.in_flight_bytes);
  engine::Topology& t = p->topology_;
  p->ingest_ = t.MakeChannel<stages::Message*>("ingest->wal", s.ring_capacity);
  p->recovered_ = t.MakeChannel<stages::Message*>("recovery->wal", s.ring_capacity);
  p->durable_ = t.MakeChannel<stages::Message*>("wal->parse", s.ring_capacity);
  p->parsed_ = t.MakeChannel<stages::Message*>(s.dedup_threads == 1 ? "parse->dedup" : "parse->dedup-route",
                                               s.ring_capacity);
  if (auto status = p->OpenDedup(report.checkpoint_lsn); !status) return status.error();
  const bool store_attachments = s.attachments.store != "none";
  p->filtered_ = t.MakeChannel<stages::Message*>(store_attachments ? "filter->attachments" : "filter->forward",
                                                 s.ring_capacity);
  if (auto status = p->OpenAttachments(); !status) return status.error();
  engine::Channel<stages::Message*>* to_sink = store_attachments ? p->stored_ : p->filtered_;
  auto quarantine = stages::QuarantineStore::Open((std::filesystem::path(s.data_dir) / "quarantine").string());
  if (!quarantine) return quarantine.error();
  p->quarantine_ = std::move(quarantine).value();
  if (p->quarantine_->cut_bytes() > 0) {
    fmt::print(stderr, "mailrail: quarantine: cut a torn tail of {} bytes (never reported as quarantined)\n",
               p->quarantine_->cut_bytes());
  }
  s.filter.quarantine = p->quarantine_.get();
  auto filter = stages::FilterStage::Create(s.filter, p->deduped_, p->filtered_, p->filtered_);
  if (!filter) return filter.error();
  p->pending_filter_ = std::move(filter).value();
  p->filter_ = p->pending_filter_.get();

  // Records after the dedup snapshot and up to the checkpoint are re-fed only to rebuild the set.
  std::uint64_t refeed_after = report.checkpoint_lsn;
  for (const stages::DedupStage* worker : p->dedup_) refeed_after = std::min(refeed_after, worker->snapshot_lsn());
  auto recovery =
      stages::WalRecoverySource::Open(s.wal.dir, refeed_after, report.next_lsn, p->pool_.get(), p->recovered_);
  if (!recovery) return recovery.error();
  Pipeline* self = p.get();
  const std::uint64_t checkpoint_at_open = report.checkpoint_lsn;
  stages::TerminalStage::DurableCallback on_durable = [self, checkpoint_at_open](std::uint64_t lsn) {
    // The terminal stage's output is durable through `lsn`: record it, then let the WAL retire
    // segments that no source still needs to find its resume position in. While the records
    // re-fed only to rebuild the dedup set pass by, `lsn` is still below the checkpoint found at
    // start: the checkpoint never moves back.
    if (lsn <= checkpoint_at_open) return;
    if (auto status = storage::WriteCheckpoint(self->settings_.wal.dir, lsn); !status) {
      fmt::print(stderr, "mailrail: forward checkpoint: {}\n", status.error().message);
      return;
    }
    std::uint64_t floor = lsn;
    for (const stages::DedupStage* worker : self->dedup_) floor = std::min(floor, worker->durable_snapshot_lsn());
    if (self->retention_floor_) floor = std::min(floor, self->retention_floor_());
    self->writer_->set_forwarded_lsn(floor);
  };
  if (s.http_forward.has_value()) {
    net::HttpForwardConfig& forward = *s.http_forward;
    if (forward.client.dead_letter_dir.empty()) {
      forward.client.dead_letter_dir = (std::filesystem::path(s.data_dir) / "dlq").string();
    }
    forward.client.batch_journal_path = (std::filesystem::path(s.data_dir) / "forward.batches").string();
    forward.client.forwarded_through_lsn = report.checkpoint_lsn;
    auto stage = net::HttpForwardStage::Create(forward, to_sink, p->pool_.get(), std::move(on_durable));
    if (!stage) return stage.error();
    p->http_forward_ = stage.value().get();
    p->pending_sink_ = std::move(stage).value();
  } else {
    auto sink = stages::JsonlSink::Create(s.jsonl_path, to_sink, p->pool_.get(), std::move(on_durable));
    if (!sink) return sink.error();
    p->pending_sink_ = std::move(sink).value();
  }

  p->recovery_ = static_cast<stages::WalRecoverySource*>(t.AddStage(std::move(recovery).value(), {}, {p->recovered_}));
  p->sink_ = p->pending_sink_.get();
  return p;
}

base::Status Pipeline::OpenDedup(std::uint64_t checkpoint_lsn) {
  // Dedup and filter route finished messages in line (done == out), keeping LSN order.
  PipelineSettings& s = settings_;
  const std::filesystem::path data(s.data_dir);
  const std::size_t workers = s.dedup_threads;
  if (workers < 1 || workers > s.dedup.set.shards) {
    return base::MakeError("dedup.config", fmt::format("dedup.threads: must be between 1 and dedup.shards ({}), got {}",
                                                       s.dedup.set.shards, workers));
  }
  const std::string snapshot_base =
      s.dedup.snapshot_path.empty() ? (data / "dedup.snapshot").string() : s.dedup.snapshot_path;
  if (s.dedup_duplicates_log) s.dedup.duplicates_log_path = (data / "duplicates.log").string();
  s.dedup.forwarded_through_lsn = checkpoint_lsn;
  const std::vector<std::string> load = stages::FindDedupSnapshotLayout(snapshot_base, workers);
  for (std::size_t w = 0; w < workers; ++w) {
    const std::string name = workers == 1 ? "dedup" : fmt::format("dedup-{}", w);
    if (workers > 1) dedup_in_.push_back(topology_.MakeChannel<stages::Message*>("dedup-route->" + name, s.ring_capacity));
    deduped_.push_back(topology_.MakeChannel<stages::Message*>(name + "->filter", s.ring_capacity));
  }
  if (workers > 1) pending_router_ = std::make_unique<stages::DedupRouter>(s.dedup.key, s.dedup.set.shards, parsed_, dedup_in_);
  for (std::size_t w = 0; w < workers; ++w) {
    stages::DedupStageConfig config = s.dedup;
    config.set.owner = w;
    config.set.owners = workers;
    config.snapshot_path = stages::DedupSnapshotPath(snapshot_base, w, workers);
    config.load_snapshots = load;
    config.keyed_upstream = workers > 1;
    config.routed_through_lsn = workers > 1 ? &pending_router_->routed_through_lsn() : nullptr;
    auto dedup = stages::DedupStage::Create(std::move(config), workers > 1 ? dedup_in_[w] : parsed_, deduped_[w],
                                            deduped_[w]);
    if (!dedup) return dedup.error();
    dedup_.push_back(dedup.value().get());
    pending_dedup_.push_back(std::move(dedup).value());
  }
  return base::OkStatus();
}

base::Status Pipeline::OpenAttachments() {
  const AttachmentStoreSettings& a = settings_.attachments;
  if (a.store == "none") return base::OkStatus();
  std::unique_ptr<storage::ObjectStore> store;
  if (a.store == "disk") {
    storage::DiskObjectStoreConfig disk;
    disk.root = (std::filesystem::path(settings_.data_dir) / "attachments").string();
    disk.budget_bytes = a.budget_bytes;
    disk.max_in_flight = a.max_in_flight;
    auto opened = storage::DiskObjectStore::Open(disk);
    if (!opened) return opened.error();
    if (opened.value()->removed_temporaries() > 0) {
      fmt::print(stderr, "mailrail: attachments: removed {} unfinished temporary files of an earlier run\n",
                 opened.value()->removed_temporaries());
    }
    store = std::move(opened).value();
  } else if (a.store == "s3") {
    net::S3StoreConfig s3 = a.s3;
    s3.max_in_flight = a.max_in_flight;
    auto opened = net::S3ObjectStore::Create(std::move(s3));
    if (!opened) return opened.error();
    store = std::move(opened).value();
  } else {
    return base::MakeError("attachments.config", "attachments.store: unknown store '" + a.store + "'");
  }
  stored_ = topology_.MakeChannel<stages::Message*>("attachments->forward", settings_.ring_capacity);
  pending_attachments_ = std::make_unique<stages::AttachmentStage>(a.stage, std::move(store), filtered_, stored_);
  attachments_ = pending_attachments_.get();
  return base::OkStatus();
}

std::size_t Pipeline::max_message_bytes() const { return static_cast<std::size_t>(writer_->max_message_bytes()); }

void Pipeline::AddSource(std::unique_ptr<engine::Stage> source) {
  MR_CHECK(!has_source_) << "Pipeline takes one source";
  has_source_ = true;
  topology_.AddStage(std::move(source), {}, {ingest_});
}

base::Status Pipeline::Start() {
  engine::Topology& t = topology_;
  t.AddStage(std::make_unique<stages::WalStage>(writer_.get(), recovered_, ingest_, durable_), {recovered_, ingest_},
             {durable_});
  parse_ = static_cast<stages::ParseStage*>(
      t.AddStage(std::make_unique<stages::ParseStage>(durable_, parsed_), {durable_}, {parsed_}));
  if (pending_router_) {
    t.AddStage(std::move(pending_router_), {parsed_}, {dedup_in_.begin(), dedup_in_.end()});
  }
  for (std::size_t w = 0; w < pending_dedup_.size(); ++w) {
    t.AddStage(std::move(pending_dedup_[w]), {dedup_in_.empty() ? parsed_ : dedup_in_[w]}, {deduped_[w]});
  }
  t.AddStage(std::move(pending_filter_), {deduped_.begin(), deduped_.end()}, {filtered_});
  if (pending_attachments_) {
    t.AddStage(std::move(pending_attachments_), {filtered_}, {stored_});
    t.AddStage(std::move(pending_sink_), {stored_}, {});
  } else {
    t.AddStage(std::move(pending_sink_), {filtered_}, {});
  }
  return t.Start();
}

void Pipeline::Wait() { topology_.Wait(); }

void Pipeline::Report(engine::Snapshot& snapshot) const { topology_.Report(snapshot); }

}  // namespace mailrail::tools
