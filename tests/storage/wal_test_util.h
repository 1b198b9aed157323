#pragma once
// Helpers shared by the storage tests: a scratch directory removed at scope exit, and file edits
// that simulate torn writes and disk damage.

#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "storage/wal_reader.h"
#include "storage/wal_writer.h"

namespace mailrail::storage::testing {

class ScratchDir {
 public:
  ScratchDir() {
    static int counter = 0;
    path_ = ::testing::TempDir() + "/wal_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++);
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~ScratchDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

inline std::string Body(std::uint64_t i, std::size_t size) {
  std::string s(size, 'a');
  for (std::size_t k = 0; k < size; ++k) s[k] = static_cast<char>('a' + (i * 31 + k * 7) % 26);
  return s;
}

inline WalMessage Msg(const std::string& raw, const std::string& position = "0") {
  WalMessage m;
  m.input_kind = 0;
  m.source_kind = 0;
  m.source_id = "dump.mbox";
  m.position = position;
  m.received_at_ms = 1'700'000'000'000;
  m.raw = raw;
  return m;
}

// Appends every body, committing as it goes; returns the LSNs.
inline std::vector<std::uint64_t> AppendAll(WalWriter& w, const std::vector<std::string>& bodies) {
  std::vector<std::uint64_t> lsns;
  for (std::size_t i = 0; i < bodies.size(); ++i) {
    const std::string position = std::to_string(i);
    for (;;) {
      auto r = w.TryAppend(Msg(bodies[i], position), Clock::now());
      if (r.status == WalWriter::AppendStatus::kAppended) {
        lsns.push_back(r.lsn);
        break;
      }
      EXPECT_EQ(r.status, WalWriter::AppendStatus::kGroupFull);
      if (r.status != WalWriter::AppendStatus::kGroupFull) return lsns;
      w.Flush();
    }
    w.Poll(Clock::now());
  }
  w.Flush();
  return lsns;
}

struct ReadBack {
  std::vector<std::uint64_t> lsns;
  std::vector<std::string> raws;
  WalScanReport report;
};

inline ReadBack ReadAll(const std::string& dir, std::uint64_t after = 0) {
  ReadBack out;
  auto reader = WalReader::Open(dir, {.after_lsn = after});
  EXPECT_TRUE(reader.has_value());
  if (!reader) return out;
  RecordView v;
  while (reader->Next(&v)) {
    WalMessage m;
    EXPECT_TRUE(DecodeMessagePayload(v.payload, &m));
    out.lsns.push_back(v.header.lsn);
    out.raws.emplace_back(m.raw);
  }
  out.report = reader->report();
  return out;
}

inline std::vector<std::byte> ReadFile(const std::string& path) {
  std::vector<std::byte> bytes(std::filesystem::file_size(path));
  const int fd = ::open(path.c_str(), O_RDONLY);
  EXPECT_EQ(::pread(fd, bytes.data(), bytes.size(), 0), static_cast<ssize_t>(bytes.size()));
  ::close(fd);
  return bytes;
}

inline void WriteFile(const std::string& path, const std::vector<std::byte>& bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  EXPECT_EQ(::pwrite(fd, bytes.data(), bytes.size(), 0), static_cast<ssize_t>(bytes.size()));
  ::close(fd);
}

inline WalConfig SmallConfig(const std::string& dir) {
  WalConfig c;
  c.dir = dir;
  c.segment_bytes = 64 << 10;
  c.max_group_bytes = 16 << 10;
  return c;
}

}  // namespace mailrail::storage::testing
