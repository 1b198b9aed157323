#pragma once
// WalWriter: the append side of the write-ahead log, with group commit over io_uring.
//
// Records are encoded (header, payload, checksum) into the open group's buffer as they are
// appended. At most one group is in flight: when none is, the open group is submitted once it is
// old enough (max_linger) or big enough (max_group_bytes), as one io_uring writev per segment it
// touches, each linked (IOSQE_IO_LINK) to an fdatasync of that segment. When the chain completes,
// every record of the group is durable and durable_lsn() advances to the group's last LSN;
// records appended meanwhile form the next group. A group never exceeds max_group_bytes (a single
// larger record travels alone), so TryAppend reports kGroupFull while both groups are taken.
//
// Segments: new segments are created preallocated (fallocate) under a temporary name, their
//   header written and fsynced, then renamed into place and the directory fsynced, so a segment
//   visible under its name always has a valid header. Creation happens synchronously inside
//   TryAppend at rollover (once per segment_bytes; a few milliseconds).
// Recovery (in Open): the newest segment is scanned, its torn tail (and preallocated zeros) cut
//   with ftruncate + fsync, and a fresh segment started at the next LSN; the cut is reported.
//   LSNs continue after max(last record, forward checkpoint), so they are never reused.
// Retention: segments entirely at or below the forwarded LSN (set_forwarded_lsn, after the forward
//   checkpoint is durable) are deleted from Poll, oldest first, once they are older than
//   keep_forwarded. The segment being written is never deleted. Deletion is an io_uring unlinkat
//   on a ring of its own, one at a time and at least kUnlinkGap apart unless the log is full: an
//   unlink of a 64 MiB segment waits ~20 ms on ext4 with the discard mount option, which must
//   block neither the WAL stage's thread nor the commit chain, and a burst of them starves the
//   device. A segment's bytes leave the disk budget when its unlink completes.
// Disk budget: a new segment is not created when the log would then exceed disk_budget_bytes, or
//   when fallocate fails for lack of space (ENOSPC/EDQUOT). TryAppend then reports kDiskFull and
//   is_full() is true: ingest applies backpressure; nothing already appended is affected. Creation
//   is retried on later TryAppend calls (at most once per millisecond) as retention frees space.
// Failure: a failed write or fdatasync leaves the page cache in an unknown state (the fsync-gate
//   lesson), so the writer stops: failure() is set, TryAppend returns kFailed and durable_lsn()
//   never advances again. The daemon must exit and recover from the log.
//
// Threading: every method except set_forwarded_lsn, forwarded_lsn, is_full, stats() and config()
//   is called by one thread at a time (the WAL stage's thread, or ConcurrentWalWriter's mutex
//   holder). set_forwarded_lsn (release store), forwarded_lsn (acquire load), is_full and stats
//   (relaxed loads) and config (immutable) may be called from any thread.
// Blocking: TryAppend and Poll never wait for the disk, except for segment creation and the rare
//   short-write fallback. event_fd() becomes readable when io_uring posts a completion: park on it
//   (poll/epoll) while a group is in flight.

#include <liburing.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/base/result.h"
#include "engine/histogram.h"
#include "storage/wal_format.h"
#include "storage/wal_reader.h"

