// bench_wal: durable appends per second, bandwidth and commit latency of the WAL, against two peers
// in the same run, for 512 B, 4 KiB and 64 KiB records with 1, 8 and 64 concurrent appenders:
//   BM_WalGroupCommit_IoUring      mailrail's ConcurrentWalWriter: group commit, io_uring writev
//                                  linked to fdatasync (the production path)
//   BM_WalPerRecord_Fdatasync      each appender: pwrite its record, then fdatasync
//   BM_WalGroupCommit_SyncSyscalls the same grouping (gather while a commit is in flight, max
//                                  group bytes) with a leader doing pwrite + fdatasync itself
// plus BM_WalStream_NonBlocking (one thread through the pipeline-stage API, 64 KiB records),
// BM_WalRecovery_OpenAndScan (start-up on a 1 GiB log with a cold page cache) and
// BM_Disk_SequentialWrite1MiB (1 MiB writes, one fdatasync at the end: the disk's bandwidth).
// Each run appends for a fixed wall time; the summary printed at the end gives same-run ratios.
//
//   build/bench/bench_wal                                   # data under build/bench/wal-bench-data
//   MAILRAIL_BENCH_DIR=/mnt/disk/x build/bench/bench_wal    # elsewhere (never a tmpfs)
//   MAILRAIL_BENCH_SECONDS=0.5 ...                          # time per run (default 0.6)
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "storage/concurrent_wal_writer.h"
#include "storage/wal_reader.h"
#include "storage/wal_writer.h"

namespace {

using mailrail::storage::Clock;
using mailrail::storage::ConcurrentWalWriter;
using mailrail::storage::EncodeMessageRecord;
using mailrail::storage::RecordFootprint;
using mailrail::storage::WalConfig;
using mailrail::storage::WalMessage;
using mailrail::storage::WalWriter;

std::string BenchDir() {
  if (const char* env = std::getenv("MAILRAIL_BENCH_DIR")) return env;
  return std::filesystem::read_symlink("/proc/self/exe").parent_path().string() + "/wal-bench-data";
}

double RunSeconds() {
  if (const char* env = std::getenv("MAILRAIL_BENCH_SECONDS")) return std::atof(env);
  return 0.6;
}

std::string FreshDir(const std::string& name) {
  const std::string dir = BenchDir() + "/" + name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

// Same-run figures for the summary: records/s and MB/s by benchmark name.
struct Figure {
  double records_per_s = 0;
  double mb_per_s = 0;
};
std::map<std::string, Figure>& Figures() {
  static std::map<std::string, Figure> figures;
  return figures;
}

struct RunResult {
  std::uint64_t records = 0;
  std::uint64_t commits = 0;
  double seconds = 0;
  std::vector<double> latencies_us;
};

// Runs `threads` appenders, each calling append(thread, payload) until the deadline, timing each.
template <typename Append>
RunResult RunAppenders(int threads, std::size_t record_bytes, Append append) {
  const std::string payload(record_bytes - 48, 'm');  // ~record_bytes on disk with header and metadata
  std::vector<std::vector<double>> lat(static_cast<std::size_t>(threads));
  std::atomic<bool> go{false};
  std::atomic<int> ready{0};
  const auto run_for = std::chrono::duration<double>(RunSeconds());
  std::vector<std::thread> pool;
  Clock::time_point start;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      auto& mine = lat[static_cast<std::size_t>(t)];
      mine.reserve(1 << 16);
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      const Clock::time_point deadline = start + std::chrono::duration_cast<Clock::duration>(run_for);
      for (;;) {
        const Clock::time_point t0 = Clock::now();
        if (t0 >= deadline) break;
        append(t, payload);
        mine.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
      }
    });
  }
  while (ready.load() < threads) std::this_thread::yield();
  start = Clock::now();
  go.store(true, std::memory_order_release);
  for (auto& th : pool) th.join();
  RunResult r;
  r.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  for (auto& v : lat) r.latencies_us.insert(r.latencies_us.end(), v.begin(), v.end());
  r.records = r.latencies_us.size();
  return r;
}

