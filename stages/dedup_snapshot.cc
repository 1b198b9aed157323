#include "stages/dedup_snapshot.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <optional>
#include <set>
#include <vector>

namespace mailrail::stages {
namespace {

constexpr char kMagic[8] = {'M', 'R', 'D', 'E', 'D', 'U', 'P', '1'};
constexpr std::size_t kHeaderBytes = 32;
constexpr std::size_t kEntryBytes = 24;

base::Error IoError(const std::string& what, const std::string& path) {
  return base::MakeError("dedup.snapshot_io", what + " " + path + ": " + std::strerror(errno));
}

}  // namespace

// Buffered writer that checksums what it writes.
class ChecksumWriter {
 public:
  explicit ChecksumWriter(int fd) : fd_(fd) { XXH3_64bits_reset(state_); }
  ~ChecksumWriter() { XXH3_freeState(state_); }
  void Put(const void* data, std::size_t n) {
    XXH3_64bits_update(state_, data, n);
    const auto* p = static_cast<const char*>(data);
    buffer_.insert(buffer_.end(), p, p + n);
    if (buffer_.size() >= (1 << 20)) Flush();
  }
  void PutU64(std::uint64_t v) { Put(&v, 8); }
  std::uint64_t digest() const { return XXH3_64bits_digest(state_); }
  bool Flush() {
    std::size_t done = 0;
    while (done < buffer_.size()) {
      const ssize_t n = ::write(fd_, buffer_.data() + done, buffer_.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        ok_ = false;
        break;
      }
      done += static_cast<std::size_t>(n);
    }
    buffer_.clear();
    return ok_;
  }
  bool ok() const { return ok_; }

 private:
  int fd_;
  XXH3_state_t* state_ = XXH3_createState();
  std::vector<char> buffer_;
  bool ok_ = true;
};

namespace {

std::uint64_t ReadU64(const char* p) {
  std::uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

}  // namespace

base::Result<std::unique_ptr<DedupSnapshotWriter>> DedupSnapshotWriter::Begin(const DedupSet& set,
                                                                             std::uint64_t covered_lsn,
                                                                             const std::string& path) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return IoError("cannot create", tmp);
  std::unique_ptr<DedupSnapshotWriter> writer(new DedupSnapshotWriter(fd, path));
  writer->out_ = std::make_unique<ChecksumWriter>(fd);
  writer->out_->Put(kMagic, 8);
  const auto shards = static_cast<std::uint32_t>(set.shard_count());
  const std::uint32_t reserved = 0;
  writer->out_->Put(&shards, 4);
  writer->out_->Put(&reserved, 4);
  writer->out_->PutU64(covered_lsn);
  writer->out_->PutU64(0);  // reserved
  return writer;
}

DedupSnapshotWriter::DedupSnapshotWriter(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}

DedupSnapshotWriter::~DedupSnapshotWriter() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink((path_ + ".tmp").c_str());  // abandoned: never renamed over the last good snapshot
  }
}

bool DedupSnapshotWriter::Step(const DedupSet& set) {
  // Shards held by other workers are written empty (their owners' files hold them).
  while (next_shard_ < set.shard_count() && !set.owns(next_shard_)) {
    out_->PutU64(0);
    ++next_shard_;
  }
  if (next_shard_ < set.shard_count()) {
    const std::vector<DedupEntry> entries = set.shard(next_shard_++).Entries();
    out_->PutU64(entries.size());
    for (const DedupEntry& e : entries) {
      out_->PutU64(e.key64);
      out_->PutU64(e.lsn);
      out_->PutU64(static_cast<std::uint64_t>(e.time_ms));
    }
  }
  return next_shard_ == set.shard_count();
}

base::Status DedupSnapshotWriter::Finish() {
  const std::string tmp = path_ + ".tmp";
  const std::uint64_t digest = out_->digest();
  out_->Put(&digest, 8);
  if (!out_->Flush() || ::fsync(fd_) != 0) return IoError("cannot write", tmp);
  ::close(fd_);
  fd_ = -1;
  if (::rename(tmp.c_str(), path_.c_str()) != 0) return IoError("cannot rename over", path_);
  std::string dir = std::filesystem::path(path_).parent_path().string();
  if (dir.empty()) dir = ".";
  const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0) return IoError("cannot open directory", dir);
  const int synced = ::fsync(dir_fd);
  ::close(dir_fd);
  if (synced != 0) return IoError("cannot fsync directory", dir);
  return base::OkStatus();
}

base::Status WriteDedupSnapshot(const DedupSet& set, std::uint64_t covered_lsn, const std::string& path) {
  auto writer = DedupSnapshotWriter::Begin(set, covered_lsn, path);
  if (!writer.has_value()) return writer.error();
  while (!writer.value()->Step(set)) {
  }
  return writer.value()->Finish();
}

