#include "net/forward_client.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "engine/base/check.h"

namespace mailrail::net {

std::string_view ToString(CircuitState state) {
  switch (state) {
    case CircuitState::kClosed: return "closed";
    case CircuitState::kOpen: return "open";
    case CircuitState::kHalfOpen: return "half_open";
  }
  return "unknown";
}

std::optional<std::chrono::milliseconds> ParseRetryAfter(std::string_view value,
                                                         std::chrono::system_clock::time_point now) {
  while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
  while (!value.empty() && value.back() == ' ') value.remove_suffix(1);
  if (value.empty()) return std::nullopt;
  std::uint64_t seconds = 0;
  auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), seconds);
  if (ec == std::errc() && ptr == value.data() + value.size()) {
    return std::chrono::milliseconds(std::min<std::uint64_t>(seconds, 1u << 30) * 1000);
  }
  // IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
  std::tm tm{};
  const std::string text(value);
  const char* end = ::strptime(text.c_str(), "%a, %d %b %Y %H:%M:%S GMT", &tm);
  if (end == nullptr || *end != '\0') return std::nullopt;
  const auto when = std::chrono::system_clock::from_time_t(::timegm(&tm));
  if (when <= now) return std::chrono::milliseconds(0);
  return std::chrono::duration_cast<std::chrono::milliseconds>(when - now);
}

ForwardClient::ForwardClient(EventLoop* loop, ForwardConfig config)
    : loop_(loop), config_(std::move(config)),
      rng_(config_.jitter_seed != 0 ? config_.jitter_seed : std::random_device{}()) {}

base::Result<std::unique_ptr<ForwardClient>> ForwardClient::Create(EventLoop* loop, ForwardConfig config) {
  if (config.dead_letter_dir.empty()) return base::MakeError("forward_config", "dead_letter_dir is required");
  if (config.batch_max_records == 0 || config.batch_max_bytes == 0 || config.max_in_flight == 0 ||
      config.max_attempts == 0) {
    return base::MakeError("forward_config", "batch limits, max_in_flight and max_attempts must be positive");
  }
  std::unique_ptr<ForwardClient> client(new ForwardClient(loop, std::move(config)));
  auto http = HttpClient::Create(loop, client->config_.http);
  if (!http) return http.error();
  client->http_ = std::move(http.value());
  auto dlq = DeadLetterLog::Open(client->config_.dead_letter_dir);
  if (!dlq) return dlq.error();
  client->dead_letters_.emplace(std::move(dlq.value()));
  if (auto status = client->OpenBatchJournal(); !status) return status.error();
  return client;
}

ForwardClient::~ForwardClient() {
  *alive_ = false;
  if (journal_fd_ >= 0) ::close(journal_fd_);
}

base::Status ForwardClient::OpenBatchJournal() {
  const std::string& path = config_.batch_journal_path;
  if (path.empty()) return base::OkStatus();
  // Keep the ranges not yet behind the checkpoint, in order; a torn last line is dropped.
  std::string kept;
  {
    std::ifstream in(path);
    std::uint64_t first = 0;
    std::uint64_t last = 0;
    while (in >> first >> last) {
      if (last <= config_.forwarded_through_lsn || first > last) continue;
      if (!remembered_cuts_.empty() && first <= remembered_cuts_.back().second) continue;
      remembered_cuts_.emplace_back(first, last);
      kept += fmt::format("{} {}\n", first, last);
    }
  }
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0 || ::write(fd, kept.data(), kept.size()) != static_cast<ssize_t>(kept.size()) ||
      ::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string message = std::strerror(errno);
    if (fd >= 0) ::close(fd);
    return base::MakeError("forward.batch_journal", "cannot rewrite " + path + ": " + message);
  }
  ::close(fd);
  journal_fd_ = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  if (journal_fd_ < 0) {
    return base::MakeError("forward.batch_journal", "cannot open " + path + ": " + std::strerror(errno));
  }
  return base::OkStatus();
}

// --- producer side ---------------------------------------------------------------------------