std::string Key(const char* kind, const benchmark::State& state) {
  return std::string(kind) + "/" + std::to_string(state.range(0)) + "/" + std::to_string(state.range(1));
}

void Report(benchmark::State& state, RunResult& r, std::size_t record_bytes, const std::string& key) {
  state.SetIterationTime(r.seconds);
  std::sort(r.latencies_us.begin(), r.latencies_us.end());
  auto pct = [&](double p) {
    if (r.latencies_us.empty()) return 0.0;
    return r.latencies_us[std::min(r.latencies_us.size() - 1, static_cast<std::size_t>(p * r.latencies_us.size()))];
  };
  state.SetItemsProcessed(static_cast<std::int64_t>(r.records));
  state.SetBytesProcessed(static_cast<std::int64_t>(r.records * record_bytes));
  state.counters["commits_per_s"] = static_cast<double>(r.commits) / r.seconds;
  state.counters["records_per_commit"] = r.commits ? static_cast<double>(r.records) / r.commits : 0;
  state.counters["p50_us"] = pct(0.50);
  state.counters["p99_us"] = pct(0.99);
  state.counters["p999_us"] = pct(0.999);
  Figure& f = Figures()[key];
  f.records_per_s = static_cast<double>(r.records) / r.seconds;
  f.mb_per_s = static_cast<double>(r.records * record_bytes) / r.seconds / 1e6;
}

WalMessage Message(const std::string& payload) {
  WalMessage m;
  m.source_id = "bench";
  m.position = "0";
  m.raw = payload;
  return m;
}

// (a) mailrail's group commit over io_uring.
void BM_WalGroupCommit_IoUring(benchmark::State& state) {
  const auto record_bytes = static_cast<std::size_t>(state.range(0));
  const int threads = static_cast<int>(state.range(1));
  for (auto _ : state) {
    WalConfig config;
    config.dir = FreshDir("group-io-uring");
    config.segment_bytes = 256ull << 20;
    auto wal = ConcurrentWalWriter::Open(config);
    if (!wal) {
      state.SkipWithError(wal.error().message.c_str());
      return;
    }
    RunResult r = RunAppenders(threads, record_bytes, [&](int, const std::string& payload) {
      if (!wal.value()->AppendAndWait(Message(payload))) std::abort();
    });
    r.commits = wal.value()->stats().groups.load();
    wal.value().reset();
    Report(state, r, record_bytes, Key("group-io-uring", state));
    std::filesystem::remove_all(config.dir);
  }
}

// An append-only file where every record lands at a reserved offset; preallocated like a segment.
class PlainFile {
 public:
  explicit PlainFile(const std::string& dir) : path_(dir + "/log") {
    fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0 || ::fallocate(fd_, 0, 0, 1ll << 30) != 0) std::abort();
  }
  ~PlainFile() { ::close(fd_); }
  // Encodes a record into `buf` exactly as the WAL would; returns its size.
  static std::size_t Encode(std::vector<std::byte>& buf, const std::string& payload) {
    const WalMessage m = Message(payload);
    buf.resize(RecordFootprint(m.payload_bytes()));
    return EncodeMessageRecord(buf.data(), 1, m);
  }
  std::uint64_t Reserve(std::size_t n) {
    const std::uint64_t at = offset_.fetch_add(n);
    if (at + n > (1ull << 30)) offset_.store(0);  // wrap inside the preallocated gigabyte
    return at % ((1ull << 30) - n);
  }
  void WriteAt(const std::byte* data, std::size_t n, std::uint64_t at) const {
    if (::pwrite(fd_, data, n, static_cast<off_t>(at)) != static_cast<ssize_t>(n)) std::abort();
  }
  void Sync() const {
    if (::fdatasync(fd_) != 0) std::abort();
  }

 private:
  std::string path_;
  int fd_ = -1;
  std::atomic<std::uint64_t> offset_{0};
};

