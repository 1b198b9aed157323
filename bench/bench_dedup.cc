// bench_dedup: insert-or-find operations/s and bytes per key for mailrail's DedupSet and its two
// peers, absl::flat_hash_set<Fingerprint> and std::unordered_set<Fingerprint>, over the same key
// stream in one run: N operations (1 M or 10 M) of random 128-bit fingerprints where a given share
// (1% or 5%) repeat an earlier key chosen uniformly (the cache-unfriendly case). Every structure is
// pre-sized for N keys outside the timed region (DedupSet capacity = N, reserve(N) for the peers).
// bytes_per_key = heap bytes held after the run (mallinfo2, so every structure is measured the
// same way) / distinct keys. Compare rows of one run (ratios), never runs on different days.
//
//   build/bench/bench_dedup --benchmark_counters_tabular=true
#include <absl/container/flat_hash_set.h>
#include <benchmark/benchmark.h>
#include <malloc.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <unordered_set>
#include <utility>
#include <vector>

#include "stages/dedup_set.h"
#include "stages/dedup_snapshot.h"

namespace {

using mailrail::stages::DedupAnswer;
using mailrail::stages::DedupQuery;
using mailrail::stages::DedupSet;
using mailrail::stages::DedupSetConfig;
using mailrail::stages::Fingerprint;

struct FingerprintHash {
  std::size_t operator()(const Fingerprint& f) const { return f.low; }  // already uniform (XXH3)
};

std::uint64_t SplitMix(std::uint64_t& state) {
  std::uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

struct Stream {
  std::vector<Fingerprint> keys;
  std::size_t distinct = 0;
};

// N operations, dup_percent of which repeat an earlier key (uniformly chosen); cached per shape.
const Stream& KeyStream(std::size_t n, int dup_percent) {
  static std::map<std::pair<std::size_t, int>, std::unique_ptr<Stream>> cache;
  auto& slot = cache[{n, dup_percent}];
  if (slot) return *slot;
  slot = std::make_unique<Stream>();
  std::uint64_t rng = 42 + n + static_cast<std::uint64_t>(dup_percent);
  std::vector<Fingerprint> unique;
  unique.reserve(n);
  slot->keys.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    if (!unique.empty() && SplitMix(rng) % 100 < static_cast<std::uint64_t>(dup_percent)) {
      slot->keys.push_back(unique[SplitMix(rng) % unique.size()]);
    } else {
      unique.push_back(Fingerprint{SplitMix(rng), SplitMix(rng)});
      slot->keys.push_back(unique.back());
    }
  }
  slot->distinct = unique.size();
  return *slot;
}

std::size_t HeapBytes() {
  const struct mallinfo2 info = mallinfo2();
  return info.uordblks + info.hblkhd;
}

void Report(benchmark::State& state, const Stream& stream, std::size_t duplicates, std::size_t heap_bytes) {
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * stream.keys.size()));
  state.counters["bytes_per_key"] = static_cast<double>(heap_bytes) / static_cast<double>(stream.distinct);
  state.counters["dup_found"] = static_cast<double>(duplicates);
  if (duplicates != stream.keys.size() - stream.distinct) state.SkipWithError("wrong duplicate count");
}

template <bool kBatch>
void RunDedupSet(benchmark::State& state) {
  const Stream& stream = KeyStream(static_cast<std::size_t>(state.range(0)), static_cast<int>(state.range(1)));
  std::vector<DedupQuery> queries(stream.keys.size());
  for (std::size_t i = 0; i < queries.size(); ++i) queries[i] = DedupQuery{stream.keys[i], i + 1, 0};
  std::vector<DedupAnswer> answers(64);
  std::size_t duplicates = 0, heap = 0;
  for (auto _ : state) {
    state.PauseTiming();
    const std::size_t before = HeapBytes();
    DedupSetConfig config;
    config.capacity = stream.keys.size();
    config.max_age_ms = 0;
    auto set = std::make_unique<DedupSet>(config);
    duplicates = 0;
    state.ResumeTiming();
    if constexpr (kBatch) {
      for (std::size_t i = 0; i < queries.size(); i += 64) {
        const std::size_t n = std::min<std::size_t>(64, queries.size() - i);
        set->InsertOrFindBatch(std::span(queries).subspan(i, n), answers);
        for (std::size_t j = 0; j < n; ++j) duplicates += answers[j].duplicate;
      }
    } else {
      for (const DedupQuery& q : queries) {
        duplicates += set->shard(set->ShardOf(q.key)).InsertOrFind(q.key.high, q.lsn, q.time_ms).duplicate;
      }
    }
    state.PauseTiming();
    heap = HeapBytes() - before;
    state.counters["reserved_bytes_per_key"] = set->bytes_per_key();
    set.reset();
    state.ResumeTiming();
  }
  Report(state, stream, duplicates, heap);
}

void BM_DedupSet_InsertOrFindBatch(benchmark::State& state) { RunDedupSet<true>(state); }
void BM_DedupSet_InsertOrFindSingle(benchmark::State& state) { RunDedupSet<false>(state); }

