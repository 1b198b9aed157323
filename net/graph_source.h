#pragma once
// GraphSource: pulls mail from Microsoft Graph mailboxes into the pipeline with delta queries. It
// runs on a net::EventLoop (the daemon's network thread, which also runs the webhook: both push
// into the same SPSC ingest channel from that one thread, and the webhook's Graph notifications
// reach the source by direct calls on that thread).
//
// Per (mailbox, folder), one delta round at a time:
//   GET /users/{user}/mailFolders/{folder}/messages/delta?$select=...[&$filter=receivedDateTime ge T]
//     (the $filter only on a round from scratch with months > 0; later rounds follow the links)
//   ─► page: items + @odata.nextLink ─► GET nextLink ─► ... ─► last page: @odata.deltaLink
//   ─► caught up; the next round GETs the deltaLink after poll_interval, on SyncNow, or when the
//      webhook reports a change notification or a lifecycle "missed" / "reauthorizationRequired".
// Up to max_pages_ahead pages of a folder are fetched before the earlier ones are durable. Each
// item becomes a pooled Message (source kind graph, id "<mailbox>/<folder>", position = Graph id):
// the delta item itself (Graph JSON, with its attachments spliced in from GET
// /messages/{id}/attachments when fetch_attachments and hasAttachments), or the raw MIME of GET
// /messages/{id}/$value when raw_mime. Items marked @removed are counted and skipped. Messages
// enter the ring in page order, so the WAL acknowledges them in page order.
// Checkpoint: per folder, the link that follows the last page whose every message is durable (a
//   nextLink mid-round, the deltaLink after it) — never a link past a message that is not durable.
//   One text file, written crash-atomically by CheckpointFile's thread. After a restart each folder
//   resumes by GETting its stored link; what was fetched but not yet durable is fetched again
//   (dedup drops the repeat).
// Limits, per mailbox, by construction: at most max_concurrent_requests Graph requests in flight
//   (the rest wait in FIFO order); no request leaves while rate_requests were sent in the last
//   rate_window (GraphRequestBudget, a sliding window: never more in any window, not just on
//   average); a 429 or 503 pauses the mailbox for its Retry-After (seconds or HTTP date;
//   exponential backoff when absent) and the request is re-queued at the front; other 5xx and
//   network errors retry that request after backoff_base doubling up to backoff_max, with jitter;
//   410 Gone or error code syncStateNotFound / resyncRequired restarts that folder's delta from
//   scratch (counted; pages of the abandoned round never move the checkpoint); 401 gets one token
//   refresh and a retry. A request that keeps failing is retried without end (the folder waits;
//   MailboxProgress().last_error says why): skipping it would move the checkpoint past a message that
//   is not in the WAL.
// Token: OAuth2 client credentials (POST token_url); refreshed when 80% of expires_in has passed
//   and after a 401; failures are logged (status and error code only) and retried with backoff.
// Secrets: client_secret is sent only in the token request body and the access token only in the
//   Authorization header; neither appears in logs, errors, stats or progress.
//
// Threading: Create on any thread; Start, Shutdown, WriteCheckpoint, in_flight, the control
//   methods (HasMailbox, StartBackfill, SyncNow, Progress) and the notification hooks on the loop
//   thread; OnDurable on the WAL thread (SourceOutlet queues the acks and applies them on the loop
//   thread); stats() from any thread (relaxed counters).
// Ownership: pool, channel and loop outlive the source, and the source outlives every message it
//   pushed (the WAL calls OnDurable on it). Destroy it after the loop stopped.

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "engine/channel.h"
#include "net/checkpoint_file.h"
#include "net/counter.h"
#include "net/event_loop.h"
#include "net/graph_api.h"
#include "net/http_client.h"
#include "net/ingest_handler.h"
#include "net/mailbox_sync_source.h"
#include "net/source_outlet.h"
#include "stages/message.h"

