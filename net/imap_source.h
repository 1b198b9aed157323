#pragma once
// ImapSource: pulls mail from IMAP mailboxes into the pipeline. It runs on a net::EventLoop (the
// daemon's network thread, which also runs the webhook: both push into the same SPSC ingest
// channel from that one thread) and keeps one ImapConnection per (mailbox, folder):
//
//   connect ─► [STARTTLS] ─► LOGIN | AUTHENTICATE PLAIN | XOAUTH2 ─► CAPABILITY
//     ─► EXAMINE folder (SELECT with on_durable; then the acknowledgement catch-up search)
//     ─► UID SEARCH UID <last+1>:* [SINCE <today - months>] NOT LARGER <max_message_bytes>
//        (last = 0 on the first sync and after a UIDVALIDITY change: a full resync)
//     ─► UID FETCH <set> (UID BODY.PEEK[]) in batches, up to pipeline_depth commands in flight
//     ─► IDLE until EXISTS (or NOOP every poll_interval when IDLE is absent or disabled) ─► SEARCH ...
//
// Each fetched message becomes a pooled Message (source kind imap, id "<mailbox>/<folder>",
// position "<UIDVALIDITY>:<UID>") whose ack sink is this source. Messages of one FETCH enter the
// pipeline in UID order once the FETCH completes, so the WAL acknowledges each folder's messages
// in UID order and "highest durable UID" is contiguous: every UID below it that the search found
// is durable too.
// Checkpoint: per folder, UIDVALIDITY and the highest durable UID, in one text file written
//   crash-atomically (tmp, fsync, rename, fsync dir) at most every checkpoint_interval by a
//   small checkpoint thread (the loop never waits for the disk) and by WriteCheckpoint at
//   shutdown, only from acknowledgements. A restart resumes after the checkpoint; what was
//   fetched but not yet durable at a crash is fetched again (dedup drops the repeat).
// Faults: any network or protocol error, a BYE or a command timeout closes the connection; it is
//   reopened after an exponential backoff (backoff_base doubling up to backoff_max, reset by a
//   successful EXAMINE) and the sync resumes after the highest UID already handed to the pipeline.
// Addresses: Create resolves each host once (getaddrinfo, every address). A connection starts at the
//   address that answered last; a failed connect goes on at once to the next address, and only
//   when every address failed in a row does the backoff apply.
// Connection limit: at most max_connections_per_server connections per host:port; folders beyond
//   it wait in FIFO order, and a folder that has caught up while others wait for its server
//   closes its connection and comes back after poll_interval instead of idling, so every folder
//   gets its turn.
// Acknowledgement (on_durable = seen | move): after the WAL reports messages durable, their UIDs are
//   flagged (UID STORE +FLAGS.SILENT (\Seen)) or moved (UID MOVE, or UID COPY + \Deleted +
//   UID EXPUNGE with UIDPLUS), in batches of up to fetch_batch UIDs, never before. UIDs are never
//   reused, so a moved message cannot be fetched again and the checkpoint logic is unchanged. After
//   every SELECT, UIDs at or below the durable checkpoint that are still unseen (seen) or still in
//   the folder (move), within the same SINCE / NOT LARGER criteria as the fetch, are acknowledged
//   too: a crash between durability and the STORE is made good at the next session.
// XOAUTH2: AUTHENTICATE XOAUTH2 with base64("user=" user ^A "auth=Bearer " token ^A ^A) in the
//   continuation; a token_file is read before every connection, and when the server refuses the
//   token the file is read again at once: a changed token is tried without waiting for the
//   backoff, an unchanged one after it.
// Secrets: passwords and tokens are sent only in LOGIN / AUTHENTICATE and never appear in logs or
//   errors.
//
// Threading: Start, Shutdown, WriteCheckpoint, in_flight, PollNow and the callbacks on the loop
//   thread; the checkpoint thread only writes texts the loop built (and may call the log);
//   OnDurable on the WAL thread (SourceOutlet queues the acks and applies them on the loop
//   thread); stats() from any thread (relaxed counters).
// Ownership: pool, channel and loop outlive the source, and the source outlives every message it
//   pushed (the WAL calls OnDurable on it).

#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "engine/channel.h"
#include "net/checkpoint_file.h"
#include "net/counter.h"
#include "net/event_loop.h"
#include "net/imap_connection.h"
#include "net/mailbox_sync_source.h"
#include "net/source_outlet.h"
#include "stages/message.h"

