#include "engine/topology.h"

#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <functional>
#include <limits>
#include <thread>
#include <vector>

namespace mailrail::engine {
namespace {

using Item = std::uint64_t;

// Emits 0, 1, 2, ... up to `limit` items, or until RequestStop when limit is max().
class CountingSource final : public Stage {
 public:
  // hold_open: after `limit` items the source stays open (idle, not finished) until RequestStop.
  CountingSource(Channel<Item>* out, std::uint64_t limit, bool hold_open = false)
      : outbox_(out), limit_(limit), hold_open_(hold_open) {}
  std::string_view name() const override { return "source"; }
  std::size_t RunOnce() override {
    if (!outbox_.Flush()) return 0;
    if (stop_.load(std::memory_order_acquire)) return 0;
    const std::uint64_t n = std::min<std::uint64_t>(64, limit_ - next_);
    for (std::uint64_t i = 0; i < n; ++i) outbox_.Add(next_++);
    outbox_.Flush();
    return n;
  }
  bool IsFinished() const override {
    const bool stopped = stop_.load(std::memory_order_acquire);
    return ((next_ == limit_ && !hold_open_) || stopped) && outbox_.empty();
  }
  void RequestStop() override { stop_.store(true, std::memory_order_release); }
  std::uint64_t emitted() const { return next_; }

 private:
  Outbox<Item> outbox_;
  std::uint64_t limit_;
  bool hold_open_;
  std::uint64_t next_ = 0;
  std::atomic<bool> stop_{false};
};

class MapStage final : public Stage {
 public:
  MapStage(std::string name, Channel<Item>* in, Channel<Item>* out, std::function<Item(Item)> f)
      : name_(std::move(name)), in_(in), outbox_(out), f_(std::move(f)) {}
  std::string_view name() const override { return name_; }
  std::size_t RunOnce() override {
    if (!outbox_.Flush()) return 0;
    std::array<Item, 32> batch{};
    const std::size_t n = in_->PopBatch(batch);
    for (std::size_t i = 0; i < n; ++i) outbox_.Add(f_(batch[i]));
    outbox_.Flush();
    return n;
  }
  bool IsFinished() const override { return in_->IsDrained() && outbox_.empty(); }

 private:
  std::string name_;
  Channel<Item>* in_;
  Outbox<Item> outbox_;
  std::function<Item(Item)> f_;
};

class CollectSink final : public Stage {
 public:
  explicit CollectSink(Channel<Item>* in) : in_(in) {}
  std::string_view name() const override { return "sink"; }
  std::size_t RunOnce() override {
    std::array<Item, 48> batch{};
    const std::size_t n = in_->PopBatch(batch);
    items_.insert(items_.end(), batch.begin(), batch.begin() + static_cast<std::ptrdiff_t>(n));
    received_.store(items_.size(), std::memory_order_release);
    return n;
  }
  bool IsFinished() const override { return in_->IsDrained(); }
  const std::vector<Item>& items() const { return items_; }
  std::uint64_t received() const { return received_.load(std::memory_order_acquire); }