std::size_t ForwardClient::Append(std::span<const ForwardRecord> records) {
  std::size_t taken = 0;
  bool sealed = false;
  std::uint64_t opened_seq = 0;
  {
    std::lock_guard lock(mutex_);
    for (const ForwardRecord& r : records) {
      MR_CHECK(r.lsn > last_lsn_) << "forward records out of LSN order: " << r.lsn << " after " << last_lsn_;
      const std::size_t size = r.json.size() + 1;
      if (buffered_bytes_.load(std::memory_order_relaxed) + size > config_.max_buffered_bytes &&
          buffered_bytes_.load(std::memory_order_relaxed) > 0) {
        break;  // budget full: the producer keeps the rest
      }
      if (open_ != nullptr && recut_last_lsn_ != 0 && r.lsn > recut_last_lsn_) {
        SealLocked();  // the remembered range ended on a record that is not forwarded this time
        sealed = true;
      }
      if (open_ == nullptr) {
        OpenBatchLocked(r.lsn);
        opened_seq = open_->seq;
      }
      if (open_->records > 0) open_->items += ',';
      open_->items += r.json;
      open_->last_lsn = r.lsn;
      ++open_->records;
      open_->charged_bytes += size;
      segments_.back().through_lsn = r.lsn;
      last_lsn_ = r.lsn;
      buffered_bytes_.fetch_add(size, std::memory_order_relaxed);
      ++taken;
      const bool full = recut_last_lsn_ != 0
                            ? r.lsn >= recut_last_lsn_
                            : open_->records >= config_.batch_max_records || open_->items.size() >= config_.batch_max_bytes;
      if (full) {
        SealLocked();
        sealed = true;
      }
    }
  }
  if (sealed) loop_->Post([this] { TakeSealed(); });
  if (opened_seq != 0 && !(sealed && open_ == nullptr)) {
    // Linger: seal this batch after `linger` unless size sealed it first.
    loop_->Post([this, opened_seq] {
      std::weak_ptr<bool> alive = alive_;
      loop_->RunAfter(config_.linger, [this, alive, opened_seq] {
        if (alive.expired()) return;
        {
          std::lock_guard lock(mutex_);
          if (open_ == nullptr || open_->seq != opened_seq || recut_last_lsn_ != 0) return;
          SealLocked();
        }
        TakeSealed();
      });
    });
  }
  return taken;
}

void ForwardClient::Skip(std::uint64_t lsn) {
  bool sealed = false;
  {
    std::lock_guard lock(mutex_);
    MR_CHECK(lsn > last_lsn_) << "skipped LSN out of order: " << lsn << " after " << last_lsn_;
    last_lsn_ = lsn;
    if (open_ != nullptr && recut_last_lsn_ != 0 && lsn > recut_last_lsn_) {
      SealLocked();  // the remembered range is complete: the skipped LSN starts a new segment
      sealed = true;
    }
    if (open_ != nullptr) {
      segments_.back().through_lsn = lsn;  // the open batch's range now covers the skipped LSN
    } else {
      if (!segments_.empty() && segments_.back().batch_seq == 0) {
        segments_.back().through_lsn = lsn;
      } else {
        segments_.push_back({lsn, 0, true});
      }
      AdvanceLocked();
    }
  }
  if (sealed) loop_->Post([this] { TakeSealed(); });
}

void ForwardClient::Flush() {
  {
    std::lock_guard lock(mutex_);
    if (open_ == nullptr) return;
    SealLocked();
  }
  loop_->Post([this] { TakeSealed(); });
}

void ForwardClient::OpenBatchLocked(std::uint64_t first_lsn) {
  open_ = std::make_unique<Batch>();
  open_->seq = next_seq_++;
  open_->first_lsn = first_lsn;
  open_->items.reserve(std::min(config_.batch_max_bytes + 1024, std::size_t{4} << 20));
  segments_.push_back({first_lsn, open_->seq, false});
  ++unfinished_batches_;
  while (!remembered_cuts_.empty() && remembered_cuts_.front().second < first_lsn) remembered_cuts_.pop_front();
  recut_last_lsn_ = 0;
  if (!remembered_cuts_.empty() && remembered_cuts_.front().first <= first_lsn) {
    recut_last_lsn_ = remembered_cuts_.front().second;
    remembered_cuts_.pop_front();
  }
}

void ForwardClient::SealLocked() {
  Batch& b = *open_;
  if (recut_last_lsn_ != 0) {
    stats_.batches_recut.Add();
    recut_last_lsn_ = 0;
  } else if (journal_fd_ >= 0) {
    const std::string line = fmt::format("{} {}\n", b.first_lsn, b.last_lsn);
    if (::write(journal_fd_, line.data(), line.size()) != static_cast<ssize_t>(line.size())) {
      // Only the key of a batch re-sent after a crash is at stake, never the records.
      stats_.batch_journal_write_errors.Add();
    }
  }
  b.batch_id = fmt::format("lsn-{}-{}", b.first_lsn, b.last_lsn);
  b.key = "mailrail-" + b.batch_id;
  b.body.reserve(b.items.size() + b.batch_id.size() + 32);
  b.body = "{\"batch_id\":\"";
  b.body += b.batch_id;
  b.body += "\",\"items\":[";
  b.body += b.items;
  b.body += "]}";
  b.items = std::string();
  sealed_.push_back(std::move(open_));
}

