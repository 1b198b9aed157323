#include "stages/filter_stage.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>
#include <vector>

#include "engine/topology.h"
#include "stages/quarantine_store.h"
#include "tests/stages/filter_test_util.h"

namespace mailrail::stages {
namespace {

using MessageChannel = engine::Channel<Message*>;
using testing::MessageFactory;

struct TempDir {
  std::filesystem::path path;
  explicit TempDir(const std::string& name)
      : path(std::filesystem::temp_directory_path() / ("mailrail-filter-" + name + "-" + std::to_string(::getpid()))) {
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::string Write(const std::string& name, const std::string& text) const {
    std::ofstream(path / name) << text;
    return (path / name).string();
  }
};

constexpr const char* kRulesV1 = R"(
[[rule]]
id = "v1.drop"
kind = "subject"
keywords = ["dropme"]
action = "drop"
[[rule]]
id = "v1.quarantine"
kind = "body"
keywords = ["evil"]
action = "quarantine"
[[rule]]
id = "v1.label"
kind = "subject"
keywords = ["invoice"]
labels = ["invoice"]
)";

constexpr const char* kRulesV2 = R"(
[[rule]]
id = "v2.label"
kind = "subject"
keywords = ["invoice"]
labels = ["billing"]
)";

TEST(QuarantineStoreTest, AppendSyncReopenRedriveAndCutTornTail) {
  TempDir dir("store");
  {
    auto store = QuarantineStore::Open(dir.path.string());
    ASSERT_TRUE(store.has_value());
    EXPECT_EQ(store.value()->Append(7, 1000, "rules=spam", "From: a\r\n\r\nbody"), 1u);
    EXPECT_EQ(store.value()->Append(9, 1001, "unparseable: no headers", std::string(5000, 'z')), 2u);
    EXPECT_EQ(store.value()->ReadRaw(1).value(), "From: a\r\n\r\nbody");  // readable before sync
    ASSERT_TRUE(store.value()->Sync().has_value());
    ASSERT_TRUE(store.value()->MarkRedriven(1, 2000).has_value());
    EXPECT_FALSE(store.value()->ReadRaw(3).has_value());
  }
  const auto log = dir.path / "quarantine.log";
  const auto good_size = std::filesystem::file_size(log);
  {
    std::ofstream torn(log, std::ios::app | std::ios::binary);
    torn << "MRQ1 torn record that never finished";
  }
  auto store = QuarantineStore::Open(dir.path.string());
  ASSERT_TRUE(store.has_value());
  EXPECT_GT(store.value()->cut_bytes(), 0u);
  EXPECT_EQ(std::filesystem::file_size(log), good_size);
  const auto entries = store.value()->List();
  ASSERT_EQ(entries.size(), 2u);
  EXPECT_EQ(entries[0].lsn, 7u);
  EXPECT_TRUE(entries[0].redriven);
  EXPECT_EQ(entries[1].reason, "unparseable: no headers");
  EXPECT_FALSE(entries[1].redriven);
  EXPECT_EQ(store.value()->ReadRaw(2).value(), std::string(5000, 'z'));
  // The same LSN quarantined again after a restart is not stored twice.
  EXPECT_EQ(store.value()->Append(9, 3000, "again", "x"), 2u);
  EXPECT_EQ(store.value()->List().size(), 2u);
}

TEST(FilterStageTest, RoutesEveryActionAndCountsByRule) {
  TempDir dir("route");
  auto store = QuarantineStore::Open((dir.path / "q").string());
  ASSERT_TRUE(store.has_value());
  MessageChannel in("dedup->filter", 64), out("filter->forward", 64), done("filter->done", 64);
  FilterStageConfig config;
  config.rules_path = dir.Write("rules.toml", kRulesV1);
  config.quarantine = store.value().get();
  auto stage = FilterStage::Create(config, &in, &out, &done);
  ASSERT_TRUE(stage.has_value()) << stage.error().message;
  MessageFactory f;
  Message& plain = f.Make("hello");
  Message& invoice = f.Make("Invoice 42");
  Message& drop = f.Make("dropme");
  Message& evil = f.Make("x", "evil body");
  evil.raw = "Subject: x\r\n\r\nevil body";
  Message& broken = f.Make("");
  broken.parse_failed = true;
  broken.parse_error = "no header section";
  broken.raw = "\x01\x02garbage";
  for (Message* m : {&plain, &invoice, &drop, &evil, &broken}) ASSERT_TRUE(in.Push(m));
  EXPECT_EQ(stage.value()->RunOnce(), 5u);

  std::vector<Message*> forwarded(8), finished(8);
  forwarded.resize(out.PopBatch(forwarded));
  finished.resize(done.PopBatch(finished));
  EXPECT_EQ(forwarded, (std::vector<Message*>{&plain, &invoice}));
  EXPECT_EQ(finished, (std::vector<Message*>{&drop, &evil, &broken}));
  EXPECT_EQ(plain.record.action, FilterAction::kAccept);
  EXPECT_EQ(invoice.record.action, FilterAction::kLabel);
  ASSERT_EQ(invoice.record.labels.size(), 1u);
  EXPECT_EQ(invoice.record.labels[0], "invoice");
  EXPECT_EQ(invoice.record.rules, (std::vector<std::string_view>{"v1.label"}));
  EXPECT_EQ(drop.outcome, Outcome::kDroppedByRule);
  EXPECT_EQ(evil.outcome, Outcome::kQuarantinedByRule);
  EXPECT_EQ(broken.outcome, Outcome::kQuarantinedUnparseable);

  const auto entries = store.value()->List();
  ASSERT_EQ(entries.size(), 2u);
  EXPECT_NE(entries[0].reason.find("v1.quarantine"), std::string::npos);
  EXPECT_EQ(store.value()->ReadRaw(entries[0].id).value(), evil.raw);
  EXPECT_EQ(entries[1].reason, "unparseable: no header section");

  const FilterStats stats = stage.value()->Stats();
  EXPECT_EQ(stats.in, 5u);
  EXPECT_EQ(stats.by_action[static_cast<int>(FilterAction::kAccept)], 1u);
  EXPECT_EQ(stats.by_action[static_cast<int>(FilterAction::kLabel)], 1u);
  EXPECT_EQ(stats.by_action[static_cast<int>(FilterAction::kDrop)], 1u);
  EXPECT_EQ(stats.by_action[static_cast<int>(FilterAction::kQuarantine)], 1u);
  EXPECT_EQ(stats.quarantined_unparseable, 1u);
  EXPECT_EQ(stats.by_rule.at("v1.drop")[static_cast<int>(FilterAction::kDrop)], 1u);
  EXPECT_EQ(stats.by_rule.at("v1.quarantine")[static_cast<int>(FilterAction::kQuarantine)], 1u);
  EXPECT_EQ(stats.by_rule.at("v1.label")[static_cast<int>(FilterAction::kLabel)], 1u);
}

TEST(FilterStageTest, InvalidReloadKeepsOldRulesAndSaysWhere) {
  TempDir dir("invalid");
  MessageChannel in("in", 64), out("out", 64), done("done", 64);
  FilterStageConfig config;
  config.rules_path = dir.Write("rules.toml", kRulesV1);
  auto stage = FilterStage::Create(config, &in, &out, &done);
  ASSERT_TRUE(stage.has_value());
  dir.Write("rules.toml", std::string(kRulesV2) + "\n[[rule]]\nid = \"bad\"\nkind = \"body\"\nregex = ['(unclosed']\n");
  auto status = stage.value()->RequestReload();
  ASSERT_FALSE(status.has_value());
  EXPECT_NE(status.error().message.find(config.rules_path + ":8: rule 'bad'"), std::string::npos)
      << status.error().message;
  MessageFactory f;
  Message& m = f.Make("dropme");
  ASSERT_TRUE(in.Push(&m));
  stage.value()->RunOnce();
  EXPECT_EQ(m.outcome, Outcome::kDroppedByRule);  // still v1
  EXPECT_EQ(stage.value()->Stats().reload_failures, 1u);
  EXPECT_EQ(stage.value()->Stats().reloads, 0u);
  EXPECT_EQ(stage.value()->rules()->rule_id(0), "v1.drop");
}

// A source feeding invoices, the filter, and a sink, on their own threads; the test thread
// swaps the rule file back and forth while messages flow. Nothing may be lost, and every
// message must carry the complete decision of exactly one of the two rule sets.
class VectorSource final : public engine::Stage {
 public:
  VectorSource(std::vector<Message*> items, MessageChannel* out) : items_(std::move(items)), out_(out) {}
  std::string_view name() const override { return "source"; }
  std::size_t RunOnce() override {
    if (next_ == items_.size()) return 0;
    const std::size_t n = out_->PushBatch(std::span<Message* const>(items_).subspan(next_, std::min<std::size_t>(32, items_.size() - next_)));
    next_ += n;
    emitted_.store(next_, std::memory_order_release);
    return n;
  }
  bool IsFinished() const override { return next_ == items_.size(); }
  std::size_t emitted() const { return emitted_.load(std::memory_order_acquire); }

