// mailrail replay: replays captured dumps through the whole pipeline into a sink, exits when
// drained, and prints a summary.
#include "tools/cmd_replay.h"

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>

#include <fmt/core.h>

#include "stages/replay_source.h"
#include "tools/config.h"
#include "tools/pipeline.h"

namespace mailrail::tools {
namespace {

struct ReplayFlags {
  std::vector<std::string> paths;
  std::string sink = "jsonl:mailrail-replay.jsonl";
  std::string format = "auto";
  double rate = 0;
  double pace = 0;
  std::string data_dir = "mailrail-data";
  std::string placement = "auto";
  bool fresh = false;
  std::string wal_sync = "data";
  std::size_t in_flight_mib = 64;
  std::size_t batch_records = 500;
  std::size_t dedup_threads = 1;
  std::string stats_json;  // empty: none
  std::string attachments_config;  // a daemon config file whose [attachments] section is used
};

// The first sample of `snapshot` named `name` whose labels include `label` (when given); 0 if none.
double SampleValue(const engine::Snapshot& snapshot, std::string_view name,
                   const std::pair<std::string, std::string>& label = {}) {
  for (const auto& sample : snapshot.samples()) {
    if (sample.name != name) continue;
    if (!label.first.empty() && std::find(sample.labels.begin(), sample.labels.end(), label) == sample.labels.end()) {
      continue;
    }
    return sample.value;
  }
  return 0;
}

// Latency percentiles, CPU time per thread and the process's CPU time and peak RSS.
void PrintRunFigures(const Pipeline& p, const engine::Snapshot& snapshot) {
  auto ms = [&](const char* name) { return SampleValue(snapshot, name) / 1e6; };
  fmt::print("latency accepted -> final outcome (sink write or downstream ack): p50 {:.3f} ms, p90 {:.3f} ms, p99 {:.3f} ms, p99.9 {:.3f} ms, "
             "max {:.3f} ms ({:.0f} messages)\n",
             ms("end_to_end_latency_ns_p50"), ms("end_to_end_latency_ns_p90"), ms("end_to_end_latency_ns_p99"),
             ms("end_to_end_latency_ns_p999"), ms("end_to_end_latency_ns_max"),
             SampleValue(snapshot, "end_to_end_latency_ns_count"));
  for (const char* part : {"accepted_to_logged", "logged_to_durable", "durable_to_end"}) {
    auto part_ms = [&](const char* q) {
      return SampleValue(snapshot, fmt::format("latency_part_ns_{}", q), {"part", part}) / 1e6;
    };
    fmt::print("  part {:<19} p50 {:.3f} ms, p90 {:.3f} ms, p99 {:.3f} ms, p99.9 {:.3f} ms, max {:.3f} ms\n", part,
               part_ms("p50"), part_ms("p90"), part_ms("p99"), part_ms("p999"), part_ms("max"));
  }
  const storage::WalWriterStats& wal = p.wal().stats();
  const double groups = static_cast<double>(wal.groups.load());
  const engine::LatencyHistogram::Snapshot commit = wal.commit_latency_ns.Take();
  fmt::print("wal: {:.0f} commit groups (write + fdatasync), {:.1f} records and {:.2f} MB per group, "
             "commit latency p50 {:.3f} ms, p99 {:.3f} ms, max {:.3f} ms\n",
             groups, groups > 0 ? static_cast<double>(wal.records.load()) / groups : 0,
             groups > 0 ? static_cast<double>(wal.bytes.load()) / groups / 1e6 : 0,
             static_cast<double>(commit.Quantile(0.5)) / 1e6, static_cast<double>(commit.Quantile(0.99)) / 1e6,
             static_cast<double>(commit.max) / 1e6);
  const auto& plan = p.thread_plan();
  for (std::size_t t = 0; t < plan.size(); ++t) {
    std::string stages;
    for (const auto& name : plan[t].stages) stages += (stages.empty() ? "" : ",") + name;
    const std::pair<std::string, std::string> label{"thread", std::to_string(t)};
    fmt::print("thread {} [{}] cpu {}: {:.3f} s CPU, {:.0f} parks\n", t, stages, plan[t].cpu,
               SampleValue(snapshot, "thread_cpu_seconds", label), SampleValue(snapshot, "thread_parks", label));
  }
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& tv) { return static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) / 1e6; };
  fmt::print("process: {:.3f} s user, {:.3f} s system, peak RSS {:.1f} MB\n", seconds(usage.ru_utime),
             seconds(usage.ru_stime), static_cast<double>(usage.ru_maxrss) / 1024.0);
}

base::Result<engine::TopologyConfig::Placement> ParsePlacement(const std::string& name) {
  if (name == "auto") return engine::TopologyConfig::Placement::kAuto;
  if (name == "one-thread") return engine::TopologyConfig::Placement::kOneThread;
  if (name == "thread-per-stage") return engine::TopologyConfig::Placement::kThreadPerStage;
  return base::MakeError("topology.placement", "unknown placement '" + name + "' (auto, one-thread, thread-per-stage)");
}