void ForwardClient::AdvanceLocked() {
  std::uint64_t through = acknowledged_through_.load(std::memory_order_relaxed);
  while (!segments_.empty() && segments_.front().done) {
    through = segments_.front().through_lsn;
    segments_.pop_front();
  }
  acknowledged_through_.store(through, std::memory_order_release);
}

bool ForwardClient::idle() const {
  std::lock_guard lock(mutex_);
  return unfinished_batches_ == 0;
}

// --- loop side ---------------------------------------------------------------------------------

void ForwardClient::TakeSealed() {
  {
    std::lock_guard lock(mutex_);
    while (!sealed_.empty()) {
      ready_.push_back(std::move(sealed_.front()));
      sealed_.pop_front();
    }
  }
  Dispatch();
}

bool ForwardClient::BreakerAllows() {
  switch (circuit_state()) {
    case CircuitState::kClosed:
      return true;
    case CircuitState::kOpen:
      if (loop_->now() < open_until_) return false;
      SetCircuit(CircuitState::kHalfOpen);
      [[fallthrough]];
    case CircuitState::kHalfOpen:
      if (probe_in_flight_ || in_flight_ > 0) return false;
      probe_in_flight_ = true;
      return true;
  }
  return false;
}

void ForwardClient::Dispatch() {
  if (loop_->now() < paused_until_) return;  // Retry-After in force; a timer dispatches later
  while (!shut_down_ && !ready_.empty() && in_flight_ < config_.max_in_flight && BreakerAllows()) {
    std::unique_ptr<Batch> batch = std::move(ready_.front());
    ready_.pop_front();
    ++in_flight_;
    ++batch->attempts;
    stats_.attempts.Add();
    ClientRequest request;
    request.method = "POST";
    request.path = config_.path;
    request.headers = {{"Content-Type", "application/json"}, {"Idempotency-Key", batch->key}};
    request.body_ref = &batch->body;  // the batch keeps it for retries and the dead-letter log
    auto holder = std::make_shared<std::unique_ptr<Batch>>(std::move(batch));
    std::weak_ptr<bool> alive = alive_;
    http_->Send(std::move(request), [this, alive, holder](base::Result<ClientResponse> result) {
      if (alive.expired()) return;
      OnResult(std::move(*holder), std::move(result));
    });
  }
}

void ForwardClient::SetCircuit(CircuitState state) {
  if (state == CircuitState::kOpen && circuit_state() != CircuitState::kOpen) stats_.circuit_opens.Add();
  circuit_state_.store(static_cast<int>(state), std::memory_order_relaxed);
}

void ForwardClient::OnResult(std::unique_ptr<Batch> batch, base::Result<ClientResponse> result) {
  --in_flight_;
  const bool was_probe = probe_in_flight_;
  probe_in_flight_ = false;
  if (shut_down_) return;
  if (!result.has_value()) {
    stats_.transport_errors.Add();
    OnFailure(std::move(batch), 0, result.error().code + ": " + result.error().message, {}, std::nullopt);
    return Dispatch();
  }
  ClientResponse& response = result.value();
  const int status = response.status;
  if (status >= 200 && status < 300) {
    consecutive_failures_ = 0;
    SetCircuit(CircuitState::kClosed);
    stats_.batches_acknowledged.Add();
    stats_.records_acknowledged.Add(batch->records);
    Complete(*batch);
  } else if (status == 408 || status == 429 || status >= 500) {
    if (status == 429) {
      stats_.responses_429.Add();
    } else if (status >= 500) {
      stats_.responses_5xx.Add();
    }
    OnFailure(std::move(batch), status, {}, std::move(response.body),
              ParseRetryAfter(response.Header("retry-after"), std::chrono::system_clock::now()));
  } else {
    // The downstream answered and refused this batch: retrying cannot help.
    stats_.responses_other_4xx.Add();
    consecutive_failures_ = 0;
    if (was_probe || circuit_state() != CircuitState::kClosed) SetCircuit(CircuitState::kClosed);
    SendToDeadLetters(std::move(batch), status, {}, std::move(response.body));
  }
  Dispatch();
}

