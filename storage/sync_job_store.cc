#include "storage/sync_job_store.h"

#include <fcntl.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <fmt/core.h>

#include "storage/checkpoint.h"

namespace mailrail::storage {
namespace {

constexpr std::size_t kFields = 15;  // including the version tag and the checksum

base::Error Errno(const std::string& what) {
  return base::MakeError("sync_jobs.io", what + ": " + std::strerror(errno));
}

std::string Checksum(std::string_view bytes) { return fmt::format("{:08x}", XXH32(bytes.data(), bytes.size(), 0)); }

std::string Sanitized(std::string_view text) {
  std::string out(text);
  std::replace_if(out.begin(), out.end(), [](char c) { return c == '\t' || c == '\n' || c == '\r'; }, ' ');
  return out;
}

template <typename T>
bool ParseNumber(std::string_view text, T& out) {
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc() && ptr == text.data() + text.size() && !text.empty();
}

bool ParseKind(std::string_view text, SyncJobKind& out) {
  if (text == "backfill") out = SyncJobKind::kBackfill;
  else if (text == "incremental") out = SyncJobKind::kIncremental;
  else return false;
  return true;
}

bool ParseStatus(std::string_view text, SyncJobStatus& out) {
  if (text == "pending") out = SyncJobStatus::kPending;
  else if (text == "processing") out = SyncJobStatus::kProcessing;
  else if (text == "completed") out = SyncJobStatus::kCompleted;
  else if (text == "failed") out = SyncJobStatus::kFailed;
  else return false;
  return true;
}

// Decodes one line without its LF; false when it is damaged.
bool DecodeLine(std::string_view line, SyncJob& job) {
  std::array<std::string_view, kFields> f;
  std::size_t n = 0, start = 0;
  for (;;) {
    const std::size_t tab = line.find('\t', start);
    if (n == kFields) return false;
    f[n++] = line.substr(start, tab == std::string_view::npos ? std::string_view::npos : tab - start);
    if (tab == std::string_view::npos) break;
    start = tab + 1;
  }
  if (n != kFields || f[0] != "v1") return false;
  const std::size_t body = line.size() - f[kFields - 1].size();
  if (Checksum(line.substr(0, body)) != f[kFields - 1]) return false;
  job.job_id = std::string(f[1]);
  job.user_id = std::string(f[2]);
  job.error = std::string(f[13]);
  return !job.job_id.empty() && !job.user_id.empty() && ParseKind(f[3], job.kind) && ParseStatus(f[4], job.status) &&
         ParseNumber(f[5], job.months) && ParseNumber(f[6], job.total) && ParseNumber(f[7], job.processed) &&
         ParseNumber(f[8], job.parsed) && ParseNumber(f[9], job.failed) && ParseNumber(f[10], job.created_ms) &&
         ParseNumber(f[11], job.updated_ms) && ParseNumber(f[12], job.completed_ms);
}

base::Status WriteAll(int fd, std::string_view bytes, const std::string& path) {
  while (!bytes.empty()) {
    const ssize_t rc = ::write(fd, bytes.data(), bytes.size());
    if (rc < 0) {
      if (errno == EINTR) continue;
      return Errno("write " + path);
    }
    bytes.remove_prefix(static_cast<std::size_t>(rc));
  }
  return base::OkStatus();
}

}  // namespace

std::string_view SyncJobKindName(SyncJobKind kind) {
  return kind == SyncJobKind::kBackfill ? "backfill" : "incremental";
}

std::string_view SyncJobStatusName(SyncJobStatus status) {
  switch (status) {
    case SyncJobStatus::kPending: return "pending";
    case SyncJobStatus::kProcessing: return "processing";
    case SyncJobStatus::kCompleted: return "completed";
    case SyncJobStatus::kFailed: return "failed";
  }
  return "pending";
}

std::string EncodeSyncJobLine(const SyncJob& job) {
  std::string line = fmt::format("v1\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t", job.job_id, job.user_id,
                                 SyncJobKindName(job.kind), SyncJobStatusName(job.status), job.months, job.total,
                                 job.processed, job.parsed, job.failed, job.created_ms, job.updated_ms,
                                 job.completed_ms, Sanitized(job.error));
  line += Checksum(line);
  line += '\n';
  return line;
}

base::Result<SyncJobStore> SyncJobStore::Open(std::string path, std::size_t history_per_user) {
  SyncJobStore store(std::move(path), std::max<std::size_t>(history_per_user, 1));
  if (auto status = store.Load(); !status) return status.error();
  if (auto status = store.CompactIfLarge(); !status) return status.error();
  return store;
}

base::Status SyncJobStore::Load() {
  std::ifstream in(path_, std::ios::binary);
  if (!in) {
    if (std::filesystem::exists(path_)) return Errno("open " + path_);
    return base::OkStatus();  // first run
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string text = buffer.str();
  std::size_t start = 0, number = 0;
  while (start < text.size()) {
    ++number;
    const std::size_t lf = text.find('\n', start);
    const bool last = lf == std::string::npos || lf + 1 == text.size();
    SyncJob job;
    const bool ok = lf != std::string::npos && DecodeLine(std::string_view(text).substr(start, lf - start), job);
    if (!ok) {
      if (!last) {
        return base::MakeError("sync_jobs.damaged", fmt::format("{}:{}: damaged sync job record (bad fields or "
                                                                "checksum); the journal cannot be trusted past it",
                                                                path_, number));
      }
      // A write cut by a crash: that state was never reported durable. Cut it off.
      torn_tail_bytes_ = text.size() - start;
      if (::truncate(path_.c_str(), static_cast<off_t>(start)) != 0) return Errno("truncate " + path_);
      break;
    }
    Apply(std::move(job));
    ++journal_lines_;
    start = lf + 1;
  }
  return base::OkStatus();
}

void SyncJobStore::Apply(SyncJob job) {
  std::vector<SyncJob>& jobs = by_user_[job.user_id];
  for (SyncJob& existing : jobs) {
    if (existing.job_id == job.job_id) {
      existing = std::move(job);
      return;
    }
  }
  jobs.push_back(std::move(job));
}

base::Status SyncJobStore::Save(const SyncJob& job) { return SaveAll(std::span<const SyncJob>(&job, 1)); }

base::Status SyncJobStore::SaveAll(std::span<const SyncJob> jobs) {
  if (jobs.empty()) return base::OkStatus();
  std::string lines;
  for (const SyncJob& job : jobs) lines += EncodeSyncJobLine(job);
  if (auto status = Append(lines, jobs.size()); !status) return status;
  for (const SyncJob& job : jobs) Apply(job);
  return CompactIfLarge();
}

base::Status SyncJobStore::Append(const std::string& lines, std::size_t count) {
  const int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0) return Errno("open " + path_);
  base::Status status = WriteAll(fd, lines, path_);
  if (status && ::fdatasync(fd) != 0) status = Errno("fdatasync " + path_);
  ::close(fd);
  if (status) journal_lines_ += count;
  return status;
}

std::size_t SyncJobStore::live_jobs() const {
  std::size_t n = 0;
  for (const auto& [user, jobs] : by_user_) n += jobs.size();
  return n;
}

base::Status SyncJobStore::CompactIfLarge() {
  for (auto& [user, jobs] : by_user_) {
    // Old finished jobs beyond the history limit are forgotten; active ones never are.
    std::size_t excess = jobs.size() > history_per_user_ ? jobs.size() - history_per_user_ : 0;
    for (auto it = jobs.begin(); excess > 0 && it != jobs.end();) {
      if (it->is_active()) {
        ++it;
        continue;
      }
      it = jobs.erase(it);
      --excess;
    }
  }
  if (journal_lines_ <= 4 * live_jobs() + 1000) return base::OkStatus();
  std::string text;
  for (const auto& [user, jobs] : by_user_) {
    for (const SyncJob& job : jobs) text += EncodeSyncJobLine(job);
  }
  const std::string tmp = path_ + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return Errno("open " + tmp);
  base::Status status = WriteAll(fd, text, tmp);
  if (status && ::fdatasync(fd) != 0) status = Errno("fdatasync " + tmp);
  ::close(fd);
  if (!status) return status;
  if (std::rename(tmp.c_str(), path_.c_str()) != 0) return Errno("rename " + tmp);
  const std::string dir = std::filesystem::path(path_).parent_path().string();
  if (auto synced = SyncDirectory(dir.empty() ? "." : dir); !synced) return synced;
  journal_lines_ = live_jobs();
  return base::OkStatus();
}

const SyncJob* SyncJobStore::Latest(std::string_view user_id) const {
  auto it = by_user_.find(user_id);
  if (it == by_user_.end() || it->second.empty()) return nullptr;
  return &it->second.back();
}

std::vector<const SyncJob*> SyncJobStore::History(std::string_view user_id, std::size_t limit) const {
  std::vector<const SyncJob*> out;
  auto it = by_user_.find(user_id);
  if (it == by_user_.end()) return out;
  for (auto job = it->second.rbegin(); job != it->second.rend() && out.size() < limit; ++job) out.push_back(&*job);
  return out;
}

}  // namespace mailrail::storage
