// bench_ring: items/s through a single-producer/single-consumer queue of 8-byte items, producer and
// consumer pinned to different CPUs, for mailrail's SpscRing and its two moodycamel peers in one run,
// plus a ping-pong round trip. Compare the rows of one run (ratios), never runs on different days.
//
//   build/bench/bench_ring --benchmark_format=json --benchmark_repetitions=5
#include <benchmark/benchmark.h>
#include <concurrentqueue/concurrentqueue.h>
#include <pthread.h>
#include <readerwriterqueue/readerwriterqueue.h>
#include <sched.h>

#include <array>
#include <cstdint>
#include <thread>

#include "engine/spsc_ring.h"
#include "engine/topology.h"

namespace {

using mailrail::engine::SpscRing;
constexpr std::size_t kCapacity = 8192;
constexpr std::uint64_t kItemsPerIteration = 1 << 22;
constexpr std::size_t kBatch = 64;

void PinTo(int index) {
  static const std::vector<int> cpus = mailrail::engine::AllowedCpus();
  if (cpus.size() < 2) return;  // one CPU: nothing to separate
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpus[static_cast<std::size_t>(index) % cpus.size()], &set);
  pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

// Runs `produce` on a pinned producer thread and `consume` on this (pinned) thread, per iteration.
template <typename Queue, typename Produce, typename Consume>
void RunPair(benchmark::State& state, Produce produce, Consume consume) {
  PinTo(0);
  for (auto _ : state) {
    Queue queue(kCapacity);
    std::thread producer([&] {
      PinTo(1);
      produce(queue);
    });
    const std::uint64_t checksum = consume(queue);
    producer.join();
    if (checksum != kItemsPerIteration * (kItemsPerIteration - 1) / 2) state.SkipWithError("lost items");
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * kItemsPerIteration));
}

void BM_SpscRing_Single(benchmark::State& state) {
  RunPair<SpscRing<std::uint64_t>>(
      state,
      [](auto& q) {
        for (std::uint64_t i = 0; i < kItemsPerIteration;) i += q.TryPush(i) ? 1 : 0;
      },
      [](auto& q) {
        std::uint64_t sum = 0, v = 0;
        for (std::uint64_t n = 0; n < kItemsPerIteration;) {
          if (q.TryPop(v)) { sum += v; ++n; }
        }
        return sum;
      });
}

void BM_SpscRing_Batch64(benchmark::State& state) {
  RunPair<SpscRing<std::uint64_t>>(
      state,
      [](auto& q) {
        std::array<std::uint64_t, kBatch> batch{};
        for (std::uint64_t next = 0; next < kItemsPerIteration;) {
          for (std::size_t i = 0; i < kBatch; ++i) batch[i] = next + i;
          std::size_t pushed = 0;
          while (pushed < kBatch) pushed += q.TryPushBatch(std::span<const std::uint64_t>(batch).subspan(pushed));
          next += kBatch;
        }
      },
      [](auto& q) {
        std::array<std::uint64_t, kBatch> batch{};
        std::uint64_t sum = 0;
        for (std::uint64_t n = 0; n < kItemsPerIteration;) {
          const std::size_t got = q.TryPopBatch(batch);
          for (std::size_t i = 0; i < got; ++i) sum += batch[i];
          n += got;
        }
        return sum;
      });
}

void BM_MoodycamelRWQ_Single(benchmark::State& state) {
  RunPair<moodycamel::ReaderWriterQueue<std::uint64_t>>(
      state,
      [](auto& q) {
        for (std::uint64_t i = 0; i < kItemsPerIteration;) i += q.try_enqueue(i) ? 1 : 0;
      },
      [](auto& q) {
        std::uint64_t sum = 0, v = 0;
        for (std::uint64_t n = 0; n < kItemsPerIteration;) {
          if (q.try_dequeue(v)) { sum += v; ++n; }
        }
        return sum;
      });
}

