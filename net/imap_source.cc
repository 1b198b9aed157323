#include "net/imap_source.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <openssl/evp.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <fstream>
#include <set>

#include <fmt/core.h>

#include "engine/base/check.h"
#include "engine/base/counters.h"

namespace mailrail::net {
namespace {

constexpr unsigned kFolderShift = 40;  // ack token = (folder index + 1) << 40 | sequence

enum class Phase { kOff, kConnecting, kLogin, kSelect, kSearch, kFetch, kIdle, kPolling };

std::string AddressText(const sockaddr_storage& address) {
  char text[INET6_ADDRSTRLEN] = "?";
  if (address.ss_family == AF_INET6) {
    ::inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6&>(address).sin6_addr, text, sizeof(text));
  } else if (address.ss_family == AF_INET) {
    ::inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in&>(address).sin_addr, text, sizeof(text));
  }
  return text;
}

std::string Base64(std::string_view bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3), '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(bytes.data()), static_cast<int>(bytes.size()));
  out.resize(static_cast<std::size_t>(n));
  return out;
}

}  // namespace

struct ImapSource::Folder final : ImapConnection::Listener {
  ImapSource* source = nullptr;
  const ImapMailboxConfig* mailbox = nullptr;
  std::shared_ptr<TlsContext> tls;
  Server* server = nullptr;
  std::string folder;
  std::string id;  // "<mailbox>/<folder>"
  std::uint64_t index = 0;

  ImapConnection* conn = nullptr;
  std::size_t address_index = 0;    // into server->addresses, for the connection being opened
  std::size_t addresses_tried = 0;  // failed connects in a row, this round
  bool has_slot = false;
  bool queued = false;  // in server->waiting
  std::uint64_t poll_seq = 0;  // the NOOP timer that is current; older ones do nothing
  bool caught_up_logged = false;  // since connecting
  std::uint64_t caught_up_logged_at = 0;  // session_fetched when last logged
  Phase phase = Phase::kOff;
  std::uint64_t generation = 0;  // bumped on every connection change; stale timers check it
  std::chrono::milliseconds backoff{0};

  // The selected session.
  bool has_idle = false;
  std::uint64_t selected_validity = 0;
  bool exists_changed = false;
  bool idle_entered = false;
  bool idle_done_sent = false;
  Clock::time_point idle_since;
  std::vector<std::uint64_t> search_result;
  bool search_malformed = false;
  std::vector<std::uint64_t> to_fetch;
  std::size_t next_fetch = 0;
  std::size_t fetches_outstanding = 0;
  std::map<std::uint64_t, std::string> arrived;  // FETCH bodies of the commands in flight
  std::uint64_t session_fetched = 0;

  // Progress: the highest UID handed on (ready or pushed) under `validity`.
  std::uint64_t validity = 0;
  std::uint64_t fetched_uid = 0;
  // Bumped by a fresh backfill: messages handed on before it no longer move the checkpoint.
  std::uint64_t epoch = 0;
  struct Ready {
    std::uint64_t validity, uid, epoch;
    std::string raw;
  };
  std::deque<Ready> ready;
  struct InFlight {
    std::uint64_t token, validity, uid, epoch;
    bool settled;  // skipped (too large): nothing to wait for
  };
  std::deque<InFlight> in_flight;
  std::uint64_t next_seq = 1;
  // The checkpoint: highest durable UID under durable_validity.
  std::uint64_t durable_validity = 0;
  std::uint64_t durable_uid = 0;

  // XOAUTH2: the token of this connection (from the config or the token file); secret.
  std::string token;
  bool credentials_sent = false;

  // Acknowledgements to the mailbox (on_durable): durable UIDs under `validity` not yet sent.
  std::vector<std::uint64_t> to_acknowledge;
  bool has_move = false;
  bool has_uidplus = false;

  // Sync-job run (MailboxSyncSource). A requested run begins at the folder's next search.
  bool enabled = true;         // false: backfill on request, not requested yet
  unsigned months = 0;         // search window
  bool run_requested = false;
  bool run_backfill = false;   // the run's first search covers the window from UID 1
  bool run_searching = false;  // the run's first search is in flight
  bool run_started = false;    // ... and has completed
  std::vector<std::uint64_t> run_found;  // sorted UIDs the run's searches found
  std::set<std::uint64_t> run_failed;    // found, never ingested (too large, expunged)
  std::uint64_t run_counted_uid = 0;     // highest found UID counted durable
  std::uint64_t run_durable = 0;
  std::uint64_t run_settled = 0;
  std::deque<std::uint64_t> run_lsns;    // WAL LSNs of durable run messages not yet settled

  bool InRun(std::uint64_t uid) const {
    return (run_searching || run_started) && std::binary_search(run_found.begin(), run_found.end(), uid);
  }

  ImapLogFields Fields() const { return {{"mailbox", mailbox->name}, {"folder", folder}}; }

  void OnReady(const ImapResponse&) override {
    server->preferred = address_index;  // the next connections start with the address that answered
    addresses_tried = 0;
    source->Login(this);
  }