// (b) write + fdatasync per record, every appender on its own.
void BM_WalPerRecord_Fdatasync(benchmark::State& state) {
  const auto record_bytes = static_cast<std::size_t>(state.range(0));
  const int threads = static_cast<int>(state.range(1));
  for (auto _ : state) {
    const std::string dir = FreshDir("per-record");
    RunResult r;
    {
      PlainFile file(dir);
      std::vector<std::vector<std::byte>> bufs(static_cast<std::size_t>(threads));
      r = RunAppenders(threads, record_bytes, [&](int t, const std::string& payload) {
        auto& buf = bufs[static_cast<std::size_t>(t)];
        const std::size_t n = PlainFile::Encode(buf, payload);
        file.WriteAt(buf.data(), n, file.Reserve(n));
        file.Sync();
      });
    }
    r.commits = r.records;
    Report(state, r, record_bytes, Key("per-record", state));
    std::filesystem::remove_all(dir);
  }
}

// (c) the same grouping with synchronous syscalls: appenders copy into the open group; whoever
// finds no commit in flight becomes the leader, writes the group with pwrite, fdatasyncs, wakes
// the group's waiters, and leads again while records gathered meanwhile are waiting.
class SyncGroupCommitter {
 public:
  explicit SyncGroupCommitter(const std::string& dir) : file_(dir) {
    open_.reserve(kMaxGroupBytes + (1 << 17));
    flushing_.reserve(kMaxGroupBytes + (1 << 17));
  }
  void AppendAndWait(const std::string& payload, std::vector<std::byte>& scratch) {
    const std::size_t n = PlainFile::Encode(scratch, payload);
    std::unique_lock lock(mutex_);
    cv_.wait(lock, [&] { return open_.empty() || open_.size() + n <= kMaxGroupBytes; });
    open_.insert(open_.end(), scratch.begin(), scratch.begin() + static_cast<std::ptrdiff_t>(n));
    const std::uint64_t my_group = open_group_;
    while (durable_group_ < my_group + 1) {
      if (in_flight_) {
        cv_.wait(lock);
        continue;
      }
      // Lead: commit the open group.
      in_flight_ = true;
      std::swap(open_, flushing_);
      const std::uint64_t group = open_group_++;
      lock.unlock();
      file_.WriteAt(flushing_.data(), flushing_.size(), file_.Reserve(flushing_.size()));
      file_.Sync();
      lock.lock();
      flushing_.clear();
      durable_group_ = group + 1;
      in_flight_ = false;
      ++commits_;
      cv_.notify_all();
    }
  }
  std::uint64_t commits() const { return commits_; }

 private:
  static constexpr std::size_t kMaxGroupBytes = 4 << 20;  // as WalConfig::max_group_bytes
  PlainFile file_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<std::byte> open_, flushing_;
  std::uint64_t open_group_ = 0;     // id of the group being filled
  std::uint64_t durable_group_ = 0;  // groups [0, durable_group_) are durable
  bool in_flight_ = false;
  std::uint64_t commits_ = 0;
};

void BM_WalGroupCommit_SyncSyscalls(benchmark::State& state) {
  const auto record_bytes = static_cast<std::size_t>(state.range(0));
  const int threads = static_cast<int>(state.range(1));
  for (auto _ : state) {
    const std::string dir = FreshDir("group-sync");
    RunResult r;
    {
      SyncGroupCommitter committer(dir);
      std::vector<std::vector<std::byte>> bufs(static_cast<std::size_t>(threads));
      r = RunAppenders(threads, record_bytes, [&](int t, const std::string& payload) {
        committer.AppendAndWait(payload, bufs[static_cast<std::size_t>(t)]);
      });
      r.commits = committer.commits();
    }
    Report(state, r, record_bytes, Key("group-sync", state));
    std::filesystem::remove_all(dir);
  }
}

