// mailrail run: the daemon. Webhook and direct ingest over HTTP (io_uring), the control API of the
// replaced service, the pipeline (WAL, parse, sink), the stats socket, signals and systemd.
//
// Signals: SIGTERM/SIGINT drain (stop accepting, let every accepted message reach the sink,
// checkpoint, exit 0) within shutdown.drain_deadline_ms; a second SIGTERM/SIGINT exits at once
// (the WAL makes that safe: a restart resumes); SIGHUP reloads what can be reloaded.
#include "tools/cmd_run.h"

#include <pthread.h>
#include <signal.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/core.h>

#include "engine/stats_socket.h"
#include "net/control_api.h"
#include "net/event_loop.h"
#include "net/graph_source.h"
#include "net/http_server.h"
#include "net/imap_source.h"
#include "net/ingest_handler.h"
#include "net/sync_jobs.h"
#include "stages/record_json.h"
#include "tools/config.h"
#include "tools/pipeline.h"

namespace mailrail::tools {
namespace {

using ReloadResult = base::Result<stages::RuleSetVersion>;

// RuleReloader: runs FilterStage::RequestReload for the control API on its own thread, so the
// network loop never waits for a rule compile. Requests are served in order, each with its own
// result; `done` is called on the reloader thread. Threading: Request from any thread; the
// destructor finishes the queued requests and joins.
class RuleReloader {
 public:
  using Done = std::function<void(const ReloadResult&)>;
  explicit RuleReloader(stages::FilterStage* filter) : filter_(filter), thread_([this] { Run(); }) {}
  ~RuleReloader() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_one();
    thread_.join();
  }
  void Request(Done done) {
    {
      std::lock_guard lock(mutex_);
      queue_.push_back(std::move(done));
    }
    wake_.notify_one();
  }

 private:
  void Run() {
    std::unique_lock lock(mutex_);
    for (;;) {
      wake_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;
      Done done = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      done(filter_->RequestReload());
      lock.lock();
    }
  }

  stages::FilterStage* filter_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Done> queue_;
  bool stopping_ = false;
  std::thread thread_;  // last: starts once the members above exist
};

// Daemon: the control API's view of the running process (session state, status, health,
// metrics, rule reload). Threading: the ControlService methods run on the network loop thread;
// they read counters (relaxed atomics) and the session state (under mutex_), and never block
// (ReloadRules hands the compile to the RuleReloader and answers from there).
class Daemon final : public net::ControlService {
 public:
  using ReloadLog = std::function<void(std::string_view source, const ReloadResult& result)>;
  Daemon(Pipeline* pipeline, const engine::StatsRegistry* registry, const net::IngestHandler* ingest,
         net::ImapSource* imap, net::GraphSource* graph, net::SyncJobManager* sync_jobs, ReloadLog log_reload)
      : pipeline_(pipeline),
        registry_(registry),
        ingest_(ingest),
        imap_(imap),
        graph_(graph),
        sync_jobs_(sync_jobs),
        log_reload_(std::move(log_reload)),
        started_(std::chrono::steady_clock::now()),
        reloader_(&pipeline->filter()) {}

  net::ControlReply StartSession(const net::SessionStartRequest& request) override {
    std::lock_guard lock(mutex_);
    session_active_ = true;
    polling_mode_ = request.polling_mode;
    polling_interval_ = request.polling_interval_seconds;
    enable_webhook_ = request.enable_webhook;
    stop_reason_.clear();
    ++session_id_;
    return {200, fmt::format(R"({{"status":"started","session_id":{},"polling_mode":"{}","polling_interval":{},)"
                             R"("enable_webhook":{}}})",
                             session_id_, polling_mode_, polling_interval_, enable_webhook_ ? "true" : "false")};
  }

