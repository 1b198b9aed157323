#include "stages/terminal_stage.h"

#include <algorithm>

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

namespace {

void RecordSpan(engine::LatencyHistogram& h, std::int64_t from_ns, std::int64_t to_ns) {
  if (from_ns > 0 && to_ns > 0) h.Record(static_cast<std::uint64_t>(std::max<std::int64_t>(0, to_ns - from_ns)));
}

}  // namespace

void LatencyParts::RecordUntilDurable(const Message& msg) {
  if (msg.logged_ns == 0) return;  // recovered from the WAL: not appended by this run
  RecordSpan(accepted_to_logged_, msg.accepted_ns, msg.logged_ns);
  RecordSpan(logged_to_durable_, msg.logged_ns, msg.durable_ns);
}

void LatencyParts::RecordEnd(std::int64_t accepted_ns, std::int64_t durable_ns, std::int64_t end_ns) {
  RecordSpan(end_to_end_, accepted_ns, end_ns);
  RecordSpan(durable_to_end_, durable_ns, end_ns);
}

void LatencyParts::Report(engine::Snapshot& s) const {
  s.Quantiles("end_to_end_latency_ns", end_to_end_.Take());
  s.Quantiles("latency_part_ns", accepted_to_logged_.Take(), {{"part", "accepted_to_logged"}});
  s.Quantiles("latency_part_ns", logged_to_durable_.Take(), {{"part", "logged_to_durable"}});
  s.Quantiles("latency_part_ns", durable_to_end_.Take(), {{"part", "durable_to_end"}});
}

void ReportOutcomes(const OutcomeCounters& c, const LatencyParts& latency, engine::Snapshot& s) {
  auto v = [](const std::atomic<std::uint64_t>& n) { return static_cast<double>(n.load(std::memory_order_relaxed)); };
  const char* help = "messages by final outcome (each message is counted once)";
  s.Counter("messages_final", v(c.forwarded), {{"outcome", "forwarded"}}, help);
  s.Counter("messages_final", v(c.duplicates), {{"outcome", "duplicate"}});
  s.Counter("messages_final", v(c.dropped_by_rule), {{"outcome", "dropped_by_rule"}});
  s.Counter("messages_final", v(c.quarantined_by_rule), {{"outcome", "quarantined_by_rule"}});
  s.Counter("messages_final", v(c.quarantined_unparseable), {{"outcome", "quarantined_unparseable"}});
  s.Counter("messages_final", v(c.dead_lettered), {{"outcome", "dead_lettered"}});
  latency.Report(s);
}

}  // namespace mailrail::stages