namespace mailrail::storage {

using Clock = std::chrono::steady_clock;

struct WalConfig {
  std::string dir = "./mailrail-data/wal";
  std::uint64_t segment_bytes = 64ull << 20;      // wal.segment_bytes
  std::chrono::microseconds max_linger{0};        // wal.max_linger_us: 0 = submit when idle
  std::size_t max_group_bytes = 4u << 20;         // wal.max_group_bytes
  enum class Sync : std::uint8_t { kData, kNone };
  Sync sync = Sync::kData;                        // wal.sync = "data" | "none" (benchmarks only)
  std::uint64_t disk_budget_bytes = 0;            // wal.disk_budget_bytes: 0 = only the file system's
  std::chrono::seconds keep_forwarded{0};         // wal.keep_forwarded_s: keep forwarded segments
};

// Plain counters for the stats socket. Written by the writer thread (relaxed), read by anyone.
struct WalWriterStats {
  std::atomic<std::uint64_t> groups{0};
  std::atomic<std::uint64_t> records{0};
  std::atomic<std::uint64_t> bytes{0};
  std::atomic<std::uint64_t> durable_lsn{0};
  std::atomic<std::uint64_t> segments_created{0};
  std::atomic<std::uint64_t> segments_deleted{0};
  std::atomic<std::uint64_t> log_bytes{0};        // allocated bytes of all segments
  std::atomic<std::uint64_t> disk_full_events{0};
  std::atomic<std::uint64_t> short_write_fallbacks{0};
  engine::LatencyHistogram commit_latency_ns;  // group submitted -> completion reaped (write + fdatasync)
  engine::LatencyHistogram group_records;      // records per commit group
  engine::LatencyHistogram group_bytes;        // bytes per commit group
};

// What Open found and repaired.
struct WalOpenReport {
  std::uint64_t last_lsn = 0;        // last valid record before this start (0: empty log)
  std::uint64_t checkpoint_lsn = 0;  // forward checkpoint read at open
  std::uint64_t next_lsn = 1;        // first LSN this writer assigns
  std::string tail_segment;          // segment whose tail was cut ("" if none)
  std::uint64_t tail_bytes_cut = 0;
  std::uint64_t tail_records_cut = 0;
  std::uint64_t tail_valid_records_after = 0;
  std::vector<std::string> set_aside;  // newest segments with a bad header, renamed *.damaged
};

class WalWriter {
 public:
  enum class AppendStatus : std::uint8_t { kAppended, kGroupFull, kDiskFull, kTooLarge, kFailed };
  struct AppendResult {
    AppendStatus status;
    std::uint64_t lsn;  // valid when kAppended
  };

  static base::Result<std::unique_ptr<WalWriter>> Open(WalConfig config);
  ~WalWriter();
  WalWriter(const WalWriter&) = delete;
  WalWriter& operator=(const WalWriter&) = delete;

  // Encodes `m` into the open group. Never waits for the disk.
  AppendResult TryAppend(const WalMessage& m, Clock::time_point now);
  // Reaps completions (advancing durable_lsn), applies retention, and submits the open group
  // when no group is in flight and the commit policy says so. Returns durable_lsn().
  std::uint64_t Poll(Clock::time_point now);

  // Submits whatever is appended and waits until it is durable (or the writer failed), and until
  // the segments retention queued are deleted. Blocking: for shutdown and tests, never on the
  // pipeline's hot path.
  void Flush();
  // Waits until the segment deletions retention queued have completed (their space is free).
  // Blocking, like Flush.
  void FinishRetention();

  std::uint64_t durable_lsn() const { return durable_lsn_; }
  std::uint64_t last_appended_lsn() const { return next_lsn_ - 1; }
  bool commit_in_flight() const { return inflight_ != nullptr; }
  bool has_unsubmitted() const { return open_->used > 0; }
  // When Poll must run next without new input: the linger deadline of the open group, or now +
  // kInFlightRecheck while a group is in flight, now + kUnlinkRecheck while retention deletes
  // segments; max() when idle.
  Clock::time_point next_deadline() const;
  int event_fd() const { return event_fd_; }
  // Blocks up to `timeout` until event_fd() is readable (a completion, or Wake()). For threads
  // that own the writer and have nothing else to wait for.
  void WaitForEvent(std::chrono::microseconds timeout) const;
  // Blocks up to `timeout` until the ring has a completion to reap, waiting on the completion
  // queue itself (io_uring_enter), which also runs the io_uring task work that continues a link
  // chain. Preferred over WaitForEvent while a group is in flight: on this kernel the registered
  // eventfd was seen to miss or defer ~5-10% of wake-ups under load.
  void WaitForCompletion(std::chrono::microseconds timeout);
  // Makes event_fd() readable (wakes a thread in WaitForEvent). Any thread.
  void Wake() const;