void ForwardClient::OnFailure(std::unique_ptr<Batch> batch, int status, std::string error, std::string body,
                              std::optional<std::chrono::milliseconds> retry_after) {
  ++consecutive_failures_;
  if (circuit_state() == CircuitState::kHalfOpen || consecutive_failures_ >= config_.breaker_threshold) {
    if (circuit_state() != CircuitState::kOpen) {
      SetCircuit(CircuitState::kOpen);
      open_until_ = loop_->now() + config_.breaker_open;
      std::weak_ptr<bool> alive = alive_;
      loop_->RunAfter(config_.breaker_open, [this, alive] {
        if (!alive.expired()) Dispatch();
      });
    }
  }
  if (batch->attempts >= config_.max_attempts) {
    SendToDeadLetters(std::move(batch), status, error.empty() ? "retries exhausted" : error + " (retries exhausted)",
               std::move(body));
    return;
  }
  std::chrono::milliseconds delay;
  if (retry_after.has_value()) {
    // The downstream asked for a pause: it applies to every batch, not only this one.
    delay = std::min(*retry_after, config_.retry_after_max);
    paused_until_ = std::max(paused_until_, loop_->now() + delay);
    std::weak_ptr<bool> alive = alive_;
    loop_->RunAfter(delay, [this, alive] {
      if (!alive.expired()) Dispatch();
    });
  } else {
    const std::size_t shift = std::min<std::size_t>(batch->attempts - 1, 30);
    const auto cap = std::min<std::int64_t>(config_.backoff_max.count(), config_.backoff_base.count() << shift);
    delay = std::chrono::milliseconds(std::uniform_int_distribution<std::int64_t>(0, cap)(rng_));
  }
  stats_.retries.Add();
  auto holder = std::make_shared<std::unique_ptr<Batch>>(std::move(batch));
  std::weak_ptr<bool> alive = alive_;
  loop_->RunAfter(delay, [this, alive, holder] {
    if (alive.expired() || shut_down_) return;
    ready_.push_front(std::move(*holder));  // older batches first
    Dispatch();
  });
}

void ForwardClient::SendToDeadLetters(std::unique_ptr<Batch> batch, int status, std::string error,
                                      std::string body) {
  DeadLetter letter;
  letter.batch_id = batch->batch_id;
  letter.idempotency_key = batch->key;
  letter.first_lsn = batch->first_lsn;
  letter.last_lsn = batch->last_lsn;
  letter.records = batch->records;
  letter.status = status;
  letter.error = std::move(error);
  constexpr std::size_t kMaxResponseBody = 64 * 1024;
  if (body.size() > kMaxResponseBody) body.resize(kMaxResponseBody);
  letter.response_body = std::move(body);
  letter.batch = batch->body;
  if (auto status_written = dead_letters_->Append(letter); !status_written) {
    // Not durable: the batch is not handled yet. Keep it and try the log again later.
    stats_.dead_letter_write_errors.Add();
    std::fprintf(stderr, "mailrail: dead-letter log: %s\n", status_written.error().message.c_str());
    auto holder = std::make_shared<std::unique_ptr<Batch>>(std::move(batch));
    std::weak_ptr<bool> alive = alive_;
    loop_->RunAfter(config_.backoff_max, [this, alive, holder, letter = std::move(letter)]() mutable {
      if (alive.expired() || shut_down_) return;
      SendToDeadLetters(std::move(*holder), letter.status, std::move(letter.error),
                        std::move(letter.response_body));
    });
    return;
  }
  stats_.batches_dead_lettered.Add();
  stats_.records_dead_lettered.Add(batch->records);
  Complete(*batch);
}

void ForwardClient::Complete(const Batch& batch) {
  {
    std::lock_guard lock(mutex_);
    for (Segment& s : segments_) {
      if (s.batch_seq == batch.seq) {
        s.done = true;
        break;
      }
    }
    --unfinished_batches_;
    AdvanceLocked();
  }
  buffered_bytes_.fetch_sub(batch.charged_bytes, std::memory_order_relaxed);
  if (room_waiter_ != nullptr) room_waiter_->Notify();
}

void ForwardClient::Shutdown() {
  shut_down_ = true;
  http_->Shutdown();
}

}  // namespace mailrail::net
