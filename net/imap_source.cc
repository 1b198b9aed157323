#include "net/imap_source.h"

#include <netdb.h>
#include <openssl/evp.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <fstream>

#include <fmt/core.h>

#include "engine/base/check.h"
#include "engine/base/counters.h"

namespace mailrail::net {
namespace {

constexpr unsigned kFolderShift = 40;  // ack token = (folder index + 1) << 40 | sequence

enum class Phase { kOff, kConnecting, kLogin, kSelect, kSearch, kFetch, kIdle, kPolling };

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
  struct Ready {
    std::uint64_t validity, uid;
    std::string raw;
  };
  std::deque<Ready> ready;
  struct InFlight {
    std::uint64_t token, validity, uid;
    bool settled;  // skipped (too large): nothing to wait for
  };
  std::deque<InFlight> in_flight;
  std::uint64_t next_seq = 1;
  // The checkpoint: highest durable UID under durable_validity.
  std::uint64_t durable_validity = 0;
  std::uint64_t durable_uid = 0;

  ImapLogFields Fields() const { return {{"mailbox", mailbox->name}, {"folder", folder}}; }

  void OnReady(const ImapResponse&) override { source->Login(this); }

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
    } else if (name == "OK") {
      if (auto v = CodeNumber(r.text, "UIDVALIDITY")) selected_validity = *v;
    }
  }

  void OnContinuation(ImapResponse&) override {
    if (phase == Phase::kLogin && mailbox->auth == "plain") {
      conn->SendLine(Base64(std::string(1, '\0') + mailbox->user + std::string(1, '\0') + mailbox->password));
    } else if (phase == Phase::kIdle && !idle_entered) {
      idle_entered = true;
      source->log_("imap_idle", Fields());
      if (exists_changed && !idle_done_sent) {  // mail arrived between the search and IDLE
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
      std::memcpy(&server.address, result->ai_addr, result->ai_addrlen);
      server.address_length = result->ai_addrlen;
      ::freeaddrinfo(result);
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
      if (auto it2 = s->loaded_checkpoint_.find(f->id); it2 != s->loaded_checkpoint_.end()) {
        f->validity = f->durable_validity = it2->second.first;
        f->fetched_uid = f->durable_uid = it2->second.second;
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
  for (auto& f : folders_) RequestSlot(f.get());
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
}

std::size_t ImapSource::in_flight() const {
  std::size_t n = 0;
  for (const auto& f : folders_) n += f->in_flight.size();
  return n;
}

void ImapSource::RequestSlot(Folder* f) {
  if (shut_down_ || f->has_slot || f->queued) return;
  if (f->server->active < config_.max_connections_per_server) {
    ++f->server->active;
    f->has_slot = true;
    Connect(f);
  } else {
    f->queued = true;
    f->server->waiting.push_back(f);
  }
}

void ImapSource::ReleaseSlot(Folder* f) {
  if (!f->has_slot) return;
  f->has_slot = false;
  Server& server = *f->server;
  --server.active;
  while (!shut_down_ && !server.waiting.empty() && server.active < config_.max_connections_per_server) {
    Folder* next = server.waiting.front();
    server.waiting.pop_front();
    next->queued = false;
    ++server.active;
    next->has_slot = true;
    Connect(next);
  }
}

void ImapSource::Connect(Folder* f) {
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
  f->conn = ImapConnection::Connect(loop_, f->server->address, f->server->address_length, options, f);
}

void ImapSource::Disconnect(Folder* f, const base::Error& error) {
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
  stats_.disconnects.Add();
  ReleaseSlot(f);
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
  // The config loader rejected user names and passwords that cannot be quoted.
  f->conn->Command("LOGIN " + Quote(m.user).value() + " " + Quote(m.password).value(), after_login);
}

void ImapSource::Select(Folder* f) {
  f->phase = Phase::kSelect;
  f->selected_validity = 0;
  auto quoted = Quote(f->folder);
  // EXAMINE: read-only, so the mirror changes nothing in the mailbox (not even \Recent).
  f->conn->Command("EXAMINE " + quoted.value(), [this, f](ImapResponse& done) {
    if (!CheckOk(f, done, "EXAMINE")) return;
    if (f->selected_validity == 0) {
      Disconnect(f, base::MakeError("imap_protocol", "EXAMINE without UIDVALIDITY"));
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
    }
    f->validity = f->selected_validity;
    Search(f);
  });
}

void ImapSource::Search(Folder* f) {
  f->phase = Phase::kSearch;
  f->exists_changed = false;
  f->search_result.clear();
  f->search_malformed = false;
  std::string criteria = fmt::format("UID SEARCH UID {}:*", f->fetched_uid + 1);
  if (f->mailbox->months > 0) {
    const std::int64_t since = base::UnixMs() / 1000 - std::int64_t{f->mailbox->months} * 31 * 24 * 3600;
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
    uids.erase(uids.begin(), std::upper_bound(uids.begin(), uids.end(), f->fetched_uid));
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
    const std::uint64_t last_uid = batch.back();
    f->conn->Command("UID FETCH " + FormatUidSet(batch) + " (UID BODY.PEEK[])", [this, f, last_uid](ImapResponse& done) {
      if (!CheckOk(f, done, "FETCH")) return;
      --f->fetches_outstanding;
      // Commands complete in order, so every body up to last_uid has arrived; a UID of the batch
      // without a body was expunged meanwhile.
      auto end = f->arrived.upper_bound(last_uid);
      for (auto it = f->arrived.begin(); it != end; ++it) {
        f->ready.push_back({f->validity, it->first, std::move(it->second)});
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
    f->conn->Abandon();
    f->conn = nullptr;
    ++f->generation;
    f->phase = Phase::kOff;
    ReleaseSlot(f);
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
  for (auto& fp : folders_) {
    Folder* f = fp.get();
    if (shut_down_) break;
    if (f->conn == nullptr) {
      if (!f->has_slot && !f->queued) {
        RequestSlot(f);  // taking turns or backing off: come now
        ++nudged;
      }
    } else if (f->phase == Phase::kPolling) {
      Poll(f);
      ++nudged;
    } else if (f->phase == Phase::kIdle && f->idle_entered && !f->idle_done_sent) {
      f->idle_done_sent = true;
      f->conn->SendLine("DONE");  // IDLE's completion starts a search
      ++nudged;
    }
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
        f->in_flight.push_back({0, r.validity, r.uid, true});
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
      f->in_flight.push_back({token, r.validity, r.uid, false});
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
    f->durable_validity = f->in_flight.front().validity;
    f->durable_uid = f->in_flight.front().uid;
    f->in_flight.pop_front();
    moved = true;
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
    f->in_flight.front().settled = true;
    stats_.durable.Add();
    Settle(f);
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

}  // namespace mailrail::net
