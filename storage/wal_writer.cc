#include "storage/wal_writer.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "engine/base/counters.h"
#include "engine/topology.h"
#include "storage/checkpoint.h"

namespace mailrail::storage {
namespace {

constexpr unsigned kRingEntries = 16;

base::Error Errno(const char* code, const std::string& what, int err) {
  return base::MakeError(code, what + ": " + std::strerror(err));
}

bool IsNoSpace(int err) { return err == ENOSPC || err == EDQUOT; }

// Writes all of [data, data + n) at `offset`, retrying short writes and EINTR.
int PwriteAll(int fd, const std::byte* data, std::size_t n, std::uint64_t offset) {
  while (n > 0) {
    const ssize_t rc = ::pwrite(fd, data, n, static_cast<off_t>(offset));
    if (rc < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (rc == 0) return EIO;
    data += rc;
    n -= static_cast<std::size_t>(rc);
    offset += static_cast<std::uint64_t>(rc);
  }
  return 0;
}

}  // namespace

WalWriter::WalWriter(WalConfig config) : config_(std::move(config)) {}

WalWriter::~WalWriter() {
  if (ring_ready_) {
    // The kernel may still read the in-flight buffer: wait for the chain before freeing it.
    while (inflight_ != nullptr && inflight_->pending > 0) {
      io_uring_cqe* cqe = nullptr;
      if (io_uring_wait_cqe(&ring_, &cqe) < 0) break;
      Reap();
    }
    io_uring_queue_exit(&ring_);
  }
  if (unlink_ring_ready_) {
    if (unlink_in_flight_) {  // the kernel reads the path: wait for it
      io_uring_cqe* cqe = nullptr;
      if (io_uring_wait_cqe(&unlink_ring_, &cqe) == 0) io_uring_cqe_seen(&unlink_ring_, cqe);
    }
    io_uring_queue_exit(&unlink_ring_);
  }
  for (Group& g : groups_) {
    for (int fd : g.close_after) ::close(fd);
  }
  if (active_fd_ >= 0) ::close(active_fd_);
  if (event_fd_ >= 0) ::close(event_fd_);
}

base::Result<std::unique_ptr<WalWriter>> WalWriter::Open(WalConfig config) {
  if (config.segment_bytes < 4096 || config.segment_bytes % kRecordAlign != 0) {
    return base::MakeError("wal.config", "wal.segment_bytes: must be a multiple of 8 and at least 4096");
  }
  if (config.max_group_bytes < 4096) {
    return base::MakeError("wal.config", "wal.max_group_bytes: must be at least 4096");
  }
  std::error_code ec;
  std::filesystem::create_directories(config.dir, ec);
  if (ec) return base::MakeError("wal.mkdir", "create " + config.dir + ": " + ec.message());
  if (config.sync == WalConfig::Sync::kNone) {
    std::fprintf(stderr,
                 "mailrail: WARNING: wal.sync = \"none\": records are NOT durable and a crash loses "
                 "acknowledged messages. Use only for benchmarks.\n");
  }
  std::unique_ptr<WalWriter> writer(new WalWriter(std::move(config)));
  WalWriter& w = *writer;
  if (const int rc = io_uring_queue_init(kRingEntries, &w.ring_, 0); rc < 0) {
    return Errno("wal.io_uring", "io_uring_queue_init", -rc);
  }
  w.ring_ready_ = true;
  // One io-wq worker per bounded class runs every write and fdatasync, in order, on one thread:
  // concurrency buys nothing for a single in-flight group, and ext4's journal batches (sleeps)
  // when it sees sync writers with changing thread ids.
  unsigned max_workers[2] = {1, 1};
  io_uring_register_iowq_max_workers(&w.ring_, max_workers);
  // ... which may run on any CPU of the process rather than only on the WAL stage's pinned core
  // (best effort: kernels before 5.14 keep the inherited affinity).
  const cpu_set_t cpus = engine::ProcessCpuSet();
  io_uring_register_iowq_aff(&w.ring_, sizeof(cpus), &cpus);
  // Retention's unlinks get their own ring, hence their own io-wq worker: never queued behind a
  // commit, never ahead of one.
  if (const int rc = io_uring_queue_init(2, &w.unlink_ring_, 0); rc < 0) {
    return Errno("wal.io_uring", "io_uring_queue_init (retention)", -rc);
  }
  w.unlink_ring_ready_ = true;
  io_uring_register_iowq_aff(&w.unlink_ring_, sizeof(cpus), &cpus);
  w.event_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (w.event_fd_ < 0) return Errno("wal.eventfd", "eventfd", errno);
  if (const int rc = io_uring_register_eventfd(&w.ring_, w.event_fd_); rc < 0) {
    return Errno("wal.io_uring", "io_uring_register_eventfd", -rc);
  }
  for (Group& g : w.groups_) g.buf.resize(w.config_.max_group_bytes + kRecordHeaderBytes);
  if (auto recovered = w.Recover(); !recovered) return recovered.error();
  return writer;
}

base::Status WalWriter::Recover() {
  const std::string& dir = config_.dir;
  // Segment files half-created by a crash.
  if (DIR* d = ::opendir(dir.c_str())) {
    while (const dirent* entry = ::readdir(d)) {
      const std::string_view name = entry->d_name;
      if (name.starts_with("wal-") && name.ends_with(".log.tmp")) ::unlinkat(::dirfd(d), entry->d_name, 0);
    }
    ::closedir(d);
  }
  auto checkpoint = ReadCheckpoint(dir);
  if (!checkpoint) return checkpoint.error();
  open_report_.checkpoint_lsn = checkpoint.value();
  auto listed = ListSegments(dir);
  if (!listed) return listed.error();
  auto& list = listed.value();

  std::uint64_t last_lsn = 0;
  std::uint64_t floor_lsn = 0;  // LSNs below an empty segment's first were used before
  bool changed_dir = false;
  while (!list.empty()) {
    const auto [first, name] = list.back();
    const std::string path = dir + "/" + name;
    bool header_valid = false;
    SegmentEnd end;
    std::uint64_t file_bytes = 0, records = 0, seg_last = 0;
    {
      auto opened = SegmentReader::Open(path);  // unmapped at the end of this block
      if (!opened) return opened.error();
      SegmentReader& seg = opened.value();
      header_valid = seg.header_valid();
      RecordView view;
      while (header_valid && seg.Next(&view)) {
      }
      end = seg.end();
      file_bytes = seg.file_bytes();
      records = seg.records();
      seg_last = seg.last_lsn();
    }
    if (!header_valid) {
      // A visible segment always had a valid header: this one is damaged. Keep its bytes for an
      // operator, out of the way of the segment about to be created.
      if (::rename(path.c_str(), (path + ".damaged").c_str()) != 0) {
        return Errno("wal.rename", "rename " + path, errno);
      }
      open_report_.set_aside.push_back(name);
      floor_lsn = std::max(floor_lsn, first - 1);
      list.pop_back();
      changed_dir = true;
      continue;
    }
    if (!end.clean && open_report_.tail_segment.empty()) {
      open_report_.tail_segment = name;
      open_report_.tail_bytes_cut = end.bytes_after;
      open_report_.tail_records_cut = end.headers_after;
      open_report_.tail_valid_records_after = end.valid_after;
    }
    if (records == 0) {
      if (::unlink(path.c_str()) != 0) return Errno("wal.unlink", "unlink " + path, errno);
      floor_lsn = std::max(floor_lsn, first - 1);
      list.pop_back();
      changed_dir = true;
      continue;
    }
    if (file_bytes > end.offset) {
      const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
      if (fd < 0) return Errno("wal.open", "open " + path, errno);
      const bool ok = ::ftruncate(fd, static_cast<off_t>(end.offset)) == 0 && ::fsync(fd) == 0;
      const int err = errno;
      ::close(fd);
      if (!ok) return Errno("wal.truncate", "truncate " + path, err);
    }
    last_lsn = seg_last;
    break;
  }
  if (changed_dir) {
    if (auto synced = SyncDirectory(dir); !synced) return synced;
  }
  const Clock::time_point now = Clock::now();
  for (const auto& [first, name] : list) {
    struct stat st {};
    const std::string path = dir + "/" + name;
    if (::stat(path.c_str(), &st) != 0) return Errno("wal.stat", "stat " + path, errno);
    SegmentInfo info;
    info.first_lsn = first;
    info.name = name;
    info.allocated = static_cast<std::uint64_t>(st.st_blocks) * 512;
    info.sealed_at = now;
    log_bytes_ += info.allocated;
    segments_.push_back(std::move(info));
  }
  open_report_.last_lsn = last_lsn;
  next_lsn_ = std::max({last_lsn, floor_lsn, open_report_.checkpoint_lsn}) + 1;
  durable_lsn_ = next_lsn_ - 1;
  open_report_.next_lsn = next_lsn_;
  stats_.durable_lsn.store(durable_lsn_, std::memory_order_relaxed);
  applied_forwarded_lsn_ = 0;
  forwarded_lsn_.store(open_report_.checkpoint_lsn, std::memory_order_relaxed);
  if (auto created = CreateSegment(next_lsn_); !created) {
    if (created.error().code != "wal.full") return created.error();
    full_.store(true, std::memory_order_relaxed);  // retention may free space; appends retry
  }
  return base::OkStatus();
}

base::Status WalWriter::CreateSegment(std::uint64_t first_lsn) {
  if (config_.disk_budget_bytes != 0 && log_bytes_ + config_.segment_bytes > config_.disk_budget_bytes) {
    return base::MakeError("wal.full", "wal.disk_budget_bytes reached");
  }
  const std::string name = SegmentFileName(first_lsn);
  const std::string path = config_.dir + "/" + name;
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Errno(IsNoSpace(errno) ? "wal.full" : "wal.create", "create " + tmp, errno);
  auto fail = [&](const char* what, int err) {
    ::close(fd);
    ::unlink(tmp.c_str());
    return Errno(IsNoSpace(err) ? "wal.full" : "wal.create", std::string(what) + " " + tmp, err);
  };
  if (::fallocate(fd, 0, 0, static_cast<off_t>(config_.segment_bytes)) != 0) {
    const int err = errno;
    if (err != EOPNOTSUPP) return fail("fallocate", err);
    if (::ftruncate(fd, static_cast<off_t>(config_.segment_bytes)) != 0) return fail("ftruncate", errno);
  }
  std::byte header[kSegmentHeaderBytes];
  EncodeSegmentHeader(header, first_lsn, base::UnixMs());
  if (const int err = PwriteAll(fd, header, sizeof(header), 0); err != 0) return fail("write", err);
  if (::fsync(fd) != 0) return fail("fsync", errno);
  if (::rename(tmp.c_str(), path.c_str()) != 0) return fail("rename", errno);
  if (auto synced = SyncDirectory(config_.dir); !synced) {
    ::close(fd);
    return synced;
  }
  struct stat st {};
  const std::uint64_t allocated =
      ::fstat(fd, &st) == 0 ? static_cast<std::uint64_t>(st.st_blocks) * 512 : config_.segment_bytes;
  active_fd_ = fd;
  active_offset_ = kSegmentHeaderBytes;
  SegmentInfo info;
  info.first_lsn = first_lsn;
  info.name = name;
  info.allocated = allocated;
  segments_.push_back(std::move(info));
  log_bytes_ += allocated;
  stats_.log_bytes.store(log_bytes_, std::memory_order_relaxed);
  stats_.segments_created.fetch_add(1, std::memory_order_relaxed);
  return base::OkStatus();
}

bool WalWriter::EnsureActiveSegment(Clock::time_point now) {
  if (active_fd_ >= 0) return true;
  if (full_.load(std::memory_order_relaxed) && now < retry_create_at_) return false;
  auto created = CreateSegment(next_lsn_);
  if (created) {
    full_.store(false, std::memory_order_relaxed);
    return true;
  }
  if (created.error().code == "wal.full") {
    if (!full_.load(std::memory_order_relaxed)) stats_.disk_full_events.fetch_add(1, std::memory_order_relaxed);
    full_.store(true, std::memory_order_relaxed);
    retry_create_at_ = now + std::chrono::milliseconds(1);
    return false;
  }
  Fail(created.error());
  return false;
}

WalWriter::Part& WalWriter::CurrentPart() {
  Group& g = *open_;
  if (g.part_count == 0 || g.parts[g.part_count - 1].fd != active_fd_) {
    MR_CHECK(g.part_count < kMaxParts) << "WAL group touches more than " << kMaxParts << " segments";
    g.parts[g.part_count++] = Part{active_fd_, active_offset_, g.used, g.used};
  }
  return g.parts[g.part_count - 1];
}

void WalWriter::SealActive(Clock::time_point now) {
  Group& g = *open_;
  const std::uint64_t remaining = config_.segment_bytes - active_offset_;
  if (remaining >= kRecordHeaderBytes) {
    if (g.used == 0) g.opened = now;
    Part& part = CurrentPart();
    EncodePaddingHeader(g.buf.data() + g.used, static_cast<std::uint32_t>(remaining - kRecordHeaderBytes));
    g.used += kRecordHeaderBytes;
    part.end = g.used;
  }
  g.close_after.push_back(active_fd_);
  segments_.back().sealed_at = now;
  active_fd_ = -1;
}

std::uint64_t WalWriter::max_message_bytes() const {
  return config_.segment_bytes - kSegmentHeaderBytes - kRecordHeaderBytes - kMessageMetaBytes;
}

WalWriter::AppendResult WalWriter::TryAppend(const WalMessage& m, Clock::time_point now) {
  if (failure_) return {AppendStatus::kFailed, 0};
  const std::size_t payload = m.payload_bytes();
  const std::size_t need = RecordFootprint(payload);
  if (m.source_id.size() > 0xFFFF || m.position.size() > 0xFFFF || payload > kMaxPayloadBytes ||
      need > config_.segment_bytes - kSegmentHeaderBytes) {
    return {AppendStatus::kTooLarge, 0};
  }
  Group& g = *open_;
  if (g.used > 0 && g.used + need + kRecordHeaderBytes > config_.max_group_bytes) {
    return {AppendStatus::kGroupFull, 0};
  }
  if (!EnsureActiveSegment(now)) return {failure_ ? AppendStatus::kFailed : AppendStatus::kDiskFull, 0};
  if (active_offset_ + need > config_.segment_bytes) {
    if (g.part_count + 2 > kMaxParts) return {AppendStatus::kGroupFull, 0};
    SealActive(now);
    if (!EnsureActiveSegment(now)) return {failure_ ? AppendStatus::kFailed : AppendStatus::kDiskFull, 0};
  }
  if (g.used == 0) g.opened = now;
  Part& part = CurrentPart();
  if (g.buf.size() < g.used + need + kRecordHeaderBytes) g.buf.resize(g.used + need + kRecordHeaderBytes);
  EncodeMessageRecord(g.buf.data() + g.used, next_lsn_, m);
  g.used += need;
  part.end = g.used;
  active_offset_ += need;
  g.last_lsn = next_lsn_;
  ++g.records;
  return {AppendStatus::kAppended, next_lsn_++};
}

void WalWriter::Submit() {
  Group& g = *open_;
  inflight_ = open_;
  open_ = (open_ == &groups_[0]) ? &groups_[1] : &groups_[0];
  const bool sync = config_.sync == WalConfig::Sync::kData;
  iovecs_.resize(g.part_count);
  for (std::size_t i = 0; i < g.part_count; ++i) {
    const Part& part = g.parts[i];
    const bool more = i + 1 < g.part_count;
    iovecs_[i] = iovec{g.buf.data() + part.begin, part.end - part.begin};
    io_uring_sqe* write = io_uring_get_sqe(&ring_);
    MR_CHECK(write != nullptr) << "io_uring submission queue full";
    io_uring_prep_writev(write, part.fd, &iovecs_[i], 1, part.file_offset);
    write->user_data = 2 * i;
    // IOSQE_ASYNC: the copy into the page cache runs on the io-wq worker (which runs the linked
    // fdatasync next anyway), not inline in io_uring_submit, so the submitting thread, which may
    // hold ConcurrentWalWriter's mutex, returns at once.
    write->flags |= IOSQE_ASYNC;
    if (sync || more) write->flags |= IOSQE_IO_LINK;
    if (sync) {
      io_uring_sqe* fsync = io_uring_get_sqe(&ring_);
      MR_CHECK(fsync != nullptr) << "io_uring submission queue full";
      io_uring_prep_fsync(fsync, part.fd, IORING_FSYNC_DATASYNC);
      fsync->user_data = 2 * i + 1;
      if (more) fsync->flags |= IOSQE_IO_LINK;
    }
  }
  g.pending = static_cast<unsigned>(g.part_count * (sync ? 2 : 1));
  g.submitted = Clock::now();
  g.short_write = false;
  g.error = 0;
  const int rc = io_uring_submit(&ring_);
  if (rc < 0) {
    g.pending = 0;
    Fail(Errno("wal.io_uring", "io_uring_submit", -rc));
  }
}

void WalWriter::Reap() {
  io_uring_cqe* cqe = nullptr;
  unsigned head = 0;
  unsigned seen = 0;
  io_uring_for_each_cqe(&ring_, head, cqe) {
    ++seen;
    if (inflight_ == nullptr) continue;
    Group& g = *inflight_;
    const std::size_t part = cqe->user_data / 2;
    const bool is_write = cqe->user_data % 2 == 0;
    const int res = cqe->res;
    if (res == -ECANCELED) {
      g.short_write = true;  // an earlier link in the chain fell short; redone synchronously
    } else if (res < 0) {
      g.error = -res;
    } else if (is_write && static_cast<std::size_t>(res) < g.parts[part].end - g.parts[part].begin) {
      g.short_write = true;
    }
    if (g.pending > 0) --g.pending;
  }
  io_uring_cq_advance(&ring_, seen);
  if (inflight_ != nullptr && inflight_->pending == 0) CompleteInflight();
}

void WalWriter::CompleteInflight() {
  Group& g = *inflight_;
  if (g.error == 0 && g.short_write) {
    stats_.short_write_fallbacks.fetch_add(1, std::memory_order_relaxed);
    for (std::size_t i = 0; i < g.part_count && g.error == 0; ++i) {
      const Part& part = g.parts[i];
      g.error = PwriteAll(part.fd, g.buf.data() + part.begin, part.end - part.begin, part.file_offset);
      if (g.error == 0 && config_.sync == WalConfig::Sync::kData && ::fdatasync(part.fd) != 0) g.error = errno;
    }
  }
  if (g.error != 0) {
    Fail(Errno(IsNoSpace(g.error) ? "wal.full" : "wal.io", "WAL group write/fdatasync failed", g.error));
    return;
  }
  durable_lsn_ = std::max(durable_lsn_, g.last_lsn);
  stats_.groups.fetch_add(1, std::memory_order_relaxed);
  stats_.records.fetch_add(g.records, std::memory_order_relaxed);
  stats_.bytes.fetch_add(g.used, std::memory_order_relaxed);
  stats_.durable_lsn.store(durable_lsn_, std::memory_order_relaxed);
  stats_.group_records.Record(g.records);
  stats_.group_bytes.Record(g.used);
  stats_.commit_latency_ns.Record(static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - g.submitted).count()));
  // The log is read again only after a restart: the group's pages, clean now, leave the page cache
  // instead of pushing out what the pipeline still needs (a replay writes as much WAL as it reads).
  // The partial page at the end of a part stays (the next group appends to it).
  if (config_.sync == WalConfig::Sync::kData) {
    for (std::size_t i = 0; i < g.part_count; ++i) {
      const Part& part = g.parts[i];
      ::posix_fadvise(part.fd, static_cast<off_t>(part.file_offset), static_cast<off_t>(part.end - part.begin),
                      POSIX_FADV_DONTNEED);
    }
  }
  for (int fd : g.close_after) ::close(fd);
  g.close_after.clear();
  g.used = 0;
  g.part_count = 0;
  g.records = 0;
  g.last_lsn = 0;
  inflight_ = nullptr;
}

