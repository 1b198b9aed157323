#include "tools/config.h"

#include <toml++/toml.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>

#include <fmt/core.h>

namespace mailrail::tools {
namespace {

const char kEmbeddedDefault[] = R"(# mailrail embedded default: no servers needed.
data_dir = "mailrail-data"

[topology]
placement = "auto"

[limits]
in_flight_mib = 256

[http]
listen = "127.0.0.1"
port = 8025

[stats]
# socket defaults to <data_dir>/mailrail.sock

[sink]
kind = "jsonl"
# path defaults to <data_dir>/records.jsonl

[wal]
sync = "data"

[dedup]
capacity = 8000000
max_age_hours = 168

[filter]
rules = "builtin:default"
)";

// Reads one TOML table, remembering which keys were consumed so that the rest can be reported as
// unknown. Errors carry file, line and the dotted key.
class TableReader {
 public:
  TableReader(const toml::table& table, const std::string& file, std::string prefix, std::vector<std::string>& errors)
      : table_(table), file_(file), prefix_(std::move(prefix)), errors_(errors) {}

  template <typename T>
  void Get(std::string_view key, T& out) {
    known_.insert(std::string(key));
    const toml::node* node = table_.get(key);
    if (node == nullptr) return;
    if constexpr (std::is_same_v<T, std::string>) {
      if (auto v = node->value<std::string>()) {
        out = *v;
        return;
      }
      Fail(*node, key, "must be a string");
    } else if constexpr (std::is_same_v<T, bool>) {
      if (auto v = node->value<bool>()) {
        out = *v;
        return;
      }
      Fail(*node, key, "must be true or false");
    } else if constexpr (std::is_integral_v<T>) {
      if (auto v = node->value<std::int64_t>(); v && *v >= 0) {
        out = static_cast<T>(*v);
        return;
      }
      Fail(*node, key, "must be a non-negative integer");
    }
  }

  // A string that must be one of `choices`.
  void GetChoice(std::string_view key, std::string& out, std::initializer_list<std::string_view> choices) {
    const std::string before = out;
    Get(key, out);
    for (auto c : choices) {
      if (out == c) return;
    }
    std::string list;
    for (auto c : choices) list += (list.empty() ? "" : ", ") + std::string(c);
    Fail(*table_.get(key), key, "must be one of " + list + " (got \"" + out + "\")");
    out = before;
  }

  void GetRange(std::string_view key, std::size_t& out, std::size_t min, std::size_t max) {
    Get(key, out);
    if (const toml::node* node = table_.get(key); node != nullptr && (out < min || out > max)) {
      Fail(*node, key, fmt::format("must be between {} and {}", min, max));
    }
  }

  void GetMs(std::string_view key, std::chrono::milliseconds& out, std::size_t min, std::size_t max) {
    std::size_t ms = static_cast<std::size_t>(out.count());
    GetRange(key, ms, min, max);
    out = std::chrono::milliseconds(ms);
  }

  void MarkKnown(std::string_view key) { known_.insert(std::string(key)); }

  // A secret given inline (`key`) or in a file (`file_key`, relative to the config file; trailing
  // line breaks removed): exactly one of the two, or neither when not `required`. The secret itself
  // never appears in an error.
  // A path named in the config file is relative to that file.
  std::filesystem::path ResolvePath(const std::string& name) const {
    std::filesystem::path path(name);
    if (path.is_relative() && file_.front() != '<') path = std::filesystem::path(file_).parent_path() / path;
    return path;
  }

  void GetSecret(std::string_view key, std::string_view file_key, std::string& out, bool required = true) {
    std::string path_text;
    Get(key, out);
    Get(file_key, path_text);
    if (out.empty() && path_text.empty() && !required) return;
    if (out.empty() == path_text.empty()) {
      Fail(table_, key, fmt::format("give exactly one of {} and {}", key, file_key));
      return;
    }
    if (path_text.empty()) return;
    const std::filesystem::path path = ResolvePath(path_text);
    std::ifstream in(path);
    std::stringstream text;
    text << in.rdbuf();
    out = text.str();
    while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
    if (!in || out.empty()) Fail(*table_.get(file_key), file_key, "cannot read a secret from " + path.string());
  }

  const toml::table* Subtable(std::string_view key) {
    known_.insert(std::string(key));
    const toml::node* node = table_.get(key);
    if (node == nullptr) return nullptr;
    if (!node->is_table()) {
      Fail(*node, key, "must be a table");
      return nullptr;
    }
    return node->as_table();
  }

  void Fail(const toml::node& node, std::string_view key, const std::string& message) {
    errors_.push_back(fmt::format("{}:{}: {}{}: {}", file_, node.source().begin.line, prefix_, key, message));
  }