template <typename Set>
void RunPeer(benchmark::State& state) {
  const Stream& stream = KeyStream(static_cast<std::size_t>(state.range(0)), static_cast<int>(state.range(1)));
  std::size_t duplicates = 0, heap = 0;
  for (auto _ : state) {
    state.PauseTiming();
    const std::size_t before = HeapBytes();
    auto set = std::make_unique<Set>();
    set->reserve(stream.keys.size());
    duplicates = 0;
    state.ResumeTiming();
    for (const Fingerprint& key : stream.keys) duplicates += !set->insert(key).second;
    state.PauseTiming();
    heap = HeapBytes() - before;
    set.reset();
    state.ResumeTiming();
  }
  Report(state, stream, duplicates, heap);
}

void BM_AbslFlatHashSet_InsertOrFind(benchmark::State& state) {
  RunPeer<absl::flat_hash_set<Fingerprint, FingerprintHash>>(state);
}
void BM_StdUnorderedSet_InsertOrFind(benchmark::State& state) {
  RunPeer<std::unordered_set<Fingerprint, FingerprintHash>>(state);
}

// DedupSet at steady state: capacity N/4, so three quarters of the inserts evict the oldest key.
void BM_DedupSet_InsertOrFindEvicting(benchmark::State& state) {
  const Stream& stream = KeyStream(static_cast<std::size_t>(state.range(0)), static_cast<int>(state.range(1)));
  std::vector<DedupQuery> queries(stream.keys.size());
  for (std::size_t i = 0; i < queries.size(); ++i) queries[i] = DedupQuery{stream.keys[i], i + 1, 0};
  std::vector<DedupAnswer> answers(64);
  for (auto _ : state) {
    state.PauseTiming();
    DedupSetConfig config;
    config.capacity = stream.keys.size() / 4;
    config.max_age_ms = 0;
    auto set = std::make_unique<DedupSet>(config);
    state.ResumeTiming();
    for (std::size_t i = 0; i < queries.size(); i += 64) {
      const std::size_t n = std::min<std::size_t>(64, queries.size() - i);
      set->InsertOrFindBatch(std::span(queries).subspan(i, n), answers);
    }
    state.PauseTiming();
    state.counters["evicted"] = static_cast<double>(set->evicted_by_count());
    set.reset();
    state.ResumeTiming();
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * stream.keys.size()));
}

// Snapshot cost: writing (with fsync) and loading a full set of N keys, in the directory named by
// $MAILRAIL_BENCH_DIR (default /tmp). The dedup stage blocks for the write; this is the stall.
void BM_DedupSnapshot_WriteThenLoad(benchmark::State& state) {
  const Stream& stream = KeyStream(static_cast<std::size_t>(state.range(0)), 1);
  DedupSetConfig config;
  config.capacity = stream.keys.size();
  config.max_age_ms = 0;
  DedupSet set(config);
  std::vector<DedupAnswer> answers(64);
  std::vector<DedupQuery> queries;
  for (std::size_t i = 0; i < stream.keys.size(); ++i) queries.push_back(DedupQuery{stream.keys[i], i + 1, 0});
  for (std::size_t i = 0; i < queries.size(); i += 64) {
    set.InsertOrFindBatch(std::span(queries).subspan(i, std::min<std::size_t>(64, queries.size() - i)), answers);
  }
  const char* dir = std::getenv("MAILRAIL_BENCH_DIR");
  const std::string path = std::string(dir != nullptr ? dir : "/tmp") + "/mailrail-bench-dedup.snapshot";
  double write_s = 0, load_s = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    if (!WriteDedupSnapshot(set, queries.size(), path).has_value()) state.SkipWithError("snapshot write failed");
    const auto t1 = std::chrono::steady_clock::now();
    DedupSet loaded(config);
    if (!LoadDedupSnapshot(path, loaded).has_value() || loaded.size() != set.size()) {
      state.SkipWithError("snapshot load failed");
    }
    const auto t2 = std::chrono::steady_clock::now();
    write_s += std::chrono::duration<double>(t1 - t0).count();
    load_s += std::chrono::duration<double>(t2 - t1).count();
  }
  std::remove(path.c_str());
  state.counters["write_ms"] = 1000 * write_s / static_cast<double>(state.iterations());
  state.counters["load_ms"] = 1000 * load_s / static_cast<double>(state.iterations());
  state.counters["keys"] = static_cast<double>(set.size());
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * set.size()));
}

void Shapes(benchmark::internal::Benchmark* b) {
  b->Unit(benchmark::kMillisecond)->UseRealTime();
  b->Args({1'000'000, 1})->Args({1'000'000, 5})->Args({10'000'000, 1})->Args({10'000'000, 5});
  b->Iterations(2);
}

BENCHMARK(BM_DedupSet_InsertOrFindBatch)->Apply(Shapes);
BENCHMARK(BM_DedupSet_InsertOrFindSingle)->Apply(Shapes);
BENCHMARK(BM_AbslFlatHashSet_InsertOrFind)->Apply(Shapes);
BENCHMARK(BM_StdUnorderedSet_InsertOrFind)->Apply(Shapes);
BENCHMARK(BM_DedupSet_InsertOrFindEvicting)->Apply(Shapes);
BENCHMARK(BM_DedupSnapshot_WriteThenLoad)->Arg(1'000'000)->Iterations(2)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