namespace mailrail::net {

struct ImapMailboxConfig {
  std::string name;  // in SourceRef ids and the checkpoint; default "<user>@<host>"
  std::string user_id;  // the sync-job API's key (MailboxSyncSource); default: name. Shared by
                        // several mailboxes, a run covers the folders of all of them
  // false: the mailbox is not synchronised until a sync job starts its backfill (or, after a
  // restart, until it has a checkpoint line: its backfill ran before).
  bool backfill_at_start = true;
  std::string host;
  std::uint16_t port = 993;
  ImapTls tls = ImapTls::kImplicit;
  bool verify_peer = true;
  std::string ca_file;  // PEM bundle; empty: the system store
  std::string user;
  std::string password;  // secret: never logged
  std::string auth = "login";  // login | plain (AUTHENTICATE PLAIN) | xoauth2 (AUTHENTICATE XOAUTH2)
  // xoauth2: the bearer token (secret: never logged), or a file holding it that is read again
  // before every connection and after a refused authentication (it may be rotated on disk).
  std::string token;
  std::string token_file;
  std::vector<std::string> folders{"INBOX"};
  unsigned months = 0;  // backfill window; 0: every message in the folder
  bool idle = true;     // use IDLE when the server has it; false: NOOP polling
  // What to do to a message in the mailbox once its WAL record is durable. Anything but kNone
  // opens the folder with SELECT (read-write) instead of EXAMINE.
  enum class OnDurable { kNone, kSeen, kMove };
  OnDurable on_durable = OnDurable::kNone;
  std::string move_to;  // kMove: the destination folder (as the server lists it)
};

struct ImapSourceConfig {
  std::vector<ImapMailboxConfig> mailboxes;
  std::string checkpoint_path;  // required
  std::size_t fetch_batch = 64;      // UIDs per UID FETCH
  std::size_t pipeline_depth = 4;    // UID FETCH commands in flight per connection
  std::size_t max_connections_per_server = 8;
  std::size_t max_message_bytes = 64u << 20;  // larger messages are counted and skipped
  std::chrono::milliseconds poll_interval{30000};
  std::chrono::milliseconds idle_restart{25 * 60 * 1000};  // RFC 2177: re-issue IDLE before 29 min
  std::chrono::milliseconds response_timeout{60000};
  std::chrono::milliseconds backoff_base{250};
  std::chrono::milliseconds backoff_max{30000};
  std::chrono::milliseconds checkpoint_interval{200};
};

struct ImapStats {
  Counter connects;
  Counter disconnects;       // errors and timeouts that closed a connection
  Counter connect_fallbacks; // connects that failed and went on to the host's next address
  Counter connections_open;  // gauge: connection slots in use, all servers
  Counter connections_peak;  // gauge: the most slots ever in use at once on one server
  Counter fetch_commands;
  Counter messages;          // pushed to the pipeline
  Counter bytes;
  Counter durable;
  Counter acknowledged;      // UIDs flagged \Seen or moved after they were durable
  Counter rejected_too_large;
  Counter uidvalidity_resets;
  Counter idle_wakeups;
  Counter checkpoint_writes;
};

// One log event with fields (never secrets); the daemon formats it like its own events.
using ImapLogFields = std::vector<std::pair<std::string_view, std::string>>;
using ImapLog = std::function<void(std::string_view event, const ImapLogFields& fields)>;

class ImapSource final : public stages::DurableAckSink, public MailboxSyncSource {
 public:
  // Resolves every host (getaddrinfo, blocking), prepares TLS contexts and reads the checkpoint.
  static base::Result<std::unique_ptr<ImapSource>> Create(EventLoop* loop, stages::MessagePool* pool,
                                                          engine::Channel<stages::Message*>* channel,
                                                          ImapSourceConfig config, ImapLog log);
  ~ImapSource() override;
  ImapSource(const ImapSource&) = delete;
  ImapSource& operator=(const ImapSource&) = delete;

  // Loop thread: starts every folder's sync.
  void Start();
  // Loop thread: closes every connection and stops fetching; messages already pushed still
  // become durable (wait for in_flight() == 0, then WriteCheckpoint()).
  void Shutdown();
  base::Status WriteCheckpoint();
  // Messages pushed (or held for the push) and not yet reported durable. Loop thread.
  std::size_t in_flight() const;
  // Loop thread: every synchronised folder searches for new mail as soon as it can: at once when
  // idling, polling or waiting for its turn, after the current fetch otherwise
  // (POST /polling/trigger). Returns how many folders were nudged.
  std::size_t PollNow();

