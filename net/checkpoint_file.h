#pragma once
// CheckpointFile: a small text file (a source's resume position) replaced crash-atomically
// (write <path>.tmp, fdatasync, rename over <path>, fsync the directory) by its own thread, so the
// network loop that builds the texts never waits for the disk. After a crash the file holds
// either the old or the new text, never a mix.
//
// Submit hands the thread a text; a newer text replaces one not yet written (only the latest
// matters). WriteNow writes on the calling thread (shutdown) and drops what was submitted before
// it; a text is never overwritten by an older one, whichever thread gets to the file first.
// MarkDirty (loop thread) is the throttled form for an owner on an EventLoop: the first change
// after a write arms a timer of `interval`, which builds the text then and submits it, so a burst
// of changes costs one text and one write.
// Threading: Submit and WriteNow from one thread (the owner, e.g. the loop); the writer thread
//   calls on_error (never with a secret: the message names only the path and errno). `writes` is
//   incremented under the file mutex, so it has one writer at a time (Counter's contract).
// Lifetime: the destructor stops the thread; a text still pending is dropped (the owner calls
//   WriteNow at shutdown when it must be on disk).

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>

#include "engine/base/result.h"
#include "net/counter.h"
#include "net/event_loop.h"

namespace mailrail::net {

class CheckpointFile {
 public:
  using ErrorCallback = std::function<void(const base::Error&)>;
  // `error_code` is the Error::code of failed writes (e.g. "imap.checkpoint"); `writes` (owned by
  // the caller's stats, may be null) counts successful writes.
  CheckpointFile(std::string path, std::string error_code, Counter* writes, ErrorCallback on_error);
  // For MarkDirty: the loop that runs the owner, the least time between writes, and how to build
  // the text (called on the loop thread).
  void SetDeferred(EventLoop* loop, std::chrono::milliseconds interval, std::function<std::string()> text);
  ~CheckpointFile();
  CheckpointFile(const CheckpointFile&) = delete;
  CheckpointFile& operator=(const CheckpointFile&) = delete;

  void Submit(std::string text);
  void MarkDirty();
  base::Status WriteNow(std::string text);
  const std::string& path() const { return path_; }

 private:
  base::Status Write(std::uint64_t seq, const std::string& text);  // any thread; serialised
  void Run();

  const std::string path_;
  const std::string error_code_;
  ErrorCallback on_error_;
  std::uint64_t submitted_seq_ = 0;  // owner thread: sequence of the last text handed over
  EventLoop* loop_ = nullptr;        // SetDeferred; owner thread from here on
  std::chrono::milliseconds interval_{0};
  std::function<std::string()> text_;
  bool armed_ = false;
  bool dirty_ = false;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);

  std::mutex mutex_;  // guards pending_ and stop_
  std::condition_variable wake_;
  std::optional<std::pair<std::uint64_t, std::string>> pending_;  // (seq, text)
  bool stop_ = false;

  std::mutex file_mutex_;       // one writer of the file at a time
  std::uint64_t written_seq_ = 0;  // guarded by file_mutex_
  Counter* writes_;
  std::thread thread_;             // last: starts once the members above exist
};

}  // namespace mailrail::net
