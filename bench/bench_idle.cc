// bench_idle: CPU used by an idle pipeline. Builds a five-stage topology whose source stays open
// but produces nothing, lets it sit for --seconds (default 10), and prints the process's CPU time
// as a percentage of one core, for each placement. This is the engine's waiting policy at work:
// spin briefly, yield, then park on a futex until a producer or a stage deadline wakes the thread.
//
//   build/bench/bench_idle [seconds]
#include <sys/resource.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "engine/topology.h"

namespace {

using mailrail::engine::Channel;
using mailrail::engine::Stage;
using mailrail::engine::Topology;
using mailrail::engine::TopologyConfig;

class IdleSource final : public Stage {
 public:
  std::string_view name() const override { return "ingest"; }
  std::size_t RunOnce() override { return 0; }
  bool IsFinished() const override { return stop_.load(std::memory_order_acquire); }
  void RequestStop() override { stop_.store(true, std::memory_order_release); }

 private:
  std::atomic<bool> stop_{false};
};

class Relay final : public Stage {
 public:
  Relay(std::string name, Channel<int>* in, Channel<int>* out) : name_(std::move(name)), in_(in), out_(out) {}
  std::string_view name() const override { return name_; }
  std::size_t RunOnce() override {
    std::array<int, 16> batch{};
    const std::size_t n = in_->PopBatch(batch);
    if (out_ != nullptr) out_->PushBatch(std::span<const int>(batch.data(), n));
    return n;
  }
  bool IsFinished() const override { return in_->IsDrained(); }

 private:
  std::string name_;
  Channel<int>* in_;
  Channel<int>* out_;
};

double CpuSeconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_utime.tv_sec + usage.ru_utime.tv_usec / 1e6 + usage.ru_stime.tv_sec + usage.ru_stime.tv_usec / 1e6;
}

void Measure(const char* label, TopologyConfig::Placement placement, double seconds) {
  TopologyConfig config;
  config.placement = placement;
  Topology topology(config);
  auto* a = topology.MakeChannel<int>("a", 64);
  auto* b = topology.MakeChannel<int>("b", 64);
  auto* c = topology.MakeChannel<int>("c", 64);
  auto* d = topology.MakeChannel<int>("d", 64);
  topology.AddStage(std::make_unique<IdleSource>(), {}, {a});
  topology.AddStage(std::make_unique<Relay>("parse", a, b), {a}, {b});
  topology.AddStage(std::make_unique<Relay>("dedup", b, c), {b}, {c});
  topology.AddStage(std::make_unique<Relay>("filter", c, d), {c}, {d});
  topology.AddStage(std::make_unique<Relay>("forward", d, nullptr), {d}, {});
  if (!topology.Start()) std::abort();
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // let every thread reach its park
  const double cpu_before = CpuSeconds();
  const auto wall_before = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  const double cpu = CpuSeconds() - cpu_before;
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall_before).count();
  topology.RequestStop();
  topology.Wait();
  std::printf("%-18s threads=%zu  cpu=%.4f s over %.1f s wall = %.3f%% of one core\n", label, topology.plan().size(),
              cpu, wall, 100.0 * cpu / wall);
}

}  // namespace

int main(int argc, char** argv) {
  const double seconds = argc > 1 ? std::atof(argv[1]) : 10.0;
  Measure("thread-per-stage", TopologyConfig::Placement::kThreadPerStage, seconds);
  Measure("auto", TopologyConfig::Placement::kAuto, seconds);
  Measure("one-thread", TopologyConfig::Placement::kOneThread, seconds);
  return 0;
}