void WalWriter::Fail(base::Error error) {
  if (!failure_) {
    std::fprintf(stderr, "mailrail: WAL failed, no further records are accepted: %s: %s\n", error.code.c_str(),
                 error.message.c_str());
    failure_ = std::move(error);
  }
}

void WalWriter::ApplyRetention(Clock::time_point now) {
  const std::uint64_t forwarded = forwarded_lsn_.load(std::memory_order_acquire);
  if (forwarded == applied_forwarded_lsn_ && config_.keep_forwarded.count() == 0) return;
  applied_forwarded_lsn_ = forwarded;
  while (segments_.size() >= 2) {
    const SegmentInfo& oldest = segments_.front();
    if (segments_[1].first_lsn - 1 > forwarded) break;
    if (now - oldest.sealed_at < config_.keep_forwarded) break;
    unlinks_.push_back(Unlink{config_.dir + "/" + oldest.name, oldest.allocated});
    segments_.pop_front();
  }
}

void WalWriter::PumpUnlinks(Clock::time_point now, bool paced) {
  if (unlink_in_flight_) {
    io_uring_cqe* cqe = nullptr;
    if (io_uring_peek_cqe(&unlink_ring_, &cqe) != 0 || cqe == nullptr) return;
    const int res = cqe->res;
    io_uring_cqe_seen(&unlink_ring_, cqe);
    unlink_in_flight_ = false;
    last_unlink_done_ = now;
    const Unlink done = std::move(unlinks_.front());
    unlinks_.pop_front();
    if (res < 0 && res != -ENOENT) {
      Fail(Errno("wal.unlink", "unlink " + done.path, -res));
      return;
    }
    log_bytes_ -= std::min(log_bytes_, done.allocated);
    stats_.log_bytes.store(log_bytes_, std::memory_order_relaxed);
    stats_.segments_deleted.fetch_add(1, std::memory_order_relaxed);
    retry_create_at_ = Clock::time_point{};  // a full log may create its next segment now
  }
  if (unlinks_.empty() || failure_) return;
  // Paced unless the log is full: each unlink makes ext4 discard (with the discard mount option)
  // or at least free the segment's extents; back to back, they starve the pipeline's reads and
  // syncs of the device for seconds after a dedup snapshot lets 30 s of segments go at once.
  if (paced && !full_.load(std::memory_order_relaxed) && now - last_unlink_done_ < kUnlinkGap) return;
  io_uring_sqe* sqe = io_uring_get_sqe(&unlink_ring_);
  MR_CHECK(sqe != nullptr) << "retention io_uring submission queue full";
  io_uring_prep_unlinkat(sqe, AT_FDCWD, unlinks_.front().path.c_str(), 0);
  sqe->flags |= IOSQE_ASYNC;
  if (const int rc = io_uring_submit(&unlink_ring_); rc < 0) {
    Fail(Errno("wal.io_uring", "io_uring_submit (retention)", -rc));
    return;
  }
  unlink_in_flight_ = true;
}

