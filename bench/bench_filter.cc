// bench_filter: messages/s through the FilterStage on one core (one thread runs RunOnce and moves
// batches of 64 through its input and output channels), over the SpamAssassin corpus parsed once
// by the project's MessageParser (2,142 messages, MAILRAIL_CORPUS_DIR/spamassassin), with
//   - the shipped default rules, and
//   - 1,000 generated keyword rules (500 subject, 500 body; 2 keywords each: one pseudo-random
//     10-letter string that never matches and, in every 10th rule, a common English word that
//     often does) plus the default thresholds,
// and the RuleSet::Evaluate core alone for both. The quarantine store is off (quarantine stays
// an outcome), so no disk I/O is timed. Without the corpus the benchmark is skipped and says why.
//
//   build/bench/bench_filter --benchmark_counters_tabular=true
#include <benchmark/benchmark.h>

#include <array>
#include <deque>
#include <filesystem>
#include <fstream>
#include <string>

#include "stages/filter_rules.h"
#include "stages/filter_stage.h"
#include "stages/mime_parser.h"

namespace {

using namespace mailrail::stages;
using MessageChannel = mailrail::engine::Channel<Message*>;

std::filesystem::path CorpusDir() {
  if (const char* env = std::getenv("MAILRAIL_CORPUS_DIR"); env != nullptr && *env != '\0') return env;
  return MAILRAIL_CORPUS_DIR;
}

// Parsed corpus messages, shared by every benchmark. Empty when the corpus is absent.
std::deque<Message>& Corpus() {
  static std::deque<Message> messages = [] {
    std::deque<Message> out;
    const auto root = CorpusDir() / "spamassassin" / "data";
    if (!std::filesystem::is_directory(root)) return out;
    MessageParser parser;
    std::vector<std::filesystem::path> files;
    for (const auto& d : std::filesystem::recursive_directory_iterator(root)) {
      if (d.is_regular_file()) files.push_back(d.path());
    }
    std::sort(files.begin(), files.end());
    for (const auto& path : files) {
      Message& m = out.emplace_back();
      std::ifstream in(path, std::ios::binary);
      m.raw.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
      parser.Parse(m);
    }
    return out;
  }();
  return messages;
}

std::string GeneratedRules(int count) {
  static constexpr const char* kCommon[] = {"money", "please", "email", "free", "list", "time", "people",
                                            "information", "business", "report"};
  std::string text = R"(
[[threshold]]
id = "spam.suspect"
score = 5.0
action = "label"
labels = ["spam-suspect"]
[[threshold]]
id = "spam.likely"
score = 10.0
action = "quarantine"
)";
  std::uint64_t rng = 12345;
  auto next = [&rng] {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
  };
  for (int i = 0; i < count; ++i) {
    std::string word;
    for (int c = 0; c < 10; ++c) word.push_back(static_cast<char>('a' + next() % 26));
    text += "[[rule]]\nid = \"gen." + std::to_string(i) + "\"\nkind = \"" + (i % 2 == 0 ? "subject" : "body") +
            "\"\nkeywords = [\"" + word + "\"" + (i % 10 == 0 ? std::string(", \"") + kCommon[i / 10 % 10] + "\"" : "") +
            "]\nscore = 0.5\n";
  }
  return text;
}

std::string RulesPath(bool generated) {
  if (!generated) return std::string(kBuiltinDefaultRules);
  const auto path = std::filesystem::temp_directory_path() / "mailrail-bench-filter-1000.toml";
  std::ofstream(path) << GeneratedRules(1000);
  return path.string();
}

void RunStage(benchmark::State& state, bool generated) {
  std::deque<Message>& corpus = Corpus();
  if (corpus.empty()) {
    state.SkipWithError(("corpus not found at " + (CorpusDir() / "spamassassin").string()).c_str());
    return;
  }
  MessageChannel in("in", 128), out("out", 128), done("done", 128);
  FilterStageConfig config;
  config.rules_path = RulesPath(generated);
  auto stage = FilterStage::Create(config, &in, &out, &done);
  if (!stage.has_value()) {
    state.SkipWithError(stage.error().message.c_str());
    return;
  }
  std::array<Message*, 64> batch{};
  std::uint64_t messages = 0, bytes = 0;
  for (auto _ : state) {
    for (std::size_t i = 0; i < corpus.size(); i += 64) {
      const std::size_t n = std::min<std::size_t>(64, corpus.size() - i);
      for (std::size_t j = 0; j < n; ++j) {
        Message& m = corpus[i + j];
        m.record.labels.clear();
        m.record.rules.clear();
        batch[j] = &m;
        bytes += m.raw.size();
      }
      in.PushBatch(std::span<Message* const>(batch.data(), n));
      stage.value()->RunOnce();
      while (out.PopBatch(batch) > 0 || done.PopBatch(batch) > 0) {
      }
      messages += n;
    }
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(messages));
  state.SetBytesProcessed(static_cast<std::int64_t>(bytes));
  state.counters["rules"] = static_cast<double>(stage.value()->rules()->rule_count());
  state.counters["patterns"] = static_cast<double>(stage.value()->rules()->pattern_count());
}

void RunEvaluate(benchmark::State& state, bool generated) {
  std::deque<Message>& corpus = Corpus();
  if (corpus.empty()) {
    state.SkipWithError(("corpus not found at " + (CorpusDir() / "spamassassin").string()).c_str());
    return;
  }
  auto rules = RuleSet::Load(RulesPath(generated));
  if (!rules.has_value()) {
    state.SkipWithError(rules.error().message.c_str());
    return;
  }
  FilterScratch scratch;
  (void)scratch.Rebind(*rules.value());
  FilterDecision decision;
  std::uint64_t messages = 0, flagged = 0;
  for (auto _ : state) {
    for (const Message& m : corpus) {
      rules.value()->Evaluate(m, scratch, decision);
      flagged += decision.action != FilterAction::kAccept;
    }
    messages += corpus.size();
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(messages));
  state.counters["non_accept_share"] = static_cast<double>(flagged) / static_cast<double>(messages);
}

void BM_FilterStage_DefaultRules(benchmark::State& state) { RunStage(state, false); }
void BM_FilterStage_Generated1000Rules(benchmark::State& state) { RunStage(state, true); }
void BM_RuleSetEvaluate_DefaultRules(benchmark::State& state) { RunEvaluate(state, false); }
void BM_RuleSetEvaluate_Generated1000Rules(benchmark::State& state) { RunEvaluate(state, true); }

BENCHMARK(BM_FilterStage_DefaultRules)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_FilterStage_Generated1000Rules)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_RuleSetEvaluate_DefaultRules)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_RuleSetEvaluate_Generated1000Rules)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
