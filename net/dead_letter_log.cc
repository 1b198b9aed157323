#include "net/dead_letter_log.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <simdjson.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "stages/record_json.h"

namespace mailrail::net {
namespace {

constexpr char kLetters[] = "dead-letters.jsonl";
constexpr char kRedriven[] = "redriven.jsonl";

base::Status WriteDurably(int fd, const std::string& line, const std::string& what) {
  std::string_view rest(line);
  while (!rest.empty()) {
    const ssize_t n = ::write(fd, rest.data(), rest.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return base::MakeError("dlq_write", what + ": " + std::strerror(errno));
    }
    rest.remove_prefix(static_cast<std::size_t>(n));
  }
  if (::fdatasync(fd) != 0) return base::MakeError("dlq_sync", what + ": " + std::strerror(errno));
  return base::OkStatus();
}

std::int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

bool DeadLetterEntries::IsRedriven(const std::string& batch_id) const {
  return std::find(redriven.begin(), redriven.end(), batch_id) != redriven.end();
}

base::Result<DeadLetterLog> DeadLetterLog::Open(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return base::MakeError("dlq_dir", dir + ": " + ec.message());
  const std::string letters = dir + "/" + kLetters;
  const std::string redriven = dir + "/" + kRedriven;
  const int letters_fd = ::open(letters.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (letters_fd < 0) return base::MakeError("dlq_open", letters + ": " + std::strerror(errno));
  const int redriven_fd = ::open(redriven.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (redriven_fd < 0) {
    ::close(letters_fd);
    return base::MakeError("dlq_open", redriven + ": " + std::strerror(errno));
  }
  // Make the new files' directory entries durable too.
  if (const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return DeadLetterLog(dir, letters_fd, redriven_fd);
}

DeadLetterLog::DeadLetterLog(DeadLetterLog&& other) noexcept
    : dir_(std::move(other.dir_)), letters_fd_(std::exchange(other.letters_fd_, -1)),
      redriven_fd_(std::exchange(other.redriven_fd_, -1)) {}

DeadLetterLog::~DeadLetterLog() {
  if (letters_fd_ >= 0) ::close(letters_fd_);
  if (redriven_fd_ >= 0) ::close(redriven_fd_);
}

base::Status DeadLetterLog::Append(const DeadLetter& d) {
  std::string line;
  line.reserve(d.batch.size() + d.response_body.size() + 256);
  line += "{\"batch_id\":";
  stages::AppendJsonString(d.batch_id, line);
  line += ",\"idempotency_key\":";
  stages::AppendJsonString(d.idempotency_key, line);
  fmt::format_to(std::back_inserter(line), ",\"first_lsn\":{},\"last_lsn\":{},\"records\":{},\"status\":{},\"error\":",
                 d.first_lsn, d.last_lsn, d.records, d.status);
  stages::AppendJsonString(d.error, line);
  line += ",\"response_body\":";
  stages::AppendJsonString(d.response_body, line);
  fmt::format_to(std::back_inserter(line), ",\"dead_lettered_at_ms\":{},\"batch\":",
                 d.dead_lettered_at_ms != 0 ? d.dead_lettered_at_ms : NowMs());
  line += d.batch;
  line += "}\n";
  return WriteDurably(letters_fd_, line, dir_ + "/" + kLetters);
}

base::Status DeadLetterLog::MarkRedriven(const std::string& batch_id, int status) {
  std::string line = "{\"batch_id\":";
  stages::AppendJsonString(batch_id, line);
  fmt::format_to(std::back_inserter(line), ",\"status\":{},\"redriven_at_ms\":{}}}\n", status, NowMs());
  return WriteDurably(redriven_fd_, line, dir_ + "/" + kRedriven);
}

base::Result<DeadLetterEntries> DeadLetterLog::Read(const std::string& dir) {
  DeadLetterEntries entries;
  simdjson::dom::parser parser;
  auto read_lines = [&](const std::string& path, auto&& on_object) -> base::Status {
    std::ifstream in(path, std::ios::binary);
    if (!in) return base::OkStatus();  // no file yet: nothing dead-lettered
    std::string line;
    while (std::getline(in, line)) {
      if (line.empty()) continue;
      simdjson::dom::object object;
      if (parser.parse(line).get(object)) {
        ++entries.torn_lines;
        continue;
      }
      on_object(object);
    }
    return base::OkStatus();
  };
  auto status = read_lines(dir + "/" + kLetters, [&](simdjson::dom::object o) {
    DeadLetter d;
    std::string_view s;
    std::int64_t i;
    std::uint64_t u;
    if (!o["batch_id"].get(s)) d.batch_id = std::string(s);
    if (!o["idempotency_key"].get(s)) d.idempotency_key = std::string(s);
    if (!o["first_lsn"].get(u)) d.first_lsn = u;
    if (!o["last_lsn"].get(u)) d.last_lsn = u;
    if (!o["records"].get(u)) d.records = u;
    if (!o["status"].get(i)) d.status = static_cast<int>(i);
    if (!o["error"].get(s)) d.error = std::string(s);
    if (!o["response_body"].get(s)) d.response_body = std::string(s);
    if (!o["dead_lettered_at_ms"].get(i)) d.dead_lettered_at_ms = i;
    simdjson::dom::element batch;
    if (!o["batch"].get(batch)) d.batch = simdjson::minify(batch);
    entries.letters.push_back(std::move(d));
  });
  if (!status) return status.error();
  status = read_lines(dir + "/" + kRedriven, [&](simdjson::dom::object o) {
    std::string_view s;
    if (!o["batch_id"].get(s)) entries.redriven.emplace_back(s);
  });
  if (!status) return status.error();
  return entries;
}

}  // namespace mailrail::net