  net::ControlReply StopSession(std::string_view reason) override {
    std::lock_guard lock(mutex_);
    if (!session_active_) return {409, R"({"status":"error","detail":"no active session"})"};
    session_active_ = false;
    stop_reason_ = std::string(reason);
    return {200, fmt::format(R"({{"status":"stopped","session_id":{}}})", session_id_)};
  }

  // Messages accepted (durable in the WAL, or recovered from it at start) and processed (at their
  // final outcome). Any thread: relaxed loads only.
  std::pair<std::uint64_t, std::uint64_t> Progress() const {
    return {pipeline_->wal().stats().records.load(std::memory_order_relaxed) + pipeline_->recovery().recovered(),
            pipeline_->sink().counters().total()};
  }

  // The session's progress on the stats socket, as GET /session/status reports it.
  void ReportProgress(engine::Snapshot& s) const {
    const auto [accepted, processed] = Progress();
    s.Gauge("session_total", static_cast<double>(accepted), {}, "messages accepted (durable) since start");
    s.Gauge("session_processed", static_cast<double>(processed), {}, "accepted messages at their final outcome");
    s.Gauge("session_percent", accepted == 0 ? 100.0 : 100.0 * static_cast<double>(processed) / static_cast<double>(accepted));
  }

  net::ControlReply SessionStatus() override {
    const auto& out = pipeline_->sink().counters();
    const stages::ParseCounters parsed = pipeline_->parse().counters();
    const auto [accepted, processed] = Progress();
    const std::uint64_t failed = out.quarantined_unparseable.load() + out.dead_lettered.load();
    std::lock_guard lock(mutex_);
    return {200, fmt::format(
                     R"({{"state":"{}","session_id":{},"polling_mode":"{}","polling_interval":{},"enable_webhook":{},)"
                     R"("uptime_seconds":{:.0f},"progress":{{"total":{},"processed":{},"parsed":{},"forwarded":{},)"
                     R"("failed":{},"duplicates":{},"dropped":{{"rule":{},"quarantine_rule":{},"unparseable":{},)"
                     R"("dead_letter":{}}},"percent":{:.1f}}},"pending_requests":{}}})",
                     session_active_ ? "running" : "idle", session_id_, polling_mode_, polling_interval_,
                     enable_webhook_ ? "true" : "false",
                     std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count(), accepted,
                     processed, parsed.messages, out.forwarded.load(), failed, out.duplicates.load(),
                     out.dropped_by_rule.load(), out.quarantined_by_rule.load(), out.quarantined_unparseable.load(),
                     out.dead_lettered.load(), accepted == 0 ? 100.0 : 100.0 * processed / accepted,
                     ingest_->pending_requests())};
  }

  net::ControlReply TriggerPolling() override {
    if (imap_ == nullptr && graph_ == nullptr) {
      return {202, R"({"status":"accepted","detail":"no mailbox pollers are configured; nothing to poll"})"};
    }
    const std::size_t imap_folders = imap_ == nullptr ? 0 : imap_->PollNow();
    const std::size_t graph_folders = graph_ == nullptr ? 0 : graph_->SyncAll();
    return {202, fmt::format(R"({{"status":"accepted","detail":"mailbox folders nudged","folders":{},"graph_folders":{}}})",
                             imap_folders, graph_folders)};
  }

  void ReloadRules(std::function<void(net::ControlReply)> reply) override {
    reloader_.Request([this, reply = std::move(reply)](const ReloadResult& result) {
      log_reload_("api", result);
      if (result) {
        reply({200, fmt::format(R"({{"status":"reloaded","version":{},"rules":{},"thresholds":{}}})",
                                result->version, result->rules, result->thresholds)});
        return;
      }
      std::string body = R"({"status":"rejected","error":)";
      stages::AppendJsonString(result.error().message, body);
      body += fmt::format(R"(,"version":{}}})", pipeline_->filter().Stats().version);
      reply({422, std::move(body)});
    });
  }

