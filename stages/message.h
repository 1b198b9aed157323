#pragma once
// Message: the pooled slot that carries one message through the pipeline. The handle in the rings
// is a Message* (see engine::SlotPool): exactly one stage owns it at a time, the one that popped
// it; the stage that ends its journey (sink, or dedup/filter when they drop it) releases it.
//
// Contents: the raw bytes as received (RFC 5322 text or one Graph JSON object), where they came
// from, the WAL LSN once durable, and the parsed Record whose views point into `raw` and `arena`.
// Reset() clears contents and keeps capacities (raw, arena's first block, record vectors).

#include <cstdint>
#include <span>
#include <string>

#include "engine/arena.h"
#include "engine/slot_pool.h"
#include "stages/record.h"

namespace mailrail::stages {

// kGraphNotification: one Microsoft Graph change notification (a JSON object) received by the
// webhook; it is a durable fetch request for the Graph poller, not a message to parse.
enum class InputKind : std::uint8_t { kRfc822, kGraphJson, kGraphNotification };
enum class SourceKind : std::uint8_t { kReplay, kWebhook, kImap, kGraph };

// Where the message came from; `position` is source-specific (byte offset in a dump, IMAP UID,
// Graph id) and, with `id`, lets a source resume after a restart.
// SourceRef::id of a message an operator re-drove from quarantine (`mailrail quarantine redrive`,
// HTTP header X-Mailrail-Redrive, whose value, the quarantine id, is SourceRef::position): dedup
// lets it through although its key is already known, and the filter records the re-drive in the
// quarantine store.
inline constexpr std::string_view kRedriveSourceId = "redrive";

struct SourceRef {
  SourceKind kind = SourceKind::kReplay;
  std::string id;        // dump path, mailbox, subscription
  std::string position;  // byte offset, UID, resource id
};

// Final state of a message; every message ends in exactly one, each counted.
// kSettledBeforeRestart: a message re-fed from the WAL after a restart only so that dedup can
// rebuild its set; its outcome was counted before the restart, so nobody counts it again.
enum class Outcome : std::uint8_t {
  kInFlight,
  kSettledBeforeRestart,
  kForwarded,
  kDuplicate,
  kDroppedByRule,
  kQuarantinedByRule,
  kQuarantinedUnparseable,
  kDeadLettered,
};

// DurableAck / DurableAckSink: how a source learns that its messages are durable, so that it
// may acknowledge upstream (HTTP 202, IMAP flag, Graph delta link, replay checkpoint).
// The WAL stage calls OnDurable on its own thread, once per commit group, with the acks of every
// message in that group whose ack_sink is this sink, in LSN order. Implementations must not block
// (hand the acks to their own thread, e.g. through a queue and an eventfd).
struct DurableAck {
  std::uint64_t token = 0;  // Message::ack_token, chosen by the source
  std::uint64_t lsn = 0;
};

class DurableAckSink {
 public:
  virtual ~DurableAckSink() = default;
  virtual void OnDurable(std::span<const DurableAck> acks) = 0;
};

struct Message : engine::PoolSlot {
  static constexpr std::size_t kRetainedRawBytes = 64 * 1024;  // raw capacity a pooled slot keeps

  std::string raw;  // bytes as received
  InputKind kind = InputKind::kRfc822;
  SourceRef source;
  std::uint64_t lsn = 0;              // WAL log sequence number; 0 until durable
  DurableAckSink* ack_sink = nullptr; // who to tell when durable (nullptr: nobody waits)
  std::uint64_t ack_token = 0;
  bool recovered = false;             // re-fed from the WAL at start-up, not newly received
  std::int64_t received_at_ms = 0;    // Unix ms when accepted
  std::int64_t accepted_ns = 0;       // steady clock at acceptance, for end-to-end latency (paced replay: scheduled time)
  std::int64_t logged_ns = 0;         // steady clock when appended to the WAL (0: recovered, not appended)
  std::int64_t durable_ns = 0;        // steady clock when the WAL reported it durable (0: as logged_ns)
  Record record;
  engine::Arena arena;
  Outcome outcome = Outcome::kInFlight;
  bool parse_failed = false;          // nothing could be parsed: goes to quarantine
  std::string_view parse_error;       // reason when parse_failed
  std::uint64_t route_seq = 0;        // order number from the DedupRouter (0: not split over workers)

  void Reset() {
    // Keep the buffer of an ordinary message; give back an attachment-sized one, or every slot
    // of the pool ends up holding the largest message it ever carried (RSS grows with run length).
    if (raw.capacity() > kRetainedRawBytes) {
      std::string().swap(raw);
    } else {
      raw.clear();
    }
    kind = InputKind::kRfc822;
    source.id.clear();
    source.position.clear();
    lsn = 0;
    ack_sink = nullptr;
    ack_token = 0;
    recovered = false;
    received_at_ms = 0;
    accepted_ns = 0;
    logged_ns = 0;
    durable_ns = 0;
    record.Clear();
    arena.Reset();
    outcome = Outcome::kInFlight;
    parse_failed = false;
    parse_error = {};
    route_seq = 0;
  }
};

using MessagePool = engine::SlotPool<Message>;

}  // namespace mailrail::stages
