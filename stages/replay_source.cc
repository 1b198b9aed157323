#include "stages/replay_source.h"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <unordered_map>

#include <fmt/core.h>

#include "engine/base/counters.h"
#include "storage/wal_format.h"
#include "storage/wal_reader.h"

namespace mailrail::stages {
namespace {

namespace fs = std::filesystem;

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The first bytes of a file, decompressed when it is gzip.
std::string SniffHead(const std::string& path) {
  std::string head(512, '\0');
  gzFile file = gzopen(path.c_str(), "rb");  // reads plain files unchanged
  if (file == nullptr) return {};
  const int n = gzread(file, head.data(), static_cast<unsigned>(head.size()));
  gzclose(file);
  head.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
  return head;
}

bool FileIsGzip(const std::string& path) {
  char magic[2] = {0, 0};
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  const ssize_t n = ::read(fd, magic, 2);
  ::close(fd);
  return n == 2 && LooksGzipped(std::string_view(magic, 2));
}

ReplayInput DetectFile(const std::string& path, DumpFormat format) {
  ReplayInput input;
  input.path = path;
  input.gzip = FileIsGzip(path);
  const std::string name = input.gzip && EndsWith(path, ".gz") ? path.substr(0, path.size() - 3) : path;
  DumpFormat resolved = format;
  if (resolved == DumpFormat::kAuto || resolved == DumpFormat::kMaildir) {
    if (format == DumpFormat::kMaildir) {
      resolved = DumpFormat::kEml;
    } else if (EndsWith(name, ".jsonl") || EndsWith(name, ".ndjson") || EndsWith(name, ".json")) {
      resolved = DumpFormat::kGraphJsonl;
    } else if (EndsWith(name, ".mbox") || EndsWith(name, ".mbx")) {
      resolved = DumpFormat::kMbox;
    } else if (EndsWith(name, ".eml")) {
      resolved = DumpFormat::kEml;
    } else {
      const std::string head = SniffHead(path);
      const std::size_t first = head.find_first_not_of(" \t\r\n");
      if (head.rfind("From ", 0) == 0) {
        resolved = DumpFormat::kMbox;
      } else if (first != std::string::npos && head[first] == '{') {
        resolved = DumpFormat::kGraphJsonl;
      } else {
        resolved = DumpFormat::kEml;
      }
    }
  }
  switch (resolved) {
    case DumpFormat::kMbox: input.split = SplitFormat::kMboxrd; break;
    case DumpFormat::kMboxo: input.split = SplitFormat::kMboxo; break;
    case DumpFormat::kGraphJsonl:
      input.split = SplitFormat::kGraphJsonl;
      input.kind = InputKind::kGraphJson;
      break;
    default: input.split = SplitFormat::kSingle; break;
  }
  return input;
}

bool IsMaildir(const fs::path& dir) {
  std::error_code ec;
  return fs::is_directory(dir / "cur", ec) || fs::is_directory(dir / "new", ec);
}

void SortedFiles(const fs::path& dir, bool recursive, std::vector<std::string>& out) {
  std::vector<std::string> found;
  std::error_code ec;
  if (recursive) {
    for (auto it = fs::recursive_directory_iterator(dir, fs::directory_options::skip_permission_denied, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (it->is_regular_file(ec)) found.push_back(it->path().string());
    }
  } else {
    for (auto it = fs::directory_iterator(dir, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
      if (it->is_regular_file(ec)) found.push_back(it->path().string());
    }
  }
  std::sort(found.begin(), found.end());
  out.insert(out.end(), found.begin(), found.end());
}

}  // namespace

base::Result<DumpFormat> ParseDumpFormat(std::string_view name) {
  if (name == "auto") return DumpFormat::kAuto;
  if (name == "mbox" || name == "mboxrd" || name == "mboxcl" || name == "mboxcl2") return DumpFormat::kMbox;
  if (name == "mboxo") return DumpFormat::kMboxo;
  if (name == "maildir") return DumpFormat::kMaildir;
  if (name == "eml") return DumpFormat::kEml;
  if (name == "jsonl" || name == "graph-jsonl") return DumpFormat::kGraphJsonl;
  return base::MakeError("replay.format", "unknown dump format '" + std::string(name) +
                                              "' (auto, mbox, mboxrd, mboxo, mboxcl, mboxcl2, maildir, eml, jsonl)");
}

base::Result<std::vector<ReplayInput>> ExpandReplayPaths(const std::vector<std::string>& paths, DumpFormat format) {
  std::vector<ReplayInput> inputs;
  for (const std::string& path : paths) {
    std::error_code ec;
    const fs::file_status status = fs::status(path, ec);
    if (ec || !fs::exists(status)) return base::MakeError("replay.path", "cannot read '" + path + "': no such file or directory");
    if (fs::is_directory(status)) {
      std::vector<std::string> files;
      if (format == DumpFormat::kMaildir || (format == DumpFormat::kAuto && IsMaildir(path))) {
        SortedFiles(fs::path(path) / "cur", false, files);
        SortedFiles(fs::path(path) / "new", false, files);
        for (auto& f : files) inputs.push_back(DetectFile(f, DumpFormat::kMaildir));
      } else {
        SortedFiles(path, true, files);
        for (auto& f : files) {
          // In a tree, auto mode takes .eml files (compressed or not); an explicit format takes all.
          if (format == DumpFormat::kAuto && !EndsWith(f, ".eml") && !EndsWith(f, ".eml.gz")) continue;
          inputs.push_back(DetectFile(f, format == DumpFormat::kAuto ? DumpFormat::kEml : format));
        }
      }
    } else if (fs::is_regular_file(status)) {
      inputs.push_back(DetectFile(path, format));
    } else {
      return base::MakeError("replay.path", "'" + path + "' is neither a file nor a directory");
    }
  }
  return inputs;
}

base::Result<std::unique_ptr<ReplaySource>> ReplaySource::Create(ReplayOptions options, MessagePool* pool,
                                                                  engine::Channel<Message*>* out) {
  auto reader = FileReader::Create(FileReader::Options{});
  if (!reader) return reader.error();
  std::unique_ptr<ReplaySource> source(new ReplaySource(std::move(options), pool, out, std::move(reader).value()));
  return source;
}

ReplaySource::ReplaySource(ReplayOptions options, MessagePool* pool, engine::Channel<Message*>* out,
                           std::unique_ptr<FileReader> reader)
    : options_(std::move(options)), pool_(pool), outbox_(out), reader_(std::move(reader)) {
  const std::size_t n = options_.inputs.size();
  resume_offsets_.assign(n, 0);
  done_files_.assign(n, false);
  checkpoint_offsets_.assign(n, 0);
  checkpoint_done_.assign(n, false);
  LoadCheckpoint();
  for (std::size_t i = 0; i < n; ++i) {
    if (done_files_[i]) continue;  // completely durable in an earlier run
    reader_->AddFile(options_.inputs[i].path);
    reader_inputs_.push_back(i);
  }
}

void ReplaySource::LoadCheckpoint() {
  if (options_.checkpoint_path.empty()) return;
  std::ifstream in(options_.checkpoint_path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const std::size_t tab = line.find('\t');
    if (tab == std::string::npos) continue;
    const std::string_view state(line.data(), tab);
    const std::string path = line.substr(tab + 1);
    for (std::size_t i = 0; i < options_.inputs.size(); ++i) {
      if (options_.inputs[i].path != path) continue;
      if (state == "done") {
        done_files_[i] = checkpoint_done_[i] = true;
      } else {
        std::uint64_t offset = 0;
        std::from_chars(state.data(), state.data() + state.size(), offset);
        resume_offsets_[i] = checkpoint_offsets_[i] = offset;
      }
    }
  }
}

base::Status ReplaySource::WriteCheckpoint() {
  AdvanceCheckpoint();
  if (options_.checkpoint_path.empty()) {
    checkpointed_lsn_.store(advanced_lsn_, std::memory_order_release);  // nothing to resume: no floor
    return base::OkStatus();
  }
  std::string text = "# mailrail replay checkpoint: <resume offset | done> TAB <path>\n";
  for (std::size_t i = 0; i < options_.inputs.size(); ++i) {
    if (checkpoint_done_[i]) {
      text += "done\t";
    } else {
      text += fmt::format("{}\t", checkpoint_offsets_[i]);
    }
    text += options_.inputs[i].path;
    text += '\n';
  }
  const std::string tmp = options_.checkpoint_path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return base::MakeError("replay.checkpoint", "cannot write " + tmp + ": " + std::strerror(errno));
  const bool written = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) && ::fdatasync(fd) == 0;
  ::close(fd);
  if (!written || std::rename(tmp.c_str(), options_.checkpoint_path.c_str()) != 0) {
    return base::MakeError("replay.checkpoint", "cannot write " + options_.checkpoint_path + ": " + std::strerror(errno));
  }
  const std::string dir = fs::path(options_.checkpoint_path).parent_path().string();
  const int dir_fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    ::fsync(dir_fd);
    ::close(dir_fd);
  }
  checkpoint_dirty_ = false;
  checkpointed_lsn_.store(advanced_lsn_, std::memory_order_release);
  return base::OkStatus();
}

void ReplaySource::OnDurable(std::span<const DurableAck> acks) {
  if (acks.empty()) return;
  counters_.durable.store(counters_.durable.load(std::memory_order_relaxed) + acks.size(), std::memory_order_relaxed);
  acked_token_.store(acks.back().token, std::memory_order_release);
  acked_lsn_.store(acks.back().lsn, std::memory_order_release);
}

base::Status ReplaySource::AdoptWalPositions(const std::string& wal_dir, std::uint64_t end_lsn) {
  auto reader = storage::WalReader::Open(wal_dir, {.after_lsn = 0, .end_lsn = end_lsn});
  if (!reader) return reader.error();
  std::unordered_map<std::string_view, std::size_t> by_path;
  for (std::size_t i = 0; i < options_.inputs.size(); ++i) by_path.emplace(options_.inputs[i].path, i);
  storage::RecordView view;
  while (reader->Next(&view)) {
    storage::WalMessage m;
    if (!storage::DecodeMessagePayload(view.payload, &m)) continue;
    if (m.source_kind != static_cast<std::uint8_t>(SourceKind::kReplay)) continue;
    auto it = by_path.find(m.source_id);
    if (it == by_path.end() || done_files_[it->second]) continue;
    std::uint64_t position = 0;
    std::from_chars(m.position.data(), m.position.data() + m.position.size(), position);
    resume_offsets_[it->second] = std::max(resume_offsets_[it->second], position + 1);
    checkpoint_offsets_[it->second] = resume_offsets_[it->second];
    checkpoint_dirty_ = true;
  }
  return base::OkStatus();
}

void ReplaySource::AdvanceCheckpoint() {
  const std::uint64_t lsn = acked_lsn_.load(std::memory_order_acquire);  // before the token: never ahead of it
  const std::uint64_t acked = acked_token_.load(std::memory_order_acquire);
  advanced_lsn_ = std::max(advanced_lsn_, lsn);
  while (!in_flight_.empty() && in_flight_.front().token <= acked) {
    const InFlight& f = in_flight_.front();
    if (f.last_of_file) {
      checkpoint_done_[f.file] = true;
    } else {
      checkpoint_offsets_[f.file] = std::max(checkpoint_offsets_[f.file], f.resume_offset);
    }
    checkpoint_dirty_ = true;
    in_flight_.pop_front();
  }
}

void ReplaySource::StartFile(std::size_t index) {
  current_file_ = index;
  current_file_read_ = false;
  splitter_.Reset(options_.inputs[index].split, 0);
  inflater_.Reset();
  counters_.files.store(counters_.files.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
}

bool ReplaySource::FillSplitter() {
  std::optional<FileReader::Piece> piece = reader_->Poll();
  if (!piece) return false;
  const std::size_t file = reader_inputs_[piece->file_index];
  if (current_file_ != file) StartFile(file);
  const ReplayInput& input = options_.inputs[file];
  if (!piece->error.empty()) {
    counters_.unreadable_files.store(counters_.unreadable_files.load(std::memory_order_relaxed) + 1,
                                     std::memory_order_relaxed);
    fmt::print(stderr, "mailrail: replay: {}\n", piece->error);
  } else if (input.gzip) {
    auto status = inflater_.Inflate(piece->data, [&](std::string_view out) { splitter_.Feed(out); });
    if (!status) {
      counters_.unreadable_files.store(counters_.unreadable_files.load(std::memory_order_relaxed) + 1,
                                       std::memory_order_relaxed);
      fmt::print(stderr, "mailrail: replay: {}: {}; messages before the damage were replayed\n", input.path,
                 status.error().message);
      splitter_.Finish();
      current_file_read_ = true;
      return true;
    }
  } else {
    splitter_.Feed(piece->data);
  }
  if (piece->last_of_file) {
    splitter_.Finish();
    current_file_read_ = true;
  }
  return true;
}

bool ReplaySource::EmitPending() {
  const SplitMessage& m = *pending_;
  const std::size_t file = *current_file_;
  const auto now = engine::Clock::now();
  // A paced message is accepted at its scheduled time, even when the source runs late (the pool
  // or the ring pushed back): latency then counts the wait that a real sender would have seen
  // (no coordinated omission).
  // The schedule starts with the first message in hand (the file opened and its first piece
  // read), as a sender's starts once it is connected.
  engine::Clock::time_point accepted = now;
  if (options_.rate > 0) {
    if (paced_count_ == 0) start_time_ = now;
    accepted = start_time_ + std::chrono::duration_cast<engine::Clock::duration>(
                                 std::chrono::duration<double>(static_cast<double>(paced_count_) / options_.rate));
  } else if (options_.pace > 0 && m.timestamp_ms) {
    if (!first_timestamp_ms_) {
      first_timestamp_ms_ = m.timestamp_ms;
      start_time_ = now;
    }
    const double gap_ms = static_cast<double>(std::max<std::int64_t>(0, *m.timestamp_ms - *first_timestamp_ms_));
    accepted = start_time_ + std::chrono::duration_cast<engine::Clock::duration>(
                                 std::chrono::duration<double, std::milli>(gap_ms / options_.pace));
  }
  if (accepted > now) {
    deadline_ = accepted;
    return false;
  }

  Message* msg = pool_->TryAcquire(m.bytes.size());
  if (msg == nullptr) {  // in-flight budget exhausted: wait for the pipeline to release messages
    deadline_ = now + std::chrono::microseconds(200);
    return false;
  }
  const ReplayInput& input = options_.inputs[file];
  msg->raw.reserve(m.bytes.size() + 64);  // room for simdjson's padding on Graph JSON
  if (m.mbox_quoted) {
    DumpSplitter::AppendUnescaped(m.bytes, input.split, msg->raw);
  } else {
    msg->raw.assign(m.bytes);
  }
  msg->kind = input.kind;
  msg->source.kind = SourceKind::kReplay;
  msg->source.id = input.path;
  msg->source.position = fmt::format("{}", m.position);
  msg->received_at_ms = base::UnixMs();
  msg->accepted_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(accepted.time_since_epoch()).count();
  msg->ack_sink = this;
  msg->ack_token = next_token_++;
  in_flight_.push_back(InFlight{msg->ack_token, file, m.position + 1, false});
  outbox_.Add(msg);
  ++paced_count_;
  counters_.messages.store(counters_.messages.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  counters_.bytes.store(counters_.bytes.load(std::memory_order_relaxed) + msg->raw.size(), std::memory_order_relaxed);
  return true;
}

std::size_t ReplaySource::RunOnce() {
  deadline_ = engine::Clock::time_point::max();
  AdvanceCheckpoint();
  if (options_.checkpoint_path.empty()) {
    checkpointed_lsn_.store(advanced_lsn_, std::memory_order_release);  // no file: nothing to write or time
  } else if (checkpoint_dirty_ && engine::Clock::now() - last_checkpoint_write_ > std::chrono::seconds(1)) {
    last_checkpoint_write_ = engine::Clock::now();
    if (auto status = WriteCheckpoint(); !status) fmt::print(stderr, "mailrail: replay: {}\n", status.error().message);
  }
  if (!outbox_.Flush()) return 0;
  if (stop_.load(std::memory_order_acquire)) return 0;
  if (!started_) {
    if (options_.start_gate && !options_.start_gate()) {
      deadline_ = engine::Clock::now() + std::chrono::milliseconds(1);
      return 0;
    }
    started_ = true;
  }

  std::size_t emitted = 0;
  std::size_t work = 0;
  while (emitted < options_.batch) {
    if (!pending_) {
      SplitMessage m;
      if (current_file_ && splitter_.Next(m)) {
        pending_ = m;
        continue;
      }
      if (current_file_ && current_file_read_) {
        // The file is completely split: once everything emitted so far is durable, it is done.
        const std::size_t file = *current_file_;
        if (!in_flight_.empty() && in_flight_.back().file == file) {
          in_flight_.back().last_of_file = true;
        } else if (next_token_ - 1 <= acked_token_.load(std::memory_order_acquire)) {
          checkpoint_done_[file] = true;
          checkpoint_dirty_ = true;
        } else {
          in_flight_.push_back(InFlight{next_token_ - 1, file, 0, true});
        }
        current_file_.reset();
        ++work;
        continue;
      }
      if (!FillSplitter()) break;
      ++work;
      continue;
    }
    const std::size_t file = *current_file_;
    if (pending_->position < resume_offsets_[file]) {  // replayed and durable before a restart
      counters_.skipped_before_checkpoint.store(counters_.skipped_before_checkpoint.load(std::memory_order_relaxed) + 1,
                                                std::memory_order_relaxed);
      pending_.reset();
      continue;
    }
    if (pending_->bytes.size() > options_.max_message_bytes) {
      counters_.rejected_too_large.store(counters_.rejected_too_large.load(std::memory_order_relaxed) + 1,
                                         std::memory_order_relaxed);
      fmt::print(stderr, "mailrail: replay: {} at {}: message of {} bytes exceeds max_message_bytes {}; not ingested\n",
                 options_.inputs[file].path, pending_->position, pending_->bytes.size(), options_.max_message_bytes);
      pending_.reset();
      continue;
    }
    if (!EmitPending()) break;
    pending_.reset();
    ++emitted;
  }
  outbox_.Flush();
  if (emitted == 0 && work == 0 && deadline_ == engine::Clock::time_point::max() && !reader_->done()) {
    // Reads are in flight: look again shortly (the thread parks on a futex, not on io_uring).
    deadline_ = engine::Clock::now() + std::chrono::microseconds(50);
  }
  return emitted + work;
}

void ReplaySource::Report(engine::Snapshot& s) const {
  const engine::Labels labels{{"stage", "ingest"}, {"source", "replay"}};
  auto v = [](const std::atomic<std::uint64_t>& c) { return static_cast<double>(c.load(std::memory_order_relaxed)); };
  s.Counter("stage_messages_out", v(counters_.messages), labels, "messages the stage pushed downstream");
  s.Counter("replay_bytes", v(counters_.bytes), {}, "bytes of messages replayed");
  s.Counter("replay_files", v(counters_.files), {}, "files opened by the replay");
  s.Counter("replay_durable", v(counters_.durable), {}, "replayed messages the WAL reported durable");
  s.Counter("ingest_rejected", v(counters_.unreadable_files), {{"reason", "unreadable_file"}},
            "inputs not ingested, by reason");
  s.Counter("ingest_rejected", v(counters_.rejected_too_large), {{"reason", "too_large"}});
  s.Counter("ingest_rejected", v(counters_.skipped_before_checkpoint), {{"reason", "already_durable"}});
}

bool ReplaySource::IsFinished() const {
  if (!outbox_.empty()) return false;
  if (stop_.load(std::memory_order_acquire)) return true;
  return reader_->done() && !current_file_ && !pending_;
}

}  // namespace mailrail::stages
