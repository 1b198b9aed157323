#pragma once
// Topology: owns the stages, the channels between them and the threads that run them. It places
// stages on threads and threads on CPUs, wires each channel to the waiters of the two threads at
// its ends, runs every thread's loop (round-robin over its stages, spin, then park),
// and shuts the pipeline down by draining it: sources stop, end-of-stream flows down the channels,
// every stage empties its inputs, and only then do the threads exit.
//
// Threading: build (MakeChannel, AddStage) and Start from one thread; RequestStop from any thread
//   (signal-handling thread included, but not from a signal handler); Wait from the builder.
// Ownership: the Topology owns stages and channels for its whole life; threads are joined by Wait
//   or by the destructor.
// Placement:
//   kAuto           one thread per stage, pinned one per CPU, when the CPUs allowed to the process
//                   are at least the number of stages; otherwise one thread per CPU, the stages
//                   split over them so that the busiest thread has the least total
//                   Stage::cost_hint() (ties: fewest hand-offs between threads, so equal costs give
//                   contiguous runs; a thread's stages need not be neighbours in the pipeline).
//   kOneThread      every stage on one thread.
//   kThreadPerStage one thread per stage.
//   kExplicit       TopologyConfig::threads lists the stage names for each thread.
//   Threads are pinned to TopologyConfig::cpus when given; kAuto pins when there are at least as
//   many allowed CPUs as threads.

#include <sched.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "engine/base/result.h"
#include "engine/channel.h"
#include "engine/stage.h"
#include "engine/waiter.h"

namespace mailrail::engine {

// WaitPolicy: how an idle thread waits. A short spin catches the next batch of a busy pipeline
// without a futex round trip; parking keeps an idle daemon at ~0% CPU. The spin is short because
// on a machine with fewer cores than busy threads a spinning thread takes the CPU from the very
// threads it waits for: with 4,000 rounds and 64 sched_yield rounds, a replay paced at 4,000
// msgs/s on 2 cores used 8 s of CPU and had a p99 latency of 25-29 ms; with 100 rounds and no
// yield, 3.7 s and 6.3-6.8 ms, at the same full-load throughput (docs/benchmarks.md).
struct WaitPolicy {
  std::uint32_t spin_rounds = 100;          // idle rounds with a pause instruction, then park
  std::chrono::milliseconds max_park{200};  // longest sleep without a wake or a stage deadline
};

struct TopologyConfig {
  enum class Placement { kAuto, kOneThread, kThreadPerStage, kExplicit };
  Placement placement = Placement::kAuto;
  std::vector<std::vector<std::string>> threads;  // kExplicit only: stage names per thread
  std::vector<int> cpus;                          // thread i pinned to cpus[i]; empty: see above
  WaitPolicy wait;
  unsigned allowed_cpus = 0;  // 0: read from the process's affinity mask (tests override)
};

// ThreadPlan: where the Topology put things, for stats and tests.
struct ThreadPlan {
  std::vector<std::string> stages;
  int cpu = -1;  // -1: not pinned
};

// Per-thread counters, written by the owning thread only (relaxed stores), read by anyone.
// cpu_ns is the thread's CPU time (CLOCK_THREAD_CPUTIME_ID), refreshed before each park and when
// the thread exits: exact after Wait, at most one busy stretch behind while running.
struct ThreadCounters {
  std::atomic<std::uint64_t> items{0};
  std::atomic<std::uint64_t> busy_rounds{0};
  std::atomic<std::uint64_t> idle_rounds{0};
  std::atomic<std::uint64_t> parks{0};
  std::atomic<std::uint64_t> cpu_ns{0};
};

class Topology {
 public:
  explicit Topology(TopologyConfig config);
  ~Topology();
  Topology(const Topology&) = delete;
  Topology& operator=(const Topology&) = delete;

  template <typename T>
  Channel<T>* MakeChannel(std::string name, std::size_t capacity) {
    auto channel = std::make_unique<Channel<T>>(std::move(name), capacity);
    Channel<T>* raw = channel.get();
    channels_.push_back(std::move(channel));
    return raw;
  }

  // Stages are added in pipeline order (sources first). inputs/outputs name the channels the
  // stage pops from and pushes to; the Topology closes the outputs when the stage finishes.
  Stage* AddStage(std::unique_ptr<Stage> stage, std::vector<ChannelBase*> inputs,
                  std::vector<ChannelBase*> outputs);

  // Places stages, wires waiters and starts the threads. Fails on a bad explicit placement.
  base::Status Start();
  // Asks every stage to stop taking new input; the pipeline then drains and the threads exit.
  void RequestStop();
  // Blocks until every stage has finished and every thread has exited.
  void Wait();

  // Threads (items, busy and idle rounds, parks, CPU), rings (capacity, fill) and every stage's
  // own counters. Any thread, while running.
  void Report(Snapshot& snapshot) const;

  const std::vector<ThreadPlan>& plan() const { return plan_; }
  const std::vector<std::unique_ptr<ChannelBase>>& channels() const { return channels_; }
  const ThreadCounters& thread_counters(std::size_t thread) const { return *threads_[thread]->counters; }

 private:
  struct StageSlot {
    std::unique_ptr<Stage> stage;
    std::vector<ChannelBase*> inputs;
    std::vector<ChannelBase*> outputs;
    std::size_t thread = 0;
  };
  struct ThreadState {
    std::vector<StageSlot*> stages;
    Waiter waiter;
    std::unique_ptr<ThreadCounters> counters = std::make_unique<ThreadCounters>();
    int cpu = -1;
    std::thread thread;
  };

  base::Status Place();
  void RunThread(ThreadState& state);

  TopologyConfig config_;
  std::vector<std::unique_ptr<StageSlot>> stages_;
  std::vector<std::unique_ptr<ChannelBase>> channels_;
  std::vector<std::unique_ptr<ThreadState>> threads_;
  std::vector<ThreadPlan> plan_;
  bool started_ = false;
};

// Number of CPUs in the calling process's affinity mask, and their ids in order.
std::vector<int> AllowedCpus();

// The CPUs the whole process may use: the affinity of its main thread, which the Topology never
// pins. Rings give it to io_uring_register_iowq_aff so that io_uring's kernel workers (which copy
// WAL groups into the page cache and run fdatasync) may run on any of them; by default they
// inherit the pin of the stage thread that first submits and pile that work onto its core.
cpu_set_t ProcessCpuSet();

}  // namespace mailrail::engine
