#pragma once
// DaemonConfig: the one TOML file of `mailrail run`, parsed once at start-up into typed structs.
// Every key is documented in docs/operations.md with its default. An unknown key, a value of the
// wrong type or out of range is an error naming the file, the line and the key; the daemon then
// refuses to start (before it accepts any traffic). Without --config the embedded default is used
// (EmbeddedDefaultConfig(): no servers needed).
// Threading: parsed on the main thread before anything starts; read-only afterwards.

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/base/result.h"
#include "engine/topology.h"
#include "net/http_forward_stage.h"
#include "net/graph_source.h"
#include "net/imap_source.h"
#include "stages/dedup_stage.h"
#include "tools/pipeline.h"
#include "storage/wal_writer.h"

namespace mailrail::tools {

struct DaemonConfig {
  std::string file = "<embedded default>";
  std::string data_dir = "mailrail-data";

  engine::TopologyConfig topology;

  struct Limits {
    std::size_t in_flight_bytes = 256u << 20;
    std::size_t in_flight_messages = 65536;
    std::size_t max_message_bytes = 64u << 20;
    std::size_t ring_capacity = 4096;
  } limits;

  storage::WalConfig wal;        // [wal]; dir is always <data_dir>/wal
  stages::DedupStageConfig dedup;  // [dedup]; snapshot path is <data_dir>/dedup.snapshot
  bool dedup_duplicates_log = false;
  std::size_t dedup_threads = 1;   // [dedup] threads; "auto" is resolved at parse time

  struct Filter {
    std::string rules = "builtin:default";  // a rule file (relative to the config file) or builtin:default
  } filter;

  struct Stats {
    std::string socket;  // default: <data_dir>/mailrail.sock
    mode_t mode = 0660;
  } stats;

  struct Sink {
    std::string kind = "jsonl";  // jsonl | http
    std::string path;            // jsonl; default: <data_dir>/records.jsonl
    // http: forward.client.http.base_url is sink.url (required); dead letters in <data_dir>/dlq.
    net::HttpForwardConfig forward;
  } sink;

  struct Http {
    bool enabled = true;
    std::string listen = "127.0.0.1";
    std::size_t port = 8025;
    std::size_t max_body_bytes = 32u << 20;
    std::size_t max_connections = 4096;
    std::string bearer_token;        // control API; empty: no authentication
    std::string graph_client_state;  // Graph subscriptions' clientState secret
    std::string tls_cert;            // both set: HTTPS
    std::string tls_key;
  } http;

  struct Log {
    std::string format = "kv";  // kv | json
    std::string level = "info"; // debug | info | warn | error
  } log;

  // [imap] and [[imap.mailbox]]: mailboxes the daemon pulls from (none by default).
  // source.checkpoint_path is <data_dir>/imap.checkpoint; max_message_bytes is set by the daemon.
  net::ImapSourceConfig imap;

  // [sync]: per-mailbox sync jobs (net::SyncJobManager), journal <data_dir>/sync_jobs.journal.
  struct Sync {
    std::chrono::seconds incremental_interval{1800};
    std::size_t history_per_user = 100;
  } sync;

  // [graph] and [[graph.mailbox]]: Microsoft Graph mailboxes (none by default).
  // checkpoint_path is <data_dir>/graph.checkpoint; max_message_bytes is set by the daemon.
  net::GraphSourceConfig graph;
  // [attachments] and [attachments.s3]: the attachment store (off by default).
  AttachmentStoreSettings attachments;

  std::chrono::milliseconds drain_deadline{30000};
};

// Loads `path`, or the embedded default when `path` is empty.
base::Result<DaemonConfig> LoadConfig(const std::string& path);
// Parses TOML text as if read from `file` (for tests and the embedded default).
base::Result<DaemonConfig> ParseConfig(std::string_view text, const std::string& file);
const char* EmbeddedDefaultConfig();
// [dedup] threads = "auto": 1 up to 7 CPUs, then one per 4 CPUs, at most min(shards, 8).
std::size_t AutoDedupThreads(std::size_t cpus, std::size_t shards);

}  // namespace mailrail::tools
