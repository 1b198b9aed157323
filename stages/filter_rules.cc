#include "stages/filter_rules.h"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cctype>
#include <functional>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <toml++/toml.h>

#include "stages/record_json.h"

namespace mailrail::stages {
namespace {

constexpr int kMaxIncludeDepth = 16;
constexpr const char* kAuthMethods[3] = {"spf", "dkim", "dmarc"};
// Authentication-Results result words; bit i of a mask. "missing": the method is absent.
constexpr std::string_view kAuthResults[] = {"pass",      "fail",      "softfail", "neutral", "none",
                                             "temperror", "permerror", "policy",   "missing"};
constexpr std::uint32_t kAuthMissingBit = 1u << 8;

char Lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c; }

std::string ToLower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = Lower(c);
  return out;
}

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (Lower(a[i]) != Lower(b[i])) return false;
  }
  return true;
}

bool ContainsIgnoreCase(std::string_view haystack, std::string_view lower_needle) {
  if (lower_needle.size() > haystack.size()) return false;
  for (std::size_t i = 0; i + lower_needle.size() <= haystack.size(); ++i) {
    std::size_t j = 0;
    while (j < lower_needle.size() && Lower(haystack[i + j]) == lower_needle[j]) ++j;
    if (j == lower_needle.size()) return true;
  }
  return false;
}

// A literal as a Hyperscan expression: every byte that is not alphanumeric is hex-escaped.
std::string EscapeLiteral(std::string_view literal) {
  std::string out;
  for (unsigned char c : literal) {
    if (std::isalnum(c)) {
      out.push_back(static_cast<char>(c));
    } else {
      out += fmt::format("\\x{:02x}", c);
    }
  }
  return out;
}

// True when a regex has a ^ outside a character class (a start-of-line anchor).
bool HasStartAnchor(std::string_view regex) {
  bool in_class = false;
  for (std::size_t i = 0; i < regex.size(); ++i) {
    const char c = regex[i];
    if (c == '\\') {
      ++i;
    } else if (in_class) {
      if (c == ']') in_class = false;
    } else if (c == '[') {
      in_class = true;
      if (i + 1 < regex.size() && regex[i + 1] == '^') ++i;
      if (i + 1 < regex.size() && regex[i + 1] == ']') ++i;  // "[]" or "[^]": ] is a member
    } else if (c == '^') {
      return true;
    }
  }
  return false;
}

struct CallbackContext {
  std::vector<std::uint64_t>* fired;
  const void* patterns;
  std::size_t subject_end;  // the separator's offset
};

void SetBit(std::vector<std::uint64_t>& bits, std::uint32_t i) { bits[i >> 6] |= 1ULL << (i & 63); }
bool TestBit(const std::vector<std::uint64_t>& bits, std::uint32_t i) { return (bits[i >> 6] >> (i & 63)) & 1; }

}  // namespace

// ---------------------------------------------------------------------------------------------
// Loading: TOML files (with includes) into a RuleSet, then Hyperscan compilation.

class RuleSetBuilder {
 public:
  base::Status LoadFile(const std::string& path, int depth);
  base::Status LoadText(std::string_view text, const std::string& name, int depth);
  base::Status Compile();
  std::unique_ptr<RuleSet> Take() { return std::move(set_); }

 private:
  struct PatternSource {
    std::string expression;  // as compiled
    std::string original;    // as written, for errors
    unsigned flags;
    std::string file;
    std::uint32_t line;
  };
  struct HeaderPatterns {
    std::vector<PatternSource> sources;
    std::vector<std::uint32_t> rules;
  };

  base::Error Fail(const std::string& file, const toml::node& node, const std::string& rule, const std::string& what) {
    const auto line = node.source().begin.line;
    return base::MakeError("filter.rules", fmt::format("{}:{}: {}{}", file, line,
                                                       rule.empty() ? "" : "rule '" + rule + "': ", what));
  }
  base::Status ParseRule(const toml::table& table, const std::string& file);
  base::Status ParseThreshold(const toml::table& table, const std::string& file);
  base::Result<std::vector<std::string>> Strings(const toml::table& t, std::string_view key, const std::string& file,
                                                 const std::string& rule);
  base::Result<FilterAction> ParseAction(const toml::node& node, const std::string& file, const std::string& rule);
  std::vector<std::uint32_t> InternLabels(const std::vector<std::string>& labels);
  std::uint32_t HeaderIndex(const std::string& lower_name);

