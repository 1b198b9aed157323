#include "net/graph_source.h"

#include <algorithm>
#include <ctime>
#include <fstream>

#include <fmt/core.h>
#include <simdjson.h>

#include "engine/base/check.h"
#include "engine/base/counters.h"
#include "net/http_message.h"

namespace mailrail::net {
namespace {

constexpr unsigned kFolderShift = 40;  // ack token = (folder index + 1) << 40 | sequence

constexpr std::string_view kJsonSelect =
    "id,internetMessageId,from,sender,toRecipients,ccRecipients,replyTo,subject,sentDateTime,receivedDateTime,"
    "hasAttachments,body";
constexpr std::string_view kRawSelect = "id,hasAttachments,receivedDateTime";

std::string IsoUtc(std::int64_t unix_seconds) {
  const std::time_t t = static_cast<std::time_t>(unix_seconds);
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return text;
}

}  // namespace

// One request with its retry state. `on_response` gets every final answer: 2xx and the 4xx that
// retrying cannot fix (the caller decides); 401, 429, 5xx and network errors are handled in
// OnResponse.
struct GraphSource::Call {
  std::string target;  // path below base_url, or an absolute link Graph gave
  bool delta = false;  // sends Prefer: odata.maxpagesize
  unsigned attempts = 0;
  bool token_retried = false;
  std::function<void(const ClientResponse&)> on_response;
};

struct GraphSource::Mailbox {
  GraphMailboxConfig config;
  std::vector<Folder*> folders;
  std::size_t active = 0;  // requests in flight
  std::deque<std::shared_ptr<Call>> waiting;
  GraphRequestBudget budget;
  Clock::time_point paused_until{};
  bool resume_armed = false;
  unsigned throttle_streak = 0;  // 429/503 in a row without Retry-After
  unsigned window_months;
  GraphMailboxProgress progress;
  // The current sync-job run (MailboxSyncSource): rounds begun after BeginRun belong to it.
  std::uint64_t run = 0;
  MailboxSyncProgress run_progress;    // found, durable, settled, failed of the run
  std::deque<std::uint64_t> run_lsns;  // WAL LSNs of the run's durable messages, not yet settled

  Mailbox(GraphMailboxConfig c, std::size_t rate, std::chrono::milliseconds window, Clock::time_point now)
      : config(std::move(c)), budget(rate, window, now), window_months(config.months) {}
};

// One delta page: its items in order and the link that follows it.
struct GraphSource::Page {
  enum class State : std::uint8_t { kFetching, kReady, kSkipped };
  struct Item {
    std::string id;
    std::string body;
    stages::InputKind kind = stages::InputKind::kGraphJson;
    State state = State::kFetching;
  };
  std::uint64_t seq = 0;
  std::uint64_t epoch = 0;
  std::uint64_t run = 0;  // the mailbox run its round belongs to
  std::string after_link;
  bool is_delta_link = false;
  std::vector<Item> items;
  std::size_t released = 0;   // items handed to `ready` or skipped, from the front
  std::size_t unsettled = 0;  // items not yet durable or skipped
};

struct GraphSource::Folder {
  Mailbox* mailbox = nullptr;
  std::string name;
  std::string id;  // "<mailbox>/<folder>"
  std::uint64_t index = 0;

  std::string link;          // what the next page request GETs; empty: the initial query
  std::string durable_link;  // the checkpoint
  std::uint64_t epoch = 0;   // bumped by a restart from scratch
  bool page_in_flight = false;
  bool round_active = false;
  bool round_again = false;  // a sync was asked for during the round
  bool round_reached_delta = false;
  bool caught_up = false;
  std::uint64_t schedule_seq = 0;  // the scheduled round that is current
  std::uint64_t round_found = 0;
  std::uint64_t round_run = 0;  // the mailbox run the current round belongs to
  bool run_paged = false;       // a page of the mailbox's current run arrived
  bool run_round_done = false;  // a round of the mailbox's current run reached its deltaLink

  std::uint64_t next_page_seq = 1;
  std::deque<Page> pages;  // not yet settled, in order
  struct Ready {
    std::uint64_t page_seq;
    std::string id;
    std::string body;
    stages::InputKind kind;
  };
  std::deque<Ready> ready;
  struct InFlight {
    std::uint64_t token, page_seq;
  };
  std::deque<InFlight> in_flight;
  std::uint64_t next_seq = 1;

