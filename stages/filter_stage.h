#pragma once
// FilterStage: applies the RuleSet to every message and routes it by the decision.
//
// Inputs/outputs (all Channel<Message*>):
//   in    messages from dedup; with several dedup workers one channel each, merged back into
//         the router's order (SequenceMerge on Message::route_seq);
//   out   accepted and labelled messages, to forward;
//   done  messages whose journey ends here, for the terminal stage: dropped by a rule
//         (Outcome::kDroppedByRule), quarantined by a rule (kQuarantinedByRule) or unparseable
//         (parse_failed, kQuarantinedUnparseable). Quarantined messages are appended to the
//         QuarantineStore with their reason and synced before they are pushed to done.
//   Every popped message leaves through exactly one of out/done and is counted once.
//   done may be the same channel as out: every message then leaves through out in input (LSN)
//   order. Messages that arrive with a final outcome (a duplicate, or settled before a restart,
//   routed in line by dedup) pass through to out untouched and uncounted.
// Re-drives: a message re-driven from quarantine (SourceRef::id == kRedriveSourceId) is marked
//   redriven in the quarantine store (durably), then filtered like any other.
// Record: spam_score, action, rules (fired rule and threshold ids) and labels are set; the id and
//   label strings are copied into the message's arena, so they outlive a rule-set swap.
// Counting: per action, and per (fired rule, final action) for every non-accept decision.
// Reload: RequestReload() may be called from any thread (the SIGHUP thread, the control API's
//   reload thread); reloads are serialised. It loads and compiles the rule file and allocates its
//   Hyperscan scratch on the calling thread, off the hot path, so installing it cannot fail; it
//   then publishes the new set with the next version number and returns that version and the
//   rule count. The stage installs it between batches (one acquire load per RunOnce, after the
//   pop), so no message sees half of a set, and every message that reaches the stage after
//   RequestReload returned is judged by the new set or a later one. On failure the error (file,
//   line, rule) is returned and recorded, and the old rules stay in force. Version 1 is the set
//   loaded by Create. Retired sets die when the stage lets go.
// Stats: Report() publishes decisions by action and by (rule, action), the active version and
//   rule count, reloads by result and the last reload error. Decision counters are single-writer
//   relaxed atomics (the stage thread); per-rule counters live with the active set and are folded
//   into totals under stats_mutex_ only when a set is swapped, never per message.
// Threading: Stage contract for RunOnce; RequestReload, Stats and Report from any thread.

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "engine/base/result.h"
#include "engine/stage.h"
#include "stages/filter_rules.h"
#include "stages/message.h"
#include "stages/quarantine_store.h"
#include "stages/sequence_merge.h"

namespace mailrail::stages {

struct FilterStageConfig {
  std::string rules_path{kBuiltinDefaultRules};  // a rule file, or "builtin:default"
  QuarantineStore* quarantine = nullptr;          // not owned; nullptr: quarantine is an outcome only
};

// What a successful reload put in force.
struct RuleSetVersion {
  std::uint64_t version = 0;  // 1 = the set loaded at start, +1 per successful reload
  std::size_t rules = 0;      // rules, without thresholds
  std::size_t thresholds = 0;
};

struct FilterStats {
  std::uint64_t in = 0;
  std::array<std::uint64_t, 4> by_action{};  // indexed by FilterAction
  std::uint64_t quarantined_unparseable = 0;
  // Per rule (or threshold) id: how often it fired in a decision of each non-accept action
  // (index by FilterAction; [kAccept] counts every firing whatever the decision).
  std::map<std::string, std::array<std::uint64_t, 4>> by_rule;
  std::uint64_t reloads = 0;
  std::uint64_t reload_failures = 0;
  std::string last_reload_error;  // of the last reload when it was rejected; "" after a successful one
  std::uint64_t quarantine_errors = 0;
  std::uint64_t version = 0;  // of the set in force
};

class FilterStage final : public engine::Stage {
 public:
  using MessageChannel = engine::Channel<Message*>;

  static base::Result<std::unique_ptr<FilterStage>> Create(FilterStageConfig config, MessageChannel* in,
                                                           MessageChannel* out, MessageChannel* done);
  // Behind several dedup workers: one input per worker, merged by route_seq.
  static base::Result<std::unique_ptr<FilterStage>> Create(FilterStageConfig config,
                                                           std::vector<MessageChannel*> inputs, MessageChannel* out,
                                                           MessageChannel* done);

  std::string_view name() const override { return "filter"; }
  std::size_t RunOnce() override;
  bool IsFinished() const override { return in_.IsDrained() && out_.empty() && done_.empty(); }
  unsigned cost_hint() const override { return 11; }
  void Report(engine::Snapshot& snapshot) const override;

  base::Result<RuleSetVersion> RequestReload();
  FilterStats Stats() const;
  std::shared_ptr<const RuleSet> rules() const;

 private:
  struct Active {
    std::shared_ptr<const RuleSet> rules;
    std::unique_ptr<std::atomic<std::uint64_t>[]> counts;  // decision_count() x 4
    std::uint64_t version = 0;
  };
  struct Pending {
    std::shared_ptr<const RuleSet> rules;
    std::unique_ptr<FilterScratch> scratch;  // bound to `rules`
    std::uint64_t version = 0;
  };
  FilterStage(FilterStageConfig config, std::vector<MessageChannel*> inputs, MessageChannel* out,
              MessageChannel* done);
  // Stage thread (or before start).
  void Install(std::shared_ptr<const RuleSet> rules, std::unique_ptr<FilterScratch> scratch, std::uint64_t version);
  void TakePendingRules();
  void Decide(Message& message);
  void NoteRedrive(const Message& message);  // records a re-drive from quarantine
  void Finish(Message* m) { (done_.channel() == out_.channel() ? out_ : done_).Add(m); }

  FilterStageConfig config_;
  SequenceMerge in_;
  engine::Outbox<Message*> out_;
  engine::Outbox<Message*> done_;
  std::unique_ptr<FilterScratch> scratch_;
  FilterDecision decision_;
  std::string reason_;
  std::array<Message*, 64> batch_{};
  std::shared_ptr<Active> active_;  // stage thread; swapped under stats_mutex_

  // Published by RequestReload, taken by the stage.
  std::mutex reload_mutex_;  // serialises reloads
  std::uint64_t last_version_ = 1;  // under reload_mutex_: the newest version handed out
  mutable std::mutex pending_mutex_;
  Pending pending_;
  std::atomic<std::uint64_t> pending_generation_{0};
  std::uint64_t seen_generation_ = 0;

  mutable std::mutex stats_mutex_;  // guards retired_ and the active_ pointer seen by Stats()
  std::map<std::string, std::array<std::uint64_t, 4>> retired_;
  std::atomic<std::uint64_t> in_count_{0};
  std::array<std::atomic<std::uint64_t>, 4> action_counts_{};
  std::atomic<std::uint64_t> unparseable_{0};
  std::atomic<std::uint64_t> quarantine_errors_{0};
  std::atomic<std::uint64_t> reloads_{0};
  std::atomic<std::uint64_t> reload_failures_{0};
  std::atomic<std::uint64_t> active_version_{0};
  std::string last_reload_error_;  // under pending_mutex_
};

}  // namespace mailrail::stages
