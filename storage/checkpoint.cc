#include "storage/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "storage/wal_format.h"

namespace mailrail::storage {
namespace {

base::Error Errno(const char* code, const std::string& what) {
  return base::MakeError(code, what + ": " + std::strerror(errno));
}

}  // namespace

base::Status SyncDirectory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Errno("wal.open_dir", "open " + dir);
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) {
    errno = err;
    return Errno("wal.fsync_dir", "fsync " + dir);
  }
  return base::OkStatus();
}

base::Status WriteCheckpoint(const std::string& dir, std::uint64_t forwarded_through_lsn) {
  std::array<std::byte, RecordFootprint(kCheckpointPayloadBytes)> record{};
  const std::int64_t now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                  std::chrono::system_clock::now().time_since_epoch())
                                  .count();
  const std::size_t n = EncodeCheckpointRecord(record.data(), forwarded_through_lsn, now_ms);
  const std::string tmp = dir + "/" + std::string(kCheckpointFileName) + ".tmp";
  const std::string final_path = dir + "/" + std::string(kCheckpointFileName);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Errno("wal.checkpoint_open", "open " + tmp);
  std::size_t written = 0;
  while (written < n) {
    const ssize_t rc = ::write(fd, record.data() + written, n - written);
    if (rc < 0) {
      if (errno == EINTR) continue;
      const base::Error error = Errno("wal.checkpoint_write", "write " + tmp);
      ::close(fd);
      return error;
    }
    written += static_cast<std::size_t>(rc);
  }
  if (::fsync(fd) != 0) {
    const base::Error error = Errno("wal.checkpoint_fsync", "fsync " + tmp);
    ::close(fd);
    return error;
  }
  ::close(fd);
  if (::rename(tmp.c_str(), final_path.c_str()) != 0) return Errno("wal.checkpoint_rename", "rename " + tmp);
  return SyncDirectory(dir);
}

base::Result<std::uint64_t> ReadCheckpoint(const std::string& dir) {
  const std::string path = dir + "/" + std::string(kCheckpointFileName);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return std::uint64_t{0};
    return Errno("wal.checkpoint_open", "open " + path);
  }
  std::array<std::byte, 2 * RecordFootprint(kCheckpointPayloadBytes)> buf{};
  std::size_t got = 0;
  for (;;) {
    const ssize_t rc = ::read(fd, buf.data() + got, buf.size() - got);
    if (rc < 0 && errno == EINTR) continue;
    if (rc < 0) {
      const base::Error error = Errno("wal.checkpoint_read", "read " + path);
      ::close(fd);
      return error;
    }
    if (rc == 0 || got + static_cast<std::size_t>(rc) == buf.size()) {
      got += static_cast<std::size_t>(rc);
      break;
    }
    got += static_cast<std::size_t>(rc);
  }
  ::close(fd);
  RecordHeader header;
  std::uint64_t lsn = 0;
  std::int64_t written_at = 0;
  const RecordCheck check = CheckRecord(std::span<const std::byte>(buf.data(), got), &header);
  if (check != RecordCheck::kValid || header.type != RecordType::kCheckpoint || got != RecordFootprint(header.length) ||
      !DecodeCheckpointPayload(std::span<const std::byte>(buf.data() + kRecordHeaderBytes, header.length), &lsn,
                               &written_at) ||
      lsn != header.lsn) {
    return base::MakeError("wal.checkpoint_damaged",
                           path + ": damaged checkpoint (" + std::string(RecordCheckName(check)) + ")");
  }
  return lsn;
}

}  // namespace mailrail::storage
