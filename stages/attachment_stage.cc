#include "stages/attachment_stage.h"

#include <algorithm>
#include <array>
#include <span>

#include <fmt/core.h>

#include "engine/base/counters.h"
#include "stages/record_builder.h"
#include "stages/terminal_stage.h"

namespace mailrail::stages {
namespace {

constexpr std::size_t kKeptBuffers = 16;  // decoded-bytes buffers kept for reuse
constexpr auto kLogInterval = std::chrono::seconds(10);

}  // namespace

AttachmentStage::AttachmentStage(AttachmentStageConfig config, std::unique_ptr<storage::ObjectStore> store,
                                 MessageChannel* in, MessageChannel* out)
    : config_(config), store_(std::move(store)), in_(in), out_(out) {}

AttachmentStage::~AttachmentStage() {
  // The store may still be writing from buffers in in_flight_: it goes first (it waits for them).
  store_.reset();
}

std::size_t AttachmentStage::RunOnce() {
  if (!waiter_set_ && in_->consumer_waiter() != nullptr) {
    store_->set_completion_waiter(in_->consumer_waiter());
    waiter_set_ = true;
  }
  std::size_t work = 0;
  results_.clear();
  store_->Poll(results_);
  for (const storage::ObjectWriteResult& result : results_) Settle(result);
  work += results_.size();

  // Messages from the head whose objects are all settled leave, in arrival order.
  auto release = [&] {
    while (held_.size() > unsubmitted_ && held_.front().pending == 0) {
      out_.Add(held_.front().msg);
      held_.pop_front();
      ++work;
    }
  };
  auto submit = [&] {
    while (unsubmitted_ > 0 && Advance(held_[held_.size() - unsubmitted_])) --unsubmitted_;
  };
  submit();
  release();
  if (!out_.Flush()) return work;

  if (unsubmitted_ == 0 && held_.size() < config_.max_held_messages) {
    std::array<Message*, 64> batch{};
    const std::size_t room = std::min(batch.size(), config_.max_held_messages - held_.size());
    const std::size_t n = in_->PopBatch(std::span(batch).first(room));
    for (std::size_t i = 0; i < n; ++i) {
      Held& h = held_.emplace_back();
      h.msg = batch[i];
      // Only messages that will be forwarded get their attachments stored.
      if (FinalOutcome(*h.msg) != Outcome::kForwarded) h.next_attachment = h.msg->record.attachments.size();
      ++unsubmitted_;
    }
    work += n;
    submit();
    release();
    out_.Flush();
  }
  if (in_->IsDrained() && held_.empty() && out_.empty() && store_->in_flight() == 0 && !waiter_released_) {
    // Finished: hand the thread's waiter back before reporting it, since the topology may free
    // it once every stage on the thread is finished.
    store_->set_completion_waiter(nullptr);
    waiter_released_ = true;
  }
  return work;
}

bool AttachmentStage::Advance(Held& h) {
  std::vector<Attachment>& attachments = h.msg->record.attachments;
  while (h.next_attachment < attachments.size()) {
    Attachment& a = attachments[h.next_attachment];
    if (!a.has_sha256) {
      NotStored(a, "bytes_not_in_input", counters_.bytes_not_in_input);
      ++h.next_attachment;
      continue;
    }
    if (a.size > config_.max_bytes) {
      NotStored(a, "too_large", counters_.too_large);
      ++h.next_attachment;
      continue;
    }
    if (in_flight_bytes_ > 0 && in_flight_bytes_ + a.size > config_.in_flight_bytes) return false;
    if (!decoded_next_) {
      if (free_buffers_.empty()) {
        decoded_next_ = std::make_unique<ScratchBuffer>();
      } else {
        decoded_next_ = std::move(free_buffers_.back());
        free_buffers_.pop_back();
      }
      DecodeAttachment(a, *decoded_next_);
      base::BumpSingleWriter(counters_.decoded_bytes, decoded_next_->size());
    }
    const std::uint64_t token = next_token_;
    if (!store_->TrySubmit(storage::ObjectWrite{token, a.sha256, decoded_next_->view()})) return false;
    ++next_token_;
    in_flight_bytes_ += decoded_next_->size();
    in_flight_.emplace(token, InFlight{&h, h.next_attachment, std::move(decoded_next_)});
    ++h.pending;
    ++h.next_attachment;
  }
  return true;
}

void AttachmentStage::Settle(const storage::ObjectWriteResult& result) {
  auto it = in_flight_.find(result.token);
  MR_CHECK(it != in_flight_.end()) << "attachment store reported unknown token " << result.token;
  InFlight& f = it->second;
  Message& msg = *f.held->msg;
  Attachment& a = msg.record.attachments[f.attachment];
  switch (result.outcome) {
    case storage::ObjectWriteOutcome::kStored:
    case storage::ObjectWriteOutcome::kAlreadyPresent:
      a.stored = msg.arena.Copy(store_->Reference(a.sha256));
      base::BumpSingleWriter(counters_.seen);
      base::BumpSingleWriter(counters_.stored);
      break;
    case storage::ObjectWriteOutcome::kBudgetFull:
      NotStored(a, "budget_full", counters_.budget_full);
      LogRefusal("budget full, attachment not stored",
                 fmt::format("{} bytes, sha256 {}", a.size, storage::DigestHex(a.sha256)));
      break;
    case storage::ObjectWriteOutcome::kFailed:
      NotStored(a, "store_error", counters_.store_error);
      LogRefusal("store error, attachment not stored", result.error);
      break;
  }
  in_flight_bytes_ -= f.bytes->size();
  if (free_buffers_.size() < kKeptBuffers) free_buffers_.push_back(std::move(f.bytes));
  --f.held->pending;
  in_flight_.erase(it);
}

void AttachmentStage::NotStored(Attachment& a, std::string_view reason, std::atomic<std::uint64_t>& counter) {
  a.not_stored = reason;
  base::BumpSingleWriter(counters_.seen);
  base::BumpSingleWriter(counter);
}

void AttachmentStage::LogRefusal(std::string_view what, const std::string& detail) {
  const auto now = engine::Clock::now();
  if (last_log_ != engine::Clock::time_point{} && now - last_log_ < kLogInterval) {
    ++unlogged_refusals_;
    return;
  }
  fmt::print(stderr, "mailrail: attachments: {}: {} ({} more refusals since the last line)\n", what, detail,
             unlogged_refusals_);
  last_log_ = now;
  unlogged_refusals_ = 0;
}

bool AttachmentStage::IsFinished() const { return waiter_released_; }

engine::Clock::time_point AttachmentStage::next_deadline() const {
  if (store_->needs_polling() && store_->in_flight() > 0) return engine::Clock::now() + config_.poll_interval;
  return engine::Clock::time_point::max();
}

void AttachmentStage::Report(engine::Snapshot& s) const {
  auto v = [](const std::atomic<std::uint64_t>& n) { return static_cast<double>(n.load(std::memory_order_relaxed)); };
  s.Counter("attachments_seen", v(counters_.seen), {}, "attachments of messages to be forwarded");
  s.Counter("attachments_stored", v(counters_.stored), {},
            "attachments whose record carries a store reference (written now or already stored)");
  const char* help = "attachments not stored, by reason (the record says the same)";
  s.Counter("attachments_not_stored", v(counters_.too_large), {{"reason", "too_large"}}, help);
  s.Counter("attachments_not_stored", v(counters_.budget_full), {{"reason", "budget_full"}});
  s.Counter("attachments_not_stored", v(counters_.store_error), {{"reason", "store_error"}});
  s.Counter("attachments_not_stored", v(counters_.bytes_not_in_input), {{"reason", "bytes_not_in_input"}});
  s.Counter("attachments_decoded_bytes", v(counters_.decoded_bytes), {}, "bytes decoded again for the store");
  store_->Report(s);
}

}  // namespace mailrail::stages