  GraphLogFields Fields() const { return {{"mailbox", mailbox->config.name}, {"folder", name}}; }
  Page* FindPage(std::uint64_t seq) {
    for (Page& p : pages) {
      if (p.seq == seq) return &p;
    }
    return nullptr;
  }
};

GraphSource::GraphSource(EventLoop* loop, stages::MessagePool* pool, engine::Channel<stages::Message*>* channel,
                         GraphSourceConfig config, GraphLog log)
    : loop_(loop),
      config_(std::move(config)),
      log_(std::move(log)),
      outlet_(loop, pool, channel, this, [this] { PushReady(); },
              [this](std::span<const stages::DurableAck> acks) { ApplyAcks(acks); }) {}

GraphSource::~GraphSource() { *alive_ = false; }

base::Result<std::unique_ptr<GraphSource>> GraphSource::Create(EventLoop* loop, stages::MessagePool* pool,
                                                               engine::Channel<stages::Message*>* channel,
                                                               GraphSourceConfig config, GraphLog log) {
  MR_CHECK(!config.checkpoint_path.empty()) << "GraphSource needs a checkpoint path";
  std::unique_ptr<GraphSource> s(new GraphSource(loop, pool, channel, std::move(config), std::move(log)));
  const GraphSourceConfig& c = s->config_;
  HttpClientConfig graph;
  graph.base_url = c.base_url;
  graph.max_connections = std::min<std::size_t>(256, c.max_concurrent_requests * std::max<std::size_t>(1, c.mailboxes.size()));
  graph.request_timeout = c.request_timeout;
  graph.verify_peer = c.verify_peer;
  graph.ca_file = c.ca_file;
  auto client = HttpClient::Create(loop, graph);
  if (!client) return base::MakeError("graph.base_url", c.base_url + ": " + client.error().message);
  s->graph_ = std::move(client).value();
  auto token_url = ParseHttpUrl(c.token_url);
  if (!token_url) return base::MakeError("graph.token_url", c.token_url + ": " + token_url.error().message);
  HttpClientConfig token;
  token.base_url = fmt::format("{}://{}:{}", token_url->tls ? "https" : "http", token_url->host, token_url->port);
  token.max_connections = 1;
  token.request_timeout = c.request_timeout;
  token.verify_peer = c.verify_peer;
  token.ca_file = c.ca_file;
  s->token_path_ = token_url->prefix.empty() ? "/" : token_url->prefix;
  auto token_client = HttpClient::Create(loop, token);
  if (!token_client) return base::MakeError("graph.token_url", c.token_url + ": " + token_client.error().message);
  s->token_client_ = std::move(token_client).value();
  if (auto status = s->LoadCheckpoint(); !status) return status.error();

  for (const GraphMailboxConfig& m : c.mailboxes) {
    auto mb = std::make_unique<Mailbox>(m, c.rate_requests, c.rate_window, Clock::now());
    for (const std::string& name : m.folders) {
      auto f = std::make_unique<Folder>();
      f->mailbox = mb.get();
      f->name = name;
      f->id = m.name + "/" + name;
      f->index = s->folders_.size();
      if (auto it = s->loaded_links_.find(f->id); it != s->loaded_links_.end()) {
        if (it->second.rfind(c.base_url, 0) == 0) {
          f->link = f->durable_link = it->second;
        } else if (!it->second.empty()) {
          s->log_("graph_checkpoint_link_ignored",
                  {{"mailbox", m.name}, {"folder", name}, {"reason", "not below graph.base_url; starting from scratch"}});
        }
      }
      mb->folders.push_back(f.get());
      s->folders_.push_back(std::move(f));
    }
    s->mailboxes_.push_back(std::move(mb));
  }
  s->checkpoint_file_ = std::make_unique<CheckpointFile>(
      c.checkpoint_path, "graph.checkpoint", &s->stats_.checkpoint_writes,
      [source = s.get()](const base::Error& error) { source->log_("graph_checkpoint_failed", {{"error", error.message}}); });
  s->checkpoint_file_->SetDeferred(loop, c.checkpoint_interval, [source = s.get()] { return source->CheckpointText(); });
  return s;
}

// Format: one line per folder, "<mailbox>/<folder> TAB <link>" (an empty link: from scratch).
base::Status GraphSource::LoadCheckpoint() {
  std::ifstream in(config_.checkpoint_path);
  if (!in) return base::OkStatus();  // first run
  std::string line;
  std::size_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.empty() || line[0] == '#') continue;
    const std::size_t tab = line.find('\t');
    if (tab == std::string::npos || tab == 0) {
      return base::MakeError("graph.checkpoint",
                             fmt::format("{}:{}: expected <mailbox>/<folder> TAB <link>", config_.checkpoint_path, number));
    }
    loaded_links_[line.substr(0, tab)] = line.substr(tab + 1);
  }
  return base::OkStatus();
}