std::uint64_t WalWriter::Poll(Clock::time_point now) {
  if (inflight_ != nullptr) Reap();
  ApplyRetention(now);
  PumpUnlinks(now, /*paced=*/true);
  if (!failure_ && inflight_ == nullptr && open_->used > 0 &&
      (open_->used + kRecordHeaderBytes >= config_.max_group_bytes || now - open_->opened >= config_.max_linger)) {
    Submit();
  }
  return durable_lsn_;
}

Clock::time_point WalWriter::next_deadline() const {
  if (inflight_ != nullptr) return Clock::now() + kInFlightRecheck;
  if (open_->used > 0) return open_->opened + config_.max_linger;
  if (!unlinks_.empty()) {  // an idle log still frees its disk
    return unlink_in_flight_ ? Clock::now() + kUnlinkRecheck : last_unlink_done_ + kUnlinkGap;
  }
  return Clock::time_point::max();
}

void WalWriter::Flush() {
  while (!failure_ && (inflight_ != nullptr || open_->used > 0)) {
    if (inflight_ == nullptr) Submit();
    io_uring_cqe* cqe = nullptr;
    if (inflight_ != nullptr && io_uring_wait_cqe(&ring_, &cqe) < 0) break;
    Reap();
  }
  FinishRetention();
}

