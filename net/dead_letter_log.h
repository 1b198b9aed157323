#pragma once
// DeadLetterLog: the durable record of forward batches the downstream rejected (4xx other than
// 408/429) or that exhausted their retries. A batch in this log counts as handled for the
// forward checkpoint, so every append is fdatasync'ed before it returns.
//
// Files in the log directory (both append-only JSON Lines):
//   dead-letters.jsonl  one line per dead-lettered batch:
//     {"batch_id":"lsn-17-42","idempotency_key":"mailrail-lsn-17-42","first_lsn":17,"last_lsn":42,
//      "records":26,"status":400,"error":"","response_body":"...","dead_lettered_at_ms":1763891234000,
//      "batch":{"batch_id":"lsn-17-42","items":[...]}}        <- the exact body that was POSTed
//     status 0 means no HTTP answer (error names the transport failure).
//   redriven.jsonl      one line per batch re-sent successfully by `mailrail dlq redrive`:
//     {"batch_id":"lsn-17-42","status":200,"redriven_at_ms":1763899999000}
// A torn last line (crash during append) is skipped by the reader and reported in `torn_lines`.
//
// Threading: one writer at a time (the forward loop, or the dlq command); readers see complete
//   lines only. Blocking: Append and MarkRedriven block in write + fdatasync.

#include <cstdint>
#include <string>
#include <vector>

#include "engine/base/result.h"

namespace mailrail::net {

struct DeadLetter {
  std::string batch_id;
  std::string idempotency_key;
  std::uint64_t first_lsn = 0;
  std::uint64_t last_lsn = 0;
  std::size_t records = 0;
  int status = 0;
  std::string error;
  std::string response_body;
  std::int64_t dead_lettered_at_ms = 0;
  std::string batch;  // JSON body of the batch
};

struct DeadLetterEntries {
  std::vector<DeadLetter> letters;
  std::vector<std::string> redriven;  // batch ids
  std::size_t torn_lines = 0;
  bool IsRedriven(const std::string& batch_id) const;
};

class DeadLetterLog {
 public:
  // Creates the directory when missing.
  static base::Result<DeadLetterLog> Open(const std::string& dir);
  DeadLetterLog(DeadLetterLog&& other) noexcept;
  DeadLetterLog& operator=(DeadLetterLog&&) = delete;
  ~DeadLetterLog();

  base::Status Append(const DeadLetter& letter);
  base::Status MarkRedriven(const std::string& batch_id, int status);
  static base::Result<DeadLetterEntries> Read(const std::string& dir);
  const std::string& dir() const { return dir_; }

 private:
  DeadLetterLog(std::string dir, int letters_fd, int redriven_fd)
      : dir_(std::move(dir)), letters_fd_(letters_fd), redriven_fd_(redriven_fd) {}
  std::string dir_;
  int letters_fd_ = -1;
  int redriven_fd_ = -1;
};

}  // namespace mailrail::net
