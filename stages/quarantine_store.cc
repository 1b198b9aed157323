#include "stages/quarantine_store.h"

#include "engine/base/check.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

namespace mailrail::stages {
namespace {

constexpr std::uint32_t kMagic = 0x3151524D;
constexpr std::uint32_t kMessage = 1;
constexpr std::uint32_t kRedriven = 2;
constexpr std::size_t kHeader = 48;

std::uint64_t Padded(std::uint64_t n) { return (n + 7) & ~std::uint64_t{7}; }

template <typename T>
T Load(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

std::uint64_t Checksum(const char* header40, std::string_view reason, std::string_view raw) {
  XXH3_state_t* state = XXH3_createState();
  XXH3_64bits_reset(state);
  XXH3_64bits_update(state, header40, 40);
  XXH3_64bits_update(state, reason.data(), reason.size());
  XXH3_64bits_update(state, raw.data(), raw.size());
  const std::uint64_t digest = XXH3_64bits_digest(state);
  XXH3_freeState(state);
  return digest;
}

base::Error IoError(const std::string& what, const std::string& path) {
  return base::MakeError("quarantine.io", what + " " + path + ": " + std::strerror(errno));
}

}  // namespace

base::Result<std::unique_ptr<QuarantineStore>> QuarantineStore::Open(const std::string& dir, Access access) {
  const bool writer = access == Access::kWriter;
  std::error_code ec;
  if (writer) std::filesystem::create_directories(dir, ec);
  if (ec) return base::MakeError("quarantine.io", "cannot create " + dir + ": " + ec.message());
  const std::string path = dir + "/quarantine.log";
  const int fd = ::open(path.c_str(), writer ? O_RDWR | O_CREAT | O_CLOEXEC : O_RDONLY | O_CLOEXEC, 0644);
  if (fd < 0) return IoError("cannot open", path);
  std::unique_ptr<QuarantineStore> store(new QuarantineStore(fd, path, writer));
  if (writer && ::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    return base::MakeError("quarantine.busy", path + " is in use by another process (a running daemon?)");
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) return IoError("cannot stat", path);
  std::string data(static_cast<std::size_t>(st.st_size), '\0');
  if (!data.empty() && ::pread(fd, data.data(), data.size(), 0) != static_cast<ssize_t>(data.size())) {
    return IoError("cannot read", path);
  }
  std::uint64_t offset = 0;
  while (offset + kHeader <= data.size()) {
    const char* h = data.data() + offset;
    const auto reason_len = Load<std::uint32_t>(h + 32);
    const auto raw_len = Load<std::uint32_t>(h + 36);
    if (Load<std::uint32_t>(h) != kMagic || offset + kHeader + reason_len + raw_len > data.size()) break;
    const std::string_view reason(h + kHeader, reason_len);
    const std::string_view raw(h + kHeader + reason_len, raw_len);
    if (Checksum(h, reason, raw) != Load<std::uint64_t>(h + 40)) break;
    const auto type = Load<std::uint32_t>(h + 4);
    const auto id = Load<std::uint64_t>(h + 8);
    if (type == kMessage) {
      store->entries_.push_back(QuarantineEntry{id, Load<std::uint64_t>(h + 16), Load<std::int64_t>(h + 24),
                                                std::string(reason), raw_len, false, offset});
      if (store->entries_.back().lsn != 0) store->id_by_lsn_.emplace(store->entries_.back().lsn, id);
    } else if (type == kRedriven && id >= 1 && id <= store->entries_.size()) {
      store->entries_[id - 1].redriven = true;
    } else {
      break;
    }
    offset += Padded(kHeader + reason_len + raw_len);
  }
  offset = std::min<std::uint64_t>(offset, data.size());
  if (offset < data.size() && writer) {
    store->cut_bytes_ = data.size() - offset;
    if (::ftruncate(fd, static_cast<off_t>(offset)) != 0 || ::fdatasync(fd) != 0) return IoError("cannot cut", path);
  }
  store->file_bytes_ = offset;
  return store;
}

QuarantineStore::~QuarantineStore() {
  std::lock_guard lock(mutex_);
  if (writer_) (void)SyncLocked();
  ::close(fd_);
}

void QuarantineStore::Encode(std::uint32_t type, std::uint64_t id, std::uint64_t lsn, std::int64_t time_ms,
                             std::string_view reason, std::string_view raw) {
  char header[kHeader] = {};
  const auto reason_len = static_cast<std::uint32_t>(reason.size());
  const auto raw_len = static_cast<std::uint32_t>(raw.size());
  std::memcpy(header, &kMagic, 4);
  std::memcpy(header + 4, &type, 4);
  std::memcpy(header + 8, &id, 8);
  std::memcpy(header + 16, &lsn, 8);
  std::memcpy(header + 24, &time_ms, 8);
  std::memcpy(header + 32, &reason_len, 4);
  std::memcpy(header + 36, &raw_len, 4);
  const std::uint64_t digest = Checksum(header, reason, raw);
  std::memcpy(header + 40, &digest, 8);
  pending_.append(header, kHeader);
  pending_.append(reason);
  pending_.append(raw);
  pending_.append(Padded(pending_.size()) - pending_.size(), '\0');
}

std::uint64_t QuarantineStore::Append(std::uint64_t lsn, std::int64_t time_ms, std::string_view reason,
                                      std::string_view raw) {
  std::lock_guard lock(mutex_);
  MR_CHECK(writer_) << "Append on a quarantine store opened for reading";
  if (lsn != 0) {
    if (const auto it = id_by_lsn_.find(lsn); it != id_by_lsn_.end()) return it->second;
  }
  const std::uint64_t id = entries_.size() + 1;
  if (lsn != 0) id_by_lsn_.emplace(lsn, id);
  const std::uint64_t offset = file_bytes_ + pending_.size();
  Encode(kMessage, id, lsn, time_ms, reason, raw);
  entries_.push_back(QuarantineEntry{id, lsn, time_ms, std::string(reason), raw.size(), false, offset});
  return id;
}

base::Status QuarantineStore::SyncLocked() {
  if (pending_.empty()) return base::OkStatus();
  std::size_t done = 0;
  while (done < pending_.size()) {
    const ssize_t n = ::pwrite(fd_, pending_.data() + done, pending_.size() - done,
                               static_cast<off_t>(file_bytes_ + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return IoError("cannot write", path_);
    done += static_cast<std::size_t>(n);
  }
  if (::fdatasync(fd_) != 0) return IoError("cannot fdatasync", path_);
  file_bytes_ += pending_.size();
  pending_.clear();
  return base::OkStatus();
}

base::Status QuarantineStore::Sync() {
  std::lock_guard lock(mutex_);
  return SyncLocked();
}

std::vector<QuarantineEntry> QuarantineStore::List() const {
  std::lock_guard lock(mutex_);
  return entries_;
}

base::Result<std::string> QuarantineStore::ReadRaw(std::uint64_t id) const {
  std::lock_guard lock(mutex_);
  if (id == 0 || id > entries_.size()) {
    return base::MakeError("quarantine.not_found", "no quarantined message " + std::to_string(id));
  }
  const QuarantineEntry& e = entries_[id - 1];
  const std::uint64_t at = e.offset + kHeader + e.reason.size();
  std::string raw(e.raw_bytes, '\0');
  if (at + raw.size() <= file_bytes_) {
    if (!raw.empty() && ::pread(fd_, raw.data(), raw.size(), static_cast<off_t>(at)) != static_cast<ssize_t>(raw.size())) {
      return IoError("cannot read", path_);
    }
  } else {
    raw.assign(pending_, at - file_bytes_, raw.size());  // appended, not yet synced
  }
  return raw;
}

base::Status QuarantineStore::MarkRedriven(std::uint64_t id, std::int64_t time_ms) {
  std::lock_guard lock(mutex_);
  MR_CHECK(writer_) << "MarkRedriven on a quarantine store opened for reading";
  if (id == 0 || id > entries_.size()) {
    return base::MakeError("quarantine.not_found", "no quarantined message " + std::to_string(id));
  }
  Encode(kRedriven, id, entries_[id - 1].lsn, time_ms, {}, {});
  if (auto status = SyncLocked(); !status.has_value()) return status;
  entries_[id - 1].redriven = true;
  return base::OkStatus();
}

}  // namespace mailrail::stages