int RunReplay(const ReplayFlags& flags) {
  auto format = stages::ParseDumpFormat(flags.format);
  if (!format) {
    fmt::print(stderr, "mailrail replay: {}\n", format.error().message);
    return 2;
  }
  auto placement = ParsePlacement(flags.placement);
  if (!placement) {
    fmt::print(stderr, "mailrail replay: {}\n", placement.error().message);
    return 2;
  }
  const bool http_sink = flags.sink.rfind("http://", 0) == 0 || flags.sink.rfind("https://", 0) == 0;
  if (flags.sink.rfind("jsonl:", 0) != 0 && !http_sink) {
    fmt::print(stderr, "mailrail replay: unsupported sink '{}' (jsonl:FILE or http[s]://HOST:PORT[/PREFIX])\n",
               flags.sink);
    return 2;
  }
  auto inputs = stages::ExpandReplayPaths(flags.paths, *format);
  if (!inputs) {
    fmt::print(stderr, "mailrail replay: {}\n", inputs.error().message);
    return 2;
  }
  PipelineSettings settings;
  settings.data_dir = flags.data_dir;
  settings.topology.placement = *placement;
  settings.in_flight_bytes = flags.in_flight_mib << 20;
  if (http_sink) {
    settings.http_forward.emplace();
    settings.http_forward->client.http.base_url = flags.sink;
    settings.http_forward->client.batch_max_records = flags.batch_records;
  } else {
    settings.jsonl_path = flags.sink.substr(6);
  }
  settings.dedup_threads = flags.dedup_threads;
  if (flags.wal_sync == "none") {
    settings.wal.sync = storage::WalConfig::Sync::kNone;
    fmt::print(stderr, "mailrail replay: WARNING: --wal-sync none: the WAL does not fdatasync; a crash loses data. "
                       "For benchmarks only.\n");
  }
  if (!flags.attachments_config.empty()) {
    auto config = LoadConfig(flags.attachments_config);
    if (!config) {
      fmt::print(stderr, "mailrail replay: {}\n", config.error().message);
      return 2;
    }
    settings.attachments = config->attachments;
  }
  auto pipeline = Pipeline::Open(settings);
  if (!pipeline) {
    fmt::print(stderr, "mailrail replay: {}\n", pipeline.error().message);
    return 1;
  }
  Pipeline& p = **pipeline;

  stages::ReplayOptions options;
  options.inputs = std::move(inputs).value();
  options.rate = flags.rate;
  options.pace = flags.pace;
  options.max_message_bytes = p.max_message_bytes();
  options.start_gate = [&p] { return p.recovery_finished(); };
  options.checkpoint_path = flags.fresh ? "" : (std::filesystem::path(flags.data_dir) / "replay.checkpoint").string();
  auto source = stages::ReplaySource::Create(std::move(options), &p.pool(), p.ingest());
  if (!source) {
    fmt::print(stderr, "mailrail replay: {}\n", source.error().message);
    return 1;
  }
  stages::ReplaySource* source_ptr = source->get();
  if (!flags.fresh) {
    if (auto status = source_ptr->AdoptWalPositions(p.wal().config().dir, p.wal_open_report().next_lsn); !status) {
      fmt::print(stderr, "mailrail replay: {}\n", status.error().message);
      return 1;
    }
    p.set_retention_floor([source_ptr] { return source_ptr->checkpointed_lsn(); });
  }
  p.AddSource(std::move(source).value());

  const auto started = std::chrono::steady_clock::now();
  if (auto status = p.Start(); !status) {
    fmt::print(stderr, "mailrail replay: {}\n", status.error().message);
    return 1;
  }
  p.Wait();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  if (auto status = source_ptr->WriteCheckpoint(); !status) {
    fmt::print(stderr, "mailrail replay: {}\n", status.error().message);
  }

  const auto& in = source_ptr->counters();
  const auto& out = p.sink().counters();
  const double messages = static_cast<double>(in.messages.load());
  const double mb = static_cast<double>(in.bytes.load()) / 1e6;
  fmt::print("replayed {} files: {} messages, {:.1f} MB in {:.3f} s ({:.0f} messages/s, {:.1f} MB/s)\n",
             in.files.load(), in.messages.load(), mb, seconds, messages / seconds, mb / seconds);
  const stages::ParseCounters parsed = p.parse().counters();
  if (p.recovery().recovered() > 0) {
    fmt::print("recovered from the WAL: {} messages accepted before a restart and not yet forwarded\n",
               p.recovery().recovered());
  }
  std::uint64_t defects = 0;
  for (auto n : parsed.defects) defects += n;
  fmt::print("parse: {} messages with defects ({} defects in all)\n", parsed.messages_with_defects, defects);
  std::uint64_t dedup_in = 0, duplicates = 0, keys = 0, reserved = 0;
  for (const stages::DedupStage* worker : p.dedup_workers()) {
    dedup_in += worker->counters().in.load();
    duplicates += worker->counters().duplicates.load();
    keys += worker->counters().set_size.load();
    reserved += worker->counters().bytes_reserved.load();
  }
  fmt::print("dedup ({} threads): {} in, {} duplicates, {} keys held ({:.1f} MB reserved)\n", p.dedup_workers().size(),
             dedup_in, duplicates, keys, static_cast<double>(reserved) / 1e6);
  const stages::FilterStats filter = p.filter().Stats();
  fmt::print("filter: {} in, accepted {}, labelled {}, quarantined {}, dropped {}\n", filter.in,
             filter.by_action[0], filter.by_action[1], filter.by_action[2], filter.by_action[3]);
  fmt::print("outcomes: forwarded {}, duplicates {}, dropped by rule {}, quarantined by rule {}, "
             "quarantined unparseable {}, dead-lettered {}\n",
             out.forwarded.load(), out.duplicates.load(), out.dropped_by_rule.load(), out.quarantined_by_rule.load(),
             out.quarantined_unparseable.load(), out.dead_lettered.load());
  if (const net::HttpForwardStage* forward = p.http_forward()) {
    const net::ForwardStats& f = forward->client_stats();
    fmt::print("forward: {} batches acknowledged, {} dead-lettered, {} retries, {} circuit opens\n",
               f.batches_acknowledged.value(), f.batches_dead_lettered.value(), f.retries.value(),
               f.circuit_opens.value());
  }
  if (const stages::AttachmentStage* attachments = p.attachments()) {
    const stages::AttachmentCounters& a = attachments->counters();
    fmt::print("attachments: {} seen, {} stored (referenced), not stored: too large {}, budget full {}, store error {}, "
               "bytes not in input {}\n",
               a.seen.load(), a.stored.load(), a.too_large.load(), a.budget_full.load(), a.store_error.load(),
               a.bytes_not_in_input.load());
  }
  fmt::print("not ingested: unreadable files {}, messages over the size limit {}, skipped as already durable {}\n",
             in.unreadable_files.load(), in.rejected_too_large.load(), in.skipped_before_checkpoint.load());
  fmt::print("sink: {}\n", flags.sink);
  engine::Snapshot snapshot;
  p.Report(snapshot);
  PrintRunFigures(p, snapshot);
  if (!flags.stats_json.empty()) {
    std::ofstream json(flags.stats_json);
    json << snapshot.ToJson() << '\n';
    if (!json) fmt::print(stderr, "mailrail replay: cannot write {}\n", flags.stats_json);
  }
  if (out.dead_lettered.load() > 0) {
    fmt::print(stderr, "mailrail replay: {} records went to the dead-letter log in {}/dlq (`mailrail dlq list`)\n",
               out.dead_lettered.load(), flags.data_dir);
    return 1;
  }
  return in.unreadable_files.load() == 0 ? 0 : 1;
}

}  // namespace

