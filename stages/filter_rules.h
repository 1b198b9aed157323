#pragma once
// RuleSet: the filter's compiled, immutable rules (spam signals, routing labels), loaded from TOML.
// The rule file format is documented in stages/rules/default.toml and docs/parts/dedupfilter.md.
//
// Rule kinds: sender (address/domain lists), header (presence or regex on a named header),
//   subject / body / text (keywords, whole words and regexes), size, attachment (media types,
//   extensions, filename substrings), auth (SPF/DKIM/DMARC results from Authentication-Results),
//   all (fires when every listed earlier rule fired). Every subject/body/text pattern of every
//   rule is compiled into ONE Hyperscan database scanned once per message over the vector
//   [subject, "\n", body_text]; the match offset tells subject from body. Header regexes compile
//   into one database per header name, scanned only over headers with that name.
// Decision: fired rules add their score and labels; thresholds on the total score fire like rules.
//   The action is the most severe of the fired rules' and thresholds' actions
//   (drop > quarantine > label > accept), except that a fired `accept` rule (an allow list) rules
//   out quarantine and drop, and thresholds. Any label makes accept into label.
// Errors: loading fails with code "filter.rules" and a message naming file, line and rule
//   ("rules.toml:14: rule 'spam.x': unknown action 'dropp'"); nothing is half-loaded.
// Lifetime: shared_ptr<const RuleSet>; the filter stage swaps sets on reload and copies the label
//   and rule-id strings a record keeps into the message's arena, so a record never points into a
//   retired set.
// Threading: a RuleSet is immutable and may be shared by any number of threads; each evaluating
//   thread owns a FilterScratch (Hyperscan scratch and per-message bitsets).

#include <hs/hs.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "engine/base/result.h"
#include "stages/message.h"
#include "stages/record.h"

namespace mailrail::stages {

// The built-in rule set (stages/rules/default.toml, embedded at build time). A rule file can pull
// it in with include = ["builtin:default"].
inline constexpr std::string_view kBuiltinDefaultRules = "builtin:default";
std::string_view DefaultRulesText();

class RuleSet;

// Per-thread evaluation state for one RuleSet at a time. Rebind() when the set changes.
class FilterScratch {
 public:
  FilterScratch() = default;
  ~FilterScratch();
  FilterScratch(const FilterScratch&) = delete;
  FilterScratch& operator=(const FilterScratch&) = delete;
  base::Status Rebind(const RuleSet& rules);

 private:
  friend class RuleSet;
  hs_scratch_t* hs_ = nullptr;
  std::vector<std::uint64_t> fired_;  // bit per rule
  std::vector<std::uint64_t> labels_;  // bit per label
  std::vector<std::uint8_t> header_seen_;  // per RuleSet header name
  std::string lowered_;
  std::uint32_t auth_seen_[3] = {0, 0, 0};  // bit per AuthResult, per method
};

// Result of evaluating one message. Indices refer to the RuleSet that produced it.
struct FilterDecision {
  FilterAction action = FilterAction::kAccept;
  double score = 0.0;
  std::vector<std::uint32_t> fired;   // rule_id() indices, rules in file order then thresholds
  std::vector<std::uint32_t> labels;  // label() indices, in first-fired order
};

class RuleSet {
 public:
  // Loads a rule file (and what it includes); path may be kBuiltinDefaultRules.
  static base::Result<std::shared_ptr<const RuleSet>> Load(const std::string& path);
  // Loads rules from text; `name` stands for the file in errors and anchors relative includes.
  static base::Result<std::shared_ptr<const RuleSet>> Parse(std::string_view text, const std::string& name);

  ~RuleSet();
  RuleSet(const RuleSet&) = delete;
  RuleSet& operator=(const RuleSet&) = delete;

  // Evaluates `message` into `decision` (cleared first). No allocation once the vectors in
  // `decision` and `scratch` have grown.
  void Evaluate(const Message& message, FilterScratch& scratch, FilterDecision& decision) const;

  std::size_t rule_count() const { return rules_.size(); }            // rules (without thresholds)
  std::size_t decision_count() const { return ids_.size(); }          // rules + thresholds
  const std::string& rule_id(std::uint32_t i) const { return ids_[i]; }
  const std::string& label(std::uint32_t i) const { return labels_[i]; }
  std::size_t label_count() const { return labels_.size(); }
  std::size_t pattern_count() const { return patterns_.size(); }
  const std::vector<std::string>& files() const { return files_; }

 private:
  friend class FilterScratch;
  friend class RuleSetBuilder;
  RuleSet() = default;

  enum class Kind : std::uint8_t { kSender, kHeader, kText, kSize, kAttachment, kAuth, kAll };
  enum class Scope : std::uint8_t { kSubject, kBody, kAny };
  struct Rule {
    Kind kind = Kind::kText;
    FilterAction action = FilterAction::kAccept;
    bool has_action = false;  // false: contributes score and labels only
    double score = 0.0;
    std::vector<std::uint32_t> labels;
    // kHeader: index into header_names_; present: fires on presence (true) or absence (false)
    std::uint32_t header = 0;
    bool header_presence = false;
    bool header_present = true;
    // kSize
    std::uint64_t size_above = UINT64_MAX;
    std::uint64_t size_below = 0;
    // kAttachment (lower-case)
    std::vector<std::string> media_types;  // "type/sub" or "type/*"
    std::vector<std::string> extensions;   // without the dot
    std::vector<std::string> name_parts;   // substrings of the filename
    // kAuth: bit per AuthResult, per method (spf, dkim, dmarc)
    std::uint32_t auth_results[3] = {0, 0, 0};
    // kAll: earlier rule indices
    std::vector<std::uint32_t> all_of;
  };
  struct Pattern {
    std::uint32_t rule;
    Scope scope;
  };
  struct Threshold {
    double score;
    FilterAction action;
    std::vector<std::uint32_t> labels;
  };
  struct HeaderDb {
    std::string name;  // lower-case
    hs_database_t* db = nullptr;
    std::vector<std::uint32_t> pattern_rules;  // pattern id -> rule
  };

  static int OnTextMatch(unsigned id, unsigned long long from, unsigned long long to, unsigned flags, void* ctx);
  static int OnHeaderMatch(unsigned id, unsigned long long from, unsigned long long to, unsigned flags, void* ctx);

  std::vector<std::string> files_;
  std::vector<std::string> ids_;  // rules, then thresholds
  std::vector<Rule> rules_;
  std::vector<Threshold> thresholds_;
  std::vector<std::string> labels_;
  std::vector<Pattern> patterns_;
  hs_database_t* text_db_ = nullptr;
  std::vector<HeaderDb> headers_;  // one per header name used by a header rule
  std::unordered_map<std::string, std::vector<std::uint32_t>> sender_addresses_;  // lower-case
  std::unordered_map<std::string, std::vector<std::uint32_t>> sender_domains_;
  std::vector<std::uint32_t> other_rules_;  // size, attachment, auth, header presence, all: in order
  bool needs_auth_ = false;
};

}  // namespace mailrail::stages
