#include "stages/file_reader.h"

#include <fcntl.h>
#include <liburing.h>
#include <sys/stat.h>

#include <cstring>

#include "engine/base/check.h"
#include "engine/topology.h"

namespace mailrail::stages {
namespace {

// user_data layout: op kind in the top byte, an index (file or slot id) below.
std::uint64_t Encode(std::uint8_t kind, std::uint64_t index) { return (std::uint64_t{kind} << 56) | index; }

}  // namespace

base::Result<std::unique_ptr<FileReader>> FileReader::Create(Options options) {
  MR_CHECK(options.depth > 0 && options.chunk_bytes > 0) << "FileReader needs depth and chunk size";
  std::unique_ptr<FileReader> reader(new FileReader(options));
  const unsigned entries = 2 * (options.depth + options.open_ahead) + 8;
  const int rc = io_uring_queue_init(entries, reader->ring_.get(), 0);
  if (rc < 0) {
    return base::MakeError("io_uring.init", std::string("io_uring_queue_init: ") + std::strerror(-rc));
  }
  reader->ring_ready_ = true;
  // Buffered reads that miss the page cache run on io_uring's kernel workers: let them use every
  // CPU of the process, not only the pinned core of the stage that submits (best effort).
  const cpu_set_t cpus = engine::ProcessCpuSet();
  io_uring_register_iowq_aff(reader->ring_.get(), sizeof(cpus), &cpus);
  return reader;
}

FileReader::FileReader(Options options) : options_(options), ring_(std::make_unique<io_uring>()) {
  for (unsigned i = 0; i < options_.depth; ++i) {
    buffers_.push_back(std::make_unique_for_overwrite<char[]>(options_.chunk_bytes));
    free_buffers_.push_back(i);
  }
}

FileReader::~FileReader() {
  if (!ring_ready_) return;
  if (unsubmitted_ > 0) io_uring_submit(ring_.get());
  while (ops_in_flight_ > 0) {  // buffers must outlive the reads that target them
    io_uring_cqe* cqe = nullptr;
    if (io_uring_wait_cqe(ring_.get(), &cqe) < 0) break;
    const auto kind = static_cast<OpKind>(cqe->user_data >> 56);
    const std::uint64_t index = cqe->user_data & ((std::uint64_t{1} << 56) - 1);
    if (kind == OpKind::kOpen && cqe->res >= 0) ::close(cqe->res);
    (void)index;
    io_uring_cqe_seen(ring_.get(), cqe);
    --ops_in_flight_;
  }
  for (auto& f : files_) {
    if (f.fd >= 0) ::close(f.fd);
  }
  io_uring_queue_exit(ring_.get());
}


void FileReader::AddFile(std::string path, std::uint64_t start_offset) {
  FileState state;
  state.path = std::move(path);
  state.start_offset = start_offset;
  files_.push_back(std::move(state));
}

bool FileReader::done() const { return delivered_file_ >= files_.size() && slots_.empty(); }

io_uring_sqe* FileReader::GetSqe() {
  io_uring_sqe* sqe = io_uring_get_sqe(ring_.get());
  if (sqe == nullptr) {
    io_uring_submit(ring_.get());
    unsubmitted_ = 0;
    sqe = io_uring_get_sqe(ring_.get());
  }
  MR_CHECK(sqe != nullptr) << "io_uring submission queue full after submit";
  ++unsubmitted_;
  ++ops_in_flight_;
  return sqe;
}

void FileReader::IssueOpens() {
  while (next_open_ < files_.size() && next_open_ < next_read_file_ + options_.open_ahead) {
    FileState& f = files_[next_open_];
    io_uring_sqe* sqe = GetSqe();
    io_uring_prep_openat(sqe, AT_FDCWD, f.path.c_str(), O_RDONLY | O_CLOEXEC, 0);
    io_uring_sqe_set_data64(sqe, Encode(static_cast<std::uint8_t>(OpKind::kOpen), next_open_));
    f.step = FileStep::kOpening;
    ++next_open_;
  }
}

void FileReader::SubmitRead(ReadSlot& slot, std::uint64_t slot_id) {
  const FileState& f = files_[slot.file];
  io_uring_sqe* sqe = GetSqe();
  io_uring_prep_read(sqe, f.fd, buffers_[slot.buffer].get() + slot.filled,
                     static_cast<unsigned>(slot.length - slot.filled), slot.offset + slot.filled);
  io_uring_sqe_set_data64(sqe, Encode(static_cast<std::uint8_t>(OpKind::kRead), slot_id));
}

void FileReader::IssueReads() {
  while (next_read_file_ < files_.size()) {
    FileState& f = files_[next_read_file_];
    if (f.step == FileStep::kQueued || f.step == FileStep::kOpening || f.step == FileStep::kStatting) return;
    if (f.step == FileStep::kFailed) {
      ReadSlot slot;
      slot.file = next_read_file_;
      slot.complete = true;
      slot.last_of_file = true;
      slot.error = f.error;
      slot.buffer = SIZE_MAX;
      slots_.push_back(std::move(slot));
      ++next_read_file_;
      continue;
    }
    // kReading: one slot per chunk; an empty file (or one already read to its end) gets one
    // empty slot so the caller still sees its end.
    const bool nothing_to_read = f.next_read >= f.size;
    if (nothing_to_read && f.reads_in_flight == 0 && f.next_read == f.start_offset) {
      ReadSlot slot;
      slot.file = next_read_file_;
      slot.offset = f.next_read;
      slot.complete = true;
      slot.last_of_file = true;
      slot.buffer = SIZE_MAX;
      slots_.push_back(std::move(slot));
      ++next_read_file_;
      FinishFileIfRead(slot.file);
      continue;
    }
    while (f.next_read < f.size) {
      if (free_buffers_.empty()) return;
      ReadSlot slot;
      slot.file = next_read_file_;
      slot.offset = f.next_read;
      slot.length = static_cast<std::size_t>(std::min<std::uint64_t>(options_.chunk_bytes, f.size - f.next_read));
      slot.buffer = free_buffers_.back();
      free_buffers_.pop_back();
      f.next_read += slot.length;
      slot.last_of_file = f.next_read >= f.size;
      ++f.reads_in_flight;
      slots_.push_back(std::move(slot));
      SubmitRead(slots_.back(), first_slot_id_ + slots_.size() - 1);
    }
    ++next_read_file_;
  }
}

void FileReader::FinishFileIfRead(std::size_t file) {
  FileState& f = files_[file];
  if (f.fd >= 0 && f.next_read >= f.size && f.reads_in_flight == 0) {
    io_uring_sqe* sqe = GetSqe();
    io_uring_prep_close(sqe, f.fd);
    io_uring_sqe_set_data64(sqe, Encode(static_cast<std::uint8_t>(OpKind::kClose), file));
    f.fd = -1;
  }
}

void FileReader::Reap() {
  io_uring_cqe* cqes[64];
  for (;;) {
    const unsigned n = io_uring_peek_batch_cqe(ring_.get(), cqes, 64);
    if (n == 0) return;
    for (unsigned i = 0; i < n; ++i) {
      io_uring_cqe* cqe = cqes[i];
      const auto kind = static_cast<OpKind>(cqe->user_data >> 56);
      const std::uint64_t index = cqe->user_data & ((std::uint64_t{1} << 56) - 1);
      const int res = cqe->res;
      --ops_in_flight_;
      switch (kind) {
        case OpKind::kOpen: {
          FileState& f = files_[index];
          if (res < 0) {
            f.step = FileStep::kFailed;
            f.error = std::string("open ") + f.path + ": " + std::strerror(-res);
            break;
          }
          f.fd = res;
          f.step = FileStep::kStatting;
          io_uring_sqe* sqe = GetSqe();
          io_uring_prep_statx(sqe, f.fd, "", AT_EMPTY_PATH, STATX_SIZE | STATX_TYPE, &f.stx);
          io_uring_sqe_set_data64(sqe, Encode(static_cast<std::uint8_t>(OpKind::kStatx), index));
          break;
        }
        case OpKind::kStatx: {
          FileState& f = files_[index];
          if (res < 0 || !S_ISREG(f.stx.stx_mode)) {
            f.step = FileStep::kFailed;
            f.error = res < 0 ? std::string("statx ") + f.path + ": " + std::strerror(-res)
                              : std::string("not a regular file: ") + f.path;
            io_uring_sqe* sqe = GetSqe();
            io_uring_prep_close(sqe, f.fd);
            io_uring_sqe_set_data64(sqe, Encode(static_cast<std::uint8_t>(OpKind::kClose), index));
            f.fd = -1;
            break;
          }
          f.size = f.stx.stx_size;
          f.next_read = std::min(f.start_offset, f.size);
          f.start_offset = f.next_read;
          f.step = FileStep::kReading;
          break;
        }
        case OpKind::kRead: {
          MR_CHECK(index >= first_slot_id_ && index - first_slot_id_ < slots_.size()) << "read completion for unknown slot";
          ReadSlot& slot = slots_[index - first_slot_id_];
          FileState& f = files_[slot.file];
          if (res < 0) {
            slot.error = std::string("read ") + f.path + ": " + std::strerror(-res);
          } else if (res == 0 && slot.filled < slot.length) {
            slot.error = std::string("read ") + f.path + ": file shrank while being read";
          } else {
            slot.filled += static_cast<std::size_t>(res);
            if (slot.filled < slot.length) {  // short read: ask for the rest
              SubmitRead(slot, index);
              break;
            }
          }
          // A dump is read once: a whole chunk, now copied into our buffer, leaves the page cache
          // at once instead of pushing out what the pipeline still needs (the WAL it writes
          // meanwhile is as large). Small files (Maildir, .eml) are not worth the syscall.
          if (slot.error.empty() && slot.length == options_.chunk_bytes) {
            ::posix_fadvise(f.fd, static_cast<off_t>(slot.offset), static_cast<off_t>(slot.filled), POSIX_FADV_DONTNEED);
          }
          slot.complete = true;
          --f.reads_in_flight;
          FinishFileIfRead(slot.file);
          break;
        }
        case OpKind::kClose:
          break;
      }
    }
    io_uring_cq_advance(ring_.get(), n);
  }
}

void FileReader::Pump() {
  Reap();
  IssueOpens();
  IssueReads();
  if (unsubmitted_ > 0) {
    io_uring_submit(ring_.get());
    unsubmitted_ = 0;
  }
}

std::optional<FileReader::Piece> FileReader::Poll() {
  if (held_buffer_) {
    free_buffers_.push_back(*held_buffer_);
    held_buffer_.reset();
  }
  Pump();
  while (!slots_.empty() && slots_.front().complete) {
    ReadSlot slot = std::move(slots_.front());
    slots_.pop_front();
    ++first_slot_id_;
    if (slot.file < delivered_file_) {  // the rest of a file that already failed: skip it
      if (slot.buffer != SIZE_MAX) free_buffers_.push_back(slot.buffer);
      continue;
    }
    Piece piece;
    piece.file_index = slot.file;
    piece.offset = slot.offset;
    piece.last_of_file = slot.last_of_file || !slot.error.empty();
    piece.error = std::move(slot.error);
    if (slot.buffer != SIZE_MAX) {
      held_buffer_ = slot.buffer;
      if (piece.error.empty()) piece.data = std::span<const char>(buffers_[slot.buffer].get(), slot.filled);
    }
    if (piece.last_of_file) delivered_file_ = slot.file + 1;
    return piece;
  }
  return std::nullopt;
}

void FileReader::WaitForCompletion() {
  if (ops_in_flight_ == 0) return;
  if (unsubmitted_ > 0) {
    io_uring_submit(ring_.get());
    unsubmitted_ = 0;
  }
  io_uring_cqe* cqe = nullptr;
  io_uring_wait_cqe(ring_.get(), &cqe);  // leaves it in the queue for Reap
}

}  // namespace mailrail::stages