  void OnUntagged(ImapResponse& r) override {
    const std::string name = ResponseName(r.text);
    if (name == "FETCH") {
      if (fetches_outstanding == 0) return;  // unsolicited (flag changes)
      auto fetched = ParseFetch(r);
      if (fetched && fetched->literal) arrived[fetched->uid] = std::move(r.literals[*fetched->literal]);
    } else if (name == "EXISTS") {
      exists_changed = true;
      if (phase == Phase::kIdle && idle_entered && !idle_done_sent) {
        idle_done_sent = true;
        source->stats_.idle_wakeups.Add();
        conn->SendLine("DONE");
      }
    } else if (name == "SEARCH") {
      auto uids = ParseSearch(r.text);
      if (uids) {
        search_result.insert(search_result.end(), uids->begin(), uids->end());
      } else {
        search_malformed = true;
      }
    } else if (name == "CAPABILITY") {
      has_idle = HasCapability(r.text, "IDLE");
      has_move = HasCapability(r.text, "MOVE");
      has_uidplus = HasCapability(r.text, "UIDPLUS");
    } else if (name == "OK") {
      if (auto v = CodeNumber(r.text, "UIDVALIDITY")) selected_validity = *v;
    }
  }

  void OnContinuation(ImapResponse&) override {
    if (phase == Phase::kLogin && mailbox->auth == "xoauth2") {
      // The first continuation asks for the credentials; a second one carries the server's error
      // (base64 JSON) and wants an empty line before the tagged NO.
      if (credentials_sent) {
        conn->SendLine("");
      } else {
        credentials_sent = true;
        conn->SendLine(Base64("user=" + mailbox->user + std::string("\x01") + "auth=Bearer " + token + "\x01\x01"));
      }
    } else if (phase == Phase::kLogin && mailbox->auth == "plain") {
      conn->SendLine(Base64(std::string(1, '\0') + mailbox->user + std::string(1, '\0') + mailbox->password));
    } else if (phase == Phase::kIdle && !idle_entered) {
      idle_entered = true;
      source->log_("imap_idle", Fields());
      if ((exists_changed || !to_acknowledge.empty()) && !idle_done_sent) {  // arrived between search and IDLE
        idle_done_sent = true;
        conn->SendLine("DONE");
      }
    }
  }

  void OnClosed(const base::Error& error) override {
    conn = nullptr;
    source->Disconnect(this, error);
  }
};

ImapSource::ImapSource(EventLoop* loop, stages::MessagePool* pool, engine::Channel<stages::Message*>* channel,
                       ImapSourceConfig config, ImapLog log)
    : loop_(loop),
      config_(std::move(config)),
      log_(std::move(log)),
      outlet_(loop, pool, channel, this, [this] { PushReady(); },
              [this](std::span<const stages::DurableAck> acks) { ApplyAcks(acks); }) {}

ImapSource::~ImapSource() {
  *alive_ = false;
  for (auto& f : folders_) {
    if (f->conn != nullptr) f->conn->Abandon();
  }
}

base::Result<std::unique_ptr<ImapSource>> ImapSource::Create(EventLoop* loop, stages::MessagePool* pool,
                                                             engine::Channel<stages::Message*>* channel,
                                                             ImapSourceConfig config, ImapLog log) {
  MR_CHECK(!config.checkpoint_path.empty()) << "ImapSource needs a checkpoint path";
  std::unique_ptr<ImapSource> s(new ImapSource(loop, pool, channel, std::move(config), std::move(log)));
  s->LoadCheckpointOrError();
  if (!s->checkpoint_error_.empty()) return base::MakeError("imap.checkpoint", s->checkpoint_error_);
  for (const ImapMailboxConfig& m : s->config_.mailboxes) {
    const std::string key = fmt::format("{}:{}", m.host, m.port);
    auto [it, inserted] = s->servers_.try_emplace(key);
    Server& server = it->second;
    if (inserted) {
      addrinfo hints{};
      hints.ai_family = AF_UNSPEC;
      hints.ai_socktype = SOCK_STREAM;
      addrinfo* result = nullptr;
      const std::string port = std::to_string(m.port);
      if (int rc = ::getaddrinfo(m.host.c_str(), port.c_str(), &hints, &result); rc != 0) {
        return base::MakeError("imap.resolve", fmt::format("mailbox {}: {}: {}", m.name, m.host, ::gai_strerror(rc)));
      }
      // Every address, in getaddrinfo's order (RFC 6724: IPv6 before IPv4 where both exist).
      for (const addrinfo* a = result; a != nullptr; a = a->ai_next) {
        if (a->ai_addrlen > sizeof(sockaddr_storage)) continue;
        Server::Address address;
        std::memcpy(&address.storage, a->ai_addr, a->ai_addrlen);
        address.length = a->ai_addrlen;
        address.text = AddressText(address.storage);
        const bool seen = std::any_of(server.addresses.begin(), server.addresses.end(),
                                      [&](const Server::Address& other) { return other.text == address.text; });
        if (!seen) server.addresses.push_back(std::move(address));
      }
      ::freeaddrinfo(result);
      if (server.addresses.empty()) {
        return base::MakeError("imap.resolve", fmt::format("mailbox {}: {}: no usable address", m.name, m.host));
      }
    }
    std::shared_ptr<TlsContext> tls;
    if (m.tls != ImapTls::kNone) {
      auto context = TlsContext::CreateClient(m.verify_peer, m.ca_file);
      if (!context) return base::MakeError("imap.tls", fmt::format("mailbox {}: {}", m.name, context.error().message));
      tls = std::move(context).value();
    }
    for (const std::string& folder : m.folders) {
      auto f = std::make_unique<Folder>();
      f->source = s.get();
      f->mailbox = &m;
      f->tls = tls;
      f->server = &server;
      f->folder = folder;
      f->id = m.name + "/" + folder;
      f->index = s->folders_.size();
      f->months = m.months;
      f->enabled = m.backfill_at_start;
      if (auto it2 = s->loaded_checkpoint_.find(f->id); it2 != s->loaded_checkpoint_.end()) {
        f->validity = f->durable_validity = it2->second.first;
        f->fetched_uid = f->durable_uid = it2->second.second;
        f->enabled = true;  // synchronised before: keep it in sync
      }
      s->folders_.push_back(std::move(f));
    }
  }
  s->checkpoint_file_ = std::make_unique<CheckpointFile>(
      s->config_.checkpoint_path, "imap.checkpoint", &s->stats_.checkpoint_writes,
      [source = s.get()](const base::Error& error) { source->log_("imap_checkpoint_failed", {{"error", error.message}}); });
  s->checkpoint_file_->SetDeferred(loop, s->config_.checkpoint_interval, [source = s.get()] { return source->CheckpointText(); });
  return s;
}