std::string GraphSource::CheckpointText() const {
  std::map<std::string, std::string> links = loaded_links_;  // folders no longer configured are kept
  for (const auto& f : folders_) links[f->id] = f->durable_link;
  std::string text = "# mailrail graph checkpoint: <mailbox>/<folder> TAB <link after the last durable page>\n";
  for (const auto& [id, link] : links) text += fmt::format("{}\t{}\n", id, link);
  return text;
}

base::Status GraphSource::WriteCheckpoint() {
  return checkpoint_file_->WriteNow(CheckpointText());
}

void GraphSource::Start() {
  outlet_.Install();  // messages filled during one loop iteration enter the ring with one push
  RequestToken();
  for (auto& f : folders_) StartRound(f.get());
}

void GraphSource::Shutdown() {
  shut_down_ = true;
  for (auto& mb : mailboxes_) mb->waiting.clear();
  for (auto& f : folders_) {
    f->round_active = false;
    f->ready.clear();  // never pushed: a restart fetches them again
  }
  graph_->Shutdown();
  token_client_->Shutdown();
}

std::size_t GraphSource::in_flight() const {
  std::size_t n = 0;  // held messages are in the folders' in_flight already
  for (const auto& f : folders_) n += f->in_flight.size();
  return n;
}

// ---------------------------------------------------------------------------------------------
// Requests

std::chrono::milliseconds GraphSource::Backoff(unsigned attempt) {
  const unsigned shift = std::min(attempt == 0 ? 0u : attempt - 1, 20u);
  const auto full = std::min(config_.backoff_max, config_.backoff_base * (std::int64_t{1} << shift));
  // Jitter: a uniform draw in [full/2, full], so mailboxes that failed together do not retry together.
  std::uniform_int_distribution<std::int64_t> draw(full.count() / 2, full.count());
  return std::chrono::milliseconds(draw(jitter_));
}

void GraphSource::Issue(Mailbox* mb, std::shared_ptr<Call> call, bool front) {
  if (shut_down_) return;
  if (front) {
    mb->waiting.push_front(std::move(call));
  } else {
    mb->waiting.push_back(std::move(call));
  }
  Pump(mb);
}

void GraphSource::PumpAll() {
  for (auto& mb : mailboxes_) Pump(mb.get());
}

void GraphSource::Pump(Mailbox* mb) {
  if (shut_down_ || access_token_.empty()) return;  // the token's arrival pumps every mailbox
  const Clock::time_point now = Clock::now();
  std::chrono::milliseconds wait{0};
  if (now < mb->paused_until) {
    wait = std::chrono::ceil<std::chrono::milliseconds>(mb->paused_until - now);
  } else {
    while (!mb->waiting.empty() && mb->active < config_.max_concurrent_requests) {
      if (!mb->budget.TryTake(now)) {
        wait = std::max(std::chrono::milliseconds(1), mb->budget.WaitFor(now));
        break;
      }
      std::shared_ptr<Call> call = std::move(mb->waiting.front());
      mb->waiting.pop_front();
      Send(mb, std::move(call));
    }
  }
  if (wait.count() > 0 && !mb->waiting.empty() && !mb->resume_armed) {
    mb->resume_armed = true;
    std::weak_ptr<bool> alive = alive_;
    loop_->RunAfter(wait, [this, alive, mb] {
      if (alive.expired()) return;
      mb->resume_armed = false;
      Pump(mb);
    });
  }
}

void GraphSource::Send(Mailbox* mb, std::shared_ptr<Call> call) {
  ++mb->active;
  stats_.requests.Add();
  ClientRequest request;
  request.method = "GET";
  std::string_view target = call->target;
  if (target.rfind(config_.base_url, 0) == 0) target.remove_prefix(config_.base_url.size());  // a link Graph gave
  request.path = std::string(target);
  request.headers.push_back({"Authorization", "Bearer " + access_token_});
  request.headers.push_back({"Accept", "application/json"});
  if (call->delta) request.headers.push_back({"Prefer", fmt::format("odata.maxpagesize={}", config_.page_size)});
  std::weak_ptr<bool> alive = alive_;
  graph_->Send(std::move(request), [this, alive, mb, call, generation = token_generation_](base::Result<ClientResponse> r) {
    if (alive.expired()) return;
    OnResponse(mb, call, generation, std::move(r));
  });
}