  std::unique_ptr<RuleSet> set_{new RuleSet()};
  std::vector<PatternSource> text_sources_;
  std::vector<HeaderPatterns> header_sources_;
  std::unordered_map<std::string, std::uint32_t> rule_index_;
  std::vector<std::string> include_stack_;
  std::vector<std::string> threshold_ids_;
};


base::Status RuleSetBuilder::LoadFile(const std::string& path, int depth) {
  if (path == kBuiltinDefaultRules) return LoadText(DefaultRulesText(), std::string(kBuiltinDefaultRules), depth);
  std::ifstream in(path, std::ios::binary);
  if (!in) return base::MakeError("filter.rules", path + ": cannot open rule file");
  std::stringstream text;
  text << in.rdbuf();
  return LoadText(text.str(), path, depth);
}

base::Status RuleSetBuilder::LoadText(std::string_view text, const std::string& name, int depth) {
  if (depth > kMaxIncludeDepth) return base::MakeError("filter.rules", name + ": includes nested too deeply");
  if (std::find(include_stack_.begin(), include_stack_.end(), name) != include_stack_.end()) {
    return base::MakeError("filter.rules", name + ": include cycle");
  }
  toml::table root;
  try {
    root = toml::parse(text, name);
  } catch (const toml::parse_error& e) {
    return base::MakeError("filter.rules", fmt::format("{}:{}:{}: {}", name, e.source().begin.line,
                                                       e.source().begin.column, e.description()));
  }
  include_stack_.push_back(name);
  set_->files_.push_back(name);
  for (const auto& [key, node] : root) {
    if (key == "include") {
      const toml::array* list = node.as_array();
      if (list == nullptr) return Fail(name, node, "", "include must be an array of paths");
      for (const toml::node& item : *list) {
        const auto* path = item.as_string();
        if (path == nullptr) return Fail(name, item, "", "include must be an array of paths");
        std::string target = path->get();
        if (target != kBuiltinDefaultRules && std::filesystem::path(target).is_relative() &&
            name != kBuiltinDefaultRules) {
          target = (std::filesystem::path(name).parent_path() / target).string();
        }
        if (auto status = LoadFile(target, depth + 1); !status.has_value()) return status;
      }
    } else if (key == "rule" || key == "threshold") {
      const toml::array* list = node.as_array();
      if (list == nullptr || !list->is_array_of_tables()) {
        return Fail(name, node, "", fmt::format("'{}' must be an array of tables ([[{}]])", key.str(), key.str()));
      }
      for (const toml::node& item : *list) {
        auto status = key == "rule" ? ParseRule(*item.as_table(), name) : ParseThreshold(*item.as_table(), name);
        if (!status.has_value()) return status;
      }
    } else {
      return Fail(name, node, "", fmt::format("unknown key '{}' (expected include, rule, threshold)", key.str()));
    }
  }
  include_stack_.pop_back();
  return base::OkStatus();
}

base::Result<std::vector<std::string>> RuleSetBuilder::Strings(const toml::table& t, std::string_view key,
                                                                const std::string& file, const std::string& rule) {
  std::vector<std::string> out;
  const toml::node* node = t.get(key);
  if (node == nullptr) return out;
  if (const auto* one = node->as_string(); one != nullptr && !one->get().empty()) {
    out.push_back(one->get());  // a single string stands for a list of one
    return out;
  }
  const toml::array* list = node->as_array();
  if (list == nullptr) return Fail(file, *node, rule, fmt::format("'{}' must be an array of strings", key));
  for (const toml::node& item : *list) {
    const auto* s = item.as_string();
    if (s == nullptr || s->get().empty()) {
      return Fail(file, item, rule, fmt::format("'{}' must hold non-empty strings", key));
    }
    out.push_back(s->get());
  }
  return out;
}

