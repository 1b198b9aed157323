#pragma once
// Message: the pooled slot that carries one message through the pipeline. The handle in the rings
// is a Message* (see engine::SlotPool): exactly one stage owns it at a time, the one that popped
// it; the stage that ends its journey (sink, or dedup/filter when they drop it) releases it.
//
// Contents: the raw bytes as received (RFC 5322 text or one Graph JSON object), where they came
// from, the WAL LSN once durable, and the parsed Record whose views point into `raw` and `arena`.
// Reset() clears contents and keeps capacities (raw, arena's first block, record vectors).

#include <cstdint>
#include <string>

#include "engine/arena.h"
#include "engine/slot_pool.h"
#include "stages/record.h"

namespace mailrail::stages {

enum class InputKind : std::uint8_t { kRfc822, kGraphJson };
enum class SourceKind : std::uint8_t { kReplay, kWebhook, kImap, kGraph };

// Where the message came from; `position` is source-specific (byte offset in a dump, IMAP UID,
// Graph id) and, with `id`, lets a source resume after a restart.
struct SourceRef {
  SourceKind kind = SourceKind::kReplay;
  std::string id;        // dump path, mailbox, subscription
  std::string position;  // byte offset, UID, resource id
};

// Final state of a message; every message ends in exactly one, each counted.
enum class Outcome : std::uint8_t {
  kInFlight,
  kForwarded,
  kDuplicate,
  kDroppedByRule,
  kQuarantinedByRule,
  kQuarantinedUnparseable,
  kDeadLettered,
};

struct Message : engine::PoolSlot {
  std::string raw;  // bytes as received
  InputKind kind = InputKind::kRfc822;
  SourceRef source;
  std::uint64_t lsn = 0;              // WAL log sequence number; 0 until durable
  std::int64_t received_at_ms = 0;    // Unix ms when accepted
  std::int64_t accepted_ns = 0;       // steady clock at acceptance, for end-to-end latency
  Record record;
  engine::Arena arena;
  Outcome outcome = Outcome::kInFlight;
  bool parse_failed = false;          // nothing could be parsed: goes to quarantine
  std::string_view parse_error;       // reason when parse_failed

  void Reset() {
    raw.clear();
    kind = InputKind::kRfc822;
    source.id.clear();
    source.position.clear();
    lsn = 0;
    received_at_ms = 0;
    accepted_ns = 0;
    record.Clear();
    arena.Reset();
    outcome = Outcome::kInFlight;
    parse_failed = false;
    parse_error = {};
  }
};

using MessagePool = engine::SlotPool<Message>;

}  // namespace mailrail::stages