  net::ControlReply StartSyncJob(std::string_view user_id, unsigned months) override {
    return sync_jobs_->StartBackfill(user_id, months);
  }
  net::ControlReply SyncJobStatus(std::string_view user_id) override { return sync_jobs_->Status(user_id); }
  net::ControlReply SyncJobHistory(std::string_view user_id, std::size_t limit) override {
    return sync_jobs_->History(user_id, limit);
  }
  net::ControlReply SyncJobStats() override { return sync_jobs_->Stats(); }

  net::HealthReport Health() override {
    net::HealthReport report;
    if (const base::Error* failure = pipeline_->wal().failure()) report.reasons.push_back("wal: " + failure->message);
    if (pipeline_->wal().is_full()) report.reasons.push_back("wal: disk budget exhausted; ingest answers 503");
    if (const net::HttpForwardStage* forward = pipeline_->http_forward();
        forward != nullptr && forward->circuit_state() == net::CircuitState::kOpen) {
      report.reasons.push_back("forward: downstream circuit open (batches wait for the next probe)");
    }
    return report;
  }

  std::string Metrics() override { return registry_->Collect().ToPrometheus(); }

 private:
  Pipeline* pipeline_;
  const engine::StatsRegistry* registry_;
  const net::IngestHandler* ingest_;
  net::ImapSource* imap_;  // null without [[imap.mailbox]]; used on the loop thread only
  net::GraphSource* graph_;  // null without [[graph.mailbox]]; used on the loop thread only
  net::SyncJobManager* sync_jobs_;  // loop thread only
  const ReloadLog log_reload_;
  const std::chrono::steady_clock::time_point started_;
  std::mutex mutex_;
  bool session_active_ = true;  // the daemon ingests from the start; /session/stop pauses nothing yet
  std::string polling_mode_ = "manual";
  int polling_interval_ = 0;
  bool enable_webhook_ = true;
  std::string stop_reason_;
  std::uint64_t session_id_ = 1;
  RuleReloader reloader_;  // last: its thread may call back into the members above
};

using LogFields = std::vector<std::pair<std::string_view, std::string>>;

// One line per event: key=value (quoted when needed) or one JSON object, by log.format.
void Log(const DaemonConfig& config, std::string_view event, const LogFields& fields = {}) {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::system_clock::now().time_since_epoch()).count();
  std::string line;
  if (config.log.format == "json") {
    line = fmt::format(R"({{"ts_ms":{},"event":"{}")", ms, event);
    for (const auto& [k, v] : fields) {
      line += fmt::format(",\"{}\":", k);
      stages::AppendJsonString(v, line);
    }
    line += "}\n";
  } else {
    line = fmt::format("ts_ms={} event={}", ms, event);
    for (const auto& [k, v] : fields) {
      const bool quote = v.empty() || v.find_first_of(" \"=") != std::string::npos;
      line += fmt::format(" {}={}", k, quote ? "\"" + v + "\"" : v);
    }
    line += '\n';
  }
  std::fwrite(line.data(), 1, line.size(), stderr);
  std::fflush(stderr);
}

