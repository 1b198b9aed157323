#include "engine/topology.h"

#include <pthread.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <numeric>

namespace mailrail::engine {
namespace {

std::uint64_t ThreadCpuNs() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<std::uint64_t>(ts.tv_nsec);
}

}  // namespace

std::vector<int> AllowedCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
      if (CPU_ISSET(cpu, &set)) cpus.push_back(cpu);
    }
  }
  if (cpus.empty()) cpus.push_back(0);
  return cpus;
}

namespace {

// Splits stages (costs in pipeline order) over at most `cores` threads: the least possible cost
// on the busiest thread, and among those splits the fewest hand-offs between threads (adjacent
// stages on different threads), so equal costs give contiguous runs. Exhaustive while
// cores^stages is small (2 cores x 7 stages: 64 splits); otherwise longest-first greedy.
// Stages keep pipeline order within a thread; threads are numbered by their first stage.
std::vector<std::vector<std::size_t>> BalanceStages(const std::vector<unsigned>& costs, std::size_t cores) {
  const std::size_t n = costs.size();
  std::vector<std::size_t> best(n, 0);
  double splits = 1;
  for (std::size_t i = 1; i < n; ++i) splits *= static_cast<double>(cores);
  if (splits <= 65536) {
    std::vector<std::size_t> assign(n, 0);  // stage 0 on thread 0: the others are symmetric
    std::pair<unsigned, std::size_t> best_score{~0u, n};
    for (;;) {
      std::vector<unsigned> load(cores, 0);
      for (std::size_t i = 0; i < n; ++i) load[assign[i]] += costs[i];
      std::size_t cuts = 0;
      for (std::size_t i = 1; i < n; ++i) cuts += assign[i] != assign[i - 1];
      const std::pair<unsigned, std::size_t> score{*std::max_element(load.begin(), load.end()), cuts};
      if (score < best_score) {
        best_score = score;
        best = assign;
      }
      std::size_t i = 1;
      while (i < n && ++assign[i] == cores) assign[i++] = 0;
      if (i >= n) break;
    }
  } else {
    std::vector<std::size_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return costs[a] > costs[b]; });
    std::vector<unsigned> load(cores, 0);
    for (std::size_t i : order) {
      best[i] = static_cast<std::size_t>(std::min_element(load.begin(), load.end()) - load.begin());
      load[best[i]] += costs[i];
    }
  }
  std::vector<std::vector<std::size_t>> groups;
  std::vector<std::size_t> number(cores, cores);  // thread index of each group, by first stage
  for (std::size_t i = 0; i < n; ++i) {
    if (number[best[i]] == cores) {
      number[best[i]] = groups.size();
      groups.emplace_back();
    }
    groups[number[best[i]]].push_back(i);
  }
  return groups;
}

}  // namespace

cpu_set_t ProcessCpuSet() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(getpid(), sizeof(set), &set) != 0) CPU_SET(0, &set);
  return set;
}

Topology::Topology(TopologyConfig config) : config_(std::move(config)) {}

Topology::~Topology() {
  if (started_) {
    RequestStop();
    Wait();
  }
}

Stage* Topology::AddStage(std::unique_ptr<Stage> stage, std::vector<ChannelBase*> inputs,
                          std::vector<ChannelBase*> outputs) {
  MR_CHECK(!started_) << "AddStage after Start";
  auto slot = std::make_unique<StageSlot>();
  slot->stage = std::move(stage);
  slot->inputs = std::move(inputs);
  slot->outputs = std::move(outputs);
  Stage* raw = slot->stage.get();
  stages_.push_back(std::move(slot));
  return raw;
}