base::Result<FilterAction> RuleSetBuilder::ParseAction(const toml::node& node, const std::string& file,
                                                       const std::string& rule) {
  const auto* s = node.as_string();
  const std::string value = s != nullptr ? s->get() : "";
  for (FilterAction a : {FilterAction::kAccept, FilterAction::kLabel, FilterAction::kQuarantine, FilterAction::kDrop}) {
    if (value == ToString(a)) return a;
  }
  return Fail(file, node, rule, fmt::format("unknown action '{}' (accept, label, quarantine, drop)", value));
}

std::vector<std::uint32_t> RuleSetBuilder::InternLabels(const std::vector<std::string>& labels) {
  std::vector<std::uint32_t> out;
  for (const std::string& label : labels) {
    auto it = std::find(set_->labels_.begin(), set_->labels_.end(), label);
    if (it == set_->labels_.end()) it = set_->labels_.insert(set_->labels_.end(), label);
    out.push_back(static_cast<std::uint32_t>(it - set_->labels_.begin()));
  }
  return out;
}

std::uint32_t RuleSetBuilder::HeaderIndex(const std::string& lower_name) {
  for (std::size_t i = 0; i < set_->headers_.size(); ++i) {
    if (set_->headers_[i].name == lower_name) return static_cast<std::uint32_t>(i);
  }
  set_->headers_.push_back(RuleSet::HeaderDb{lower_name, nullptr, {}});
  header_sources_.emplace_back();
  return static_cast<std::uint32_t>(set_->headers_.size() - 1);
}

base::Status RuleSetBuilder::ParseThreshold(const toml::table& t, const std::string& file) {
  const std::string id = t["id"].value_or(std::string());
  if (id.empty()) return Fail(file, t, "", "threshold needs an id");
  for (const auto& [key, node] : t) {
    if (key != "id" && key != "score" && key != "action" && key != "labels" && key != "description") {
      return Fail(file, node, id, fmt::format("unknown threshold key '{}'", key.str()));
    }
  }
  if (rule_index_.contains(id)) return Fail(file, t, id, "duplicate id");
  const auto score = t["score"].value<double>();
  if (!score) return Fail(file, t, id, "threshold needs a numeric score");
  if (t.get("action") == nullptr) return Fail(file, t, id, "threshold needs an action");
  auto action = ParseAction(*t.get("action"), file, id);
  if (!action.has_value()) return action.error();
  auto labels = Strings(t, "labels", file, id);
  if (!labels.has_value()) return labels.error();
  rule_index_.emplace(id, UINT32_MAX);
  set_->thresholds_.push_back(RuleSet::Threshold{*score, action.value(), InternLabels(labels.value())});
  threshold_ids_.push_back(id);
  return base::OkStatus();
}

