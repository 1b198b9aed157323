// Several dedup threads: DedupRouter -> N DedupStage workers -> FilterStage merging by route_seq;
// snapshots written by one split and loaded by another; the stats both stages publish.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "engine/topology.h"
#include "stages/dedup_key.h"
#include "stages/dedup_router.h"
#include "stages/dedup_snapshot.h"
#include "stages/dedup_stage.h"
#include "stages/filter_stage.h"
#include "stages/sequence_merge.h"
#include "tests/stages/filter_test_util.h"

namespace mailrail::stages {
namespace {

using MessageChannel = engine::Channel<Message*>;
using testing::MessageFactory;

std::filesystem::path TempDir(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / ("mailrail-workers-" + name + "-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

// Values of the samples named `name` whose labels include `labels`.
std::vector<double> Values(const engine::Snapshot& s, const std::string& name, const engine::Labels& labels = {}) {
  std::vector<double> out;
  for (const auto& sample : s.samples()) {
    if (sample.name != name) continue;
    bool match = true;
    for (const auto& l : labels) {
      match = match && std::find(sample.labels.begin(), sample.labels.end(), l) != sample.labels.end();
    }
    if (match) out.push_back(sample.value);
  }
  return out;
}

TEST(SequenceMergeTest, HandsOutRouteOrderAndWaitsForTheMissingNumber) {
  MessageFactory f;
  MessageChannel a("a", 16), b("b", 16), c("c", 16);
  std::vector<Message*> m;
  for (int i = 1; i <= 7; ++i) {
    m.push_back(&f.Make("s"));
    m.back()->route_seq = static_cast<std::uint64_t>(i);
  }
  // a: 1 4 5   b: 2 7   c: 3 6 — but 3 is not pushed yet.
  for (int i : {0, 3, 4}) ASSERT_TRUE(a.Push(m[i]));
  for (int i : {1, 6}) ASSERT_TRUE(b.Push(m[i]));
  SequenceMerge merge({&a, &b, &c});
  std::array<Message*, 16> out{};
  ASSERT_EQ(merge.PopBatch(out), 2u);  // 1, 2, then 3 is missing
  EXPECT_EQ(out[0], m[0]);
  EXPECT_EQ(out[1], m[1]);
  EXPECT_EQ(merge.PopBatch(out), 0u);
  ASSERT_TRUE(c.Push(m[2]));
  ASSERT_TRUE(c.Push(m[5]));
  ASSERT_EQ(merge.PopBatch(out), 5u);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(out[i]->route_seq, static_cast<std::uint64_t>(i + 3));
  EXPECT_FALSE(merge.IsDrained());
  a.Close();
  b.Close();
  c.Close();
  EXPECT_TRUE(merge.IsDrained());
}

TEST(SequenceMergeDeathTest, ALostNumberAbortsNamingIt) {
  MessageFactory f;
  MessageChannel a("a", 4), b("b", 4);
  Message& two = f.Make("s");
  two.route_seq = 2;
  Message& three = f.Make("s");
  three.route_seq = 3;
  ASSERT_TRUE(a.Push(&two));
  ASSERT_TRUE(b.Push(&three));
  SequenceMerge merge({&a, &b});
  std::array<Message*, 4> out{};
  EXPECT_DEATH(merge.PopBatch(out), "expected route_seq 1, input heads are 2 3");
}

class Feeder final : public engine::Stage {
 public:
  Feeder(std::vector<Message*> items, MessageChannel* out) : items_(std::move(items)), out_(out) {}
  std::string_view name() const override { return "source"; }
  std::size_t RunOnce() override {
    const std::size_t n = out_->PushBatch(
        std::span<Message* const>(items_).subspan(next_, std::min<std::size_t>(32, items_.size() - next_)));
    next_ += n;
    return n;
  }
  bool IsFinished() const override { return next_ == items_.size(); }

 private:
  std::vector<Message*> items_;
  MessageChannel* out_;
  std::size_t next_ = 0;
};

class Collector final : public engine::Stage {
 public:
  explicit Collector(MessageChannel* in) : in_(in) {}
  std::string_view name() const override { return "terminal"; }
  std::size_t RunOnce() override {
    std::array<Message*, 64> batch{};
    const std::size_t n = in_->PopBatch(batch);
    received.insert(received.end(), batch.begin(), batch.begin() + static_cast<std::ptrdiff_t>(n));
    return n;
  }
  bool IsFinished() const override { return in_->IsDrained(); }
  std::vector<Message*> received;

 private:
  MessageChannel* in_;
};

// parse's place is taken by a feeder of ready-made records; 3 workers over 8 shards.
struct WorkerPipeline {
  static constexpr std::size_t kWorkers = 3;
  engine::Topology topology{[] {
    engine::TopologyConfig tc;
    tc.placement = engine::TopologyConfig::Placement::kThreadPerStage;
    return tc;
  }()};
  DedupRouter* router = nullptr;
  std::vector<DedupStage*> workers;
  FilterStage* filter = nullptr;
  Collector* terminal = nullptr;

  void Build(std::vector<Message*> items, const std::string& snapshot_base, const std::string& rules) {
    auto* fed = topology.MakeChannel<Message*>("source->dedup-route", 64);
    std::vector<MessageChannel*> to_worker, from_worker;
    for (std::size_t w = 0; w < kWorkers; ++w) {
      to_worker.push_back(topology.MakeChannel<Message*>("dedup-route->dedup-" + std::to_string(w), 16));
      from_worker.push_back(topology.MakeChannel<Message*>("dedup-" + std::to_string(w) + "->filter", 16));
    }
    auto* out = topology.MakeChannel<Message*>("filter->terminal", 64);
    topology.AddStage(std::make_unique<Feeder>(std::move(items), fed), {}, {fed});
    DedupKeyConfig key;
    auto r = std::make_unique<DedupRouter>(key, 8, fed, to_worker);
    router = r.get();
    topology.AddStage(std::move(r), {fed}, {to_worker.begin(), to_worker.end()});
    for (std::size_t w = 0; w < kWorkers; ++w) {
      DedupStageConfig config;
      config.set.shards = 8;
      config.set.capacity = 80'000;
      config.set.owner = w;
      config.set.owners = kWorkers;
      config.keyed_upstream = true;
      config.routed_through_lsn = &router->routed_through_lsn();
      config.snapshot_path = DedupSnapshotPath(snapshot_base, w, kWorkers);
      auto stage = DedupStage::Create(config, to_worker[w], from_worker[w], from_worker[w]);
      ASSERT_TRUE(stage.has_value()) << stage.error().message;
      workers.push_back(stage.value().get());
      topology.AddStage(std::move(stage.value()), {to_worker[w]}, {from_worker[w]});
    }
    FilterStageConfig filter_config;
    filter_config.rules_path = rules;
    auto f = FilterStage::Create(filter_config, from_worker, out, out);
    ASSERT_TRUE(f.has_value()) << f.error().message;
    filter = f.value().get();
    topology.AddStage(std::move(f.value()), {from_worker.begin(), from_worker.end()}, {out});
    terminal = static_cast<Collector*>(topology.AddStage(std::make_unique<Collector>(out), {out}, {}));
  }
};

TEST(DedupWorkersTest, DuplicatesAreCaughtAcrossWorkersAndOrderIsKept) {
  const auto dir = TempDir("order");
  std::ofstream(dir / "rules.toml") << "[[rule]]\nid = \"t.drop\"\nkind = \"subject\"\nkeywords = [\"dropme\"]\n"
                                       "action = \"drop\"\n";
  MessageFactory f;
  std::vector<Message*> items;
  constexpr int kKeys = 2000;
  // Every key twice: first all in order, then again interleaved with new ones and droppable ones.
  auto make = [&](int key, std::string_view subject = "s") {
    Message& m = f.Make(subject);
    m.record.message_id = m.arena.Copy("<k" + std::to_string(key) + "@x>");
    m.received_at_ms = 1'700'000'000'000;
    items.push_back(&m);
  };
  for (int k = 0; k < kKeys; ++k) make(k);
  for (int k = kKeys - 1; k >= 0; --k) {
    make(k);
    if (k % 10 == 0) make(kKeys + k, "dropme");
  }
  Message& unparsed = f.Make("s");
  unparsed.parse_failed = true;
  items.push_back(&unparsed);

  WorkerPipeline p;
  p.Build(items, (dir / "dedup.snapshot").string(), (dir / "rules.toml").string());
  ASSERT_TRUE(p.topology.Start().has_value());
  p.topology.Wait();

  const std::vector<Message*>& got = p.terminal->received;
  ASSERT_EQ(got.size(), items.size());
  for (std::size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], items[i]) << "out of order at " << i;
  std::map<Outcome, int> by;
  for (Message* m : got) ++by[m->outcome];
  EXPECT_EQ(by[Outcome::kDuplicate], kKeys);
  EXPECT_EQ(by[Outcome::kDroppedByRule], kKeys / 10);
  EXPECT_EQ(by[Outcome::kQuarantinedUnparseable], 1);
  EXPECT_EQ(by[Outcome::kInFlight], kKeys);  // accepted; the terminal stage would forward them
  std::uint64_t in = 0, duplicates = 0, held = 0;
  for (std::size_t w = 0; w < WorkerPipeline::kWorkers; ++w) {
    const DedupCounters& c = p.workers[w]->counters();
    EXPECT_GT(p.router->routed(w), static_cast<std::uint64_t>(kKeys / 5)) << "worker " << w;
    EXPECT_EQ(c.in.load(), p.router->routed(w));
    in += c.in.load();
    duplicates += c.duplicates.load();
    held += c.set_size.load();
    // The clean shutdown snapshot covers everything routed, also the shards of other workers'
    // last messages: no worker holds WAL retention back.
    EXPECT_EQ(p.workers[w]->durable_snapshot_lsn(), items.back()->lsn);
  }
  EXPECT_EQ(in, items.size());
  EXPECT_EQ(duplicates, static_cast<std::uint64_t>(kKeys));
  EXPECT_EQ(held, static_cast<std::uint64_t>(kKeys + kKeys / 10));
  std::filesystem::remove_all(dir);
}

TEST(DedupWorkersTest, SnapshotsOfOneSplitLoadIntoAnother) {
  const auto dir = TempDir("layout");
  const std::string base = (dir / "dedup.snapshot").string();
  DedupKeyer keyer;
  MessageFactory f;
  std::vector<Fingerprint> keys;
  for (int k = 0; k < 500; ++k) {
    Message& m = f.Make("s");
    m.record.message_id = m.arena.Copy("<snap" + std::to_string(k) + "@x>");
    keys.push_back(keyer.KeyOf(m).fingerprint);
  }
  auto config_of = [](std::size_t owner, std::size_t owners) {
    DedupSetConfig c;
    c.shards = 8;
    c.capacity = 8000;
    c.owner = owner;
    c.owners = owners;
    return c;
  };
  // Three workers, each inserting its share, each writing its file.
  for (std::size_t w = 0; w < 3; ++w) {
    DedupSet set(config_of(w, 3));
    std::uint64_t lsn = 0;
    for (const Fingerprint& key : keys) {
      ++lsn;
      if (set.owns(set.ShardOf(key))) set.InsertOrFind(DedupQuery{key, lsn, 1'700'000'000'000});
    }
    ASSERT_TRUE(WriteDedupSnapshot(set, 500 + w, DedupSnapshotPath(base, w, 3)).has_value());
  }
  // An older single-worker file: the three newer files win.
  ASSERT_TRUE(WriteDedupSnapshot(DedupSet(config_of(0, 1)), 10, base).has_value());
  const std::vector<std::string> layout = FindDedupSnapshotLayout(base, 2);
  ASSERT_EQ(layout.size(), 3u);
  EXPECT_EQ(layout[2], base + ".2-of-3");
  std::uint64_t total = 0;
  for (std::size_t w = 0; w < 2; ++w) {
    DedupSet set(config_of(w, 2));
    for (const std::string& file : layout) {
      auto covered = LoadDedupSnapshot(file, set);
      ASSERT_TRUE(covered.has_value()) << covered.error().message;
    }
    for (const Fingerprint& key : keys) {
      if (set.owns(set.ShardOf(key))) {
        EXPECT_TRUE(set.Contains(key));
      }
    }
    total += set.size();
  }
  EXPECT_EQ(total, keys.size());  // every key landed in exactly one of the new workers
  // A newer single-worker snapshot now wins over the three-worker files.
  DedupSet whole(config_of(0, 1));
  ASSERT_TRUE(WriteDedupSnapshot(whole, 900, base).has_value());
  EXPECT_EQ(FindDedupSnapshotLayout(base, 2), std::vector<std::string>{base});
  // A missing file makes a layout incomplete.
  std::filesystem::remove(base);
  std::filesystem::remove(base + ".1-of-3");
  EXPECT_TRUE(FindDedupSnapshotLayout(base, 2).empty());
  std::filesystem::remove_all(dir);
}

TEST(DedupStatsTest, ReportPublishesWindowDuplicatesExpiryAndSnapshot) {
  const auto dir = TempDir("dedupstats");
  MessageChannel in("in", 64), out("out", 64);
  DedupStageConfig config;
  config.set.shards = 1;
  config.set.capacity = 3;
  config.snapshot_path = (dir / "dedup.snapshot").string();
  auto stage = DedupStage::Create(config, &in, &out, &out);
  ASSERT_TRUE(stage.has_value());
  MessageFactory f;
  for (int k : {1, 2, 3, 4, 4, 5}) {
    Message& m = f.Make("s");
    m.record.message_id = m.arena.Copy("<r" + std::to_string(k) + "@x>");
    m.received_at_ms = 1'700'000'000'000;
    ASSERT_TRUE(in.Push(&m));
  }
  stage.value()->RunOnce();
  engine::Snapshot s;
  stage.value()->Report(s);
  const engine::Labels worker{{"worker", "0"}};
  EXPECT_EQ(Values(s, "dedup_keys_held", worker), std::vector<double>{3});
  EXPECT_EQ(Values(s, "dedup_capacity", worker), std::vector<double>{3});
  EXPECT_EQ(Values(s, "dedup_duplicates", worker), std::vector<double>{1});
  EXPECT_EQ(Values(s, "dedup_expired", {{"reason", "count"}}), std::vector<double>{2});
  EXPECT_EQ(Values(s, "dedup_expired", {{"reason", "age"}}), std::vector<double>{0});
  EXPECT_EQ(Values(s, "dedup_keys_computed", {{"kind", "message_id"}}), std::vector<double>{6});
  EXPECT_EQ(Values(s, "stage_messages_in", {{"stage", "dedup"}}), std::vector<double>{6});
  ASSERT_EQ(Values(s, "dedup_bytes_per_key").size(), 1u);
  EXPECT_GT(Values(s, "dedup_bytes_per_key")[0], 19.0);
  EXPECT_TRUE(Values(s, "dedup_snapshot_age_seconds").empty());  // none yet
  EXPECT_EQ(Values(s, "dedup_snapshot_lsn"), std::vector<double>{0});
  ASSERT_TRUE(stage.value()->WriteSnapshot().has_value());
  engine::Snapshot after;
  stage.value()->Report(after);
  EXPECT_EQ(Values(after, "dedup_snapshot_lsn"), std::vector<double>{6});
  ASSERT_EQ(Values(after, "dedup_snapshot_age_seconds").size(), 1u);
  EXPECT_LT(Values(after, "dedup_snapshot_age_seconds")[0], 60.0);
  std::filesystem::remove_all(dir);
}

TEST(FilterStatsTest, ReportPublishesDecisionsByRuleAndActionAndReloads) {
  const auto dir = TempDir("filterstats");
  const std::string rules = (dir / "rules.toml").string();
  std::ofstream(rules) << "[[rule]]\nid = \"t.drop\"\nkind = \"subject\"\nkeywords = [\"dropme\"]\naction = \"drop\"\n"
                          "[[rule]]\nid = \"t.label\"\nkind = \"subject\"\nkeywords = [\"invoice\"]\n"
                          "labels = [\"invoice\"]\n";
  MessageChannel in("in", 64), out("out", 64);
  FilterStageConfig config;
  config.rules_path = rules;
  auto stage = FilterStage::Create(config, &in, &out, &out);
  ASSERT_TRUE(stage.has_value());
  MessageFactory f;
  for (const char* subject : {"dropme", "invoice 1", "invoice 2", "hello"}) ASSERT_TRUE(in.Push(&f.Make(subject)));
  stage.value()->RunOnce();
  std::ofstream(rules, std::ios::trunc) << "[[rule]]\nid = \"t.bad\"\nkind = \"subject\"\naction = \"dropp\"\n";
  auto rejected = stage.value()->RequestReload();
  ASSERT_FALSE(rejected.has_value());
  engine::Snapshot s;
  stage.value()->Report(s);
  EXPECT_EQ(Values(s, "filter_decisions", {{"action", "accept"}}), std::vector<double>{1});
  EXPECT_EQ(Values(s, "filter_decisions", {{"action", "label"}}), std::vector<double>{2});
  EXPECT_EQ(Values(s, "filter_decisions", {{"action", "drop"}}), std::vector<double>{1});
  EXPECT_EQ(Values(s, "filter_rule_decisions", {{"rule", "t.label"}, {"action", "label"}}), std::vector<double>{2});
  EXPECT_EQ(Values(s, "filter_rule_decisions", {{"rule", "t.drop"}, {"action", "drop"}}), std::vector<double>{1});
  EXPECT_EQ(Values(s, "filter_rule_fired", {{"rule", "t.drop"}}), std::vector<double>{1});
  EXPECT_EQ(Values(s, "filter_rule_set_version"), std::vector<double>{1});
  EXPECT_EQ(Values(s, "filter_rules"), std::vector<double>{2});
  EXPECT_EQ(Values(s, "filter_reloads", {{"result", "rejected"}}), std::vector<double>{1});
  const auto error = std::find_if(s.samples().begin(), s.samples().end(),
                                  [](const auto& x) { return x.name == "filter_last_reload_error"; });
  ASSERT_NE(error, s.samples().end());
  EXPECT_EQ(error->labels[0].second.rfind(rules + ":", 0), 0u) << error->labels[0].second;
  EXPECT_NE(error->labels[0].second.find("rule 't.bad'"), std::string::npos) << error->labels[0].second;

  std::ofstream(rules, std::ios::trunc) << "[[rule]]\nid = \"t.drop2\"\nkind = \"subject\"\nkeywords = [\"hello\"]\n"
                                           "action = \"drop\"\n";
  auto reloaded = stage.value()->RequestReload();
  ASSERT_TRUE(reloaded.has_value()) << reloaded.error().message;
  EXPECT_EQ(reloaded->version, 2u);
  EXPECT_EQ(reloaded->rules, 1u);
  Message& hello = f.Make("hello");
  ASSERT_TRUE(in.Push(&hello));
  stage.value()->RunOnce();  // judged by the new set: it was pushed after RequestReload returned
  EXPECT_EQ(hello.outcome, Outcome::kDroppedByRule);
  engine::Snapshot after;
  stage.value()->Report(after);
  EXPECT_EQ(Values(after, "filter_rule_set_version"), std::vector<double>{2});
  EXPECT_EQ(Values(after, "filter_reloads", {{"result", "ok"}}), std::vector<double>{1});
  EXPECT_TRUE(Values(after, "filter_last_reload_error").empty());
  EXPECT_EQ(Values(after, "filter_rule_decisions", {{"rule", "t.label"}, {"action", "label"}}),
            std::vector<double>{2});  // the retired set's counts stay
  EXPECT_EQ(Values(after, "filter_decisions", {{"action", "drop"}}), std::vector<double>{2});
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace mailrail::stages