// ConcurrentQueue, 1 producer and 1 consumer: producer token, consumer token.
struct BoundedCQ {
  explicit BoundedCQ(std::size_t capacity) : queue(capacity), producer_token(queue), consumer_token(queue) {}
  moodycamel::ConcurrentQueue<std::uint64_t> queue;
  moodycamel::ProducerToken producer_token;
  moodycamel::ConsumerToken consumer_token;
};

void BM_MoodycamelCQ_Single(benchmark::State& state) {
  RunPair<BoundedCQ>(
      state,
      [](auto& q) {
        for (std::uint64_t i = 0; i < kItemsPerIteration;) i += q.queue.try_enqueue(q.producer_token, i) ? 1 : 0;
      },
      [](auto& q) {
        std::uint64_t sum = 0, v = 0;
        for (std::uint64_t n = 0; n < kItemsPerIteration;) {
          if (q.queue.try_dequeue(q.consumer_token, v)) { sum += v; ++n; }
        }
        return sum;
      });
}

void BM_MoodycamelCQ_Bulk64(benchmark::State& state) {
  RunPair<BoundedCQ>(
      state,
      [](auto& q) {
        std::array<std::uint64_t, kBatch> batch{};
        for (std::uint64_t next = 0; next < kItemsPerIteration;) {
          for (std::size_t i = 0; i < kBatch; ++i) batch[i] = next + i;
          while (!q.queue.try_enqueue_bulk(q.producer_token, batch.data(), kBatch)) {
          }
          next += kBatch;
        }
      },
      [](auto& q) {
        std::array<std::uint64_t, kBatch> batch{};
        std::uint64_t sum = 0;
        for (std::uint64_t n = 0; n < kItemsPerIteration;) {
          const std::size_t got = q.queue.try_dequeue_bulk(q.consumer_token, batch.data(), kBatch);
          for (std::size_t i = 0; i < got; ++i) sum += batch[i];
          n += got;
        }
        return sum;
      });
}

// Round trip: this thread sends a token through one queue, a pinned echo thread sends it back
// through another. Time per iteration = one round trip.
template <typename Queue, typename Push, typename Pop>
void RunPingPong(benchmark::State& state, Push push, Pop pop) {
  PinTo(0);
  Queue there(1024), back(1024);
  std::atomic<bool> done{false};
  std::thread echo([&] {
    PinTo(1);
    std::uint64_t v = 0;
    while (!done.load(std::memory_order_relaxed)) {
      if (pop(there, v)) {
        while (!push(back, v)) {
        }
      }
    }
  });
  std::uint64_t token = 0, reply = 0;
  for (auto _ : state) {
    while (!push(there, token)) {
    }
    while (!pop(back, reply)) {
    }
    if (reply != token) state.SkipWithError("wrong reply");
    ++token;
  }
  done.store(true);
  echo.join();
}

void BM_SpscRing_PingPong(benchmark::State& state) {
  RunPingPong<SpscRing<std::uint64_t>>(
      state, [](auto& q, std::uint64_t v) { return q.TryPush(v); },
      [](auto& q, std::uint64_t& v) { return q.TryPop(v); });
}

void BM_MoodycamelRWQ_PingPong(benchmark::State& state) {
  RunPingPong<moodycamel::ReaderWriterQueue<std::uint64_t>>(
      state, [](auto& q, std::uint64_t v) { return q.try_enqueue(v); },
      [](auto& q, std::uint64_t& v) { return q.try_dequeue(v); });
}

void BM_MoodycamelCQ_PingPong(benchmark::State& state) {
  RunPingPong<BoundedCQ>(
      state, [](auto& q, std::uint64_t v) { return q.queue.try_enqueue(q.producer_token, v); },
      [](auto& q, std::uint64_t& v) { return q.queue.try_dequeue(q.consumer_token, v); });
}

BENCHMARK(BM_SpscRing_Single)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_SpscRing_Batch64)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_MoodycamelRWQ_Single)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_MoodycamelCQ_Single)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_MoodycamelCQ_Bulk64)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_SpscRing_PingPong)->UseRealTime();
BENCHMARK(BM_MoodycamelRWQ_PingPong)->UseRealTime();
BENCHMARK(BM_MoodycamelCQ_PingPong)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