base::Status RuleSetBuilder::ParseRule(const toml::table& t, const std::string& file) {
  const std::string id = t["id"].value_or(std::string());
  if (id.empty()) return Fail(file, t, "", "rule needs an id");
  if (rule_index_.contains(id)) return Fail(file, t, id, "duplicate id");
  const std::string kind = t["kind"].value_or(std::string());
  static const std::unordered_map<std::string, std::vector<std::string_view>> kKeys = {
      {"sender", {"addresses", "domains"}},
      {"header", {"header", "present", "regex", "case_sensitive"}},
      {"subject", {"keywords", "words", "regex", "case_sensitive"}},
      {"body", {"keywords", "words", "regex", "case_sensitive"}},
      {"text", {"keywords", "words", "regex", "case_sensitive"}},
      {"size", {"above", "below"}},
      {"attachment", {"types", "extensions", "names"}},
      {"auth", {"spf", "dkim", "dmarc"}},
      {"all", {"rules"}},
  };
  const auto allowed = kKeys.find(kind);
  if (allowed == kKeys.end()) {
    return Fail(file, t, id,
                fmt::format("unknown kind '{}' (sender, header, subject, body, text, size, attachment, auth, all)", kind));
  }
  for (const auto& [key, node] : t) {
    static const std::set<std::string_view> kCommon = {"id", "kind", "action", "labels", "score", "description"};
    if (kCommon.contains(key.str())) continue;
    if (std::find(allowed->second.begin(), allowed->second.end(), key.str()) == allowed->second.end()) {
      return Fail(file, node, id, fmt::format("key '{}' does not apply to kind '{}'", key.str(), kind));
    }
  }
  RuleSet::Rule rule;
  const auto index = static_cast<std::uint32_t>(set_->rules_.size());
  const auto line = t.source().begin.line;
  if (const toml::node* node = t.get("action")) {
    auto action = ParseAction(*node, file, id);
    if (!action.has_value()) return action.error();
    rule.action = action.value();
    rule.has_action = true;
  }
  if (const toml::node* node = t.get("score")) {
    const auto score = node->value<double>();
    if (!score) return Fail(file, *node, id, "score must be a number");
    rule.score = *score;
  }
  auto labels = Strings(t, "labels", file, id);
  if (!labels.has_value()) return labels.error();
  rule.labels = InternLabels(labels.value());
  if (!rule.labels.empty() && !rule.has_action) {
    rule.action = FilterAction::kLabel;
    rule.has_action = true;
  }

  auto strings = [&](std::string_view key) { return Strings(t, key, file, id); };
  bool has_condition = false;
  if (kind == "sender") {
    rule.kind = RuleSet::Kind::kSender;
    auto addresses = strings("addresses");
    auto domains = strings("domains");
    if (!addresses.has_value()) return addresses.error();
    if (!domains.has_value()) return domains.error();
    for (const auto& a : addresses.value()) set_->sender_addresses_[ToLower(a)].push_back(index);
    for (const auto& d : domains.value()) set_->sender_domains_[ToLower(d)].push_back(index);
    has_condition = !addresses->empty() || !domains->empty();
  } else if (kind == "header") {
    rule.kind = RuleSet::Kind::kHeader;
    const std::string header = t["header"].value_or(std::string());
    if (header.empty()) return Fail(file, t, id, "header rule needs 'header' (a field name)");
    rule.header = HeaderIndex(ToLower(header));
    const auto present = t["present"].value<bool>();
    const auto regex = t["regex"].value<std::string>();
    if (present.has_value() == regex.has_value()) {
      return Fail(file, t, id, "header rule needs exactly one of 'present' (true/false) or 'regex'");
    }
    if (present) {
      rule.header_presence = true;
      rule.header_present = *present;
      set_->other_rules_.push_back(index);
    } else {
      unsigned flags = HS_FLAG_SINGLEMATCH | (t["case_sensitive"].value_or(false) ? 0u : HS_FLAG_CASELESS);
      header_sources_[rule.header].sources.push_back(PatternSource{*regex, *regex, flags, file, line});
      header_sources_[rule.header].rules.push_back(index);
    }
    has_condition = true;
  } else if (kind == "subject" || kind == "body" || kind == "text") {
    rule.kind = RuleSet::Kind::kText;
    const RuleSet::Scope scope = kind == "subject" ? RuleSet::Scope::kSubject
                                 : kind == "body"  ? RuleSet::Scope::kBody
                                                   : RuleSet::Scope::kAny;
    const unsigned caseless = t["case_sensitive"].value_or(false) ? 0u : HS_FLAG_CASELESS;
    // The scan covers [subject, "\n", body] once. A subject pattern is wrapped as \A[^\n]*(?:P):
    // anchored to the start and unable to cross the separator, it never runs over the body and
    // can stop at its first match. Body patterns run unwrapped and report every match (the first
    // one may fall in the subject); the match callback keeps those past the separator. Measured:
    // wrapping body patterns as \n(?s:.*)(?:P) to use SINGLEMATCH was up to 2x slower.
    // ^ and $ mean line start/end (HS_FLAG_MULTILINE; the subject is one line).
    const unsigned flags = caseless | HS_FLAG_MULTILINE;
    for (std::string_view key : {"keywords", "words", "regex"}) {
      auto list = strings(key);
      if (!list.has_value()) return list.error();
      for (const std::string& item : list.value()) {
        const std::string expression = key == "regex"      ? item
                                       : key == "keywords" ? EscapeLiteral(item)
                                                           : "\\b" + EscapeLiteral(item) + "\\b";
        // Hyperscan rejects a ^ inside the wrapper: such subject patterns run unwrapped too.
        const bool wrap = scope == RuleSet::Scope::kSubject && !HasStartAnchor(expression);
        std::string scoped = wrap ? "\\A[^\\n]*(?:" + expression + ")" : expression;
        const unsigned pattern_flags = wrap || scope == RuleSet::Scope::kAny ? flags | HS_FLAG_SINGLEMATCH : flags;
        text_sources_.push_back(PatternSource{std::move(scoped), item, pattern_flags, file, line});
        set_->patterns_.push_back(RuleSet::Pattern{index, scope});
        has_condition = true;
      }
    }
  } else if (kind == "size") {
    rule.kind = RuleSet::Kind::kSize;
    const auto above = t["above"].value<std::int64_t>();
    const auto below = t["below"].value<std::int64_t>();
    if ((above && *above < 0) || (below && *below < 0)) return Fail(file, t, id, "sizes must be >= 0");
    if (above) rule.size_above = static_cast<std::uint64_t>(*above);
    if (below) rule.size_below = static_cast<std::uint64_t>(*below);
    has_condition = above.has_value() || below.has_value();
    set_->other_rules_.push_back(index);
  } else if (kind == "attachment") {
    rule.kind = RuleSet::Kind::kAttachment;
    for (auto [key, target] : {std::pair{"types", &rule.media_types}, std::pair{"extensions", &rule.extensions},
                               std::pair{"names", &rule.name_parts}}) {
      auto list = strings(key);
      if (!list.has_value()) return list.error();
      for (const std::string& item : list.value()) {
        std::string lower = ToLower(item);
        if (target == &rule.extensions && lower.front() == '.') lower.erase(0, 1);
        target->push_back(std::move(lower));
      }
    }
    has_condition = !rule.media_types.empty() || !rule.extensions.empty() || !rule.name_parts.empty();
    set_->other_rules_.push_back(index);
  } else if (kind == "auth") {
    rule.kind = RuleSet::Kind::kAuth;
    for (int m = 0; m < 3; ++m) {
      auto list = strings(kAuthMethods[m]);
      if (!list.has_value()) return list.error();
      for (const std::string& result : list.value()) {
        const auto* it = std::find(std::begin(kAuthResults), std::end(kAuthResults), ToLower(result));
        if (it == std::end(kAuthResults)) {
          return Fail(file, t, id, fmt::format("unknown {} result '{}' (pass, fail, softfail, neutral, none, "
                                               "temperror, permerror, policy, missing)", kAuthMethods[m], result));
        }
        rule.auth_results[m] |= 1u << (it - std::begin(kAuthResults));
        has_condition = true;
      }
    }
    set_->needs_auth_ = true;
    set_->other_rules_.push_back(index);
  } else if (kind == "all") {
    rule.kind = RuleSet::Kind::kAll;
    auto list = strings("rules");
    if (!list.has_value()) return list.error();
    for (const std::string& ref : list.value()) {
      const auto it = rule_index_.find(ref);
      if (it == rule_index_.end() || it->second == UINT32_MAX) {
        return Fail(file, t, id, fmt::format("'rules' names '{}', which is not an earlier rule", ref));
      }
      rule.all_of.push_back(it->second);
    }
    has_condition = !rule.all_of.empty();
    set_->other_rules_.push_back(index);
  }
  if (!has_condition) return Fail(file, t, id, fmt::format("{} rule has no condition", kind));
  rule_index_.emplace(id, index);
  set_->ids_.push_back(id);
  set_->rules_.push_back(std::move(rule));
  return base::OkStatus();
}