namespace mailrail::net {

struct GraphMailboxConfig {
  std::string user_id;  // the {id} of /users/{id}: object id or user principal name
  std::string name;     // in SourceRef ids and the checkpoint; default user_id
  std::vector<std::string> folders{"inbox"};
  unsigned months = 0;  // backfill window (receivedDateTime); 0: every message in the folder
};

struct GraphSourceConfig {
  std::vector<GraphMailboxConfig> mailboxes;
  std::string checkpoint_path;  // required
  std::string base_url = "https://graph.microsoft.com/v1.0";
  std::string token_url;  // required (the daemon builds it from the tenant)
  std::string client_id;
  std::string client_secret;  // secret: never logged
  std::string scope = "https://graph.microsoft.com/.default";
  bool verify_peer = true;
  std::string ca_file;  // PEM bundle for base_url and token_url; empty: the system store
  std::size_t page_size = 100;  // Prefer: odata.maxpagesize
  bool raw_mime = false;
  bool fetch_attachments = false;
  std::size_t max_concurrent_requests = 4;  // per mailbox
  std::size_t rate_requests = 10'000;       // per mailbox per rate_window
  std::chrono::milliseconds rate_window{600'000};
  std::size_t max_pages_ahead = 4;          // per folder: pages fetched but not yet durable
  std::size_t max_message_bytes = 64u << 20;  // larger messages are counted and skipped
  std::chrono::milliseconds poll_interval{300'000};
  std::chrono::milliseconds request_timeout{30'000};
  std::chrono::milliseconds backoff_base{500};
  std::chrono::milliseconds backoff_max{60'000};
  std::chrono::milliseconds checkpoint_interval{200};
};

struct GraphStats {
  Counter requests;           // Graph requests sent (token requests not included)
  Counter pages;              // delta pages received
  Counter messages;           // pushed to the pipeline
  Counter bytes;
  Counter durable;
  Counter removed;            // @removed items skipped
  Counter failed;             // items that could not be fetched (e.g. 404: deleted meanwhile)
  Counter rejected_too_large;
  Counter throttled;          // 429 and 503 answers
  Counter retries;            // requests sent again after an error or a throttle
  Counter token_refreshes;    // access tokens obtained
  Counter token_errors;
  Counter delta_restarts;     // folders restarted from scratch (410, syncStateNotFound, resyncRequired)
  Counter notification_syncs; // change notifications turned into a delta round
  Counter lifecycle_syncs;    // lifecycle notifications (missed, reauthorizationRequired) turned into rounds
  Counter checkpoint_writes;
};

// Per mailbox, for the sync-job API. caught_up: every folder's last round reached its deltaLink
// and all its messages are durable.
struct GraphMailboxProgress {
  std::uint64_t messages_found = 0;
  std::uint64_t messages_pushed = 0;
  std::uint64_t messages_durable = 0;
  std::uint64_t messages_failed = 0;
  bool caught_up = false;
  std::string last_error;  // never holds a secret
};

using GraphLogFields = std::vector<std::pair<std::string_view, std::string>>;
using GraphLog = std::function<void(std::string_view event, const GraphLogFields& fields)>;

class GraphSource final : public stages::DurableAckSink, public GraphNotificationTarget, public MailboxSyncSource {
 public:
  // Resolves the hosts (blocking), prepares TLS and reads the checkpoint.
  static base::Result<std::unique_ptr<GraphSource>> Create(EventLoop* loop, stages::MessagePool* pool,
                                                           engine::Channel<stages::Message*>* channel,
                                                           GraphSourceConfig config, GraphLog log);
  ~GraphSource() override;
  GraphSource(const GraphSource&) = delete;
  GraphSource& operator=(const GraphSource&) = delete;

  // Loop thread: gets a token and starts a round in every folder.
  void Start();
  // Loop thread: stops every request and round; messages already pushed still become durable
  // (wait for in_flight() == 0, then WriteCheckpoint()).
  void Shutdown();
  base::Status WriteCheckpoint();
  std::size_t in_flight() const;  // pushed (or held for the push) and not yet durable

  // Control: MailboxSyncSource (loop thread). user_id matches GraphMailboxConfig::user_id or
  // name, case-insensitively. Each call below but SyncAll begins a run of the mailbox (the sync-job
  // counts): the run's rounds are those begun from the call on; messages of earlier rounds are
  // not counted. Progress: found = delta items (not @removed) of the run's pages; durable and
  // settled as the WAL and the terminal stage report them; failed = items that could not be
  // fetched or were too large; done once every folder completed a round of the run (deltaLink
  // reached, every page settled) and every found message is settled or failed.
  bool HasMailbox(std::string_view user_id) const override;
  // resume = false: restarts every folder of the mailbox from scratch with a window of `months`
  // (0: everything). resume = true (after a restart): the rounds running from the checkpoint
  // continue and belong to the run. False for an unknown mailbox or after Shutdown.
  bool StartBackfill(std::string_view user_id, unsigned months, bool resume) override;
  // An incremental round in every folder of the mailbox now (after the current one, if running).
  bool SyncNow(std::string_view user_id) override;
  MailboxSyncProgress Progress(std::string_view user_id, std::uint64_t terminal_durable_lsn) override;
  std::size_t SyncAll();  // every mailbox, not a run; returns the folder count
  // Since Start or the last fresh backfill, with the last error (operators' view).
  const GraphMailboxProgress* MailboxProgress(std::string_view user_id) const;

  // GraphNotificationTarget (loop thread, from the webhook).
  bool OnGraphChange(std::string_view resource, std::string_view subscription_id) override;
  void OnGraphLifecycle(std::string_view subscription_id, std::string_view event) override;

  void OnDurable(std::span<const stages::DurableAck> acks) override;
  const GraphStats& stats() const { return stats_; }

 private:
  struct Mailbox;
  struct Folder;
  struct Page;
  struct Call;

  GraphSource(EventLoop* loop, stages::MessagePool* pool, engine::Channel<stages::Message*>* channel,
              GraphSourceConfig config, GraphLog log);
  base::Status LoadCheckpoint();
  Mailbox* FindMailbox(std::string_view user_id) const;
  // Starts a new run: counts reset; adopt_active_rounds makes the rounds running now part of it.
  void BeginRun(Mailbox* mb, bool adopt_active_rounds);

  // Requests.
  void Issue(Mailbox* mb, std::shared_ptr<Call> call, bool front = false);
  void Pump(Mailbox* mb);
  void PumpAll();
  void Send(Mailbox* mb, std::shared_ptr<Call> call);
  void OnResponse(Mailbox* mb, std::shared_ptr<Call> call, std::uint64_t token_generation,
                  base::Result<ClientResponse> result);
  void RetryLater(Mailbox* mb, std::shared_ptr<Call> call, std::string error);
  void PauseMailbox(Mailbox* mb, std::chrono::milliseconds delay);
  std::chrono::milliseconds Backoff(unsigned attempt);
  void RequestToken();

  // Delta rounds.
  void StartRound(Folder* f);
  void RequestPage(Folder* f);
  void OnPage(Folder* f, std::uint64_t epoch, const ClientResponse& response);
  void RestartFolder(Folder* f, std::string_view reason);
  void FetchItem(Folder* f, Page* page, std::size_t index);
  void Release(Folder* f);  // moves fetched items, in page order, to the push queue
  void PushReady();
  void ApplyAcks(std::span<const stages::DurableAck> acks);
  void Settle(Folder* f);
  void RoundDone(Folder* f);
  void UpdateCaughtUp(Mailbox* mb);
  std::string CheckpointText() const;
  std::string InitialDeltaTarget(const Folder* f) const;
  std::string MessageTarget(const Folder* f, std::string_view id, std::string_view suffix) const;

  EventLoop* loop_;
  GraphSourceConfig config_;
  GraphLog log_;
  GraphStats stats_;
  std::unique_ptr<HttpClient> graph_;
  std::unique_ptr<HttpClient> token_client_;
  std::string token_path_;
  std::vector<std::unique_ptr<Mailbox>> mailboxes_;
  std::vector<std::unique_ptr<Folder>> folders_;
  std::map<std::string, std::string> loaded_links_;  // checkpoint: "<mailbox>/<folder>" -> link
  std::map<std::string, Mailbox*, std::less<>> subscriptions_;  // learned from change notifications

  std::string access_token_;            // secret
  std::uint64_t token_generation_ = 0;  // bumped by every new token
  bool token_requested_ = false;
  unsigned token_failures_ = 0;
  std::minstd_rand jitter_{std::random_device{}()};

  bool shut_down_ = false;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
  std::unique_ptr<CheckpointFile> checkpoint_file_;
  SourceOutlet outlet_;
};

}  // namespace mailrail::net