  void OnDurable(std::span<const stages::DurableAck> acks) override;
  const ImapStats& stats() const { return stats_; }

  // MailboxSyncSource, loop thread. A run covers every folder of the user's mailbox; it begins at
  // each folder's next search (at once for an idling or polling folder). A fresh backfill abandons
  // the folder's connection, resets its checkpoint to UID 0 (written before StartBackfill returns)
  // and searches the window from UID 1: what was fetched before comes again and dedup drops it.
  // A resumed backfill searches the whole window too (for the total) but fetches only after the
  // checkpoint; what the checkpoint covers counts as durable and settled.
  bool HasMailbox(std::string_view user_id) const override;
  bool StartBackfill(std::string_view user_id, unsigned months, bool resume) override;
  bool SyncNow(std::string_view user_id) override;
  MailboxSyncProgress Progress(std::string_view user_id, std::uint64_t terminal_durable_lsn) override;

 private:
  struct Folder;
  struct Server {
    struct Address {
      sockaddr_storage storage{};
      socklen_t length = 0;
      std::string text;  // numeric, for logs
    };
    std::vector<Address> addresses;  // every resolved address, in getaddrinfo's order
    std::size_t preferred = 0;       // the last one that answered: where connections start
    std::shared_ptr<TlsContext> tls;
    std::size_t active = 0;
    std::deque<Folder*> waiting;
  };

  ImapSource(EventLoop* loop, stages::MessagePool* pool, engine::Channel<stages::Message*>* channel,
             ImapSourceConfig config, ImapLog log);
  void LoadCheckpointOrError();  // sets checkpoint_error_ on a damaged file
  void RequestSlot(Folder* f);
  void TakeSlot(Folder* f);
  void ReleaseSlot(Folder* f);
  void Connect(Folder* f);
  // xoauth2: loads the folder's token from the config or the token file; false (logged, without
  // the contents) when the file cannot be read or holds no usable token.
  bool ReadToken(Folder* f);
  void Disconnect(Folder* f, const base::Error& error);
  // Closes the folder's connection (if any), forgets the FETCHes in flight, frees its slot.
  void EndSession(Folder* f);
  // Enables every folder of the user's mailbox and asks each for a run; returns them.
  std::vector<Folder*> RequestRun(std::string_view user_id, bool backfill);
  void ScheduleRetry(Folder* f, std::chrono::milliseconds delay);
  void Login(Folder* f);
  void Select(Folder* f);
  void Search(Folder* f);
  void FetchMore(Folder* f);
  void CaughtUp(Folder* f);
  void Poll(Folder* f);  // NOOP, then search
  void Nudge(Folder* f);  // searches as soon as the folder's state allows
  // Flags or moves the folder's durable UIDs that wait for it (on_durable), batched; while IDLE,
  // ends it first (the search that follows sends them).
  void Acknowledge(Folder* f);
  // After SELECT: durable UIDs (at or below the checkpoint) still unflagged or unmoved, left over by
  // a crash or a lost connection, are acknowledged too; then the usual search.
  void CatchUpAcknowledgements(Folder* f);
  void BeginRun(Folder* f);
  void StartIdle(Folder* f);
  void PushReady();
  void Settle(Folder* f);  // advances the checkpoint over acknowledged and skipped messages
  void ApplyAcks(std::span<const stages::DurableAck> acks);
  std::string CheckpointText();  // loop thread: the file's contents from the folders' state
  void Tick();
  bool CheckOk(Folder* f, const ImapResponse& done, std::string_view what);

  EventLoop* loop_;
  ImapSourceConfig config_;
  ImapLog log_;
  ImapStats stats_;
  std::map<std::string, Server> servers_;  // by "host:port"
  std::vector<std::unique_ptr<Folder>> folders_;
  std::map<std::string, std::pair<std::uint64_t, std::uint64_t>> loaded_checkpoint_;  // id -> (validity, uid)
  std::string checkpoint_error_;

  bool shut_down_ = false;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);

  // Written by its own thread from texts the loop builds (the loop never waits for fsync).
  std::unique_ptr<CheckpointFile> checkpoint_file_;
  SourceOutlet outlet_;
};

}  // namespace mailrail::net
