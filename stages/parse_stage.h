#pragma once
// ParseStage: pops Message* batches from its input channel, parses each (MIME or Graph JSON, by
// Message::kind) into Message::record, and pushes them on. Messages that cannot be parsed at all
// keep msg.parse_failed/parse_error set and are still pushed: the stage that ends their journey
// quarantines them, so nothing disappears here.
//
// Threading: an engine::Stage; RunOnce runs on the thread the Topology chose. counters() may be
//   read from any thread: each counter has one writer (this stage) that updates it with relaxed
//   load+store (no locked instruction), readers use relaxed loads; values are monotonic.
// Blocking: never; a full output keeps the parsed batch in the Outbox (backpressure).
// Ownership: takes ownership of each popped Message* and hands it to the output channel.

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "engine/channel.h"
#include "engine/stage.h"
#include "stages/message.h"
#include "stages/mime_parser.h"
#include "stages/parse_defects.h"

namespace mailrail::stages {

// Snapshot of a ParseStage's counters (plain values, safe to copy around).
struct ParseCounters {
  std::uint64_t messages = 0;
  std::uint64_t bytes = 0;
  std::uint64_t messages_with_defects = 0;
  std::array<std::uint64_t, defect::kAll.size()> defects{};                 // by defect::kAll index
  std::array<std::uint64_t, parse_failure::kAll.size()> failures{};         // by parse_failure::kAll index
};

class ParseStage final : public engine::Stage {
 public:
  static constexpr std::size_t kBatch = 32;

  ParseStage(engine::Channel<Message*>* in, engine::Channel<Message*>* out, ParseLimits limits = {},
             std::string_view name = "parse");

  std::string_view name() const override { return name_; }
  std::size_t RunOnce() override;
  bool IsFinished() const override { return in_->IsDrained() && outbox_.empty(); }
  // Parsing is the most expensive step per message (several times dedup/filter/forward).
  unsigned cost_hint() const override { return 9; }

  ParseCounters counters() const;
  // Messages and bytes in, messages with defects, defects by kind and failures by reason.
  void Report(engine::Snapshot& snapshot) const override;

 private:
  struct Counter {
    std::atomic<std::uint64_t> value{0};
    void Add(std::uint64_t n) { value.store(value.load(std::memory_order_relaxed) + n, std::memory_order_relaxed); }
    std::uint64_t Load() const { return value.load(std::memory_order_relaxed); }
  };

  void Count(const Message& msg);

  std::string_view name_;
  engine::Channel<Message*>* in_;
  engine::Outbox<Message*> outbox_;
  MessageParser parser_;
  Counter messages_, bytes_, messages_with_defects_;
  std::array<Counter, defect::kAll.size()> defects_;
  std::array<Counter, parse_failure::kAll.size()> failures_;
};

}  // namespace mailrail::stages
