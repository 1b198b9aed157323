#include "net/checkpoint_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "engine/base/check.h"

namespace mailrail::net {

CheckpointFile::CheckpointFile(std::string path, std::string error_code, Counter* writes, ErrorCallback on_error)
    : path_(std::move(path)),
      error_code_(std::move(error_code)),
      on_error_(std::move(on_error)),
      writes_(writes),
      thread_([this] { Run(); }) {}

CheckpointFile::~CheckpointFile() {
  *alive_ = false;
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  wake_.notify_one();
  thread_.join();
}

void CheckpointFile::SetDeferred(EventLoop* loop, std::chrono::milliseconds interval,
                                 std::function<std::string()> text) {
  loop_ = loop;
  interval_ = interval;
  text_ = std::move(text);
}

void CheckpointFile::MarkDirty() {
  MR_CHECK(loop_ != nullptr) << "CheckpointFile::MarkDirty without SetDeferred: " << path_;
  dirty_ = true;
  if (armed_) return;
  armed_ = true;
  std::weak_ptr<bool> alive = alive_;
  loop_->RunAfter(interval_, [this, alive] {
    if (alive.expired()) return;
    armed_ = false;
    if (!dirty_) return;  // WriteNow came first
    dirty_ = false;
    Submit(text_());  // fsynced on the file's thread, not here
  });
}

void CheckpointFile::Submit(std::string text) {
  {
    std::lock_guard lock(mutex_);
    pending_.emplace(++submitted_seq_, std::move(text));  // replaces an older one not yet written
  }
  wake_.notify_one();
}

base::Status CheckpointFile::WriteNow(std::string text) {
  dirty_ = false;
  {
    std::lock_guard lock(mutex_);
    pending_.reset();  // older than `text`
  }
  return Write(++submitted_seq_, text);
}

void CheckpointFile::Run() {
  std::unique_lock lock(mutex_);
  for (;;) {
    wake_.wait(lock, [this] { return stop_ || pending_.has_value(); });
    if (stop_) return;
    auto [seq, text] = std::move(*pending_);
    pending_.reset();
    lock.unlock();
    // On failure the owner's next change submits another text; until then a restart resumes earlier.
    if (auto status = Write(seq, text); !status) on_error_(status.error());
    lock.lock();
  }
}

base::Status CheckpointFile::Write(std::uint64_t seq, const std::string& text) {
  std::lock_guard file_lock(file_mutex_);
  // A text built before the one already written (WriteNow overtook the thread) would move the
  // checkpoint back.
  if (seq <= written_seq_) return base::OkStatus();
  const std::string tmp = path_ + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return base::MakeError(error_code_, "cannot write " + tmp + ": " + std::strerror(errno));
  const bool written = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) && ::fdatasync(fd) == 0;
  ::close(fd);
  if (!written || std::rename(tmp.c_str(), path_.c_str()) != 0) {
    return base::MakeError(error_code_, "cannot write " + path_ + ": " + std::strerror(errno));
  }
  const std::string dir = std::filesystem::path(path_).parent_path().string();
  const int dir_fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0 || ::fsync(dir_fd) != 0) {
    if (dir_fd >= 0) ::close(dir_fd);
    return base::MakeError(error_code_, "cannot sync directory of " + path_ + ": " + std::strerror(errno));
  }
  ::close(dir_fd);
  written_seq_ = seq;
  if (writes_ != nullptr) writes_->Add();
  return base::OkStatus();
}

}  // namespace mailrail::net