base::Result<std::uint64_t> LoadDedupSnapshot(const std::string& path, DedupSet& set) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return base::MakeError("dedup.snapshot_missing", "no dedup snapshot at " + path);
    return IoError("cannot open", path);
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    return IoError("cannot stat", path);
  }
  const auto size = static_cast<std::size_t>(st.st_size);
  if (size < kHeaderBytes + 8) {
    ::close(fd);
    return base::MakeError("dedup.snapshot_corrupt", path + ": truncated (" + std::to_string(size) + " bytes)");
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) return IoError("cannot map", path);
  const char* data = static_cast<const char*>(map);
  auto fail = [&](std::string code, std::string why) -> base::Result<std::uint64_t> {
    ::munmap(map, size);
    return base::MakeError(std::move(code), path + ": " + why);
  };
  if (std::memcmp(data, kMagic, 8) != 0) return fail("dedup.snapshot_corrupt", "bad magic");
  if (XXH3_64bits(data, size - 8) != ReadU64(data + size - 8)) return fail("dedup.snapshot_corrupt", "checksum mismatch");
  std::uint32_t shards;
  std::memcpy(&shards, data + 8, 4);
  if (shards != set.shard_count()) {
    return fail("dedup.snapshot_shards", "written with " + std::to_string(shards) + " shards, configured " +
                                             std::to_string(set.shard_count()));
  }
  const std::uint64_t covered = ReadU64(data + 16);
  // Walk the shard counts first, so a file whose sizes do not add up is rejected before loading.
  std::size_t offset = kHeaderBytes;
  for (std::uint32_t s = 0; s < shards; ++s) {
    if (offset + 8 > size - 8) return fail("dedup.snapshot_corrupt", "shard table overruns file");
    const std::uint64_t n = ReadU64(data + offset);
    if (n > (size - 8 - offset - 8) / kEntryBytes) return fail("dedup.snapshot_corrupt", "shard overruns file");
    offset += 8 + n * kEntryBytes;
  }
  if (offset != size - 8) return fail("dedup.snapshot_corrupt", "size mismatch");
  offset = kHeaderBytes;
  for (std::uint32_t s = 0; s < shards; ++s) {
    const std::uint64_t n = ReadU64(data + offset);
    offset += 8;
    if (!set.owns(s)) {  // another worker's shard: its owner loads it
      offset += n * kEntryBytes;
      continue;
    }
    DedupShard& shard = set.shard(s);
    for (std::uint64_t i = 0; i < n; ++i, offset += kEntryBytes) {
      const auto time_ms = static_cast<std::int64_t>(ReadU64(data + offset + 16));
      shard.InsertOrFind(ReadU64(data + offset), ReadU64(data + offset + 8), time_ms);
    }
  }
  ::munmap(map, size);
  return covered;
}

std::string DedupSnapshotPath(const std::string& base, std::size_t worker, std::size_t workers) {
  return workers == 1 ? base : base + "." + std::to_string(worker) + "-of-" + std::to_string(workers);
}

namespace {

// Covered LSN from a snapshot header, or nothing when the file is absent or too short for one.
std::optional<std::uint64_t> ReadCoveredLsn(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  char header[kHeaderBytes];
  const ssize_t n = ::pread(fd, header, sizeof(header), 0);
  ::close(fd);
  if (n != static_cast<ssize_t>(sizeof(header)) || std::memcmp(header, kMagic, 8) != 0) return std::nullopt;
  return ReadU64(header + 16);
}

}  // namespace

std::vector<std::string> FindDedupSnapshotLayout(const std::string& base, std::size_t workers) {
  // Worker counts present next to `base` (names base.<w>-of-<N>), plus the one-worker file.
  const std::filesystem::path base_path(base);
  std::set<std::size_t> counts{1, workers};
  std::error_code ec;
  const std::filesystem::path dir = base_path.has_parent_path() ? base_path.parent_path() : ".";
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    const std::string prefix = base_path.filename().string() + ".";
    const auto of = name.find("-of-");
    if (!name.starts_with(prefix) || of == std::string::npos) continue;
    const std::string n = name.substr(of + 4);
    if (!n.empty() && n.size() < 5 && std::all_of(n.begin(), n.end(), [](char c) { return c >= '0' && c <= '9'; })) counts.insert(std::stoul(n));
  }
  std::vector<std::string> best;
  std::uint64_t best_lsn = 0;
  bool best_is_configured = false;
  for (const std::size_t count : counts) {
    if (count == 0) continue;
    std::vector<std::string> files;
    std::uint64_t lowest = UINT64_MAX;
    for (std::size_t w = 0; w < count; ++w) {
      files.push_back(DedupSnapshotPath(base, w, count));
      const auto covered = ReadCoveredLsn(files.back());
      if (!covered) {
        files.clear();
        break;
      }
      lowest = std::min(lowest, *covered);
    }
    if (files.empty()) continue;
    const bool configured = count == workers;
    if (best.empty() || lowest > best_lsn || (lowest == best_lsn && configured && !best_is_configured)) {
      best = std::move(files);
      best_lsn = lowest;
      best_is_configured = configured;
    }
  }
  return best;
}

}  // namespace mailrail::stages