base::Status Topology::Place() {
  const std::size_t stage_count = stages_.size();
  std::vector<int> allowed = AllowedCpus();
  const std::size_t cores = config_.allowed_cpus != 0 ? config_.allowed_cpus : allowed.size();
  std::vector<std::vector<std::size_t>> groups;  // stage indices per thread
  bool pin = !config_.cpus.empty();

  switch (config_.placement) {
    case TopologyConfig::Placement::kOneThread:
      groups.emplace_back(stage_count);
      std::iota(groups.back().begin(), groups.back().end(), 0);
      break;
    case TopologyConfig::Placement::kThreadPerStage:
      for (std::size_t i = 0; i < stage_count; ++i) groups.push_back({i});
      break;
    case TopologyConfig::Placement::kExplicit: {
      std::map<std::string, std::size_t, std::less<>> by_name;
      for (std::size_t i = 0; i < stage_count; ++i) by_name[std::string(stages_[i]->stage->name())] = i;
      std::vector<bool> placed(stage_count, false);
      for (const auto& names : config_.threads) {
        groups.emplace_back();
        for (const auto& name : names) {
          auto it = by_name.find(name);
          if (it == by_name.end()) {
            return base::MakeError("topology.unknown_stage", "topology names unknown stage '" + name + "'");
          }
          if (placed[it->second]) {
            return base::MakeError("topology.stage_twice", "topology places stage '" + name + "' twice");
          }
          placed[it->second] = true;
          groups.back().push_back(it->second);
        }
      }
      for (std::size_t i = 0; i < stage_count; ++i) {
        if (!placed[i]) {
          return base::MakeError("topology.unplaced_stage", "topology does not place stage '" +
                                                                std::string(stages_[i]->stage->name()) + "'");
        }
      }
      break;
    }
    case TopologyConfig::Placement::kAuto: {
      if (cores >= stage_count) {
        for (std::size_t i = 0; i < stage_count; ++i) groups.push_back({i});
      } else {
        std::vector<unsigned> costs;
        for (const auto& slot : stages_) costs.push_back(std::max(1u, slot->stage->cost_hint()));
        groups = BalanceStages(costs, cores);
      }
      pin = pin || groups.size() <= allowed.size();
      break;
    }
  }

  plan_.clear();
  for (std::size_t t = 0; t < groups.size(); ++t) {
    auto state = std::make_unique<ThreadState>();
    if (!config_.cpus.empty()) {
      state->cpu = config_.cpus[t % config_.cpus.size()];
    } else if (pin && t < allowed.size()) {
      state->cpu = allowed[t];
    }
    ThreadPlan plan;
    plan.cpu = state->cpu;
    for (std::size_t index : groups[t]) {
      stages_[index]->thread = t;
      state->stages.push_back(stages_[index].get());
      plan.stages.emplace_back(stages_[index]->stage->name());
    }
    plan_.push_back(std::move(plan));
    threads_.push_back(std::move(state));
  }
  return base::OkStatus();
}

base::Status Topology::Start() {
  MR_CHECK(!started_) << "Topology::Start called twice";
  if (auto placed = Place(); !placed) return placed;

  // Each channel learns the waiters of the threads at its two ends.
  std::map<const ChannelBase*, Waiter*> producer_of, consumer_of;
  for (const auto& slot : stages_) {
    Waiter* waiter = &threads_[slot->thread]->waiter;
    for (ChannelBase* out : slot->outputs) producer_of[out] = waiter;
    for (ChannelBase* in : slot->inputs) consumer_of[in] = waiter;
  }
  for (const auto& channel : channels_) {
    channel->set_waiters(producer_of[channel.get()], consumer_of[channel.get()]);
  }

  started_ = true;
  for (auto& state : threads_) {
    state->thread = std::thread([this, raw = state.get()] { RunThread(*raw); });
    if (state->cpu >= 0) {
      cpu_set_t set;
      CPU_ZERO(&set);
      CPU_SET(state->cpu, &set);
      pthread_setaffinity_np(state->thread.native_handle(), sizeof(set), &set);
    }
  }
  return base::OkStatus();
}

void Topology::RequestStop() {
  for (const auto& slot : stages_) slot->stage->RequestStop();
  for (auto& state : threads_) state->waiter.Notify();
}

void Topology::Wait() {
  for (auto& state : threads_) {
    if (state->thread.joinable()) state->thread.join();
  }
}

