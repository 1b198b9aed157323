#pragma once
// ForwardClient: the HTTP side of the forward stage. It batches pre-serialized JSON records and
// POSTs them to {base}/batch-metadata as {"batch_id": "...", "items": [record, ...]} with an
// Idempotency-Key derived from the batch's LSN range, so a batch re-sent after a crash carries
// the same key (when it is cut at the same LSNs).
//
// Batching: a batch is sealed when it holds batch_max_records records or batch_max_bytes bytes,
//   or linger after its first record, whichever comes first (Flush() seals at once).
// Delivery: up to max_in_flight batches are in flight. 2xx acknowledges the batch. Transport
//   errors, timeouts, 408, 429 and 5xx are retried with exponential backoff and full jitter
//   (uniform in [0, min(backoff_max, backoff_base * 2^attempt)]); a Retry-After header (seconds or
//   an HTTP date) replaces the computed delay, capped at retry_after_max, and pauses every batch
//   (the downstream is rate limiting us, not this batch). Other statuses (4xx,
//   unexpected 1xx/3xx) and batches that failed max_attempts times go to the DeadLetterLog, with
//   the status and response body. Nothing is dropped: a batch leaves only acknowledged or durable
//   in the dead-letter log.
// Circuit breaker: breaker_threshold consecutive retriable failures open it; while open nothing is
//   sent; after breaker_open it lets one probe batch through (half-open); the probe's success
//   closes it, its failure opens it again. The state is in stats() and circuit_state().
// Stable keys across restarts: with batch_journal_path set, every sealed batch's LSN range is
//   appended to that file (write, no fsync: it survives a killed process, not necessarily a power
//   loss). A client created after a restart re-cuts records falling in a remembered range at
//   exactly that range, ignoring size and linger, so a batch re-sent after a crash carries the
//   same batch_id and Idempotency-Key as its first copy. Ranges at or below
//   forwarded_through_lsn are dropped when the file is opened (it is rewritten compacted).
// Checkpoint: acknowledged_through() is the highest LSN L such that every record with LSN <= L
//   that was appended (or skipped) is acknowledged or dead-lettered. The WAL checkpoint may
//   advance to it and never further.
//
// Threading: Append/Skip/Flush are called by one producer thread (the forward stage); they take
//   a mutex once per call (not per record) and post to the loop when a batch is sealed.
//   acknowledged_through, buffered_bytes, idle, circuit_state and stats may be read from any
//   thread. Everything else runs on the loop thread. The dead-letter append (write + fdatasync)
//   blocks the loop; it happens only on the failure path.
// Backpressure: Append takes fewer records than offered once max_buffered_bytes are buffered
//   (open, sealed and in flight); the producer keeps the rest and retries when the room waiter
//   (if set) is notified.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <string_view>

#include "engine/base/result.h"
#include "engine/waiter.h"
#include "net/counter.h"
#include "net/dead_letter_log.h"
#include "net/event_loop.h"
#include "net/http_client.h"

namespace mailrail::net {

struct ForwardConfig {
  HttpClientConfig http;  // base_url, connections, request_timeout, TLS verification
  std::string path = "/batch-metadata";
  std::size_t batch_max_records = 500;
  std::size_t batch_max_bytes = 1 << 20;
  std::chrono::milliseconds linger{20};
  std::size_t max_in_flight = 2;
  std::size_t max_buffered_bytes = 64 << 20;
  std::size_t max_attempts = 10;
  std::chrono::milliseconds backoff_base{100};
  std::chrono::milliseconds backoff_max{30000};
  std::chrono::milliseconds retry_after_max{300000};
  std::size_t breaker_threshold = 5;
  std::chrono::milliseconds breaker_open{5000};
  std::string dead_letter_dir;  // <data dir>/dlq
  std::string batch_journal_path;          // empty: batch cuts are not remembered
  std::uint64_t forwarded_through_lsn = 0;  // the forward checkpoint when the client is created
  std::uint64_t jitter_seed = 0;  // 0: seeded from std::random_device
};

struct ForwardRecord {
  std::uint64_t lsn = 0;
  std::string_view json;  // one record object, no trailing newline
};

enum class CircuitState : int { kClosed = 0, kOpen = 1, kHalfOpen = 2 };
std::string_view ToString(CircuitState state);

struct ForwardStats {
  Counter attempts;               // POSTs started
  Counter batches_acknowledged;
  Counter records_acknowledged;
  Counter retries;
  Counter batches_dead_lettered;
  Counter records_dead_lettered;
  Counter responses_429;
  Counter responses_5xx;
  Counter responses_other_4xx;
  Counter transport_errors;       // connect, reset, timeout, TLS
  Counter circuit_opens;
  Counter dead_letter_write_errors;
  Counter batch_journal_write_errors;
  Counter batches_recut;          // sealed at a range remembered from before a restart
};

// Retry-After as a delay from `now`: delta-seconds or an HTTP date (IMF-fixdate). nullopt if
// absent or unparseable.
std::optional<std::chrono::milliseconds> ParseRetryAfter(std::string_view value,
                                                         std::chrono::system_clock::time_point now);

class ForwardClient {
 public:
  static base::Result<std::unique_ptr<ForwardClient>> Create(EventLoop* loop, ForwardConfig config);
  ~ForwardClient();
  ForwardClient(const ForwardClient&) = delete;
  ForwardClient& operator=(const ForwardClient&) = delete;