namespace {

// Compiles sources into one database; on error names the file, line and rule of the culprit.
base::Result<hs_database_t*> CompileDatabase(const std::vector<std::string>& expressions,
                                             const std::vector<unsigned>& flags, unsigned mode,
                                             const std::function<std::string(unsigned)>& where) {
  // `where` names the file, line, rule and pattern as written.
  std::vector<const char*> pointers;
  std::vector<unsigned> ids;
  for (std::size_t i = 0; i < expressions.size(); ++i) {
    pointers.push_back(expressions[i].c_str());
    ids.push_back(static_cast<unsigned>(i));
  }
  hs_database_t* db = nullptr;
  hs_compile_error_t* error = nullptr;
  if (hs_compile_multi(pointers.data(), flags.data(), ids.data(), static_cast<unsigned>(pointers.size()), mode,
                       nullptr, &db, &error) != HS_SUCCESS) {
    std::string message = error->expression >= 0
                              ? where(static_cast<unsigned>(error->expression)) + ": " + error->message
                              : std::string("rules: ") + error->message;
    hs_free_compile_error(error);
    return base::MakeError("filter.rules", message);
  }
  return db;
}

}  // namespace

base::Status RuleSetBuilder::Compile() {
  // Thresholds follow the rules in the id list.
  for (std::string& id : threshold_ids_) set_->ids_.push_back(std::move(id));
  auto where = [&](const std::vector<PatternSource>& sources, auto rule_of) {
    return [&sources, rule_of, this](unsigned i) {
      return fmt::format("{}:{}: rule '{}': pattern '{}'", sources[i].file, sources[i].line, set_->ids_[rule_of(i)],
                         sources[i].original);
    };
  };
  if (!text_sources_.empty()) {
    std::vector<std::string> expressions;
    std::vector<unsigned> flags;
    for (const auto& s : text_sources_) {
      expressions.push_back(s.expression);
      flags.push_back(s.flags);
    }
    auto db = CompileDatabase(expressions, flags, HS_MODE_VECTORED,
                              where(text_sources_, [this](unsigned i) { return set_->patterns_[i].rule; }));
    if (!db.has_value()) return db.error();
    set_->text_db_ = db.value();
  }
  for (std::size_t h = 0; h < set_->headers_.size(); ++h) {
    const HeaderPatterns& hp = header_sources_[h];
    if (hp.sources.empty()) continue;
    std::vector<std::string> expressions;
    std::vector<unsigned> flags;
    for (const auto& s : hp.sources) {
      expressions.push_back(s.expression);
      flags.push_back(s.flags);
    }
    auto db = CompileDatabase(expressions, flags, HS_MODE_BLOCK,
                              where(hp.sources, [&hp](unsigned i) { return hp.rules[i]; }));
    if (!db.has_value()) return db.error();
    set_->headers_[h].db = db.value();
    set_->headers_[h].pattern_rules = hp.rules;
  }
  return base::OkStatus();
}