void AddReplayCommand(CLI::App& app) {
  auto flags = std::make_shared<ReplayFlags>();
  CLI::App* cmd = app.add_subcommand("replay", "Replay captured dumps (mbox, Maildir, .eml trees, Graph JSONL, gzip) "
                                               "through the pipeline into a sink");
  cmd->add_option("paths", flags->paths, "Files or directories to replay")->required();
  cmd->add_option("--sink", flags->sink,
                  "Where records go: jsonl:FILE, or http[s]://HOST:PORT[/PREFIX] to POST batches to "
                  "PREFIX/batch-metadata (dead letters in DATA_DIR/dlq)")
      ->capture_default_str();
  cmd->add_option("--batch-records", flags->batch_records, "Records per batch for an HTTP sink")
      ->check(CLI::Range(1, 1000000))
      ->capture_default_str();
  cmd->add_option("--format", flags->format, "auto, mbox, mboxrd, mboxo, mboxcl, mboxcl2, maildir, eml, jsonl")
      ->capture_default_str();
  cmd->add_option("--rate", flags->rate, "Messages per second (0: as fast as possible)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--pace", flags->pace, "Replay the dump's own timing sped up by this factor (0: off)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--data-dir", flags->data_dir, "Data directory (WAL, checkpoints)")->capture_default_str();
  cmd->add_option("--placement", flags->placement, "Stage placement: auto, one-thread, thread-per-stage")
      ->capture_default_str();
  cmd->add_option("--in-flight-mib", flags->in_flight_mib, "Memory budget for messages in flight (MiB)")
      ->capture_default_str();
  cmd->add_option("--wal-sync", flags->wal_sync, "data (fdatasync every commit group) or none (benchmarks only)")
      ->check(CLI::IsMember({"data", "none"}))
      ->capture_default_str();
  cmd->add_option("--dedup-threads", flags->dedup_threads, "Dedup worker threads (1..4, the default shard count)")
      ->check(CLI::Range(1, 4))
      ->capture_default_str();
  cmd->add_option("--attachments-config", flags->attachments_config,
                  "A mailrail config file whose [attachments] section configures the attachment store");
  cmd->add_flag("--fresh", flags->fresh, "Ignore and do not write the replay checkpoint");
  cmd->add_option("--stats-json", flags->stats_json, "Write the final stats snapshot (JSON) to this file");
  cmd->callback([flags] { throw CLI::RuntimeError(RunReplay(*flags)); });
}

}  // namespace mailrail::tools