void ImapSource::LoadCheckpointOrError() {
  std::ifstream in(config_.checkpoint_path);
  if (!in) return;  // first run
  std::string line;
  std::size_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.empty() || line[0] == '#') continue;
    const std::size_t t1 = line.find('\t');
    const std::size_t t2 = t1 == std::string::npos ? t1 : line.find('\t', t1 + 1);
    std::uint64_t validity = 0, uid = 0;
    bool ok = t2 != std::string::npos;
    if (ok) {
      auto a = std::from_chars(line.data(), line.data() + t1, validity);
      auto b = std::from_chars(line.data() + t1 + 1, line.data() + t2, uid);
      ok = a.ec == std::errc() && a.ptr == line.data() + t1 && b.ec == std::errc() && b.ptr == line.data() + t2;
    }
    if (!ok) {
      checkpoint_error_ = fmt::format("{}:{}: expected <uidvalidity> TAB <uid> TAB <mailbox>/<folder>",
                                      config_.checkpoint_path, number);
      return;
    }
    loaded_checkpoint_[line.substr(t2 + 1)] = {validity, uid};
  }
}

std::string ImapSource::CheckpointText() {
  for (const auto& f : folders_) {
    if (f->durable_validity != 0) loaded_checkpoint_[f->id] = {f->durable_validity, f->durable_uid};
  }
  std::string text = "# mailrail imap checkpoint: <uidvalidity> TAB <highest durable uid> TAB <mailbox>/<folder>\n";
  for (const auto& [id, position] : loaded_checkpoint_) {
    text += fmt::format("{}\t{}\t{}\n", position.first, position.second, id);
  }
  return text;
}

base::Status ImapSource::WriteCheckpoint() {
  return checkpoint_file_->WriteNow(CheckpointText());
}

void ImapSource::Start() {
  outlet_.Install();  // messages filled during one loop iteration enter the ring with one push
  for (auto& f : folders_) {
    if (f->enabled) RequestSlot(f.get());
  }
  Tick();
}

void ImapSource::Shutdown() {
  shut_down_ = true;
  for (auto& f : folders_) {
    if (f->conn != nullptr) f->conn->Abandon();
    f->conn = nullptr;
    ++f->generation;
    f->phase = Phase::kOff;
    f->has_slot = false;
    f->ready.clear();  // never pushed: a restart fetches them again
    f->arrived.clear();
  }
  for (auto& [key, server] : servers_) {
    server.active = 0;
    server.waiting.clear();
  }
  stats_.connections_open.Set(0);
}

std::size_t ImapSource::in_flight() const {
  std::size_t n = 0;
  for (const auto& f : folders_) n += f->in_flight.size();
  return n;
}

void ImapSource::RequestSlot(Folder* f) {
  if (shut_down_ || f->has_slot || f->queued) return;
  if (f->server->active < config_.max_connections_per_server) {
    TakeSlot(f);
    Connect(f);
  } else {
    f->queued = true;
    f->server->waiting.push_back(f);
  }
}

void ImapSource::TakeSlot(Folder* f) {
  ++f->server->active;
  f->has_slot = true;
  stats_.connections_open.Set(stats_.connections_open.value() + 1);
  if (f->server->active > stats_.connections_peak.value()) stats_.connections_peak.Set(f->server->active);
}

void ImapSource::ReleaseSlot(Folder* f) {
  if (!f->has_slot) return;
  f->has_slot = false;
  Server& server = *f->server;
  --server.active;
  stats_.connections_open.Set(stats_.connections_open.value() - 1);
  while (!shut_down_ && !server.waiting.empty() && server.active < config_.max_connections_per_server) {
    Folder* next = server.waiting.front();
    server.waiting.pop_front();
    next->queued = false;
    TakeSlot(next);
    Connect(next);
  }
}

