#pragma once
// FileReader: reads a list of files, in order, as a stream of pieces through io_uring. Opens,
// statx, reads and closes are all io_uring operations submitted in batches, so reading a Maildir
// of a million small files costs a few io_uring_enter calls per batch of files, not a syscall per
// message; large files are read in chunk_bytes pieces with up to `depth` reads in flight into
// pooled buffers.
//
// Threading: one thread (the replay source's). Blocking: Poll never blocks; WaitForCompletion
//   blocks until at least one operation completes (for callers with nothing else to do).
// Ownership: a Piece's data is a view into a pooled buffer, valid until the next call to Poll.
// Errors: a file that cannot be opened or read yields one Piece with `error` set and no data, so
//   the caller can count and report it; the reader then moves on to the next file.

#include <sys/stat.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "engine/base/result.h"

struct io_uring;
struct io_uring_sqe;

namespace mailrail::stages {

class FileReader {
 public:
  struct Options {
    std::size_t chunk_bytes = 1 << 20;  // bytes per read
    unsigned depth = 8;                 // reads in flight (and pooled buffers)
    unsigned open_ahead = 32;           // files opened ahead of the one being read
  };

  struct Piece {
    std::size_t file_index = 0;
    std::uint64_t offset = 0;        // of data[0] within the file
    std::span<const char> data;
    bool last_of_file = false;
    std::string error;               // non-empty: the file failed (open, stat or read)
  };

  static base::Result<std::unique_ptr<FileReader>> Create(Options options);
  ~FileReader();
  FileReader(const FileReader&) = delete;
  FileReader& operator=(const FileReader&) = delete;

  // Queues a file to be read from `start_offset` (for resuming) to its end.
  void AddFile(std::string path, std::uint64_t start_offset = 0);
  // The next piece in order, or nullopt when it is not ready yet or everything was read.
  std::optional<Piece> Poll();
  // True once every queued file has been delivered completely.
  bool done() const;
  // Blocks until some operation completes (or returns at once when nothing is in flight).
  void WaitForCompletion();

 private:
  enum class FileStep { kQueued, kOpening, kStatting, kReading, kFailed };
  struct FileState {
    std::string path;
    std::uint64_t start_offset = 0;
    FileStep step = FileStep::kQueued;
    int fd = -1;
    std::uint64_t size = 0;
    std::uint64_t next_read = 0;     // next offset to issue a read for
    unsigned reads_in_flight = 0;
    struct statx stx {};
    std::string error;
  };
  struct ReadSlot {
    std::size_t file = 0;
    std::uint64_t offset = 0;
    std::size_t length = 0;    // requested
    std::size_t filled = 0;    // bytes read so far
    std::size_t buffer = 0;
    bool complete = false;
    bool last_of_file = false;
    std::string error;
  };
  enum class OpKind : std::uint8_t { kOpen, kStatx, kRead, kClose };

  explicit FileReader(Options options);
  void Pump();
  void Reap();
  void IssueOpens();
  void IssueReads();
  void SubmitRead(ReadSlot& slot, std::uint64_t slot_id);
  void FinishFileIfRead(std::size_t file);
  io_uring_sqe* GetSqe();

  Options options_;
  std::unique_ptr<io_uring> ring_;  // liburing stays out of this header (it defines BLOCK_SIZE)
  bool ring_ready_ = false;
  std::vector<FileState> files_;
  std::size_t next_open_ = 0;       // first file not yet opened
  std::size_t next_read_file_ = 0;  // file whose reads are being issued
  std::size_t delivered_file_ = 0;  // first file not yet completely delivered
  std::deque<ReadSlot> slots_;      // reads in delivery order
  std::uint64_t first_slot_id_ = 0; // id of slots_.front()
  std::vector<std::unique_ptr<char[]>> buffers_;
  std::vector<std::size_t> free_buffers_;
  std::optional<std::size_t> held_buffer_;  // buffer of the piece last returned by Poll
  unsigned ops_in_flight_ = 0;
  unsigned unsubmitted_ = 0;
};

}  // namespace mailrail::stages
