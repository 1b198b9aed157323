#include "stages/filter_stage.h"

#include <fmt/format.h>

#include <charconv>
#include <chrono>

#include "engine/base/counters.h"
#include "stages/record_json.h"

namespace mailrail::stages {

base::Result<std::unique_ptr<FilterStage>> FilterStage::Create(FilterStageConfig config, MessageChannel* in,
                                                               MessageChannel* out, MessageChannel* done) {
  return Create(std::move(config), std::vector<MessageChannel*>{in}, out, done);
}

base::Result<std::unique_ptr<FilterStage>> FilterStage::Create(FilterStageConfig config,
                                                               std::vector<MessageChannel*> inputs,
                                                               MessageChannel* out, MessageChannel* done) {
  auto rules = RuleSet::Load(config.rules_path);
  if (!rules.has_value()) return rules.error();
  auto scratch = std::make_unique<FilterScratch>();
  if (auto status = scratch->Rebind(*rules.value()); !status.has_value()) return status.error();
  std::unique_ptr<FilterStage> stage(new FilterStage(std::move(config), std::move(inputs), out, done));
  stage->Install(std::move(rules.value()), std::move(scratch), 1);
  return stage;
}

FilterStage::FilterStage(FilterStageConfig config, std::vector<MessageChannel*> inputs, MessageChannel* out,
                         MessageChannel* done)
    : config_(std::move(config)), in_(std::move(inputs)), out_(out), done_(done) {}

void FilterStage::Install(std::shared_ptr<const RuleSet> rules, std::unique_ptr<FilterScratch> scratch,
                          std::uint64_t version) {
  auto next = std::make_shared<Active>();
  const std::size_t n = rules->decision_count() * 4;
  next->counts = std::make_unique<std::atomic<std::uint64_t>[]>(n);
  for (std::size_t i = 0; i < n; ++i) next->counts[i].store(0, std::memory_order_relaxed);
  next->rules = std::move(rules);
  next->version = version;
  scratch_ = std::move(scratch);
  std::lock_guard lock(stats_mutex_);
  if (active_) {
    for (std::uint32_t r = 0; r < active_->rules->decision_count(); ++r) {
      auto& sums = retired_[active_->rules->rule_id(r)];
      for (std::size_t a = 0; a < 4; ++a) sums[a] += active_->counts[r * 4 + a].load(std::memory_order_relaxed);
    }
  }
  active_ = std::move(next);
  active_version_.store(version, std::memory_order_relaxed);
}

base::Result<RuleSetVersion> FilterStage::RequestReload() {
  std::lock_guard reload(reload_mutex_);  // one reload at a time: the only writer of what follows
  auto rules = RuleSet::Load(config_.rules_path);
  auto scratch = std::make_unique<FilterScratch>();
  base::Status bound = rules.has_value() ? scratch->Rebind(*rules.value()) : base::Status(rules.error());
  std::lock_guard lock(pending_mutex_);
  if (!bound.has_value()) {
    base::BumpSingleWriter(reload_failures_);
    last_reload_error_ = bound.error().message;
    return bound.error();
  }
  last_reload_error_.clear();
  const RuleSet& set = *rules.value();
  const RuleSetVersion version{++last_version_, set.rule_count(), set.decision_count() - set.rule_count()};
  // A pending set not taken yet is superseded: the stage installs only the newest.
  pending_ = Pending{std::move(rules.value()), std::move(scratch), version.version};
  pending_generation_.store(pending_generation_.load(std::memory_order_relaxed) + 1, std::memory_order_release);
  return version;
}

void FilterStage::TakePendingRules() {
  if (pending_generation_.load(std::memory_order_acquire) == seen_generation_) return;
  Pending next;
  {
    std::lock_guard lock(pending_mutex_);
    next = std::move(pending_);
    seen_generation_ = pending_generation_.load(std::memory_order_relaxed);
  }
  if (next.rules == nullptr) return;
  Install(std::move(next.rules), std::move(next.scratch), next.version);
  base::BumpSingleWriter(reloads_);
}

std::shared_ptr<const RuleSet> FilterStage::rules() const {
  std::lock_guard lock(stats_mutex_);
  return active_->rules;
}

void FilterStage::Decide(Message& message) {
  Record& record = message.record;
  const RuleSet& rules = *active_->rules;
  rules.Evaluate(message, *scratch_, decision_);
  record.spam_score = decision_.score;
  record.action = decision_.action;
  for (std::uint32_t r : decision_.fired) record.rules.push_back(message.arena.Copy(rules.rule_id(r)));
  for (std::uint32_t l : decision_.labels) record.labels.push_back(message.arena.Copy(rules.label(l)));
  const auto action = static_cast<std::size_t>(decision_.action);
  for (std::uint32_t r : decision_.fired) {
    base::BumpSingleWriter(active_->counts[r * 4]);
    if (action != 0) base::BumpSingleWriter(active_->counts[r * 4 + action]);
  }
  base::BumpSingleWriter(action_counts_[action]);
}

std::size_t FilterStage::RunOnce() {
  if (!out_.Flush() || !done_.Flush()) return 0;
  const std::size_t n = in_.PopBatch(batch_);
  // After the pop: a message pushed after RequestReload returned is judged by the new set.
  TakePendingRules();
  if (n == 0) return 0;
  bool quarantined = false;
  std::size_t passed_final = 0;
  for (std::size_t i = 0; i < n; ++i) {
    Message* m = batch_[i];
    if (m->outcome != Outcome::kInFlight) {
      ++passed_final;
      out_.Add(m);
      continue;
    }
    if (m->source.id == kRedriveSourceId && config_.quarantine != nullptr) NoteRedrive(*m);
    if (m->parse_failed) {
      m->record.action = FilterAction::kQuarantine;
      m->outcome = Outcome::kQuarantinedUnparseable;
      base::BumpSingleWriter(unparseable_);
      if (config_.quarantine != nullptr) {
        reason_ = fmt::format("unparseable: {}", m->parse_error);
        config_.quarantine->Append(m->lsn, base::UnixMs(), reason_, m->raw);
        quarantined = true;
      }
      Finish(m);
      continue;
    }
    Decide(*m);
    switch (m->record.action) {
      case FilterAction::kAccept:
      case FilterAction::kLabel:
        out_.Add(m);
        break;
      case FilterAction::kDrop:
        m->outcome = Outcome::kDroppedByRule;
        Finish(m);
        break;
      case FilterAction::kQuarantine:
        m->outcome = Outcome::kQuarantinedByRule;
        if (config_.quarantine != nullptr) {
          reason_ = fmt::format("score={:.1f} rules=", m->record.spam_score);
          for (std::size_t r = 0; r < m->record.rules.size(); ++r) {
            if (r > 0) reason_.push_back(',');
            reason_.append(m->record.rules[r]);
          }
          config_.quarantine->Append(m->lsn, base::UnixMs(), reason_, m->raw);
          quarantined = true;
        }
        Finish(m);
        break;
    }
  }
  base::BumpSingleWriter(in_count_, n - passed_final);
  // Quarantined messages are durable in the store before anyone learns they are finished. On a
  // failed sync they are still finished (outcome counted), and the failure is counted: the WAL
  // keeps the original until the terminal stage checkpoints past it.
  if (quarantined && !config_.quarantine->Sync().has_value()) base::BumpSingleWriter(quarantine_errors_);
  out_.Flush();
  done_.Flush();
  return n;
}

void FilterStage::NoteRedrive(const Message& m) {
  std::uint64_t id = 0;
  const std::string& position = m.source.position;
  const auto [end, error] = std::from_chars(position.data(), position.data() + position.size(), id);
  // An unknown id is the operator's typo: the message is still processed, the marker skipped.
  if (error != std::errc() || end != position.data() + position.size() ||
      !config_.quarantine->MarkRedriven(id, base::UnixMs()).has_value()) {
    base::BumpSingleWriter(quarantine_errors_);
  }
}

FilterStats FilterStage::Stats() const {
  FilterStats stats;
  stats.in = in_count_.load(std::memory_order_relaxed);
  for (std::size_t a = 0; a < 4; ++a) stats.by_action[a] = action_counts_[a].load(std::memory_order_relaxed);
  stats.quarantined_unparseable = unparseable_.load(std::memory_order_relaxed);
  stats.reloads = reloads_.load(std::memory_order_relaxed);
  stats.reload_failures = reload_failures_.load(std::memory_order_relaxed);
  stats.quarantine_errors = quarantine_errors_.load(std::memory_order_relaxed);
  stats.version = active_version_.load(std::memory_order_relaxed);
  {
    std::lock_guard lock(pending_mutex_);
    stats.last_reload_error = last_reload_error_;
  }
  std::lock_guard lock(stats_mutex_);
  stats.by_rule = retired_;
  for (std::uint32_t r = 0; r < active_->rules->decision_count(); ++r) {
    auto& sums = stats.by_rule[active_->rules->rule_id(r)];
    for (std::size_t a = 0; a < 4; ++a) sums[a] += active_->counts[r * 4 + a].load(std::memory_order_relaxed);
  }
  return stats;
}

void FilterStage::Report(engine::Snapshot& s) const {
  const FilterStats stats = Stats();
  const std::shared_ptr<const RuleSet> set = rules();
  auto action_name = [](std::size_t a) { return std::string(ToString(static_cast<FilterAction>(a))); };
  s.Counter("stage_messages_in", static_cast<double>(stats.in), {{"stage", "filter"}},
            "messages the stage took from its input");
  for (std::size_t a = 0; a < 4; ++a) {
    s.Counter("filter_decisions", static_cast<double>(stats.by_action[a]), {{"action", action_name(a)}},
              a == 0 ? "filter decisions by action" : "");
  }
  s.Counter("filter_quarantined_unparseable", static_cast<double>(stats.quarantined_unparseable));
  bool first = true;
  for (const auto& [rule, counts] : stats.by_rule) {
    s.Counter("filter_rule_fired", static_cast<double>(counts[0]), {{"rule", rule}},
              first ? "times a rule (or threshold) fired, whatever the decision" : "");
    for (std::size_t a = 1; a < 4; ++a) {
      if (counts[a] == 0) continue;  // zero pairs are left out: rules x actions would be mostly zeros
      s.Counter("filter_rule_decisions", static_cast<double>(counts[a]), {{"rule", rule}, {"action", action_name(a)}},
                "non-accept decisions a fired rule took part in, by rule and action");
    }
    first = false;
  }
  s.Gauge("filter_rule_set_version", static_cast<double>(stats.version), {},
          "version of the rules in force (1 at start, +1 per successful reload)");
  s.Gauge("filter_rules", static_cast<double>(set->rule_count()), {}, "rules in force (without thresholds)");
  s.Counter("filter_reloads", static_cast<double>(stats.reloads), {{"result", "ok"}}, "rule reloads by result");
  s.Counter("filter_reloads", static_cast<double>(stats.reload_failures), {{"result", "rejected"}});
  if (!stats.last_reload_error.empty()) {
    s.Gauge("filter_last_reload_error", 1, {{"error", stats.last_reload_error}},
            "the last rejected reload's error (file, line, rule); the old rules stayed in force");
  }
  s.Counter("filter_quarantine_errors", static_cast<double>(stats.quarantine_errors));
}

}  // namespace mailrail::stages