bool ImapSource::ReadToken(Folder* f) {
  const ImapMailboxConfig& m = *f->mailbox;
  if (m.token_file.empty()) {
    f->token = m.token;
    return true;
  }
  std::ifstream in(m.token_file);
  std::string token((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  while (!token.empty() && (token.back() == '\n' || token.back() == '\r' || token.back() == ' ')) token.pop_back();
  if (!in.good() && !in.eof()) token.clear();
  if (token.empty() || token.find_first_of(std::string_view("\r\n\x01\0", 4)) != std::string::npos) {
    ImapLogFields fields = f->Fields();
    fields.emplace_back("token_file", m.token_file);
    log_("imap_token_unreadable", fields);  // the path only, never the contents
    return false;
  }
  f->token = std::move(token);
  return true;
}

void ImapSource::Connect(Folder* f) {
  if (f->mailbox->auth == "xoauth2") ReadToken(f);  // a rotated file is picked up by every connection
  ++f->generation;
  f->phase = Phase::kConnecting;
  f->has_idle = false;
  f->session_fetched = 0;
  f->caught_up_logged = false;
  stats_.connects.Add();
  ImapConnection::Options options;
  options.tls = f->mailbox->tls;
  options.tls_context = f->tls;
  options.host = f->mailbox->host;
  options.limits.max_literal_bytes = config_.max_message_bytes + (1u << 20);
  if (f->addresses_tried == 0) f->address_index = f->server->preferred;
  const Server::Address& address = f->server->addresses[f->address_index];
  f->conn = ImapConnection::Connect(loop_, address.storage, address.length, options, f);
}

void ImapSource::EndSession(Folder* f) {
  if (f->conn != nullptr) {
    f->conn->Abandon();
    f->conn = nullptr;
  }
  ++f->generation;
  f->phase = Phase::kOff;
  f->arrived.clear();  // bodies of FETCH commands that never completed: fetched again
  f->to_fetch.clear();
  f->next_fetch = 0;
  f->fetches_outstanding = 0;
  ReleaseSlot(f);
}

void ImapSource::Disconnect(Folder* f, const base::Error& error) {
  const std::size_t addresses = f->server->addresses.size();
  if (error.code == "connect" && !shut_down_ && f->addresses_tried + 1 < addresses) {
    if (f->conn != nullptr) {
      f->conn->Abandon();
      f->conn = nullptr;
    }
    // The host has further addresses (e.g. ::1 refused, 127.0.0.1 listening): the next one now.
    ImapLogFields fields = f->Fields();
    fields.emplace_back("address", f->server->addresses[f->address_index].text);
    fields.emplace_back("error", error.message);
    log_("imap_connect_failed", fields);
    ++f->addresses_tried;
    f->address_index = (f->address_index + 1) % addresses;
    stats_.connect_fallbacks.Add();
    Connect(f);  // keeps the slot
    return;
  }
  f->addresses_tried = 0;
  stats_.disconnects.Add();
  EndSession(f);
  if (shut_down_) return;
  f->backoff = f->backoff.count() == 0 ? config_.backoff_base : std::min(config_.backoff_max, f->backoff * 2);
  ImapLogFields fields = f->Fields();
  fields.emplace_back("code", error.code);
  fields.emplace_back("error", error.message);
  fields.emplace_back("retry_ms", std::to_string(f->backoff.count()));
  log_("imap_disconnected", fields);
  ScheduleRetry(f, f->backoff);
}

void ImapSource::ScheduleRetry(Folder* f, std::chrono::milliseconds delay) {
  std::weak_ptr<bool> alive = alive_;
  const std::uint64_t generation = f->generation;
  loop_->RunAfter(delay, [this, alive, f, generation] {
    if (alive.expired() || shut_down_ || f->generation != generation) return;
    RequestSlot(f);
  });
}

bool ImapSource::CheckOk(Folder* f, const ImapResponse& done, std::string_view what) {
  if (StatusOf(done.text) == ImapStatus::kOk) return true;
  Disconnect(f, base::MakeError("imap_refused", fmt::format("{} refused: '{}'", what, done.text.substr(0, 200))));
  return false;
}

void ImapSource::Login(Folder* f) {
  f->phase = Phase::kLogin;
  const ImapMailboxConfig& m = *f->mailbox;
  auto after_login = [this, f](ImapResponse& done) {
    if (!CheckOk(f, done, "login")) return;
    f->conn->Command("CAPABILITY", [this, f](ImapResponse& caps) {
      if (CheckOk(f, caps, "CAPABILITY")) Select(f);
    });
  };
  if (m.auth == "plain") {
    f->conn->Command("AUTHENTICATE PLAIN", after_login);  // credentials go in the continuation
    return;
  }
  if (m.auth == "xoauth2") {
    f->credentials_sent = false;
    f->conn->Command("AUTHENTICATE XOAUTH2", [this, f](ImapResponse& done) {
      if (StatusOf(done.text) == ImapStatus::kOk || f->mailbox->token_file.empty()) {
        if (!CheckOk(f, done, "AUTHENTICATE XOAUTH2")) return;
        f->conn->Command("CAPABILITY", [this, f](ImapResponse& caps) {
          if (CheckOk(f, caps, "CAPABILITY")) Select(f);
        });
        return;
      }
      // Refused: the token may have been rotated since this connection read it.
      const std::string used = f->token;
      const bool rotated = ReadToken(f) && f->token != used;
      CheckOk(f, done, "AUTHENTICATE XOAUTH2");  // closes the connection and schedules the retry
      if (rotated) {
        log_("imap_token_rotated", f->Fields());
        ScheduleRetry(f, std::chrono::milliseconds(0));
      }
    });
    return;
  }
  // The config loader rejected user names and passwords that cannot be quoted.
  f->conn->Command("LOGIN " + Quote(m.user).value() + " " + Quote(m.password).value(), after_login);
}

void ImapSource::Select(Folder* f) {
  f->phase = Phase::kSelect;
  f->selected_validity = 0;
  auto quoted = Quote(f->folder);
  // EXAMINE: read-only, so the mirror changes nothing in the mailbox (not even \Recent); SELECT
  // when durable messages are to be flagged or moved.
  const bool writable = f->mailbox->on_durable != ImapMailboxConfig::OnDurable::kNone;
  const std::string verb = writable ? "SELECT" : "EXAMINE";
  f->conn->Command(verb + " " + quoted.value(), [this, f, verb](ImapResponse& done) {
    if (!CheckOk(f, done, verb)) return;
    if (f->selected_validity == 0) {
      Disconnect(f, base::MakeError("imap_protocol", verb + " without UIDVALIDITY"));
      return;
    }
    f->backoff = std::chrono::milliseconds(0);
    if (f->validity != 0 && f->validity != f->selected_validity) {
      // The folder's UIDs were reassigned: everything is new again (dedup drops what was seen).
      stats_.uidvalidity_resets.Add();
      ImapLogFields fields = f->Fields();
      fields.emplace_back("old", std::to_string(f->validity));
      fields.emplace_back("new", std::to_string(f->selected_validity));
      log_("imap_uidvalidity_changed", fields);
      f->fetched_uid = 0;
      f->to_acknowledge.clear();  // those UIDs name other messages now
    }
    f->validity = f->selected_validity;
    CatchUpAcknowledgements(f);
  });
}

void ImapSource::CatchUpAcknowledgements(Folder* f) {
  const ImapMailboxConfig::OnDurable mode = f->mailbox->on_durable;
  if (mode == ImapMailboxConfig::OnDurable::kNone || f->durable_uid == 0 || f->durable_validity != f->validity) {
    Search(f);
    return;
  }
  f->phase = Phase::kSearch;
  f->search_result.clear();
  f->search_malformed = false;
  std::string criteria = fmt::format("UID SEARCH UID 1:{}", f->durable_uid);
  if (f->months > 0) {
    const std::int64_t since = base::UnixMs() / 1000 - std::int64_t{f->months} * 31 * 24 * 3600;
    criteria += " SINCE " + ImapDate(since);
  }
  criteria += fmt::format(" NOT LARGER {}", config_.max_message_bytes);
  if (mode == ImapMailboxConfig::OnDurable::kSeen) criteria += " UNSEEN";
  f->conn->Command(criteria, [this, f](ImapResponse& done) {
    if (!CheckOk(f, done, "SEARCH")) return;
    if (f->search_malformed) {
      Disconnect(f, base::MakeError("imap_protocol", "malformed SEARCH response"));
      return;
    }
    for (std::uint64_t uid : f->search_result) {
      if (uid <= f->durable_uid) f->to_acknowledge.push_back(uid);  // "1:n" may also match the highest UID
    }
    std::sort(f->to_acknowledge.begin(), f->to_acknowledge.end());
    f->to_acknowledge.erase(std::unique(f->to_acknowledge.begin(), f->to_acknowledge.end()), f->to_acknowledge.end());
    Search(f);
  });
}

void ImapSource::Acknowledge(Folder* f) {
  if (f->to_acknowledge.empty() || f->conn == nullptr) return;
  switch (f->phase) {
    case Phase::kOff:
    case Phase::kConnecting:
    case Phase::kLogin:
    case Phase::kSelect:
      return;  // CatchUpAcknowledgements after SELECT covers them
    case Phase::kIdle:
      if (f->idle_entered && !f->idle_done_sent) {
        f->idle_done_sent = true;
        f->conn->SendLine("DONE");  // the search after IDLE sends them
      }
      return;
    default:
      break;
  }
  std::vector<std::uint64_t> uids;
  uids.swap(f->to_acknowledge);
  std::sort(uids.begin(), uids.end());
  const bool move = f->mailbox->on_durable == ImapMailboxConfig::OnDurable::kMove;
  const std::string target = move ? Quote(f->mailbox->move_to).value() : std::string();
  for (std::size_t i = 0; i < uids.size(); i += config_.fetch_batch) {
    const std::vector<std::uint64_t> batch(uids.begin() + static_cast<std::ptrdiff_t>(i),
                                           uids.begin() + static_cast<std::ptrdiff_t>(std::min(uids.size(), i + config_.fetch_batch)));
    const std::string set = FormatUidSet(batch);
    const std::uint64_t count = batch.size();
    auto counted = [this, f, count](std::string_view what) {
      return [this, f, count, what = std::string(what)](ImapResponse& done) {
        if (CheckOk(f, done, what)) stats_.acknowledged.Add(count);
      };
    };
    auto checked = [this, f](std::string_view what) {
      return [this, f, what = std::string(what)](ImapResponse& done) { CheckOk(f, done, what); };
    };
    if (!move) {
      f->conn->Command("UID STORE " + set + " +FLAGS.SILENT (\\Seen)", counted("STORE"));
    } else if (f->has_move) {
      f->conn->Command("UID MOVE " + set + " " + target, counted("MOVE"));
    } else if (f->has_uidplus) {
      // RFC 6851 without MOVE: copy, mark deleted, expunge exactly these UIDs.
      f->conn->Command("UID COPY " + set + " " + target, checked("COPY"));
      f->conn->Command("UID STORE " + set + " +FLAGS.SILENT (\\Deleted)", checked("STORE"));
      f->conn->Command("UID EXPUNGE " + set, counted("EXPUNGE"));
    } else {
      Disconnect(f, base::MakeError("imap_unsupported", "on_durable = \"move\" needs the MOVE or UIDPLUS capability"));
      return;
    }
  }
}

void ImapSource::Search(Folder* f) {
  f->phase = Phase::kSearch;
  Acknowledge(f);
  f->exists_changed = false;
  f->search_result.clear();
  f->search_malformed = false;
  if (f->run_requested) BeginRun(f);
  const bool whole_window = f->run_searching && f->run_backfill;  // the run's total, from UID 1
  std::string criteria = fmt::format("UID SEARCH UID {}:*", whole_window ? 1 : f->fetched_uid + 1);
  if (f->months > 0) {
    const std::int64_t since = base::UnixMs() / 1000 - std::int64_t{f->months} * 31 * 24 * 3600;
    criteria += " SINCE " + ImapDate(since);
  }
  criteria += fmt::format(" NOT LARGER {}", config_.max_message_bytes);
  f->conn->Command(criteria, [this, f](ImapResponse& done) {
    if (!CheckOk(f, done, "SEARCH")) return;
    if (f->search_malformed) {
      Disconnect(f, base::MakeError("imap_protocol", "malformed SEARCH response"));
      return;
    }
    // "UID n:*" always matches the highest UID, even when it is below n.
    std::vector<std::uint64_t>& uids = f->search_result;
    std::sort(uids.begin(), uids.end());
    uids.erase(std::unique(uids.begin(), uids.end()), uids.end());
    if (f->run_searching) {
      // The run's first search: on a resumed backfill, what the checkpoint covers is done already.
      if (!f->run_backfill) uids.erase(uids.begin(), std::upper_bound(uids.begin(), uids.end(), f->fetched_uid));
      f->run_searching = false;
      f->run_started = true;
      f->run_found = uids;
      const auto covered = std::upper_bound(f->run_found.begin(), f->run_found.end(), f->durable_uid);
      const std::uint64_t already = static_cast<std::uint64_t>(covered - f->run_found.begin());
      f->run_durable = f->run_settled = already;
      f->run_counted_uid = f->durable_uid;
    }
    uids.erase(uids.begin(), std::upper_bound(uids.begin(), uids.end(), f->fetched_uid));
    if (f->run_started && !uids.empty()) {  // a later search of the run adds what it found
      f->run_found.insert(f->run_found.end(), uids.begin(), uids.end());
      std::sort(f->run_found.begin(), f->run_found.end());
      f->run_found.erase(std::unique(f->run_found.begin(), f->run_found.end()), f->run_found.end());
    }
    f->to_fetch.swap(uids);
    f->next_fetch = 0;
    if (!f->to_fetch.empty()) {
      ImapLogFields fields = f->Fields();
      fields.emplace_back("found", std::to_string(f->to_fetch.size()));
      fields.emplace_back("after_uid", std::to_string(f->fetched_uid));
      log_("imap_search", fields);
    }
    f->phase = Phase::kFetch;
    FetchMore(f);
  });
}

void ImapSource::FetchMore(Folder* f) {
  if (f->phase != Phase::kFetch || f->conn == nullptr) return;
  const std::size_t max_ready = config_.pipeline_depth * config_.fetch_batch;
  while (f->fetches_outstanding < config_.pipeline_depth && f->next_fetch < f->to_fetch.size() &&
         f->ready.size() < max_ready) {
    const std::size_t n = std::min(config_.fetch_batch, f->to_fetch.size() - f->next_fetch);
    std::vector<std::uint64_t> batch(f->to_fetch.begin() + static_cast<std::ptrdiff_t>(f->next_fetch),
                                     f->to_fetch.begin() + static_cast<std::ptrdiff_t>(f->next_fetch + n));
    f->next_fetch += n;
    ++f->fetches_outstanding;
    stats_.fetch_commands.Add();
    const std::string command = "UID FETCH " + FormatUidSet(batch) + " (UID BODY.PEEK[])";
    f->conn->Command(command, [this, f, batch = std::move(batch)](ImapResponse& done) {
      if (!CheckOk(f, done, "FETCH")) return;
      --f->fetches_outstanding;
      const std::uint64_t last_uid = batch.back();
      // Commands complete in order, so every body up to last_uid has arrived; a UID of the batch
      // without a body was expunged meanwhile.
      for (std::uint64_t uid : batch) {
        if (!f->arrived.contains(uid) && f->InRun(uid)) f->run_failed.insert(uid);
      }
      auto end = f->arrived.upper_bound(last_uid);
      for (auto it = f->arrived.begin(); it != end; ++it) {
        f->ready.push_back({f->validity, it->first, f->epoch, std::move(it->second)});
        ++f->session_fetched;
      }
      f->arrived.erase(f->arrived.begin(), end);
      f->fetched_uid = std::max(f->fetched_uid, last_uid);
      PushReady();
    });
  }
  if (f->fetches_outstanding == 0 && f->next_fetch >= f->to_fetch.size()) CaughtUp(f);
}

void ImapSource::CaughtUp(Folder* f) {
  if (!f->caught_up_logged || f->session_fetched != f->caught_up_logged_at) {  // not once per poll
    f->caught_up_logged = true;
    f->caught_up_logged_at = f->session_fetched;
    ImapLogFields fields = f->Fields();
    fields.emplace_back("fetched", std::to_string(f->session_fetched));
    fields.emplace_back("uidvalidity", std::to_string(f->validity));
    fields.emplace_back("uid", std::to_string(f->fetched_uid));
    log_("imap_caught_up", fields);
  }
  if (f->exists_changed) {  // mail arrived while fetching
    Search(f);
    return;
  }
  if (!f->server->waiting.empty()) {
    // Others wait for this server: make room and come back after the poll interval.
    EndSession(f);
    ScheduleRetry(f, config_.poll_interval);
    return;
  }
  if (f->has_idle && f->mailbox->idle) {
    f->phase = Phase::kIdle;
    f->idle_entered = false;
    f->idle_done_sent = false;
    f->idle_since = loop_->now();
    f->conn->Command("IDLE", [this, f](ImapResponse& done) {
      if (CheckOk(f, done, "IDLE")) Search(f);
    });
    return;
  }
  f->phase = Phase::kPolling;
  std::weak_ptr<bool> alive = alive_;
  const std::uint64_t seq = ++f->poll_seq;
  loop_->RunAfter(config_.poll_interval, [this, alive, f, seq] {
    if (alive.expired() || f->poll_seq != seq || f->phase != Phase::kPolling || f->conn == nullptr) return;
    Poll(f);
  });
}

void ImapSource::Poll(Folder* f) {
  f->phase = Phase::kSearch;  // the NOOP's answer leads to the search
  f->conn->Command("NOOP", [this, f](ImapResponse& done) {
    if (CheckOk(f, done, "NOOP")) Search(f);
  });
}

std::size_t ImapSource::PollNow() {
  std::size_t nudged = 0;
  for (auto& f : folders_) {
    if (shut_down_ || !f->enabled) continue;
    Nudge(f.get());
    ++nudged;
  }
  return nudged;
}

void ImapSource::PushReady() {
  bool blocked = false;
  for (auto& fp : folders_) {
    Folder* f = fp.get();
    while (!f->ready.empty()) {
      Folder::Ready& r = f->ready.front();
      if (r.raw.size() > config_.max_message_bytes) {  // SEARCH NOT LARGER should have excluded it
        stats_.rejected_too_large.Add();
        if (f->InRun(r.uid)) f->run_failed.insert(r.uid);
        f->in_flight.push_back({0, r.validity, r.uid, r.epoch, true});
        f->ready.pop_front();
        continue;
      }
      const std::size_t bytes = r.raw.size();
      const std::uint64_t token = ((f->index + 1) << kFolderShift) | f->next_seq;
      if (!outlet_.TryHold(r.raw, stages::InputKind::kRfc822, stages::SourceKind::kImap, f->id,
                           fmt::format("{}:{}", r.validity, r.uid), token)) {
        blocked = true;
        break;
      }
      ++f->next_seq;
      f->in_flight.push_back({token, r.validity, r.uid, r.epoch, false});
      stats_.messages.Add();
      stats_.bytes.Add(bytes);
      f->ready.pop_front();
    }
    Settle(f);
  }
  if (blocked) outlet_.RetrySoon();
  for (auto& f : folders_) {
    if (f->phase == Phase::kFetch) FetchMore(f.get());
  }
}

void ImapSource::OnDurable(std::span<const stages::DurableAck> acks) { outlet_.OnDurable(acks); }

void ImapSource::Settle(Folder* f) {
  bool moved = false;
  while (!f->in_flight.empty() && f->in_flight.front().settled) {
    if (f->in_flight.front().epoch == f->epoch) {  // an older epoch's message: a fresh backfill redoes it
      f->durable_validity = f->in_flight.front().validity;
      f->durable_uid = f->in_flight.front().uid;
      moved = true;
    }
    f->in_flight.pop_front();
  }
  if (moved) checkpoint_file_->MarkDirty();
}

void ImapSource::ApplyAcks(std::span<const stages::DurableAck> acks) {
  for (const stages::DurableAck& ack : acks) {
    const std::uint64_t index = (ack.token >> kFolderShift) - 1;
    MR_CHECK(index < folders_.size()) << "IMAP durable ack for unknown token " << ack.token;
    Folder* f = folders_[index].get();
    Settle(f);
    // The WAL acknowledges one source's messages in the order they were pushed.
    MR_CHECK(!f->in_flight.empty() && f->in_flight.front().token == ack.token)
        << "IMAP durable ack out of order for " << f->id << ": token " << ack.token;
    Folder::InFlight& entry = f->in_flight.front();
    entry.settled = true;
    if (f->mailbox->on_durable != ImapMailboxConfig::OnDurable::kNone && entry.validity == f->validity) {
      f->to_acknowledge.push_back(entry.uid);
    }
    if (entry.epoch == f->epoch && entry.uid > f->run_counted_uid && f->InRun(entry.uid)) {
      f->run_counted_uid = entry.uid;
      ++f->run_durable;
      f->run_lsns.push_back(ack.lsn);
    }
    stats_.durable.Add();
    Settle(f);
  }
  for (const stages::DurableAck& ack : acks) {  // one batch per folder and drain
    Folder* f = folders_[(ack.token >> kFolderShift) - 1].get();
    if (!f->to_acknowledge.empty()) Acknowledge(f);
  }
}

void ImapSource::Tick() {
  std::weak_ptr<bool> alive = alive_;
  loop_->RunAfter(std::chrono::milliseconds(500), [this, alive] {
    if (alive.expired() || shut_down_) return;
    const Clock::time_point now = loop_->now();
    for (auto& fp : folders_) {
      Folder* f = fp.get();
      if (f->conn == nullptr) continue;
      if (f->phase == Phase::kIdle && f->idle_entered && !f->idle_done_sent) {
        if (now - f->idle_since >= config_.idle_restart) {
          f->idle_done_sent = true;
          f->conn->SendLine("DONE");
        }
        continue;  // an idling server may stay silent
      }
      const bool waiting = f->conn->pending_commands() > 0 || !f->conn->is_ready();
      if (waiting && now - f->conn->last_activity() > config_.response_timeout) {
        Disconnect(f, base::MakeError("timeout", fmt::format("no response within {} ms", config_.response_timeout.count())));
      }
    }
    Tick();
  });
}

void ImapSource::BeginRun(Folder* f) {
  f->run_requested = false;
  f->run_searching = true;
  f->run_started = false;
  f->run_found.clear();
  f->run_failed.clear();
  f->run_lsns.clear();
  f->run_durable = f->run_settled = 0;
  f->run_counted_uid = 0;
}

void ImapSource::Nudge(Folder* f) {
  if (shut_down_) return;
  if (f->conn == nullptr) {
    if (!f->has_slot && !f->queued) RequestSlot(f);  // taking turns or backing off: come now
  } else if (f->phase == Phase::kPolling) {
    Poll(f);
  } else if (f->phase == Phase::kIdle && f->idle_entered && !f->idle_done_sent) {
    f->idle_done_sent = true;
    f->conn->SendLine("DONE");  // IDLE's completion starts a search
  } else {
    f->exists_changed = true;  // connecting, searching or fetching: search again when caught up
  }
}

bool ImapSource::HasMailbox(std::string_view user_id) const {
  for (const ImapMailboxConfig& m : config_.mailboxes) {
    if (m.user_id == user_id) return true;
  }
  return false;
}

std::vector<ImapSource::Folder*> ImapSource::RequestRun(std::string_view user_id, bool backfill) {
  std::vector<Folder*> folders;
  for (auto& fp : folders_) {
    Folder* f = fp.get();
    if (f->mailbox->user_id != user_id) continue;
    f->enabled = true;
    f->run_requested = true;
    f->run_backfill = backfill;
    folders.push_back(f);
  }
  return folders;
}

bool ImapSource::StartBackfill(std::string_view user_id, unsigned months, bool resume) {
  const std::vector<Folder*> folders = RequestRun(user_id, /*backfill=*/true);
  for (Folder* f : folders) {
    f->months = months;
    if (!resume) {
      // Start over: drop the session (a FETCH in flight would move fetched_uid again) and the
      // checkpoint, so that a crash during the backfill resumes it rather than skipping its start.
      if (f->conn != nullptr) EndSession(f);
      ++f->epoch;
      f->fetched_uid = 0;
      f->durable_uid = 0;
      f->backoff = std::chrono::milliseconds(0);
    }
  }
  if (folders.empty()) return false;
  if (!resume) {
    if (auto status = WriteCheckpoint(); !status) log_("imap_checkpoint_failed", {{"error", status.error().message}});
  }
  for (Folder* f : folders) Nudge(f);
  return true;
}

bool ImapSource::SyncNow(std::string_view user_id) {
  const std::vector<Folder*> folders = RequestRun(user_id, /*backfill=*/false);
  for (Folder* f : folders) Nudge(f);
  return !folders.empty();
}

MailboxSyncProgress ImapSource::Progress(std::string_view user_id, std::uint64_t terminal_durable_lsn) {
  MailboxSyncProgress p;
  p.started = true;
  p.done = true;
  for (auto& fp : folders_) {
    Folder* f = fp.get();
    if (f->mailbox->user_id != user_id) continue;
    while (!f->run_lsns.empty() && f->run_lsns.front() <= terminal_durable_lsn) {
      f->run_lsns.pop_front();
      ++f->run_settled;
    }
    const bool started = f->run_started && !f->run_requested;
    p.started = p.started && started;
    p.found += f->run_found.size();
    p.durable += f->run_durable;
    p.settled += f->run_settled;
    p.failed += f->run_failed.size();
    p.done = p.done && started && f->run_settled + f->run_failed.size() >= f->run_found.size();
  }
  return p;
}

}  // namespace mailrail::net