  // Reports every key that no Get/Subtable asked for.
  void RejectUnknown() {
    for (const auto& [key, node] : table_) {
      if (!known_.contains(std::string(key.str()))) {
        errors_.push_back(fmt::format("{}:{}: {}{}: unknown key", file_, node.source().begin.line, prefix_, key.str()));
      }
    }
  }

  const std::string& file() const { return file_; }
  std::vector<std::string>& errors() { return errors_; }

 private:
  const toml::table& table_;
  const std::string& file_;
  std::string prefix_;
  std::vector<std::string>& errors_;
  std::set<std::string> known_;
};

void ReadTopology(TableReader& top, DaemonConfig& config) {
  const toml::table* table = top.Subtable("topology");
  if (table == nullptr) return;
  TableReader r(*table, top.file(), "topology.", top.errors());
  std::string placement = "auto";
  r.GetChoice("placement", placement, {"auto", "one-thread", "thread-per-stage", "explicit"});
  using P = engine::TopologyConfig::Placement;
  config.topology.placement = placement == "one-thread"         ? P::kOneThread
                              : placement == "thread-per-stage" ? P::kThreadPerStage
                              : placement == "explicit"         ? P::kExplicit
                                                                : P::kAuto;
  if (const toml::node* threads = table->get("threads")) {
    const toml::array* outer = threads->as_array();
    bool ok = outer != nullptr;
    if (ok) {
      for (const toml::node& inner : *outer) {
        const toml::array* names = inner.as_array();
        if (names == nullptr) {
          ok = false;
          break;
        }
        config.topology.threads.emplace_back();
        for (const toml::node& name : *names) {
          auto s = name.value<std::string>();
          if (!s) {
            ok = false;
            break;
          }
          config.topology.threads.back().push_back(*s);
        }
      }
    }
    if (!ok) r.Fail(*threads, "threads", "must be an array of arrays of stage names");
  }
  r.MarkKnown("threads");
  if (config.topology.placement == P::kExplicit && config.topology.threads.empty()) {
    r.Fail(*table->get("placement"), "placement", "\"explicit\" needs topology.threads");
  }
  if (const toml::node* cpus = table->get("cpus")) {
    const toml::array* list = cpus->as_array();
    bool ok = list != nullptr;
    if (ok) {
      for (const toml::node& cpu : *list) {
        auto v = cpu.value<std::int64_t>();
        if (!v || *v < 0) {
          ok = false;
          break;
        }
        config.topology.cpus.push_back(static_cast<int>(*v));
      }
    }
    if (!ok) r.Fail(*cpus, "cpus", "must be an array of CPU numbers");
  }
  r.MarkKnown("cpus");
  std::size_t spin = config.topology.wait.spin_rounds;
  std::size_t park_ms = static_cast<std::size_t>(config.topology.wait.max_park.count());
  r.GetRange("spin_rounds", spin, 0, 10'000'000);
  r.GetRange("max_park_ms", park_ms, 1, 10'000);
  config.topology.wait.spin_rounds = static_cast<std::uint32_t>(spin);
  config.topology.wait.max_park = std::chrono::milliseconds(park_ms);
  r.RejectUnknown();
}

// A non-empty array of folder names without tabs or line breaks (they go into checkpoint lines).
void ReadFolders(TableReader& r, const toml::table& t, std::vector<std::string>& folders) {
  r.MarkKnown("folders");
  const toml::node* node = t.get("folders");
  if (node == nullptr) return;
  folders.clear();
  const toml::array* names = node->as_array();
  bool ok = names != nullptr && !names->empty();
  if (ok) {
    for (const toml::node& name : *names) {
      auto v = name.value<std::string>();
      if (!v || v->empty() || v->find_first_of("\t\r\n") != std::string::npos) {
        ok = false;
        break;
      }
      folders.push_back(*v);
    }
  }
  if (!ok) r.Fail(*node, "folders", "must be a non-empty array of folder names (no tabs or line breaks)");
}

// The [[<name>.mailbox]] tables: calls read(reader, table) for each; an entry that is not an
// array of tables is an error.
template <typename ReadOne>
void ReadMailboxList(TableReader& section, const toml::table& table, std::string_view name, ReadOne& read) {
  section.MarkKnown("mailbox");
  const toml::node* list = table.get("mailbox");
  if (list == nullptr) return;
  if (!list->is_array_of_tables()) {
    section.Fail(*list, "mailbox", fmt::format("must be an array of tables ([[{}.mailbox]])", name));
    return;
  }
  std::size_t index = 0;
  for (const toml::node& node : *list->as_array()) {
    const toml::table& t = *node.as_table();
    TableReader m(t, section.file(), fmt::format("{}.mailbox[{}].", name, index++), section.errors());
    read(m, t);
    m.RejectUnknown();
  }
}

// The [[<name>.mailbox]] tables of section [<name>] and, when it names a mailboxes_file, those of
// that file's [<name>] section (credentials may live in a separate, root-only file; paths in it
// are relative to it). Only [[<name>.mailbox]] tables are allowed in that file.
template <typename ReadOne>
void ReadMailboxTables(TableReader& section, const toml::table& table, std::string_view name, ReadOne read) {
  ReadMailboxList(section, table, name, read);
  std::string mailboxes_file;
  section.Get("mailboxes_file", mailboxes_file);
  if (mailboxes_file.empty()) return;
  const std::string path = section.ResolvePath(mailboxes_file).string();
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  if (!in) {
    section.Fail(*table.get("mailboxes_file"), "mailboxes_file", "cannot read " + path);
    return;
  }
  try {
    const toml::table root = toml::parse(text.str(), path);
    TableReader file_top(root, path, "", section.errors());
    if (const toml::table* inner = file_top.Subtable(name)) {
      TableReader file_section(*inner, path, std::string(name) + ".", section.errors());
      ReadMailboxList(file_section, *inner, name, read);
      file_section.RejectUnknown();
    }
    file_top.RejectUnknown();
  } catch (const toml::parse_error& e) {
    section.errors().push_back(fmt::format("{}:{}: {}", path, e.source().begin.line, e.description()));
  }
}

// A mailbox name goes into "<name>/<folder>" ids (source ids, checkpoint lines): no '/', tabs or
// line breaks, and each (name, folder) once.
void CheckMailboxName(TableReader& m, const toml::table& t, const std::string& name,
                      const std::vector<std::string>& folders, std::set<std::string>& ids) {
  if (name.find_first_of("\t\r\n/") != std::string::npos) m.Fail(t, "name", "must not contain '/', tabs or line breaks");
  for (const std::string& folder : folders) {
    if (!ids.insert(name + "/" + folder).second) {
      m.Fail(t, "name", fmt::format("mailbox '{}' folder '{}' is configured twice", name, folder));
    }
  }
}

void ReadAttachments(TableReader& top, AttachmentStoreSettings& out) {
  const toml::table* table = top.Subtable("attachments");
  if (table == nullptr) return;
  TableReader r(*table, top.file(), "attachments.", top.errors());
  r.GetChoice("store", out.store, {"none", "disk", "s3"});
  r.GetRange("max_bytes", out.stage.max_bytes, 1, std::size_t{1} << 30);
  std::size_t budget_mib = out.budget_bytes >> 20;
  r.GetRange("budget_mib", budget_mib, 0, std::size_t{1} << 30);
  out.budget_bytes = std::uint64_t{budget_mib} << 20;
  r.GetRange("max_in_flight", out.max_in_flight, 1, 1024);
  std::size_t in_flight_mib = out.stage.in_flight_bytes >> 20;
  r.GetRange("in_flight_mib", in_flight_mib, 1, 64 * 1024);
  out.stage.in_flight_bytes = std::uint64_t{in_flight_mib} << 20;
  const toml::table* s3 = r.Subtable("s3");
  r.RejectUnknown();
  if (out.store == "s3" && budget_mib > 0) {
    r.Fail(*table->get("budget_mib"), "budget_mib", "applies to the disk store only (the S3 service meters storage)");
  }
  if (s3 == nullptr) {
    if (out.store == "s3") r.Fail(*table, "s3", "store = \"s3\" needs an [attachments.s3] table");
    return;
  }
  TableReader t(*s3, top.file(), "attachments.s3.", top.errors());
  net::S3StoreConfig& c = out.s3;
  t.Get("endpoint", c.endpoint);
  t.Get("region", c.region);
  t.Get("bucket", c.bucket);
  t.Get("access_key_id", c.credentials.access_key_id);
  t.GetSecret("secret_access_key", "secret_file", c.credentials.secret_access_key);
  t.Get("prefix", c.prefix);
  std::size_t threshold_mib = c.multipart_threshold >> 20;
  t.GetRange("multipart_threshold_mib", threshold_mib, 5, 5 * 1024);
  c.multipart_threshold = std::uint64_t{threshold_mib} << 20;
  std::size_t part_mib = c.part_size >> 20;
  t.GetRange("part_size_mib", part_mib, 5, 5 * 1024);
  c.part_size = std::uint64_t{part_mib} << 20;
  t.GetRange("max_attempts", c.max_attempts, 1, 100);
  t.Get("verify_peer", c.verify_peer);
  t.Get("ca_file", c.ca_file);
  if (c.endpoint.rfind("http://", 0) != 0 && c.endpoint.rfind("https://", 0) != 0) {
    const toml::node* endpoint = s3->get("endpoint");
    t.Fail(endpoint != nullptr ? *endpoint : *s3, "endpoint", "must be an http:// or https:// URL");
  }
  if (c.bucket.empty()) t.Fail(*s3, "bucket", "is required");
  if (c.region.empty()) t.Fail(*s3, "region", "must not be empty");
  if (c.credentials.access_key_id.empty()) t.Fail(*s3, "access_key_id", "is required");
  t.RejectUnknown();
}

void ReadImap(TableReader& top, DaemonConfig& config) {
  const toml::table* table = top.Subtable("imap");
  if (table == nullptr) return;
  TableReader r(*table, top.file(), "imap.", top.errors());
  net::ImapSourceConfig& imap = config.imap;
  r.GetRange("fetch_batch", imap.fetch_batch, 1, 10'000);
  r.GetRange("pipeline_depth", imap.pipeline_depth, 1, 64);
  r.GetRange("max_connections_per_server", imap.max_connections_per_server, 1, 10'000);
  r.GetMs("poll_interval_ms", imap.poll_interval, 10, 24 * 3'600'000);
  r.GetMs("idle_restart_ms", imap.idle_restart, 1000, 29 * 60'000);
  r.GetMs("response_timeout_ms", imap.response_timeout, 100, 3'600'000);
  r.GetMs("backoff_base_ms", imap.backoff_base, 1, 600'000);
  r.GetMs("backoff_max_ms", imap.backoff_max, 1, 3'600'000);
  r.GetMs("checkpoint_interval_ms", imap.checkpoint_interval, 1, 60'000);
  std::set<std::string> ids;
  ReadMailboxTables(r, *table, "imap", [&](TableReader& m, const toml::table& t) {
    net::ImapMailboxConfig mailbox;
    m.Get("name", mailbox.name);
    m.Get("user_id", mailbox.user_id);
    std::string backfill = "at_start";
    m.GetChoice("backfill", backfill, {"at_start", "on_request"});
    mailbox.backfill_at_start = backfill == "at_start";
    m.Get("host", mailbox.host);
    std::string tls = "implicit";
    m.GetChoice("tls", tls, {"none", "implicit", "starttls"});
    mailbox.tls = tls == "none" ? net::ImapTls::kNone : tls == "starttls" ? net::ImapTls::kStartTls : net::ImapTls::kImplicit;
    std::size_t port = mailbox.tls == net::ImapTls::kImplicit ? 993 : 143;
    m.GetRange("port", port, 1, 65535);
    mailbox.port = static_cast<std::uint16_t>(port);
    m.Get("verify_peer", mailbox.verify_peer);
    m.Get("ca_file", mailbox.ca_file);
    m.Get("user", mailbox.user);
    m.GetChoice("auth", mailbox.auth, {"login", "plain", "xoauth2"});
    m.GetSecret("password", "password_file", mailbox.password, /*required=*/false);
    m.Get("token", mailbox.token);
    m.Get("token_file", mailbox.token_file);
    std::size_t months = mailbox.months;
    m.GetRange("months", months, 0, 1200);
    mailbox.months = static_cast<unsigned>(months);
    m.Get("idle", mailbox.idle);
    std::string on_durable = "none";
    m.GetChoice("on_durable", on_durable, {"none", "seen", "move"});
    using OnDurable = net::ImapMailboxConfig::OnDurable;
    mailbox.on_durable = on_durable == "seen" ? OnDurable::kSeen : on_durable == "move" ? OnDurable::kMove : OnDurable::kNone;
    m.Get("move_to", mailbox.move_to);
    if (mailbox.on_durable == OnDurable::kMove &&
        (mailbox.move_to.empty() || mailbox.move_to.find_first_of(std::string_view("\r\n\0", 3)) != std::string::npos)) {
      m.Fail(t.get("on_durable") != nullptr ? *t.get("on_durable") : t, "move_to",
             "on_durable = \"move\" needs move_to, a folder name without line breaks");
    }
    ReadFolders(m, t, mailbox.folders);
    if (mailbox.host.empty()) m.Fail(t, "host", "is required");
    if (mailbox.user.empty()) m.Fail(t, "user", "is required");
    if (mailbox.auth == "xoauth2") {
      if (!mailbox.password.empty()) {
        m.Fail(t, "password", "auth = \"xoauth2\" takes token or token_file, not a password");
      }
      if (mailbox.token.empty() == mailbox.token_file.empty()) {
        m.Fail(t, "token", "auth = \"xoauth2\" needs exactly one of token and token_file");
      } else if (!mailbox.token_file.empty()) {
        mailbox.token_file = m.ResolvePath(mailbox.token_file).string();  // read again before every connection
        std::ifstream in(mailbox.token_file);
        if (!in || in.peek() == std::ifstream::traits_type::eof()) {
          m.Fail(*t.get("token_file"), "token_file", "cannot read a token from " + mailbox.token_file);
        }
      }
      if (mailbox.token.find_first_of(std::string_view("\r\n\x01\0", 4)) != std::string::npos) {
        m.Fail(t, "token", "must not contain line breaks, ^A or NUL");
      }
    } else if (!mailbox.token.empty() || !mailbox.token_file.empty()) {
      m.Fail(t, "token", "token and token_file go with auth = \"xoauth2\"");
    } else if (mailbox.password.empty()) {
      m.Fail(t, "password", "give exactly one of password and password_file");
    }
    // LOGIN sends both as quoted strings, which cannot carry line breaks (the secret is not echoed).
    if (mailbox.user.find_first_of(std::string_view("\r\n\0", 3)) != std::string::npos) {
      m.Fail(t, "user", "must not contain line breaks or NUL");
    }
    if (mailbox.password.find_first_of(std::string_view("\r\n\0", 3)) != std::string::npos) {
      m.Fail(t, "password", "must not contain line breaks or NUL");
    }
    if (mailbox.name.empty()) mailbox.name = mailbox.user + "@" + mailbox.host;
    CheckMailboxName(m, t, mailbox.name, mailbox.folders, ids);
    if (mailbox.user_id.empty()) mailbox.user_id = mailbox.name;
    if (mailbox.user_id.find_first_of(std::string_view("\t\r\n/\0", 5)) != std::string::npos) {
      m.Fail(t.get("user_id") != nullptr ? *t.get("user_id") : t, "user_id", "must not contain '/', tabs, line breaks or NUL");
    }
    imap.mailboxes.push_back(std::move(mailbox));
  });
  r.RejectUnknown();
}

void ReadGraph(TableReader& top, DaemonConfig& config) {
  const toml::table* table = top.Subtable("graph");
  if (table == nullptr) return;
  TableReader r(*table, top.file(), "graph.", top.errors());
  net::GraphSourceConfig& graph = config.graph;
  r.Get("base_url", graph.base_url);
  while (!graph.base_url.empty() && graph.base_url.back() == '/') graph.base_url.pop_back();
  std::string tenant;
  r.Get("tenant", tenant);
  r.Get("token_url", graph.token_url);
  r.Get("client_id", graph.client_id);
  r.Get("scope", graph.scope);
  r.Get("verify_peer", graph.verify_peer);
  r.Get("ca_file", graph.ca_file);
  r.GetRange("page_size", graph.page_size, 1, 1000);
  r.Get("raw_mime", graph.raw_mime);
  r.Get("fetch_attachments", graph.fetch_attachments);
  r.GetRange("max_concurrent_requests", graph.max_concurrent_requests, 1, 64);
  r.GetRange("rate_requests", graph.rate_requests, 1, 10'000'000);
  r.GetRange("max_pages_ahead", graph.max_pages_ahead, 1, 64);
  r.GetMs("rate_window_ms", graph.rate_window, 1, 24 * 3'600'000);
  r.GetMs("poll_interval_ms", graph.poll_interval, 10, 24 * 3'600'000);
  r.GetMs("request_timeout_ms", graph.request_timeout, 100, 3'600'000);
  r.GetMs("backoff_base_ms", graph.backoff_base, 1, 600'000);
  r.GetMs("backoff_max_ms", graph.backoff_max, 1, 3'600'000);
  r.GetMs("checkpoint_interval_ms", graph.checkpoint_interval, 1, 60'000);
  std::set<std::string> ids;
  ReadMailboxTables(r, *table, "graph", [&](TableReader& m, const toml::table& t) {
    net::GraphMailboxConfig mailbox;
    m.Get("user_id", mailbox.user_id);
    m.Get("name", mailbox.name);
    std::size_t months = mailbox.months;
    m.GetRange("months", months, 0, 1200);
    mailbox.months = static_cast<unsigned>(months);
    ReadFolders(m, t, mailbox.folders);
    if (mailbox.user_id.empty()) m.Fail(t, "user_id", "is required");
    // A sync job (/api/v1/email-sync/<user_id>) drives one source: the user is found in one of them.
    for (const net::ImapMailboxConfig& imap : config.imap.mailboxes) {
      if (!mailbox.user_id.empty() && imap.user_id == mailbox.user_id) {
        m.Fail(*t.get("user_id"), "user_id",
               fmt::format("'{}' is also the user_id of IMAP mailbox '{}'", mailbox.user_id, imap.name));
        break;
      }
    }
    if (mailbox.name.empty()) mailbox.name = mailbox.user_id;
    CheckMailboxName(m, t, mailbox.name, mailbox.folders, ids);
    graph.mailboxes.push_back(std::move(mailbox));
  });
  if (!graph.mailboxes.empty()) {
    if (graph.token_url.empty() && tenant.empty()) {
      r.Fail(*table, "tenant", "is required (or graph.token_url) when [[graph.mailbox]] is configured");
    } else if (graph.token_url.empty()) {
      graph.token_url = "https://login.microsoftonline.com/" + tenant + "/oauth2/v2.0/token";
    }
    if (graph.client_id.empty()) r.Fail(*table, "client_id", "is required when [[graph.mailbox]] is configured");
  }
  r.GetSecret("client_secret", "client_secret_file", graph.client_secret, /*required=*/!graph.mailboxes.empty());
  if (graph.base_url.rfind("http://", 0) != 0 && graph.base_url.rfind("https://", 0) != 0) {
    r.Fail(*table, "base_url", "must be an http:// or https:// URL");
  }
  r.RejectUnknown();
}

}  // namespace

std::size_t AutoDedupThreads(std::size_t cpus, std::size_t shards) {
  // One dedup thread keeps up with ~25 M keys/s (bench_dedup), far above what parse delivers per
  // core; a second one only pays where cores are left over after the other stages.
  return std::clamp<std::size_t>(cpus / 4, 1, std::min<std::size_t>(shards, 8));
}

const char* EmbeddedDefaultConfig() { return kEmbeddedDefault; }

base::Result<DaemonConfig> ParseConfig(std::string_view text, const std::string& file) {
  toml::table root;
  try {
    root = toml::parse(text, file);
  } catch (const toml::parse_error& e) {
    return base::MakeError("config.syntax", fmt::format("{}:{}: {}", file, e.source().begin.line, e.description()));
  }
  DaemonConfig config;
  config.file = file;
  std::vector<std::string> errors;
  TableReader top(root, file, "", errors);
  top.Get("data_dir", config.data_dir);
  ReadTopology(top, config);

  if (const toml::table* t = top.Subtable("limits")) {
    TableReader r(*t, file, "limits.", errors);
    std::size_t mib = config.limits.in_flight_bytes >> 20;
    r.GetRange("in_flight_mib", mib, 1, 1 << 20);
    config.limits.in_flight_bytes = mib << 20;
    r.GetRange("in_flight_messages", config.limits.in_flight_messages, 16, 1u << 24);
    std::size_t max_mib = config.limits.max_message_bytes >> 20;
    r.GetRange("max_message_mib", max_mib, 1, 4096);
    config.limits.max_message_bytes = max_mib << 20;
    r.GetRange("ring_capacity", config.limits.ring_capacity, 16, 1u << 22);
    if ((config.limits.ring_capacity & (config.limits.ring_capacity - 1)) != 0) {
      r.Fail(*t->get("ring_capacity"), "ring_capacity", "must be a power of two");
    }
    r.RejectUnknown();
  }
  if (const toml::table* t = top.Subtable("stats")) {
    TableReader r(*t, file, "stats.", errors);
    r.Get("socket", config.stats.socket);
    std::string mode;
    r.Get("mode", mode);
    if (!mode.empty()) {
      char* end = nullptr;
      const unsigned long value = std::strtoul(mode.c_str(), &end, 8);
      if (*end != '\0' || value > 0777) {
        r.Fail(*t->get("mode"), "mode", "must be an octal file mode such as \"0660\"");
      } else {
        config.stats.mode = static_cast<mode_t>(value);
      }
    }
    r.RejectUnknown();
  }
  if (const toml::table* t = top.Subtable("sink")) {
    TableReader r(*t, file, "sink.", errors);
    DaemonConfig::Sink& sink = config.sink;
    r.GetChoice("kind", sink.kind, {"jsonl", "http"});
    r.Get("path", sink.path);
    net::ForwardConfig& forward = sink.forward.client;
    r.Get("url", forward.http.base_url);
    r.Get("batch_path", forward.path);
    r.GetRange("connections", forward.http.max_connections, 1, 256);
    r.Get("verify_peer", forward.http.verify_peer);
    r.Get("ca_file", forward.http.ca_file);
    r.GetRange("batch_max_records", forward.batch_max_records, 1, 1'000'000);
    std::size_t batch_kib = forward.batch_max_bytes >> 10;
    r.GetRange("batch_max_kib", batch_kib, 1, 1 << 20);
    forward.batch_max_bytes = batch_kib << 10;
    r.GetRange("max_in_flight", forward.max_in_flight, 1, 256);
    std::size_t buffered_mib = forward.max_buffered_bytes >> 20;
    r.GetRange("max_buffered_mib", buffered_mib, 1, 1 << 16);
    forward.max_buffered_bytes = buffered_mib << 20;
    r.GetRange("max_attempts", forward.max_attempts, 1, 1000);
    r.GetRange("breaker_threshold", forward.breaker_threshold, 1, 1000);
    r.GetMs("linger_ms", forward.linger, 0, 60'000);
    r.GetMs("request_timeout_ms", forward.http.request_timeout, 1, 600'000);
    r.GetMs("backoff_base_ms", forward.backoff_base, 1, 600'000);
    r.GetMs("backoff_max_ms", forward.backoff_max, 1, 3'600'000);
    r.GetMs("retry_after_max_ms", forward.retry_after_max, 1, 24 * 3'600'000);
    r.GetMs("breaker_open_ms", forward.breaker_open, 1, 3'600'000);
    r.GetMs("checkpoint_interval_ms", sink.forward.checkpoint_interval, 1, 60'000);
    if (sink.kind == "http" && forward.http.base_url.empty()) {
      r.Fail(*t->get("kind"), "kind", "\"http\" needs sink.url (the downstream, e.g. \"http://127.0.0.1:9000\")");
    }
    r.RejectUnknown();
  }
  if (const toml::table* t = top.Subtable("wal")) {
    TableReader r(*t, file, "wal.", errors);
    storage::WalConfig& wal = config.wal;
    std::string sync = "data";
    r.GetChoice("sync", sync, {"data", "none"});
    wal.sync = sync == "none" ? storage::WalConfig::Sync::kNone : storage::WalConfig::Sync::kData;
    std::size_t segment_mib = wal.segment_bytes >> 20;
    r.GetRange("segment_mib", segment_mib, 1, 1 << 16);
    wal.segment_bytes = std::uint64_t{segment_mib} << 20;
    std::size_t group_kib = wal.max_group_bytes >> 10;
    r.GetRange("max_group_kib", group_kib, 4, 1 << 20);
    wal.max_group_bytes = group_kib << 10;
    std::size_t linger_us = static_cast<std::size_t>(wal.max_linger.count());
    r.GetRange("max_linger_us", linger_us, 0, 1'000'000);
    wal.max_linger = std::chrono::microseconds(linger_us);
    std::size_t budget_mib = wal.disk_budget_bytes >> 20;
    r.GetRange("disk_budget_mib", budget_mib, 0, std::size_t{1} << 30);
    wal.disk_budget_bytes = std::uint64_t{budget_mib} << 20;
    std::size_t keep_s = static_cast<std::size_t>(wal.keep_forwarded.count());
    r.GetRange("keep_forwarded_s", keep_s, 0, 365u * 24 * 3600);
    wal.keep_forwarded = std::chrono::seconds(keep_s);
    r.RejectUnknown();
  }
  if (const toml::table* t = top.Subtable("dedup")) {
    TableReader r(*t, file, "dedup.", errors);
    stages::DedupStageConfig& dedup = config.dedup;
    r.GetRange("shards", dedup.set.shards, 1, 4096);
    if ((dedup.set.shards & (dedup.set.shards - 1)) != 0) r.Fail(*t->get("shards"), "shards", "must be a power of two");
    std::size_t capacity = dedup.set.capacity;
    r.GetRange("capacity", capacity, 1, std::size_t{1} << 36);
    dedup.set.capacity = capacity;
    std::size_t hours = static_cast<std::size_t>(dedup.set.max_age_ms / 3'600'000);
    r.GetRange("max_age_hours", hours, 0, 24 * 3650);
    dedup.set.max_age_ms = static_cast<std::int64_t>(hours) * 3'600'000;
    std::size_t snapshot_s = static_cast<std::size_t>(dedup.snapshot_interval.count() / 1000);
    r.GetRange("snapshot_interval_s", snapshot_s, 0, 24 * 3600);
    dedup.snapshot_interval = std::chrono::milliseconds(snapshot_s * 1000);
    r.Get("duplicates_log", config.dedup_duplicates_log);
    if (const toml::node* threads = t->get("threads")) {
      const auto count = threads->value<std::int64_t>();
      const auto word = threads->value<std::string>();
      if (count && *count >= 1 && *count <= 64) {
        config.dedup_threads = static_cast<std::size_t>(*count);
      } else if (word && *word == "auto") {
        config.dedup_threads = AutoDedupThreads(engine::AllowedCpus().size(), dedup.set.shards);
      } else {
        r.Fail(*threads, "threads", "must be \"auto\" or a number between 1 and 64");
      }
      if (config.dedup_threads > dedup.set.shards) {
        r.Fail(*threads, "threads", fmt::format("must not exceed dedup.shards ({}): each thread holds whole shards",
                                                dedup.set.shards));
      }
    }
    r.MarkKnown("threads");
    r.RejectUnknown();
  }
  if (const toml::table* t = top.Subtable("filter")) {
    TableReader r(*t, file, "filter.", errors);
    r.Get("rules", config.filter.rules);
    r.RejectUnknown();
  }
  if (const toml::table* t = top.Subtable("http")) {
    TableReader r(*t, file, "http.", errors);
    r.Get("enabled", config.http.enabled);
    r.Get("listen", config.http.listen);
    r.GetRange("port", config.http.port, 0, 65535);
    std::size_t body_mib = config.http.max_body_bytes >> 20;
    r.GetRange("max_body_mib", body_mib, 1, 1024);
    config.http.max_body_bytes = body_mib << 20;
    r.GetRange("max_connections", config.http.max_connections, 1, 1u << 20);
    r.Get("bearer_token", config.http.bearer_token);
    r.Get("graph_client_state", config.http.graph_client_state);
    r.Get("tls_cert", config.http.tls_cert);
    r.Get("tls_key", config.http.tls_key);
    if (config.http.tls_cert.empty() != config.http.tls_key.empty()) {
      r.Fail(*t, "tls_cert", "tls_cert and tls_key go together");
    }
    r.RejectUnknown();
  }
  if (const toml::table* t = top.Subtable("log")) {
    TableReader r(*t, file, "log.", errors);
    r.GetChoice("format", config.log.format, {"kv", "json"});
    r.GetChoice("level", config.log.level, {"debug", "info", "warn", "error"});
    r.RejectUnknown();
  }
  ReadImap(top, config);
  ReadGraph(top, config);
  ReadAttachments(top, config.attachments);
  if (const toml::table* t = top.Subtable("sync")) {
    TableReader r(*t, file, "sync.", errors);
    std::size_t interval_s = static_cast<std::size_t>(config.sync.incremental_interval.count());
    r.GetRange("incremental_interval_s", interval_s, 1, 7 * 24 * 3600);
    config.sync.incremental_interval = std::chrono::seconds(interval_s);
    r.GetRange("history_per_user", config.sync.history_per_user, 1, 100'000);
    r.RejectUnknown();
  }
  if (const toml::table* t = top.Subtable("shutdown")) {
    TableReader r(*t, file, "shutdown.", errors);
    std::size_t ms = static_cast<std::size_t>(config.drain_deadline.count());
    r.GetRange("drain_deadline_ms", ms, 1, 3'600'000);
    config.drain_deadline = std::chrono::milliseconds(ms);
    r.RejectUnknown();
  }
  top.RejectUnknown();

  if (!errors.empty()) {
    std::string message;
    for (const auto& e : errors) message += (message.empty() ? "" : "\n") + e;
    return base::MakeError("config.invalid", message);
  }
  const std::filesystem::path data(config.data_dir);
  if (config.stats.socket.empty()) config.stats.socket = (data / "mailrail.sock").string();
  if (config.sink.path.empty()) config.sink.path = (data / "records.jsonl").string();
  config.imap.checkpoint_path = (data / "imap.checkpoint").string();
  config.graph.checkpoint_path = (data / "graph.checkpoint").string();
  // A rule file named in a config file is found next to it, wherever the daemon was started.
  if (config.filter.rules.rfind("builtin:", 0) != 0 && std::filesystem::path(config.filter.rules).is_relative() &&
      file.front() != '<') {
    config.filter.rules = (std::filesystem::path(file).parent_path() / config.filter.rules).string();
  }
  return config;
}

base::Result<DaemonConfig> LoadConfig(const std::string& path) {
  if (path.empty()) return ParseConfig(kEmbeddedDefault, "<embedded default>");
  std::ifstream in(path);
  if (!in) return base::MakeError("config.open", "cannot read config file " + path);
  std::stringstream text;
  text << in.rdbuf();
  return ParseConfig(text.str(), path);
}

}  // namespace mailrail::tools