 private:
  Channel<Item>* in_;
  std::vector<Item> items_;
  std::atomic<std::uint64_t> received_{0};
};

struct Pipeline {
  CountingSource* source = nullptr;
  CollectSink* sink = nullptr;
};

// source -> mix -> square-ish -> sink, with deliberately small rings so backpressure happens.
Pipeline Build(Topology& topology, std::uint64_t limit, std::size_t ring_capacity, bool hold_open = false) {
  auto* a = topology.MakeChannel<Item>("source->mix", ring_capacity);
  auto* b = topology.MakeChannel<Item>("mix->fold", ring_capacity);
  auto* c = topology.MakeChannel<Item>("fold->sink", ring_capacity);
  Pipeline p;
  p.source = static_cast<CountingSource*>(topology.AddStage(std::make_unique<CountingSource>(a, limit, hold_open), {}, {a}));
  topology.AddStage(std::make_unique<MapStage>("mix", a, b, [](Item x) { return x * 0x9E3779B97F4A7C15ull; }), {a}, {b});
  topology.AddStage(std::make_unique<MapStage>("fold", b, c, [](Item x) { return x ^ (x >> 29); }), {b}, {c});
  p.sink = static_cast<CollectSink*>(topology.AddStage(std::make_unique<CollectSink>(c), {c}, {}));
  return p;
}

std::vector<Item> RunToCompletion(TopologyConfig config, std::uint64_t limit, std::size_t ring_capacity) {
  Topology topology(std::move(config));
  Pipeline p = Build(topology, limit, ring_capacity);
  EXPECT_TRUE(topology.Start().has_value());
  topology.Wait();
  return p.sink->items();
}

TEST(TopologyTest, OneThreadAndThreadPerStageGiveIdenticalOutput) {
  constexpr std::uint64_t kItems = 300'000;
  TopologyConfig one;
  one.placement = TopologyConfig::Placement::kOneThread;
  TopologyConfig per_stage;
  per_stage.placement = TopologyConfig::Placement::kThreadPerStage;
  TopologyConfig two;  // auto placement as on a 2-core machine
  two.allowed_cpus = 2;

  const std::vector<Item> a = RunToCompletion(one, kItems, 16);
  const std::vector<Item> b = RunToCompletion(per_stage, kItems, 16);
  const std::vector<Item> c = RunToCompletion(two, kItems, 8);
  ASSERT_EQ(a.size(), kItems);
  EXPECT_EQ(a, b);
  EXPECT_EQ(a, c);
  for (std::uint64_t i = 0; i < kItems; i += 9973) {
    Item x = i * 0x9E3779B97F4A7C15ull;
    EXPECT_EQ(a[i], x ^ (x >> 29));
  }
}

TEST(TopologyTest, ThreadCpuTimeIsReportedAfterWait) {
  TopologyConfig config;
  config.placement = TopologyConfig::Placement::kOneThread;
  Topology topology(config);
  Pipeline p = Build(topology, 200'000, 64);
  ASSERT_TRUE(topology.Start().has_value());
  topology.Wait();
  ASSERT_EQ(p.sink->items().size(), 200'000u);
  EXPECT_GT(topology.thread_counters(0).cpu_ns.load(), 0u);
  Snapshot snapshot;
  topology.Report(snapshot);
  bool reported = false;
  for (const auto& sample : snapshot.samples()) reported = reported || (sample.name == "thread_cpu_seconds" && sample.value > 0);
  EXPECT_TRUE(reported);
}

TEST(TopologyTest, AutoPlacementSharesThreadsOnSmallMachinesAndSplitsOnLargeOnes) {
  {
    TopologyConfig config;
    config.allowed_cpus = 2;
    Topology topology(config);
    Build(topology, 10, 4);
    ASSERT_TRUE(topology.Start().has_value());
    topology.Wait();
    ASSERT_EQ(topology.plan().size(), 2u);
    EXPECT_EQ(topology.plan()[0].stages, (std::vector<std::string>{"source", "mix"}));
    EXPECT_EQ(topology.plan()[1].stages, (std::vector<std::string>{"fold", "sink"}));
  }
  {
    TopologyConfig config;
    config.allowed_cpus = 32;
    Topology topology(config);
    Build(topology, 10, 4);
    ASSERT_TRUE(topology.Start().has_value());
    topology.Wait();
    EXPECT_EQ(topology.plan().size(), 4u);
  }
}

// A stage with a name and a cost hint that has nothing to do: enough to see where auto puts it.
class PlacedStage final : public Stage {
 public:
  PlacedStage(std::string name, unsigned cost) : name_(std::move(name)), cost_(cost) {}
  std::string_view name() const override { return name_; }
  unsigned cost_hint() const override { return cost_; }
  std::size_t RunOnce() override { return 0; }
  bool IsFinished() const override { return true; }

 private:
  std::string name_;
  unsigned cost_;
};

std::vector<ThreadPlan> AutoPlan(std::size_t cpus, const std::vector<std::pair<std::string, unsigned>>& stages) {
  TopologyConfig config;
  config.allowed_cpus = cpus;
  Topology topology(config);
  for (const auto& [name, cost] : stages) topology.AddStage(std::make_unique<PlacedStage>(name, cost), {}, {});
  EXPECT_TRUE(topology.Start().has_value());
  topology.Wait();
  return topology.plan();
}

TEST(TopologyTest, AutoPlacementBalancesCostHintsEvenAcrossNonNeighbours) {
  // The replay pipeline's measured costs: no contiguous split does better than 18 / 26.
  auto plan = AutoPlan(2, {{"wal-recovery", 1}, {"ingest", 11}, {"wal", 6}, {"parse", 9}, {"dedup", 2},
                           {"filter", 11}, {"forward", 4}});
  ASSERT_EQ(plan.size(), 2u);
  EXPECT_EQ(plan[0].stages, (std::vector<std::string>{"wal-recovery", "ingest", "wal", "forward"}));
  EXPECT_EQ(plan[1].stages, (std::vector<std::string>{"parse", "dedup", "filter"}));
  // Among equally balanced splits the one with the fewest hand-offs wins.
  plan = AutoPlan(2, {{"a", 2}, {"b", 2}, {"c", 2}, {"d", 2}});
  ASSERT_EQ(plan.size(), 2u);
  EXPECT_EQ(plan[0].stages, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(plan[1].stages, (std::vector<std::string>{"c", "d"}));
  // Three threads: equal costs in contiguous pairs.
  plan = AutoPlan(3, {{"a", 4}, {"b", 4}, {"c", 4}, {"d", 4}, {"e", 4}, {"f", 4}});
  ASSERT_EQ(plan.size(), 3u);
  EXPECT_EQ(plan[0].stages, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(plan[1].stages, (std::vector<std::string>{"c", "d"}));
  EXPECT_EQ(plan[2].stages, (std::vector<std::string>{"e", "f"}));
}

TEST(TopologyTest, ExplicitPlacementIsValidated) {
  TopologyConfig config;
  config.placement = TopologyConfig::Placement::kExplicit;
  config.threads = {{"source", "mix"}, {"fold"}};  // sink missing
  Topology topology(config);
  Build(topology, 10, 4);
  auto status = topology.Start();
  ASSERT_FALSE(status.has_value());
  EXPECT_EQ(status.error().code, "topology.unplaced_stage");
}

TEST(TopologyTest, ExplicitPlacementRuns) {
  TopologyConfig config;
  config.placement = TopologyConfig::Placement::kExplicit;
  config.threads = {{"sink", "source"}, {"fold", "mix"}};
  EXPECT_EQ(RunToCompletion(config, 5000, 4).size(), 5000u);
}

TEST(TopologyTest, StopDrainsEveryInFlightItem) {
  for (auto placement : {TopologyConfig::Placement::kOneThread, TopologyConfig::Placement::kThreadPerStage}) {
    TopologyConfig config;
    config.placement = placement;
    Topology topology(config);
    Pipeline p = Build(topology, std::numeric_limits<std::uint64_t>::max(), 64);
    ASSERT_TRUE(topology.Start().has_value());
    while (p.sink->received() < 100'000) std::this_thread::yield();  // pipeline is full and busy
    topology.RequestStop();
    topology.Wait();
    // Everything the source emitted went through every stage: nothing was left in a ring.
    EXPECT_EQ(p.sink->items().size(), p.source->emitted());
    for (const auto& channel : topology.channels()) EXPECT_TRUE(channel->IsDrained()) << channel->name();
  }
}

TEST(TopologyTest, IdleThreadsParkAndWakeOnStop) {
  TopologyConfig config;
  config.placement = TopologyConfig::Placement::kThreadPerStage;
  config.wait.max_park = std::chrono::seconds(30);  // a wake must come from Notify, not a timeout
  Topology topology(config);
  Pipeline p = Build(topology, 1000, 64, /*hold_open=*/true);
  ASSERT_TRUE(topology.Start().has_value());
  // The source emits 1000 items and then idles with the stream open: every thread must park.
  auto all_parked = [&] {
    for (std::size_t t = 0; t < topology.plan().size(); ++t) {
      if (topology.thread_counters(t).parks.load(std::memory_order_relaxed) == 0) return false;
    }
    return true;
  };
  while (!all_parked() || p.sink->received() < 1000) std::this_thread::yield();
  const std::uint64_t items_before = topology.thread_counters(3).items.load();
  topology.RequestStop();  // wakes the parked source; end-of-stream then wakes each thread in turn
  topology.Wait();
  EXPECT_EQ(p.sink->items().size(), 1000u);
  EXPECT_GE(topology.thread_counters(3).items.load(), items_before);
}

}  // namespace
}  // namespace mailrail::engine
