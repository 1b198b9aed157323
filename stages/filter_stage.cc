#include "stages/filter_stage.h"

#include <fmt/format.h>

#include <charconv>
#include <chrono>

#include "engine/base/counters.h"

namespace mailrail::stages {

base::Result<std::unique_ptr<FilterStage>> FilterStage::Create(FilterStageConfig config, MessageChannel* in,
                                                               MessageChannel* out, MessageChannel* done) {
  auto rules = RuleSet::Load(config.rules_path);
  if (!rules.has_value()) return rules.error();
  std::unique_ptr<FilterStage> stage(new FilterStage(std::move(config), in, out, done));
  if (auto status = stage->scratch_.Rebind(*rules.value()); !status.has_value()) return status.error();
  stage->Install(std::move(rules.value()));
  return stage;
}

FilterStage::FilterStage(FilterStageConfig config, MessageChannel* in, MessageChannel* out, MessageChannel* done)
    : config_(std::move(config)), in_(in), out_(out), done_(done) {}

void FilterStage::Install(std::shared_ptr<const RuleSet> rules) {
  auto next = std::make_shared<Active>();
  const std::size_t n = rules->decision_count() * 4;
  next->counts = std::make_unique<std::atomic<std::uint64_t>[]>(n);
  for (std::size_t i = 0; i < n; ++i) next->counts[i].store(0, std::memory_order_relaxed);
  next->rules = std::move(rules);
  std::lock_guard lock(stats_mutex_);
  if (active_) {
    for (std::uint32_t r = 0; r < active_->rules->decision_count(); ++r) {
      auto& sums = retired_[active_->rules->rule_id(r)];
      for (std::size_t a = 0; a < 4; ++a) sums[a] += active_->counts[r * 4 + a].load(std::memory_order_relaxed);
    }
  }
  active_ = std::move(next);
}

base::Status FilterStage::RequestReload() {
  std::lock_guard reload(reload_mutex_);
  auto rules = RuleSet::Load(config_.rules_path);
  std::lock_guard lock(pending_mutex_);
  if (!rules.has_value()) {
    base::BumpSingleWriter(reload_failures_);
    last_reload_error_ = rules.error().message;
    return rules.error();
  }
  pending_ = std::move(rules.value());
  pending_generation_.fetch_add(1, std::memory_order_release);
  return base::OkStatus();
}

std::shared_ptr<const RuleSet> FilterStage::rules() const {
  std::lock_guard lock(stats_mutex_);
  return active_->rules;
}

void FilterStage::Decide(Message& message) {
  Record& record = message.record;
  const RuleSet& rules = *active_->rules;
  rules.Evaluate(message, scratch_, decision_);
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
  if (pending_generation_.load(std::memory_order_acquire) != seen_generation_) {
    std::shared_ptr<const RuleSet> next;
    {
      std::lock_guard lock(pending_mutex_);
      next = std::move(pending_);
      seen_generation_ = pending_generation_.load(std::memory_order_relaxed);
    }
    if (next && scratch_.Rebind(*next).has_value()) {
      Install(std::move(next));
      base::BumpSingleWriter(reloads_);
    } else if (next) {
      base::BumpSingleWriter(reload_failures_);  // no Hyperscan scratch for the new set: the old one stays
    }
  }
  const std::size_t n = in_->PopBatch(batch_);
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

}  // namespace mailrail::stages