void WalWriter::FinishRetention() {
  while (!failure_ && !unlinks_.empty()) {
    io_uring_cqe* cqe = nullptr;
    if (unlink_in_flight_ && io_uring_wait_cqe(&unlink_ring_, &cqe) < 0) break;
    PumpUnlinks(Clock::now(), /*paced=*/false);  // the caller waits
  }
}

void WalWriter::WaitForEvent(std::chrono::microseconds timeout) const {
  pollfd pfd{event_fd_, POLLIN, 0};
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(timeout).count();
  timespec ts{static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
  if (::ppoll(&pfd, 1, &ts, nullptr) > 0) {
    std::uint64_t value = 0;
    [[maybe_unused]] const ssize_t rc = ::read(event_fd_, &value, sizeof(value));
  }
}

void WalWriter::WaitForCompletion(std::chrono::microseconds timeout) {
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(timeout).count();
  __kernel_timespec ts{ns / 1'000'000'000, ns % 1'000'000'000};
  io_uring_cqe* cqe = nullptr;
  io_uring_wait_cqe_timeout(&ring_, &cqe, &ts);  // the CQE stays queued; Poll reaps it
}

void WalWriter::Wake() const {
  const std::uint64_t one = 1;
  [[maybe_unused]] const ssize_t rc = ::write(event_fd_, &one, sizeof(one));
}

}  // namespace mailrail::storage