base::Result<std::shared_ptr<const RuleSet>> RuleSet::Load(const std::string& path) {
  RuleSetBuilder builder;
  if (auto status = builder.LoadFile(path, 0); !status.has_value()) return status.error();
  if (auto status = builder.Compile(); !status.has_value()) return status.error();
  return std::shared_ptr<const RuleSet>(builder.Take());
}

base::Result<std::shared_ptr<const RuleSet>> RuleSet::Parse(std::string_view text, const std::string& name) {
  RuleSetBuilder builder;
  if (auto status = builder.LoadText(text, name, 0); !status.has_value()) return status.error();
  if (auto status = builder.Compile(); !status.has_value()) return status.error();
  return std::shared_ptr<const RuleSet>(builder.Take());
}

RuleSet::~RuleSet() {
  if (text_db_ != nullptr) hs_free_database(text_db_);
  for (HeaderDb& h : headers_) {
    if (h.db != nullptr) hs_free_database(h.db);
  }
}

// ---------------------------------------------------------------------------------------------
// Evaluation.

FilterScratch::~FilterScratch() {
  if (hs_ != nullptr) hs_free_scratch(hs_);
}

base::Status FilterScratch::Rebind(const RuleSet& rules) {
  auto grow = [this](const hs_database_t* db) -> base::Status {
    if (db == nullptr) return base::OkStatus();
    if (hs_alloc_scratch(db, &hs_) != HS_SUCCESS) return base::MakeError("filter.scratch", "hs_alloc_scratch failed");
    return base::OkStatus();
  };
  if (auto s = grow(rules.text_db_); !s.has_value()) return s;
  for (const auto& h : rules.headers_) {
    if (auto s = grow(h.db); !s.has_value()) return s;
  }
  fired_.assign((rules.rules_.size() + 63) / 64 + 1, 0);
  labels_.assign((rules.labels_.size() + 63) / 64 + 1, 0);
  header_seen_.assign(rules.headers_.size(), 0);
  return base::OkStatus();
}