int RunDaemon(const std::string& config_path) {
  auto loaded = LoadConfig(config_path);
  if (!loaded) {
    fmt::print(stderr, "mailrail run: {}\n", loaded.error().message);
    return 2;
  }
  const DaemonConfig& config = *loaded;

  // Signals go to the main thread only: block them before any thread starts.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  PipelineSettings settings;
  settings.data_dir = config.data_dir;
  settings.topology = config.topology;
  settings.ring_capacity = config.limits.ring_capacity;
  settings.in_flight_messages = config.limits.in_flight_messages;
  settings.in_flight_bytes = config.limits.in_flight_bytes;
  settings.jsonl_path = config.sink.path;
  if (config.sink.kind == "http") settings.http_forward = config.sink.forward;
  settings.wal = config.wal;
  settings.dedup = config.dedup;
  settings.dedup_duplicates_log = config.dedup_duplicates_log;
  settings.dedup_threads = config.dedup_threads;
  settings.filter.rules_path = config.filter.rules;
  settings.attachments = config.attachments;
  auto opened = Pipeline::Open(settings);
  if (!opened) {
    fmt::print(stderr, "mailrail run: {}\n", opened.error().message);
    return 1;
  }
  Pipeline& pipeline = **opened;

  auto loop = net::EventLoop::Create({});
  if (!loop) {
    fmt::print(stderr, "mailrail run: {}\n", loop.error().message);
    return 1;
  }
  net::HttpServerConfig http;
  http.bind_address = config.http.listen;
  http.port = static_cast<std::uint16_t>(config.http.port);
  http.max_body_bytes = std::min(config.http.max_body_bytes, pipeline.max_message_bytes());
  http.max_connections = config.http.max_connections;
  http.tls_cert_path = config.http.tls_cert;
  http.tls_key_path = config.http.tls_key;
  auto server = net::HttpServer::Create(loop->get(), http);
  if (!server) {
    fmt::print(stderr, "mailrail run: http: {}\n", server.error().message);
    return 1;
  }
  // Graph mailboxes run on the loop thread too; the webhook hands them change notifications.
  std::unique_ptr<net::GraphSource> graph;
  if (!config.graph.mailboxes.empty()) {
    net::GraphSourceConfig graph_config = config.graph;
    graph_config.max_message_bytes = pipeline.max_message_bytes();
    auto created = net::GraphSource::Create(loop->get(), &pipeline.pool(), pipeline.ingest(), std::move(graph_config),
                                            [&config](std::string_view event, const net::GraphLogFields& fields) {
                                              Log(config, event, fields);
                                            });
    if (!created) {
      fmt::print(stderr, "mailrail run: {}\n", created.error().message);
      return 1;
    }
    graph = std::move(created).value();
  }
  net::IngestConfig ingest_config;
  ingest_config.graph_client_state = config.http.graph_client_state;
  ingest_config.graph_target = graph.get();
  net::IngestHandler ingest(loop->get(), &pipeline.pool(), pipeline.ingest(), ingest_config);
  ingest.Install(**server);

  engine::StatsRegistry registry;
  registry.Add([&pipeline](engine::Snapshot& s) { pipeline.Report(s); });
  registry.Add([&ingest](engine::Snapshot& s) {
    const net::IngestStats& st = ingest.stats();
    s.Counter("stage_messages_out", static_cast<double>(st.messages_enqueued.value()),
              {{"stage", "ingest"}, {"source", "http"}});
    s.Counter("http_ingest_requests", static_cast<double>(st.requests.value()));
    s.Counter("http_ingest_rejected", static_cast<double>(st.backpressure_rejections.value()),
              {{"reason", "backpressure"}});
    s.Counter("http_ingest_rejected", static_cast<double>(st.bad_requests.value()), {{"reason", "bad_request"}});
    s.Counter("graph_notifications", static_cast<double>(st.graph_notifications.value()));
    s.Counter("graph_client_state_mismatches", static_cast<double>(st.graph_client_state_mismatches.value()));
  });
  // One log line per reload, whoever asked (SIGHUP or the control API).
  auto log_reload = [&config](std::string_view source, const ReloadResult& result) {
    if (result) {
      Log(config, "reload",
          {{"result", "ok"}, {"source", std::string(source)}, {"rules", config.filter.rules},
           {"version", std::to_string(result->version)}, {"rule_count", std::to_string(result->rules)}});
    } else {
      Log(config, "reload",
          {{"result", "rejected"}, {"source", std::string(source)}, {"rules", config.filter.rules},
           {"error", result.error().message}});
    }
  };
    // IMAP mailboxes run on the same loop thread as the webhook: that thread is the one producer of
  // the SPSC ingest channel.
  std::unique_ptr<net::ImapSource> imap;
  if (!config.imap.mailboxes.empty()) {
    net::ImapSourceConfig imap_config = config.imap;
    imap_config.max_message_bytes = pipeline.max_message_bytes();
    auto created = net::ImapSource::Create(loop->get(), &pipeline.pool(), pipeline.ingest(), std::move(imap_config),
                                           [&config](std::string_view event, const net::ImapLogFields& fields) {
                                             Log(config, event, fields);
                                           });
    if (!created) {
      fmt::print(stderr, "mailrail run: {}\n", created.error().message);
      return 1;
    }
    imap = std::move(created).value();
    registry.Add([source = imap.get()](engine::Snapshot& s) {
      const net::ImapStats& st = source->stats();
      auto v = [](const net::Counter& c) { return static_cast<double>(c.value()); };
      s.Counter("stage_messages_out", v(st.messages), {{"stage", "ingest"}, {"source", "imap"}});
      s.Counter("imap_connects", v(st.connects), {}, "IMAP connections opened");
      s.Counter("imap_disconnects", v(st.disconnects), {}, "IMAP connections lost to errors and timeouts");
      s.Gauge("imap_connections_open", v(st.connections_open), {}, "IMAP connection slots in use");
      s.Gauge("imap_connections_peak", v(st.connections_peak), {}, "most connection slots in use at once on one server");
      s.Counter("imap_connect_fallbacks", v(st.connect_fallbacks), {}, "failed connects retried at the host's next address");
      s.Counter("imap_fetch_commands", v(st.fetch_commands), {}, "UID FETCH commands sent");
      s.Counter("imap_messages", v(st.messages), {}, "messages fetched and pushed to the pipeline");
      s.Counter("imap_bytes", v(st.bytes), {}, "bytes of messages fetched");
      s.Counter("imap_durable", v(st.durable), {}, "fetched messages the WAL reported durable");
      s.Counter("imap_acknowledged", v(st.acknowledged), {}, "durable messages flagged \\Seen or moved (on_durable)");
      s.Counter("imap_rejected_too_large", v(st.rejected_too_large), {}, "messages over limits.max_message_mib");
      s.Counter("imap_uidvalidity_resets", v(st.uidvalidity_resets), {}, "folders resynchronised after a UIDVALIDITY change");
      s.Counter("imap_idle_wakeups", v(st.idle_wakeups), {}, "IDLE ended by new mail");
      s.Counter("imap_checkpoint_writes", v(st.checkpoint_writes), {}, "durable writes of imap.checkpoint");
    });
  }
  if (graph != nullptr) {
    registry.Add([source = graph.get()](engine::Snapshot& s) {
      const net::GraphStats& st = source->stats();
      auto v = [](const net::Counter& c) { return static_cast<double>(c.value()); };
      s.Counter("stage_messages_out", v(st.messages), {{"stage", "ingest"}, {"source", "graph"}});
      s.Counter("graph_requests", v(st.requests), {}, "Graph API requests sent");
      s.Counter("graph_pages", v(st.pages), {}, "delta pages received");
      s.Counter("graph_messages", v(st.messages), {}, "messages fetched and pushed to the pipeline");
      s.Counter("graph_bytes", v(st.bytes), {}, "bytes of messages fetched");
      s.Counter("graph_durable", v(st.durable), {}, "fetched messages the WAL reported durable");
      s.Counter("graph_removed", v(st.removed), {}, "delta items marked @removed (skipped)");
      s.Counter("graph_failed", v(st.failed), {}, "messages or attachments that could not be fetched");
      s.Counter("graph_rejected_too_large", v(st.rejected_too_large), {}, "messages over limits.max_message_mib");
      s.Counter("graph_throttled", v(st.throttled), {}, "429 and 503 answers (the mailbox paused for Retry-After)");
      s.Counter("graph_retries", v(st.retries), {}, "requests sent again after an error or a throttle");
      s.Counter("graph_token_refreshes", v(st.token_refreshes), {}, "OAuth2 access tokens obtained");
      s.Counter("graph_token_errors", v(st.token_errors), {}, "failed token requests");
      s.Counter("graph_delta_restarts", v(st.delta_restarts), {}, "folders whose delta restarted from scratch");
      s.Counter("graph_notification_syncs", v(st.notification_syncs), {}, "change notifications turned into delta rounds");
      s.Counter("graph_lifecycle_syncs", v(st.lifecycle_syncs), {}, "lifecycle notifications turned into delta rounds");
      s.Counter("graph_checkpoint_writes", v(st.checkpoint_writes), {}, "durable writes of graph.checkpoint");
    });
  }
  // Sync jobs over every mailbox source (none configured: every user id answers 404).
  auto job_store = storage::SyncJobStore::Open((std::filesystem::path(config.data_dir) / "sync_jobs.journal").string(),
                                               config.sync.history_per_user);
  if (!job_store) {
    fmt::print(stderr, "mailrail run: {}\n", job_store.error().message);
    return 1;
  }
  if (job_store->torn_tail_bytes() > 0) {
    Log(config, "sync_jobs_torn_tail", {{"bytes", std::to_string(job_store->torn_tail_bytes())}});
  }
  std::vector<net::MailboxSyncSource*> sync_sources;
  if (imap != nullptr) sync_sources.push_back(imap.get());
  if (graph != nullptr) sync_sources.push_back(graph.get());
  net::SyncJobsConfig sync_config;
  sync_config.incremental_interval = config.sync.incremental_interval;
  net::SyncJobManager sync_jobs(
      loop->get(), &*job_store, std::move(sync_sources), [&pipeline] { return pipeline.sink().durable_lsn(); },
      sync_config, [&config](std::string_view event, const net::ImapLogFields& fields) { Log(config, event, fields); });
  Daemon daemon(&pipeline, &registry, &ingest, imap.get(), graph.get(), &sync_jobs, log_reload);
  registry.Add([&daemon](engine::Snapshot& s) { daemon.ReportProgress(s); });
  net::ControlApi control(&daemon, net::ControlApiConfig{config.http.bearer_token});
  control.Install(**server);

  auto stats_socket = engine::StatsSocket::Start(config.stats.socket, config.stats.mode, &registry);
  if (!stats_socket) {
    fmt::print(stderr, "mailrail run: {}\n", stats_socket.error().message);
    return 1;
  }
  if (auto status = pipeline.Start(); !status) {
    fmt::print(stderr, "mailrail run: {}\n", status.error().message);
    return 1;
  }
  // Accept HTTP ingest only once the WAL's backlog is re-fed (its messages come first, and
  // requests must not take the message pool from the recovery).
  pipeline.WaitForRecovery();
  (*server)->Start();
  (*loop)->Post([&] {
    if (imap != nullptr) imap->Start();
    if (graph != nullptr) graph->Start();
    sync_jobs.Start();
  });
  std::thread net_thread([&] { (*loop)->Run(); });

  const auto& report = pipeline.wal_open_report();
  Log(config, "started",
      {{"config", config.file},
       {"data_dir", config.data_dir},
       {"http", fmt::format("{}:{}", config.http.listen, (*server)->port())},
       {"stats_socket", config.stats.socket},
       {"wal_next_lsn", std::to_string(report.next_lsn)},
       {"forward_checkpoint", std::to_string(report.checkpoint_lsn)},
       {"recovered", std::to_string(pipeline.recovery().recovered())}});
  sd_notify(0, "READY=1\nSTATUS=ingesting");
  std::uint64_t watchdog_usec = 0;
  const bool watchdog = sd_watchdog_enabled(0, &watchdog_usec) > 0;

  // Main thread: signals and the watchdog.
  bool draining = false;
  std::chrono::steady_clock::time_point drain_deadline{};
  std::atomic<bool> drained{false};
  std::thread drain_thread;
  const timespec tick{0, 200'000'000};
  while (!drained.load()) {
    siginfo_t info{};
    const int sig = sigtimedwait(&signals, &info, &tick);
    if (watchdog) sd_notify(0, "WATCHDOG=1");
    if (sig == SIGHUP) {
      // The rules compile here, off the pipeline's threads; an invalid file keeps the old rules.
      log_reload("sighup", pipeline.filter().RequestReload());
    } else if (sig == SIGTERM || sig == SIGINT) {
      if (draining) {
        Log(config, "exit_now", {{"reason", "second_signal"}, {"detail", "the WAL holds every accepted message"}});
        std::_Exit(1);
      }
      draining = true;
      sd_notify(0, "STOPPING=1\nSTATUS=draining");
      Log(config, "draining",
          {{"signal", std::to_string(sig)}, {"deadline_ms", std::to_string(config.drain_deadline.count())}});
      drain_deadline = std::chrono::steady_clock::now() + config.drain_deadline;
      drain_thread = std::thread([&] {
        // Stop accepting and fetching; wait (on the loop) until every request whose messages are
        // in the WAL has had its 202 and every fetched IMAP message is durable (then checkpoint);
        // then end the ingest stream: the pipeline drains every accepted message into the sink
        // and its threads exit.
        std::function<void()> stop_when_answered = [&] {
          if (ingest.pending_requests() == 0 && (imap == nullptr || imap->in_flight() == 0) &&
              (graph == nullptr || graph->in_flight() == 0)) {
            if (imap != nullptr) {
              if (auto status = imap->WriteCheckpoint(); !status) {
                Log(config, "imap_checkpoint_failed", {{"error", status.error().message}});
              }
            }
            if (graph != nullptr) {
              if (auto status = graph->WriteCheckpoint(); !status) {
                Log(config, "graph_checkpoint_failed", {{"error", status.error().message}});
              }
            }
            (*loop)->Stop();
          } else {
            (*loop)->RunAfter(std::chrono::milliseconds(5), stop_when_answered);
          }
        };
        (*loop)->Post([&] {
          (*server)->Shutdown();
          if (imap != nullptr) imap->Shutdown();
          if (graph != nullptr) graph->Shutdown();
          stop_when_answered();
        });
        net_thread.join();
        pipeline.CloseIngest();
        pipeline.RequestStop();
        pipeline.Wait();
        drained.store(true);
      });
    }
    if (draining && !drained.load()) {
      if (std::chrono::steady_clock::now() > drain_deadline) {
        Log(config, "exit_now", {{"reason", "drain_deadline"}, {"detail", "the WAL holds every accepted message"}});
        std::_Exit(1);
      }
    }
  }
  drain_thread.join();
  (*stats_socket)->Stop();
  const auto& out = pipeline.sink().counters();
  Log(config, "stopped",
      {{"forwarded", std::to_string(out.forwarded.load())},
       {"duplicates", std::to_string(out.duplicates.load())},
       {"quarantined_unparseable", std::to_string(out.quarantined_unparseable.load())},
       {"durable_lsn", std::to_string(pipeline.wal().durable_lsn())}});
  return 0;
}

}  // namespace

void AddRunCommand(CLI::App& app) {
  auto config = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand("run", "Run the daemon (HTTP ingest and control API, pipeline, stats socket)");
  cmd->add_option("--config", *config, "TOML config file (default: the embedded default, no servers needed)");
  auto print = std::make_shared<bool>(false);
  cmd->add_flag("--print-default-config", *print, "Print the embedded default config and exit");
  cmd->callback([config, print] {
    if (*print) {
      fmt::print("{}", EmbeddedDefaultConfig());
      throw CLI::RuntimeError(0);
    }
    throw CLI::RuntimeError(RunDaemon(*config));
  });
}

}  // namespace mailrail::tools