  // Producer thread. LSNs strictly increase across Append and Skip calls.
  std::size_t Append(std::span<const ForwardRecord> records);
  void Skip(std::uint64_t lsn);
  void Flush();
  void set_room_waiter(engine::Waiter* waiter) { room_waiter_ = waiter; }

  // Any thread.
  std::uint64_t acknowledged_through() const { return acknowledged_through_.load(std::memory_order_acquire); }
  std::size_t buffered_bytes() const { return buffered_bytes_.load(std::memory_order_relaxed); }
  bool idle() const;
  CircuitState circuit_state() const {
    return static_cast<CircuitState>(circuit_state_.load(std::memory_order_relaxed));
  }
  const ForwardStats& stats() const { return stats_; }

  // Loop thread: stops sending; batches not yet acknowledged stay unacknowledged (the WAL
  // re-feeds them after a restart).
  void Shutdown();

 private:
  struct Batch {
    std::uint64_t seq = 0;
    std::uint64_t first_lsn = 0;
    std::uint64_t last_lsn = 0;
    std::size_t records = 0;
    std::string items;  // "rec,rec,..." while open
    std::string body;   // complete JSON once sealed
    std::string key;
    std::string batch_id;
    std::size_t attempts = 0;
    std::size_t charged_bytes = 0;
  };
  // A contiguous LSN range in append order; done when its batch is acknowledged or dead-lettered
  // (skip ranges are done at once).
  struct Segment {
    std::uint64_t through_lsn = 0;
    std::uint64_t batch_seq = 0;  // 0: a skip range
    bool done = false;
  };

  ForwardClient(EventLoop* loop, ForwardConfig config);
  base::Status OpenBatchJournal();
  // Producer side, under mutex_.
  void OpenBatchLocked(std::uint64_t first_lsn);
  void SealLocked();
  void AdvanceLocked();
  // Loop side.
  void TakeSealed();
  void Dispatch();
  bool BreakerAllows();
  void OnResult(std::unique_ptr<Batch> batch, base::Result<ClientResponse> result);
  void OnFailure(std::unique_ptr<Batch> batch, int status, std::string error, std::string body,
                 std::optional<std::chrono::milliseconds> retry_after);
  void SendToDeadLetters(std::unique_ptr<Batch> batch, int status, std::string error, std::string body);
  void Complete(const Batch& batch);
  void SetCircuit(CircuitState state);

  EventLoop* loop_;
  ForwardConfig config_;
  std::unique_ptr<HttpClient> http_;
  std::optional<DeadLetterLog> dead_letters_;
  engine::Waiter* room_waiter_ = nullptr;

  // Shared between producer and loop.
  mutable std::mutex mutex_;
  std::unique_ptr<Batch> open_;                // guarded
  std::deque<std::unique_ptr<Batch>> sealed_;  // guarded
  std::deque<Segment> segments_;               // guarded
  std::uint64_t next_seq_ = 1;                 // guarded
  std::uint64_t last_lsn_ = 0;                 // guarded
  std::size_t unfinished_batches_ = 0;         // guarded
  std::deque<std::pair<std::uint64_t, std::uint64_t>> remembered_cuts_;  // guarded; [first, last] LSNs
  std::uint64_t recut_last_lsn_ = 0;           // guarded; the open batch ends here (0: by size/linger)
  int journal_fd_ = -1;                        // guarded
  std::atomic<std::uint64_t> acknowledged_through_{0};
  std::atomic<std::size_t> buffered_bytes_{0};
  std::atomic<int> circuit_state_{0};

  // Loop thread.
  std::deque<std::unique_ptr<Batch>> ready_;
  std::size_t in_flight_ = 0;
  std::size_t consecutive_failures_ = 0;
  bool probe_in_flight_ = false;
  Clock::time_point open_until_{};
  Clock::time_point paused_until_{};  // Retry-After: no new attempts before this
  bool shut_down_ = false;
  std::mt19937_64 rng_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
  ForwardStats stats_;
};

}  // namespace mailrail::net