void GraphSource::RetryLater(Mailbox* mb, std::shared_ptr<Call> call, std::string error) {
  ++call->attempts;
  stats_.retries.Add();
  const std::chrono::milliseconds delay = Backoff(call->attempts);
  GraphLogFields fields{{"mailbox", mb->config.name}, {"error", error}, {"attempt", std::to_string(call->attempts)},
                        {"retry_ms", std::to_string(delay.count())}};
  log_("graph_request_failed", fields);
  mb->progress.last_error = std::move(error);
  std::weak_ptr<bool> alive = alive_;
  loop_->RunAfter(delay, [this, alive, mb, call] {
    if (alive.expired() || shut_down_) return;
    Issue(mb, call, /*front=*/true);
  });
}

void GraphSource::PauseMailbox(Mailbox* mb, std::chrono::milliseconds delay) {
  mb->paused_until = std::max(mb->paused_until, Clock::now() + delay);
}

void GraphSource::OnResponse(Mailbox* mb, std::shared_ptr<Call> call, std::uint64_t token_generation,
                             base::Result<ClientResponse> result) {
  --mb->active;
  if (shut_down_) return;
  if (!result) {
    RetryLater(mb, call, result.error().code + ": " + result.error().message);
  } else if (result->status == 401) {
    if (!call->token_retried) {
      // Expired or revoked: one new token (unless one arrived since this request left), then again.
      call->token_retried = true;
      if (token_generation == token_generation_) {
        access_token_.clear();
        RequestToken();
      }
      stats_.retries.Add();
      Issue(mb, call, /*front=*/true);
    } else {
      call->token_retried = false;  // after the backoff, one more refresh may help
      RetryLater(mb, call, fmt::format("401 {} after a new token", GraphErrorCode(result->body)));
    }
  } else if (result->status == 429 || result->status == 503) {
    stats_.throttled.Add();
    stats_.retries.Add();
    const auto retry_after = ParseRetryAfter(result->Header("retry-after"), base::UnixMs());
    const std::chrono::milliseconds delay = retry_after ? *retry_after : Backoff(++mb->throttle_streak);
    if (retry_after) mb->throttle_streak = 0;
    PauseMailbox(mb, delay);
    log_("graph_throttled", {{"mailbox", mb->config.name}, {"status", std::to_string(result->status)},
                             {"pause_ms", std::to_string(delay.count())}});
    mb->progress.last_error = fmt::format("throttled ({})", result->status);
    Issue(mb, call, /*front=*/true);
  } else if (result->status >= 500) {
    RetryLater(mb, call, fmt::format("HTTP {} {}", result->status, GraphErrorCode(result->body)));
  } else {
    mb->throttle_streak = 0;
    call->on_response(*result);
  }
  Pump(mb);
}