int RuleSet::OnTextMatch(unsigned id, unsigned long long, unsigned long long to, unsigned, void* ctx) {
  auto& c = *static_cast<CallbackContext*>(ctx);
  const Pattern& p = static_cast<const Pattern*>(c.patterns)[id];
  const bool in_subject = to <= c.subject_end;
  if (p.scope == Scope::kAny || (p.scope == Scope::kSubject) == in_subject) SetBit(*c.fired, p.rule);
  return 0;
}

int RuleSet::OnHeaderMatch(unsigned id, unsigned long long, unsigned long long, unsigned, void* ctx) {
  auto& c = *static_cast<CallbackContext*>(ctx);
  SetBit(*c.fired, static_cast<const std::uint32_t*>(c.patterns)[id]);
  return 0;
}

void RuleSet::Evaluate(const Message& message, FilterScratch& scratch, FilterDecision& decision) const {
  const Record& record = message.record;
  decision.action = FilterAction::kAccept;
  decision.score = 0.0;
  decision.fired.clear();
  decision.labels.clear();
  std::fill(scratch.fired_.begin(), scratch.fired_.end(), 0);
  std::fill(scratch.labels_.begin(), scratch.labels_.end(), 0);

  // One scan over subject and body for every keyword and regex rule.
  if (text_db_ != nullptr) {
    static constexpr char kSeparator = '\n';
    const char* data[3] = {record.subject.empty() ? "" : record.subject.data(), &kSeparator,
                           record.body_text.empty() ? "" : record.body_text.data()};
    const unsigned lengths[3] = {static_cast<unsigned>(record.subject.size()), 1,
                                 static_cast<unsigned>(record.body_text.size())};
    CallbackContext ctx{&scratch.fired_, patterns_.data(), record.subject.size()};
    hs_scan_vector(text_db_, data, lengths, 3, 0, scratch.hs_, OnTextMatch, &ctx);
  }
  // Sender lists: the address, then the domain and each parent domain.
  if ((!sender_addresses_.empty() || !sender_domains_.empty()) && record.from) {
    std::string& lowered = scratch.lowered_;
    lowered.assign(record.from->address);
    for (char& c : lowered) c = Lower(c);
    auto mark = [&](const std::unordered_map<std::string, std::vector<std::uint32_t>>& map, const std::string& key) {
      const auto it = map.find(key);
      if (it != map.end()) {
        for (std::uint32_t r : it->second) SetBit(scratch.fired_, r);
      }
    };
    mark(sender_addresses_, lowered);
    const std::size_t at = lowered.rfind('@');
    if (at != std::string::npos && !sender_domains_.empty()) {
      lowered.erase(0, at + 1);
      while (!lowered.empty()) {
        mark(sender_domains_, lowered);
        const std::size_t dot = lowered.find('.');
        if (dot == std::string::npos) break;
        lowered.erase(0, dot + 1);
      }
    }
  }
  // Header rules, and Authentication-Results verdicts.
  if (!headers_.empty() || needs_auth_) {
    std::fill(scratch.header_seen_.begin(), scratch.header_seen_.end(), 0);
    std::fill(std::begin(scratch.auth_seen_), std::end(scratch.auth_seen_), 0);
    for (const HeaderField& field : record.headers) {
      for (std::size_t h = 0; h < headers_.size(); ++h) {
        if (!EqualsIgnoreCase(field.name, headers_[h].name)) continue;
        scratch.header_seen_[h] = 1;
        if (headers_[h].db != nullptr) {
          CallbackContext ctx{&scratch.fired_, headers_[h].pattern_rules.data(), 0};
          hs_scan(headers_[h].db, field.value.empty() ? "" : field.value.data(),
                  static_cast<unsigned>(field.value.size()), 0, scratch.hs_, OnHeaderMatch, &ctx);
        }
      }
      if (needs_auth_ && EqualsIgnoreCase(field.name, "authentication-results")) {
        // "... ; spf=softfail (...) smtp.mailfrom=...; dkim=pass header.i=...; dmarc=fail ..."
        const std::string_view v = field.value;
        for (int m = 0; m < 3; ++m) {
          const std::string_view method = kAuthMethods[m];
          for (std::size_t i = 0; i + method.size() < v.size(); ++i) {
            if (v[i + method.size()] != '=' || (i > 0 && std::isalnum(static_cast<unsigned char>(v[i - 1])))) continue;
            if (!EqualsIgnoreCase(v.substr(i, method.size()), method)) continue;
            std::size_t end = i + method.size() + 1;
            while (end < v.size() && std::isalpha(static_cast<unsigned char>(v[end]))) ++end;
            const std::string_view word = v.substr(i + method.size() + 1, end - i - method.size() - 1);
            for (std::size_t r = 0; r + 1 < std::size(kAuthResults); ++r) {
              if (EqualsIgnoreCase(word, kAuthResults[r])) scratch.auth_seen_[m] |= 1u << r;
            }
          }
        }
      }
    }
    for (std::uint32_t& seen : scratch.auth_seen_) {
      if (seen == 0) seen = kAuthMissingBit;
    }
  }
  // The remaining kinds, in file order (an `all` rule only names earlier rules).
  for (std::uint32_t r : other_rules_) {
    const Rule& rule = rules_[r];
    bool hit = false;
    switch (rule.kind) {
      case Kind::kHeader:
        hit = (scratch.header_seen_[rule.header] != 0) == rule.header_present;
        break;
      case Kind::kSize: {
        const std::uint64_t size = message.raw.size();
        hit = size > rule.size_above || size < rule.size_below;
        break;
      }
      case Kind::kAttachment:
        for (const Attachment& a : record.attachments) {
          for (const std::string& type : rule.media_types) {
            if (type.ends_with("/*") ? (a.content_type.size() > type.size() - 1 &&
                                        EqualsIgnoreCase(a.content_type.substr(0, type.size() - 1),
                                                         std::string_view(type).substr(0, type.size() - 1)))
                                     : EqualsIgnoreCase(a.content_type, type)) {
              hit = true;
            }
          }
          const std::size_t dot = a.filename.rfind('.');
          if (dot != std::string_view::npos) {
            for (const std::string& ext : rule.extensions) hit = hit || EqualsIgnoreCase(a.filename.substr(dot + 1), ext);
          }
          for (const std::string& part : rule.name_parts) hit = hit || ContainsIgnoreCase(a.filename, part);
        }
        break;
      case Kind::kAuth:
        for (int m = 0; m < 3; ++m) hit = hit || (rule.auth_results[m] & scratch.auth_seen_[m]) != 0;
        break;
      case Kind::kAll:
        hit = std::all_of(rule.all_of.begin(), rule.all_of.end(), [&](std::uint32_t x) { return TestBit(scratch.fired_, x); });
        break;
      case Kind::kSender:
      case Kind::kText:
        break;
    }
    if (hit) SetBit(scratch.fired_, r);
  }

  // Decision: scores and labels add up; the most severe action wins; an allow rule caps it.
  bool allowed = false;
  auto add_labels = [&](const std::vector<std::uint32_t>& labels) {
    for (std::uint32_t l : labels) {
      if (TestBit(scratch.labels_, l)) continue;
      SetBit(scratch.labels_, l);
      decision.labels.push_back(l);
    }
  };
  for (std::size_t w = 0; w < scratch.fired_.size(); ++w) {
    for (std::uint64_t bits = scratch.fired_[w]; bits != 0; bits &= bits - 1) {
      const auto r = static_cast<std::uint32_t>(w * 64 + static_cast<std::size_t>(std::countr_zero(bits)));
      const Rule& rule = rules_[r];
      decision.fired.push_back(r);
      decision.score += rule.score;
      add_labels(rule.labels);
      if (!rule.has_action) continue;
      if (rule.action == FilterAction::kAccept) {
        allowed = true;
      } else {
        decision.action = std::max(decision.action, rule.action);
      }
    }
  }
  if (!allowed) {
    for (std::size_t t = 0; t < thresholds_.size(); ++t) {
      if (decision.score < thresholds_[t].score) continue;
      decision.fired.push_back(static_cast<std::uint32_t>(rules_.size() + t));
      add_labels(thresholds_[t].labels);
      decision.action = std::max(decision.action, thresholds_[t].action);
    }
  } else {
    decision.action = std::min(decision.action, FilterAction::kLabel);
  }
  if (decision.action == FilterAction::kAccept && !decision.labels.empty()) decision.action = FilterAction::kLabel;
}

}  // namespace mailrail::stages
