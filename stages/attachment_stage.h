#pragma once
// AttachmentStage: stores the decoded bytes of every attachment of a message that is to be
// forwarded in an ObjectStore (storage/object_store.h: local disk or S3) and writes the store's
// reference into the record (Attachment::stored, or Attachment::not_stored with the reason).
//
// Place: between the filter and the terminal stage (tools/pipeline.h), so the attachments of
//   duplicates and of messages a rule dropped or quarantined are never stored: those messages,
//   and messages without attachments, pass through untouched (still in LSN order).
// Bytes: the parser hashes attachments while decoding into a reused scratch buffer and keeps no
//   decoded copy, so the stage decodes Attachment::encoded again into a pooled buffer that lives
//   until the store reported the object (docs/benchmarks.md measures this second decode).
// Order and backpressure: messages leave in the order they came, each once all its objects are
//   settled. At most max_held_messages wait here and at most in_flight_bytes of decoded bytes
//   are held for the store (one object is always allowed, so a large attachment still passes);
//   beyond that the stage takes no input and the ring before it fills: a slow store slows the
//   pipeline, it never drops. The store's own in-flight limit (TrySubmit false) does the same.
// Refusals: an attachment larger than max_bytes ("too_large"), refused by the budget
//   ("budget_full"), failed in the store ("store_error") or whose bytes were not in the input
//   ("bytes_not_in_input", Graph metadata) is not stored; the message still flows, the record
//   says why, and each reason is counted. Budget refusals and store errors are also logged
//   (the first one, then at most one line per 10 s with the number since the last line).
// Recovery: the store is written before the message reaches the terminal stage, whose checkpoint
//   only passes messages it made durable; after a crash the WAL re-feed stores the objects of
//   every message after the checkpoint again, which content addressing makes idempotent.
// Waking: a store that completes on its own thread notifies the stage's thread; a store that
//   must be polled (disk, io_uring) makes next_deadline() ask for a run every poll_interval
//   while operations are in flight.
// Threading: RunOnce/IsFinished/next_deadline on the stage's thread; Report from any thread.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/stage.h"
#include "stages/message.h"
#include "stages/text_codec.h"
#include "storage/object_store.h"

namespace mailrail::stages {

// The stage's limits ([attachments] in docs/operations.md); plain values, copied at construction.
struct AttachmentStageConfig {
  std::uint64_t max_bytes = 25u << 20;         // per attachment (decoded)
  std::uint64_t in_flight_bytes = 64u << 20;   // decoded bytes held for objects in flight
  std::size_t max_held_messages = 1024;        // messages waiting for their objects
  std::chrono::microseconds poll_interval{200};
};

// Per-attachment counters; single writer (the stage's thread), relaxed loads elsewhere.
struct AttachmentCounters {
  std::atomic<std::uint64_t> seen{0};           // attachments of messages to be forwarded
  std::atomic<std::uint64_t> stored{0};         // referenced: written now or already present
  std::atomic<std::uint64_t> too_large{0};
  std::atomic<std::uint64_t> budget_full{0};
  std::atomic<std::uint64_t> store_error{0};
  std::atomic<std::uint64_t> bytes_not_in_input{0};
  std::atomic<std::uint64_t> decoded_bytes{0};
};

class AttachmentStage final : public engine::Stage {
 public:
  using MessageChannel = engine::Channel<Message*>;
  AttachmentStage(AttachmentStageConfig config, std::unique_ptr<storage::ObjectStore> store, MessageChannel* in,
                  MessageChannel* out);
  ~AttachmentStage() override;

  std::string_view name() const override { return "attachments"; }
  std::size_t RunOnce() override;
  bool IsFinished() const override;
  engine::Clock::time_point next_deadline() const override;
  void Report(engine::Snapshot& snapshot) const override;

  const AttachmentCounters& counters() const { return counters_; }
  const storage::ObjectStore& store() const { return *store_; }

 private:
  struct Held {
    Message* msg = nullptr;
    std::size_t next_attachment = 0;  // attachments before it have been decided or submitted
    std::size_t pending = 0;          // objects submitted and not yet settled
  };
  struct InFlight {
    Held* held = nullptr;
    std::size_t attachment = 0;
    std::unique_ptr<ScratchBuffer> bytes;
  };

  // Submits what the newest held message still has; false when the store or the byte budget is full.
  bool Advance(Held& held);
  void Settle(const storage::ObjectWriteResult& result);
  void NotStored(Attachment& attachment, std::string_view reason, std::atomic<std::uint64_t>& counter);
  void LogRefusal(std::string_view what, const std::string& detail);

  AttachmentStageConfig config_;
  std::unique_ptr<storage::ObjectStore> store_;
  MessageChannel* in_;
  engine::Outbox<Message*> out_;
  std::deque<Held> held_;  // in arrival order; references stay valid across push_back/pop_front
  std::size_t unsubmitted_ = 0;  // the last unsubmitted_ held messages still have objects to submit
  std::unique_ptr<ScratchBuffer> decoded_next_;  // decoded for the next submission, which the store refused for now
  std::unordered_map<std::uint64_t, InFlight> in_flight_;
  std::vector<std::unique_ptr<ScratchBuffer>> free_buffers_;
  std::vector<storage::ObjectWriteResult> results_;
  std::uint64_t next_token_ = 1;
  std::uint64_t in_flight_bytes_ = 0;
  bool waiter_set_ = false;
  bool waiter_released_ = false;  // finished: the store no longer notifies this thread
  engine::Clock::time_point last_log_{};
  std::uint64_t unlogged_refusals_ = 0;
  AttachmentCounters counters_;
};

}  // namespace mailrail::stages