 private:
  std::vector<Message*> items_;
  MessageChannel* out_;
  std::size_t next_ = 0;
  std::atomic<std::size_t> emitted_{0};
};

class CountingSink final : public engine::Stage {
 public:
  explicit CountingSink(std::vector<MessageChannel*> inputs) : inputs_(std::move(inputs)) {}
  std::string_view name() const override { return "sink"; }
  std::size_t RunOnce() override {
    std::array<Message*, 64> batch{};
    std::size_t total = 0;
    for (MessageChannel* c : inputs_) {
      const std::size_t n = c->PopBatch(batch);
      received_.insert(received_.end(), batch.begin(), batch.begin() + static_cast<std::ptrdiff_t>(n));
      total += n;
    }
    return total;
  }
  bool IsFinished() const override {
    return std::all_of(inputs_.begin(), inputs_.end(), [](MessageChannel* c) { return c->IsDrained(); });
  }
  const std::vector<Message*>& received() const { return received_; }

 private:
  std::vector<MessageChannel*> inputs_;
  std::vector<Message*> received_;
};

TEST(FilterStageTest, ReloadWhileMessagesFlowLosesNothing) {
  TempDir dir("flow");
  const std::string rules_path = dir.Write("rules.toml", kRulesV1);
  MessageFactory f;
  std::vector<Message*> items;
  constexpr int kMessages = 60'000;
  for (int i = 0; i < kMessages; ++i) items.push_back(&f.Make(i % 10 == 0 ? "dropme" : "Invoice " + std::to_string(i)));

  engine::TopologyConfig tc;
  tc.placement = engine::TopologyConfig::Placement::kThreadPerStage;
  engine::Topology topology(tc);
  auto* a = topology.MakeChannel<Message*>("source->filter", 256);
  auto* b = topology.MakeChannel<Message*>("filter->sink", 256);
  auto* c = topology.MakeChannel<Message*>("filter->done", 256);
  FilterStageConfig config;
  config.rules_path = rules_path;
  auto filter = FilterStage::Create(config, a, b, c);
  ASSERT_TRUE(filter.has_value());
  FilterStage* stage = filter.value().get();
  auto* source = static_cast<VectorSource*>(topology.AddStage(std::make_unique<VectorSource>(items, a), {}, {a}));
  topology.AddStage(std::move(filter.value()), {a}, {b, c});
  auto* sink = static_cast<CountingSink*>(topology.AddStage(std::make_unique<CountingSink>(std::vector{b, c}), {b, c}, {}));
  ASSERT_TRUE(topology.Start().has_value());
  int reloads = 0;
  while (source->emitted() < items.size() && reloads < 40) {
    dir.Write("rules.toml", reloads % 2 == 0 ? kRulesV2 : kRulesV1);
    ASSERT_TRUE(stage->RequestReload().has_value());
    ++reloads;
  }
  topology.Wait();
  ASSERT_EQ(sink->received().size(), items.size());
  std::set<Message*> unique(sink->received().begin(), sink->received().end());
  EXPECT_EQ(unique.size(), items.size());
  std::size_t seen_v1 = 0, seen_v2 = 0;
  for (Message* m : items) {
    const bool v1 = !m->record.rules.empty() && m->record.rules[0].starts_with("v1.");
    seen_v1 += v1;
    seen_v2 += !m->record.rules.empty() && m->record.rules[0].starts_with("v2.");
    if (m->record.subject == "dropme") {
      // v1 drops it; v2 has no rule for it.
      EXPECT_EQ(m->outcome, v1 ? Outcome::kDroppedByRule : Outcome::kInFlight);
    } else {
      ASSERT_EQ(m->record.labels.size(), 1u);
      EXPECT_EQ(m->record.labels[0], v1 ? "invoice" : "billing");
    }
  }
  EXPECT_GT(seen_v1, 0u);
  EXPECT_GT(seen_v2, 0u);  // the swap happened while messages flowed
  const FilterStats stats = stage->Stats();
  EXPECT_EQ(stats.in, items.size());
  EXPECT_GE(stats.reloads, 1u);
  std::uint64_t fired = 0, expected = 0;
  for (const auto& [id, counts] : stats.by_rule) fired += counts[0];
  for (Message* m : items) expected += m->record.rules.size();
  EXPECT_EQ(fired, expected);  // counters survive the swaps: retired sets are folded in by id
  EXPECT_GT(expected, items.size() * 8 / 10);
}

}  // namespace
}  // namespace mailrail::stages
