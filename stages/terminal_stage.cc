#include "stages/terminal_stage.h"

#include "engine/base/check.h"
#include "engine/base/counters.h"

namespace mailrail::stages {

Outcome FinalOutcome(const Message& msg) {
  if (msg.outcome != Outcome::kInFlight) return msg.outcome;
  if (msg.parse_failed) return Outcome::kQuarantinedUnparseable;
  switch (msg.record.action) {
    case FilterAction::kDrop: return Outcome::kDroppedByRule;
    case FilterAction::kQuarantine: return Outcome::kQuarantinedByRule;
    default: return Outcome::kForwarded;
  }
}

void CountOutcome(Outcome outcome, OutcomeCounters& c) {
  switch (outcome) {
    case Outcome::kForwarded: base::BumpSingleWriter(c.forwarded); break;
    case Outcome::kDuplicate: base::BumpSingleWriter(c.duplicates); break;
    case Outcome::kDroppedByRule: base::BumpSingleWriter(c.dropped_by_rule); break;
    case Outcome::kQuarantinedByRule: base::BumpSingleWriter(c.quarantined_by_rule); break;
    case Outcome::kQuarantinedUnparseable: base::BumpSingleWriter(c.quarantined_unparseable); break;
    case Outcome::kDeadLettered: base::BumpSingleWriter(c.dead_lettered); break;
    case Outcome::kSettledBeforeRestart: break;  // counted before the restart
    case Outcome::kInFlight: MR_CHECK(false) << "message counted while still in flight"; break;
  }
}

void ReportOutcomes(const OutcomeCounters& c, const engine::LatencyHistogram& latency, engine::Snapshot& s) {
  auto v = [](const std::atomic<std::uint64_t>& n) { return static_cast<double>(n.load(std::memory_order_relaxed)); };
  const char* help = "messages by final outcome (each message is counted once)";
  s.Counter("messages_final", v(c.forwarded), {{"outcome", "forwarded"}}, help);
  s.Counter("messages_final", v(c.duplicates), {{"outcome", "duplicate"}});
  s.Counter("messages_final", v(c.dropped_by_rule), {{"outcome", "dropped_by_rule"}});
  s.Counter("messages_final", v(c.quarantined_by_rule), {{"outcome", "quarantined_by_rule"}});
  s.Counter("messages_final", v(c.quarantined_unparseable), {{"outcome", "quarantined_unparseable"}});
  s.Counter("messages_final", v(c.dead_lettered), {{"outcome", "dead_lettered"}});
  s.Quantiles("end_to_end_latency_ns", latency.Take());
}

}  // namespace mailrail::stages