// The pipeline-stage API: one thread appends 64 KiB records without waiting for each, polling
// completions, as WalStage does. Sustained WAL bandwidth with every group fdatasynced.
void BM_WalStream_NonBlocking(benchmark::State& state) {
  const auto record_bytes = static_cast<std::size_t>(state.range(0));
  for (auto _ : state) {
    WalConfig config;
    config.dir = FreshDir("stream");
    config.segment_bytes = 256ull << 20;
    config.max_group_bytes = static_cast<std::size_t>(state.range(1)) << 20;
    auto opened = WalWriter::Open(config);
    if (!opened) {
      state.SkipWithError(opened.error().message.c_str());
      return;
    }
    WalWriter& w = *opened.value();
    const std::string payload(record_bytes - 48, 's');
    const WalMessage m = Message(payload);
    const Clock::time_point start = Clock::now();
    const Clock::time_point deadline =
        start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(RunSeconds()));
    while (Clock::now() < deadline) {
      const auto r = w.TryAppend(m, Clock::now());
      if (r.status == WalWriter::AppendStatus::kAppended) continue;
      if (r.status != WalWriter::AppendStatus::kGroupFull) std::abort();
      w.Poll(Clock::now());
      if (w.commit_in_flight() && w.TryAppend(m, Clock::now()).status == WalWriter::AppendStatus::kGroupFull) {
        w.WaitForEvent(std::chrono::milliseconds(10));  // both groups full: park on the event fd
        w.Poll(Clock::now());
      }
    }
    w.Flush();
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    RunResult r;
    r.records = w.durable_lsn();
    r.commits = w.stats().groups.load();
    r.seconds = seconds;
    opened.value().reset();
    Report(state, r, record_bytes, Key("stream", state));
    std::filesystem::remove_all(config.dir);
  }
}

// Start-up on a big log: write `mib` MiB of 4 KiB records (sync = none, one fdatasync at the end),
// evict the files from the page cache (posix_fadvise DONTNEED), then time what a restart does:
// WalWriter::Open (scan and cut the newest segment, start a new one) and a WalReader pass over
// every record after checkpoint 0 with all checksums verified (what WalRecoverySource reads).
void BM_WalRecovery_OpenAndScan(benchmark::State& state) {
  const std::uint64_t total = static_cast<std::uint64_t>(state.range(0)) << 20;
  for (auto _ : state) {
    WalConfig config;
    config.dir = FreshDir("recovery");
    config.segment_bytes = 256ull << 20;
    config.sync = WalConfig::Sync::kNone;
    {
      auto w = WalWriter::Open(config);
      if (!w) {
        state.SkipWithError(w.error().message.c_str());
        return;
      }
      const std::string payload(4096 - 48, 'r');
      const WalMessage m = Message(payload);
      std::uint64_t written = 0;
      while (written < total) {
        const auto r = w.value()->TryAppend(m, Clock::now());
        if (r.status == WalWriter::AppendStatus::kGroupFull) {
          w.value()->Flush();
          continue;
        }
        if (r.status != WalWriter::AppendStatus::kAppended) std::abort();
        written += 4096;
      }
      w.value()->Flush();
    }
    for (const auto& entry : std::filesystem::directory_iterator(config.dir)) {
      const int fd = ::open(entry.path().c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) continue;
      ::fdatasync(fd);
      ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
      ::close(fd);
    }
    config.sync = WalConfig::Sync::kData;
    const Clock::time_point start = Clock::now();
    auto w = WalWriter::Open(config);
    if (!w) std::abort();
    auto reader = mailrail::storage::WalReader::Open(config.dir, {.after_lsn = 0,
                                                                  .end_lsn = w.value()->open_report().next_lsn});
    mailrail::storage::RecordView view;
    std::uint64_t records = 0;
    while (reader->Next(&view)) ++records;
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    state.SetIterationTime(seconds);
    state.SetItemsProcessed(static_cast<std::int64_t>(records));
    state.SetBytesProcessed(static_cast<std::int64_t>(reader->report().bytes));
    state.counters["startup_s"] = seconds;
    w.value().reset();
    std::filesystem::remove_all(config.dir);
  }
}

// The disk's sequential bandwidth: 1 MiB writes to a new file, one fdatasync at the end.
void BM_Disk_SequentialWrite1MiB(benchmark::State& state) {
  const std::uint64_t total = static_cast<std::uint64_t>(state.range(0)) << 20;
  std::vector<char> block(1 << 20, 'q');
  for (auto _ : state) {
    const std::string dir = FreshDir("sequential");
    const std::string path = dir + "/seq";
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) std::abort();
    const Clock::time_point start = Clock::now();
    for (std::uint64_t done = 0; done < total; done += block.size()) {
      if (::write(fd, block.data(), block.size()) != static_cast<ssize_t>(block.size())) std::abort();
    }
    if (::fdatasync(fd) != 0) std::abort();
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    ::close(fd);
    state.SetIterationTime(seconds);
    state.SetBytesProcessed(static_cast<std::int64_t>(total));
    Figures()["sequential"].mb_per_s = static_cast<double>(total) / seconds / 1e6;
    std::filesystem::remove_all(dir);
  }
}