  // Largest raw message (with empty source id and position) a segment can hold.
  std::uint64_t max_message_bytes() const;
  const WalOpenReport& open_report() const { return open_report_; }
  const base::Error* failure() const { return failure_ ? &*failure_ : nullptr; }
  bool is_full() const { return full_.load(std::memory_order_relaxed); }
  void set_forwarded_lsn(std::uint64_t lsn) { forwarded_lsn_.store(lsn, std::memory_order_release); }
  std::uint64_t forwarded_lsn() const { return forwarded_lsn_.load(std::memory_order_acquire); }
  const WalWriterStats& stats() const { return stats_; }
  const WalConfig& config() const { return config_; }

  static constexpr std::chrono::microseconds kInFlightRecheck{50};
  static constexpr std::chrono::milliseconds kUnlinkRecheck{2};
  static constexpr std::chrono::milliseconds kUnlinkGap{50};  // between unlinks unless full

 private:
  static constexpr std::size_t kMaxParts = 4;  // segments one group may touch
  struct Part {
    int fd = -1;
    std::uint64_t file_offset = 0;
    std::size_t begin = 0;
    std::size_t end = 0;
  };
  struct Group {
    std::vector<std::byte> buf;
    std::size_t used = 0;
    std::array<Part, kMaxParts> parts;
    std::size_t part_count = 0;
    std::uint64_t last_lsn = 0;
    std::uint64_t records = 0;
    Clock::time_point opened;
    Clock::time_point submitted;
    std::vector<int> close_after;  // sealed segment fds, closed when the group completes
    unsigned pending = 0;          // CQEs outstanding
    bool short_write = false;
    int error = 0;
  };
  struct SegmentInfo {
    std::uint64_t first_lsn = 0;
    std::string name;
    std::uint64_t allocated = 0;
    Clock::time_point sealed_at = Clock::time_point::max();  // max: still being written
  };

  explicit WalWriter(WalConfig config);
  base::Status Recover();
  base::Status CreateSegment(std::uint64_t first_lsn);
  bool EnsureActiveSegment(Clock::time_point now);
  void SealActive(Clock::time_point now);
  Part& CurrentPart();
  void Submit();
  void Reap();
  void CompleteInflight();
  void Fail(base::Error error);
  void ApplyRetention(Clock::time_point now);
  // Reaps a completed unlink; submits the oldest queued one when none is in flight (when `paced`,
  // not before kUnlinkGap after the last one, unless the log is full).
  void PumpUnlinks(Clock::time_point now, bool paced);

  WalConfig config_;
  io_uring ring_{};
  bool ring_ready_ = false;
  int event_fd_ = -1;
  Group groups_[2];
  Group* open_ = &groups_[0];
  Group* inflight_ = nullptr;
  std::vector<iovec> iovecs_;

  int active_fd_ = -1;
  std::uint64_t active_offset_ = 0;  // next write offset in the active segment
  std::deque<SegmentInfo> segments_;
  // Segments retention took off segments_, oldest first; the front one may be in flight on
  // unlink_ring_ (its path must live until the completion).
  struct Unlink {
    std::string path;
    std::uint64_t allocated = 0;
  };
  std::deque<Unlink> unlinks_;
  bool unlink_in_flight_ = false;
  Clock::time_point last_unlink_done_{};
  io_uring unlink_ring_{};
  bool unlink_ring_ready_ = false;
  std::uint64_t log_bytes_ = 0;
  Clock::time_point retry_create_at_{};

  std::uint64_t next_lsn_ = 1;
  std::uint64_t durable_lsn_ = 0;
  std::optional<base::Error> failure_;
  std::atomic<bool> full_{false};
  std::atomic<std::uint64_t> forwarded_lsn_{0};
  std::uint64_t applied_forwarded_lsn_ = 0;
  WalOpenReport open_report_;
  WalWriterStats stats_;
};

}  // namespace mailrail::storage