void Topology::Report(Snapshot& snapshot) const {
  for (std::size_t t = 0; t < threads_.size(); ++t) {
    const ThreadCounters& c = *threads_[t]->counters;
    std::string stages;
    for (const auto& name : plan_[t].stages) stages += (stages.empty() ? "" : ",") + name;
    Labels labels{{"thread", std::to_string(t)}, {"stages", stages}, {"cpu", std::to_string(plan_[t].cpu)}};
    snapshot.Counter("thread_items", static_cast<double>(c.items.load(std::memory_order_relaxed)), labels,
                     "items handled by the thread's stages");
    snapshot.Counter("thread_busy_rounds", static_cast<double>(c.busy_rounds.load(std::memory_order_relaxed)), labels,
                     "passes over the thread's stages that did work");
    snapshot.Counter("thread_idle_rounds", static_cast<double>(c.idle_rounds.load(std::memory_order_relaxed)), labels,
                     "passes over the thread's stages that found nothing to do");
    snapshot.Counter("thread_parks", static_cast<double>(c.parks.load(std::memory_order_relaxed)), labels,
                     "times the thread slept on its futex");
    snapshot.Counter("thread_cpu_seconds", static_cast<double>(c.cpu_ns.load(std::memory_order_relaxed)) / 1e9,
                     labels, "CPU time of the thread (refreshed when it parks and when it exits)");
  }
  for (const auto& channel : channels_) {
    Labels labels{{"ring", channel->name()}};
    snapshot.Gauge("ring_capacity", static_cast<double>(channel->capacity()), labels);
    snapshot.Gauge("ring_fill", static_cast<double>(channel->size_approx()), labels, "items waiting in the ring");
  }
  for (const auto& slot : stages_) slot->stage->Report(snapshot);
}

void Topology::RunThread(ThreadState& state) {
  std::vector<StageSlot*> running = state.stages;
  ThreadCounters& counters = *state.counters;
  const WaitPolicy& wait = config_.wait;
  std::uint64_t idle = 0;

  // One pass over the thread's stages; finished stages close their outputs and leave the list.
  auto run_pass = [&]() -> std::size_t {
    std::size_t handled = 0;
    for (std::size_t i = 0; i < running.size();) {
      StageSlot* slot = running[i];
      handled += slot->stage->RunOnce();
      if (slot->stage->IsFinished()) {
        for (ChannelBase* out : slot->outputs) out->Close();
        running.erase(running.begin() + static_cast<std::ptrdiff_t>(i));
        ++handled;  // a state change counts as progress: re-check the others before parking
      } else {
        ++i;
      }
    }
    return handled;
  };

  while (!running.empty()) {
    const std::size_t handled = run_pass();
    if (handled > 0) {
      counters.items.store(counters.items.load(std::memory_order_relaxed) + handled, std::memory_order_relaxed);
      counters.busy_rounds.store(counters.busy_rounds.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
      idle = 0;
      continue;
    }
    counters.idle_rounds.store(counters.idle_rounds.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    ++idle;
    if (idle < wait.spin_rounds) {
      CpuRelax();
      continue;
    }
    Clock::time_point deadline = Clock::time_point::max();
    for (StageSlot* slot : running) deadline = std::min(deadline, slot->stage->next_deadline());
    const Clock::time_point now = Clock::now();
    if (deadline <= now) {
      idle = 0;  // a timer is due: run the stages again right away
      continue;
    }
    auto timeout = std::chrono::duration_cast<std::chrono::nanoseconds>(deadline - now);
    timeout = std::min<std::chrono::nanoseconds>(timeout, wait.max_park);
    const std::uint32_t ticket = state.waiter.PrepareToPark();
    if (run_pass() > 0) {
      state.waiter.CancelPark();
      idle = 0;
      continue;
    }
    if (running.empty()) {
      state.waiter.CancelPark();
      break;
    }
    counters.parks.store(counters.parks.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    counters.cpu_ns.store(ThreadCpuNs(), std::memory_order_relaxed);
    state.waiter.Park(ticket, timeout);
    idle = wait.spin_rounds;  // woken: run the stages, and park again at once if they have nothing
  }
  counters.cpu_ns.store(ThreadCpuNs(), std::memory_order_relaxed);
}

}  // namespace mailrail::engine