void GraphSource::RequestToken() {
  if (token_requested_ || shut_down_) return;
  token_requested_ = true;
  ClientRequest request;
  request.method = "POST";
  request.path = token_path_;
  request.headers.push_back({"Content-Type", "application/x-www-form-urlencoded"});
  request.body = "grant_type=client_credentials&client_id=" + UrlEncode(config_.client_id) +
                 "&client_secret=" + UrlEncode(config_.client_secret) + "&scope=" + UrlEncode(config_.scope);
  std::weak_ptr<bool> alive = alive_;
  token_client_->Send(std::move(request), [this, alive](base::Result<ClientResponse> r) {
    if (alive.expired() || shut_down_) return;
    token_requested_ = false;
    std::string error;
    if (!r) {
      error = r.error().code + ": " + r.error().message;
    } else if (r->status != 200) {
      // AAD answers {"error":"invalid_client","error_description":...}: log the status and the
      // code only (descriptions may quote the request).
      error = fmt::format("HTTP {} {}", r->status, GraphErrorCode(r->body));
    } else if (auto token = ParseGraphTokenResponse(r->body); !token) {
      error = token.error().message;
    } else {
      token_failures_ = 0;
      access_token_ = std::move(token->access_token);
      ++token_generation_;
      stats_.token_refreshes.Add();
      log_("graph_token", {{"expires_in_s", std::to_string(token->expires_in.count())}});
      // Refresh when 80% of the lifetime has passed, before requests start to fail.
      const auto refresh_in = std::chrono::duration_cast<std::chrono::milliseconds>(token->expires_in) * 4 / 5;
      const std::uint64_t generation = token_generation_;
      std::weak_ptr<bool> weak = alive_;
      loop_->RunAfter(std::max(refresh_in, std::chrono::milliseconds(100)), [this, weak, generation] {
        if (weak.expired() || shut_down_ || generation != token_generation_) return;
        RequestToken();  // the current token stays in use until the new one arrives
      });
      PumpAll();
      return;
    }
    stats_.token_errors.Add();
    const std::chrono::milliseconds delay = Backoff(++token_failures_);
    log_("graph_token_failed", {{"error", error}, {"retry_ms", std::to_string(delay.count())}});
    for (auto& mb : mailboxes_) mb->progress.last_error = "token: " + error;
    std::weak_ptr<bool> weak = alive_;
    loop_->RunAfter(delay, [this, weak] {
      if (!weak.expired()) RequestToken();
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Delta rounds

std::string GraphSource::InitialDeltaTarget(const Folder* f) const {
  std::string target = fmt::format("/users/{}/mailFolders/{}/messages/delta?$select={}", UrlEncode(f->mailbox->config.user_id),
                                   UrlEncode(f->name), config_.raw_mime ? kRawSelect : kJsonSelect);
  if (f->mailbox->window_months > 0) {
    const std::int64_t since = base::UnixMs() / 1000 - std::int64_t{f->mailbox->window_months} * 31 * 24 * 3600;
    target += "&$filter=" + UrlEncode("receivedDateTime ge " + IsoUtc(since));
  }
  return target;
}

std::string GraphSource::MessageTarget(const Folder* f, std::string_view id, std::string_view suffix) const {
  return fmt::format("/users/{}/messages/{}{}", UrlEncode(f->mailbox->config.user_id), UrlEncode(id), suffix);
}

void GraphSource::StartRound(Folder* f) {
  if (shut_down_) return;
  if (f->round_active) {
    f->round_again = true;
    return;
  }
  f->round_active = true;
  f->round_reached_delta = false;
  f->round_found = 0;
  f->round_run = f->mailbox->run;
  ++f->schedule_seq;  // a scheduled round still pending is replaced by this one
  RequestPage(f);
}

void GraphSource::RequestPage(Folder* f) {
  if (shut_down_ || !f->round_active || f->round_reached_delta || f->page_in_flight ||
      f->pages.size() >= config_.max_pages_ahead) {
    return;
  }
  f->page_in_flight = true;
  auto call = std::make_shared<Call>();
  call->target = f->link.empty() ? InitialDeltaTarget(f) : f->link;
  call->delta = true;
  call->on_response = [this, f, epoch = f->epoch](const ClientResponse& response) { OnPage(f, epoch, response); };
  Issue(f->mailbox, std::move(call));
}

void GraphSource::OnPage(Folder* f, std::uint64_t epoch, const ClientResponse& response) {
  f->page_in_flight = false;
  if (epoch != f->epoch) {  // the folder restarted (StartBackfill) while this page was on its way
    RequestPage(f);
    return;
  }
  const std::string code = response.status == 200 ? std::string() : GraphErrorCode(response.body);
  if (response.status == 410 || EqualsIgnoreCase(code, "syncStateNotFound") || EqualsIgnoreCase(code, "resyncRequired") ||
      EqualsIgnoreCase(code, "syncStateInvalid")) {
    RestartFolder(f, code.empty() ? "410" : code);
    return;
  }
  auto page = response.status == 200 ? ParseGraphDeltaPage(response.body)
                                     : base::Result<GraphDeltaPage>(base::MakeError(
                                           "graph_http", fmt::format("delta: HTTP {} {}", response.status, code)));
  if (page) {
    const std::string& link = page->delta_link.empty() ? page->next_link : page->delta_link;
    if (link.rfind(config_.base_url, 0) != 0) {
      page = base::MakeError("graph_protocol", "delta link not below graph.base_url: " + link.substr(0, 200));
    }
  }
  if (!page) {
    // A client error on our own delta query (bad folder, no permission) does not heal by itself:
    // retry slowly and say so; the folder stays where it was.
    f->mailbox->progress.last_error = page.error().message;
    GraphLogFields fields = f->Fields();
    fields.emplace_back("error", page.error().message);
    log_("graph_delta_failed", fields);
    std::weak_ptr<bool> alive = alive_;
    loop_->RunAfter(config_.backoff_max, [this, alive, f, epoch] {
      if (!alive.expired() && epoch == f->epoch) RequestPage(f);
    });
    return;
  }
  stats_.pages.Add();
  Page& p = f->pages.emplace_back();
  p.seq = f->next_page_seq++;
  p.epoch = f->epoch;
  p.run = f->round_run;
  const bool in_run = p.run == f->mailbox->run;
  f->run_paged = f->run_paged || in_run;
  p.is_delta_link = !page->delta_link.empty();
  p.after_link = p.is_delta_link ? std::move(page->delta_link) : std::move(page->next_link);
  p.items.reserve(page->items.size());
  for (GraphDeltaItem& item : page->items) {
    Page::Item& it = p.items.emplace_back();
    it.id = std::move(item.id);
    if (item.removed) {
      stats_.removed.Add();
      it.state = Page::State::kSkipped;
      continue;
    }
    ++f->mailbox->progress.messages_found;
    if (in_run) ++f->mailbox->run_progress.found;
    ++f->round_found;
    ++p.unsettled;
    if (config_.raw_mime) {
      it.kind = stages::InputKind::kRfc822;
    } else {
      it.body = std::move(item.json);
      it.state = config_.fetch_attachments && item.has_attachments ? Page::State::kFetching : Page::State::kReady;
    }
  }
  f->link = p.after_link;
  if (p.is_delta_link) f->round_reached_delta = true;
  Page* stored = &p;
  for (std::size_t i = 0; i < stored->items.size(); ++i) {
    if (stored->items[i].state == Page::State::kFetching) FetchItem(f, stored, i);
  }
  Release(f);
  PushReady();
  Settle(f);  // a page without messages settles at once
  RequestPage(f);
}

void GraphSource::FetchItem(Folder* f, Page* page, std::size_t index) {
  const Page::Item& item = page->items[index];
  auto call = std::make_shared<Call>();
  call->target = MessageTarget(f, item.id, config_.raw_mime ? "/$value" : "/attachments");
  // Pages stay in the deque until settled, and a page with an item still fetching cannot settle,
  // so the page outlives this call; its seq finds it again.
  call->on_response = [this, f, seq = page->seq, index](const ClientResponse& response) {
    Page* p = f->FindPage(seq);
    MR_CHECK(p != nullptr) << "Graph page " << seq << " of " << f->id << " settled with an item still fetching";
    Page::Item& it = p->items[index];
    if (response.status != 200) {
      // 404: deleted or moved since the delta page; anything else: counted and skipped.
      it.state = Page::State::kSkipped;
      --p->unsettled;
      ++f->mailbox->progress.messages_failed;
      if (p->run == f->mailbox->run) ++f->mailbox->run_progress.failed;
      stats_.failed.Add();
      GraphLogFields fields = f->Fields();
      fields.emplace_back("id", it.id);
      fields.emplace_back("status", std::to_string(response.status));
      fields.emplace_back("error", GraphErrorCode(response.body));
      log_("graph_message_failed", fields);
    } else if (config_.raw_mime) {
      it.body = response.body;
      it.state = Page::State::kReady;
    } else {
      // Splice the attachments array into the message object: {..., "attachments":[...]}.
      simdjson::dom::parser parser;
      simdjson::dom::element root;
      simdjson::dom::array values;
      if (!parser.parse(response.body).get(root) && !root["value"].get_array().get(values) && !it.body.empty() &&
          it.body.back() == '}') {
        it.body.pop_back();
        it.body += ",\"attachments\":";
        it.body += simdjson::minify(values);
        it.body += '}';
      } else {
        ++f->mailbox->progress.messages_failed;
        stats_.failed.Add();  // the message goes on without its attachments
      }
      it.state = Page::State::kReady;
    }
    Release(f);
    PushReady();
    Settle(f);
  };
  Issue(f->mailbox, std::move(call));
}

void GraphSource::RestartFolder(Folder* f, std::string_view reason) {
  stats_.delta_restarts.Add();
  GraphLogFields fields = f->Fields();
  fields.emplace_back("reason", std::string(reason));
  log_("graph_delta_restart", fields);
  ++f->epoch;
  ++f->schedule_seq;  // this round replaces a scheduled one
  f->link.clear();
  f->durable_link.clear();  // a crash now restarts from scratch too
  f->caught_up = false;
  f->round_active = true;
  f->round_reached_delta = false;
  f->round_run = f->mailbox->run;
  checkpoint_file_->MarkDirty();
  UpdateCaughtUp(f->mailbox);
  RequestPage(f);
}

void GraphSource::Release(Folder* f) {
  for (Page& p : f->pages) {
    while (p.released < p.items.size()) {
      Page::Item& it = p.items[p.released];
      if (it.state == Page::State::kFetching) return;  // order: nothing behind it goes first
      if (it.state == Page::State::kReady) {
        f->ready.push_back({p.seq, std::move(it.id), std::move(it.body), it.kind});
        it.body = std::string();
      }
      ++p.released;
    }
  }
}

void GraphSource::PushReady() {
  bool blocked = false;
  for (auto& fp : folders_) {
    Folder* f = fp.get();
    while (!f->ready.empty()) {
      Folder::Ready& r = f->ready.front();
      if (r.body.size() > config_.max_message_bytes) {
        stats_.rejected_too_large.Add();
        ++f->mailbox->progress.messages_failed;
        if (Page* p = f->FindPage(r.page_seq)) {
          --p->unsettled;
          if (p->run == f->mailbox->run) ++f->mailbox->run_progress.failed;
        }
        f->ready.pop_front();
        continue;
      }
      const std::size_t bytes = r.body.size();
      const std::uint64_t token = ((f->index + 1) << kFolderShift) | f->next_seq;
      if (!outlet_.TryHold(r.body, r.kind, stages::SourceKind::kGraph, f->id, r.id, token)) {
        blocked = true;
        break;
      }
      ++f->next_seq;
      f->in_flight.push_back({token, r.page_seq});
      stats_.messages.Add();
      stats_.bytes.Add(bytes);
      ++f->mailbox->progress.messages_pushed;
      f->ready.pop_front();
    }
    Settle(f);
  }
  if (blocked) outlet_.RetrySoon();
}

void GraphSource::OnDurable(std::span<const stages::DurableAck> acks) { outlet_.OnDurable(acks); }

void GraphSource::ApplyAcks(std::span<const stages::DurableAck> acks) {
  for (const stages::DurableAck& ack : acks) {
    const std::uint64_t index = (ack.token >> kFolderShift) - 1;
    MR_CHECK(index < folders_.size()) << "Graph durable ack for unknown token " << ack.token;
    Folder* f = folders_[index].get();
    // The WAL acknowledges one source's messages in the order they were pushed.
    MR_CHECK(!f->in_flight.empty() && f->in_flight.front().token == ack.token)
        << "Graph durable ack out of order for " << f->id << ": token " << ack.token;
    Page* p = f->FindPage(f->in_flight.front().page_seq);
    MR_CHECK(p != nullptr && p->unsettled > 0) << "Graph durable ack for a settled page of " << f->id;
    --p->unsettled;
    f->in_flight.pop_front();
    stats_.durable.Add();
    ++f->mailbox->progress.messages_durable;
    if (p->run == f->mailbox->run) {
      ++f->mailbox->run_progress.durable;
      f->mailbox->run_lsns.push_back(ack.lsn);
    }
    Settle(f);
  }
}

void GraphSource::Settle(Folder* f) {
  bool moved = false;
  bool popped = false;
  while (!f->pages.empty() && f->pages.front().released == f->pages.front().items.size() &&
         f->pages.front().unsettled == 0) {
    Page& p = f->pages.front();
    popped = true;
    if (p.epoch == f->epoch) {  // pages of an abandoned round never move the checkpoint
      f->durable_link = std::move(p.after_link);
      moved = true;
      if (p.is_delta_link) {  // the last page of the round
        f->pages.pop_front();
        RoundDone(f);
        continue;
      }
    }
    f->pages.pop_front();
  }
  if (moved) checkpoint_file_->MarkDirty();
  if (popped) RequestPage(f);  // room for another page ahead
}

void GraphSource::RoundDone(Folder* f) {
  f->round_active = false;
  if (!f->caught_up || f->round_found > 0) {  // not once per scheduled round that found nothing
    GraphLogFields fields = f->Fields();
    fields.emplace_back("fetched", std::to_string(f->round_found));
    log_("graph_caught_up", fields);
  }
  f->caught_up = true;
  if (f->round_run == f->mailbox->run) f->run_round_done = true;
  UpdateCaughtUp(f->mailbox);
  if (f->round_again) {
    f->round_again = false;
    StartRound(f);
    return;
  }
  const std::uint64_t seq = ++f->schedule_seq;
  std::weak_ptr<bool> alive = alive_;
  loop_->RunAfter(config_.poll_interval, [this, alive, f, seq] {
    if (alive.expired() || shut_down_ || seq != f->schedule_seq) return;
    StartRound(f);
  });
}

void GraphSource::UpdateCaughtUp(Mailbox* mb) {
  mb->progress.caught_up = std::all_of(mb->folders.begin(), mb->folders.end(), [](const Folder* f) { return f->caught_up; });
  if (mb->progress.caught_up) mb->progress.last_error.clear();
}

// ---------------------------------------------------------------------------------------------
// Control and notifications

GraphSource::Mailbox* GraphSource::FindMailbox(std::string_view user_id) const {
  for (const auto& mb : mailboxes_) {
    if (EqualsIgnoreCase(mb->config.user_id, user_id) || EqualsIgnoreCase(mb->config.name, user_id)) return mb.get();
  }
  return nullptr;
}

bool GraphSource::HasMailbox(std::string_view user_id) const { return FindMailbox(user_id) != nullptr; }

void GraphSource::BeginRun(Mailbox* mb, bool adopt_active_rounds) {
  ++mb->run;
  mb->run_progress = MailboxSyncProgress{};
  mb->run_lsns.clear();
  for (Folder* f : mb->folders) {
    f->run_paged = false;
    f->run_round_done = false;
    if (adopt_active_rounds && f->round_active) f->round_run = mb->run;
  }
}

bool GraphSource::StartBackfill(std::string_view user_id, unsigned months, bool resume) {
  Mailbox* mb = FindMailbox(user_id);
  if (mb == nullptr || shut_down_) return false;
  mb->window_months = months;
  if (resume) {
    // After a restart each folder already runs a round from its checkpoint: the run continues it.
    BeginRun(mb, /*adopt_active_rounds=*/true);
    for (Folder* f : mb->folders) {
      if (!f->round_active) StartRound(f);
    }
    return true;
  }
  mb->progress = GraphMailboxProgress{};
  BeginRun(mb, /*adopt_active_rounds=*/false);
  for (Folder* f : mb->folders) RestartFolder(f, "backfill");
  return true;
}

bool GraphSource::SyncNow(std::string_view user_id) {
  Mailbox* mb = FindMailbox(user_id);
  if (mb == nullptr) return false;
  BeginRun(mb, /*adopt_active_rounds=*/false);  // a round running now began before the request
  for (Folder* f : mb->folders) StartRound(f);
  return true;
}

std::size_t GraphSource::SyncAll() {
  for (auto& f : folders_) StartRound(f.get());
  return folders_.size();
}

MailboxSyncProgress GraphSource::Progress(std::string_view user_id, std::uint64_t terminal_durable_lsn) {
  Mailbox* mb = FindMailbox(user_id);
  if (mb == nullptr) return MailboxSyncProgress{};
  while (!mb->run_lsns.empty() && mb->run_lsns.front() <= terminal_durable_lsn) {
    mb->run_lsns.pop_front();
    ++mb->run_progress.settled;
  }
  MailboxSyncProgress p = mb->run_progress;
  p.started = std::all_of(mb->folders.begin(), mb->folders.end(), [](const Folder* f) { return f->run_paged; });
  p.done = p.started && p.settled + p.failed >= p.found &&
           std::all_of(mb->folders.begin(), mb->folders.end(), [](const Folder* f) { return f->run_round_done; });
  return p;
}

const GraphMailboxProgress* GraphSource::MailboxProgress(std::string_view user_id) const {
  const Mailbox* mb = FindMailbox(user_id);
  return mb == nullptr ? nullptr : &mb->progress;
}

bool GraphSource::OnGraphChange(std::string_view resource, std::string_view subscription_id) {
  // resource: "Users/{user}/Messages/{id}" (or "users/{user}@{tenant}/messages/{id}"); the folder
  // is not named, so every folder of the mailbox runs a round (cheap: a delta round asks only for
  // what changed, and one round absorbs a burst of notifications).
  if (resource.size() < 6 || !EqualsIgnoreCase(resource.substr(0, 6), "users/")) return false;
  resource.remove_prefix(6);
  const std::string_view user = resource.substr(0, resource.find('/'));
  Mailbox* found = nullptr;
  for (const auto& mb : mailboxes_) {
    const std::string& id = mb->config.user_id;
    if (EqualsIgnoreCase(user, id) ||
        (user.size() > id.size() && user[id.size()] == '@' && EqualsIgnoreCase(user.substr(0, id.size()), id))) {
      found = mb.get();
      break;
    }
  }
  if (found == nullptr || shut_down_) return false;
  if (!subscription_id.empty()) subscriptions_[std::string(subscription_id)] = found;
  stats_.notification_syncs.Add();
  for (Folder* f : found->folders) StartRound(f);
  return true;
}

void GraphSource::OnGraphLifecycle(std::string_view subscription_id, std::string_view event) {
  if (event != "missed" && event != "reauthorizationRequired") return;
  // Notifications were lost (or will be until the subscription is renewed): an incremental round
  // from the stored delta link returns every change since, whatever the notifications said.
  stats_.lifecycle_syncs.Add();
  if (auto it = subscriptions_.find(subscription_id); it != subscriptions_.end()) {
    for (Folder* f : it->second->folders) StartRound(f);
    return;
  }
  SyncAll();  // a subscription not seen yet: every mailbox, since any of them may be the one
}

}  // namespace mailrail::net