BENCHMARK(BM_WalStream_NonBlocking)
    ->Args({65536, 4})
    ->Args({65536, 16})
    ->ArgNames({"bytes", "group_mib"})
    ->Iterations(1)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_WalRecovery_OpenAndScan)->Arg(1024)->ArgName("mib")->Iterations(1)->UseManualTime()->Unit(
    benchmark::kMillisecond);
BENCHMARK(BM_Disk_SequentialWrite1MiB)->Arg(1024)->ArgName("mib")->Iterations(1)->UseManualTime()->Unit(
    benchmark::kMillisecond);

void PrintSummary() {
  auto& f = Figures();
  auto get = [&](const std::string& name) { return f.count(name) ? f[name] : Figure{}; };
  const Figure group = get("group-io-uring/4096/64");
  const Figure per = get("per-record/4096/64");
  const Figure sync = get("group-sync/4096/64");
  const Figure seq = get("sequential");
  double best_wal = 0;
  std::string best_name;
  for (const auto& [name, figure] : f) {
    if (name.rfind("group-io-uring", 0) != 0 && name.rfind("stream", 0) != 0) continue;
    if (figure.mb_per_s > best_wal) {
      best_wal = figure.mb_per_s;
      best_name = name;
    }
  }
  std::printf("\n== same-run summary ==\n");
  if (per.records_per_s > 0 && group.records_per_s > 0) {
    std::printf("64 appenders x 4 KiB: group commit %.0f rec/s, fdatasync per record %.0f rec/s: %.1fx (target >= 20x)\n",
                group.records_per_s, per.records_per_s, group.records_per_s / per.records_per_s);
  }
  if (sync.records_per_s > 0 && group.records_per_s > 0) {
    std::printf("64 appenders x 4 KiB: io_uring group commit / synchronous group commit: %.2fx\n",
                group.records_per_s / sync.records_per_s);
  }
  if (seq.mb_per_s > 0 && best_wal > 0) {
    std::printf("WAL bandwidth %.0f MB/s (%s) vs sequential 1 MiB writes %.0f MB/s: %.0f%% (target >= 70%%)\n",
                best_wal, best_name.c_str(), seq.mb_per_s, 100.0 * best_wal / seq.mb_per_s);
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::filesystem::create_directories(BenchDir());
  struct statfs fs {};
  if (::statfs(BenchDir().c_str(), &fs) == 0 && fs.f_type == TMPFS_MAGIC) {
    std::fprintf(stderr, "WARNING: %s is on tmpfs: fdatasync is free there and the figures mean nothing. "
                 "Set MAILRAIL_BENCH_DIR to a directory on a real disk.\n", BenchDir().c_str());
  }
  std::fprintf(stderr, "bench_wal: data in %s, %.2f s per run\n", BenchDir().c_str(), RunSeconds());
  // The three peers run back to back for each record size and appender count, so that a slow
  // phase of a shared disk hits all three alike.
  for (int size : {512, 4096, 65536}) {
    for (int threads : {1, 8, 64}) {
      for (auto [name, fn] : {std::pair{"BM_WalGroupCommit_IoUring", &BM_WalGroupCommit_IoUring},
                              std::pair{"BM_WalPerRecord_Fdatasync", &BM_WalPerRecord_Fdatasync},
                              std::pair{"BM_WalGroupCommit_SyncSyscalls", &BM_WalGroupCommit_SyncSyscalls}}) {
        benchmark::RegisterBenchmark(name, fn)
            ->Args({size, threads})
            ->ArgNames({"bytes", "appenders"})
            ->Iterations(1)
            ->UseManualTime()
            ->Unit(benchmark::kMillisecond);
      }
    }
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  PrintSummary();
  std::filesystem::remove_all(BenchDir());
  return 0;
}
