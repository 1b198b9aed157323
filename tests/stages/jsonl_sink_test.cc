#include "stages/jsonl_sink.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <string>
#include <thread>
#include <unistd.h>

namespace mailrail::stages {
namespace {

constexpr auto kBound = std::chrono::seconds(10);

std::size_t CountLines(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::size_t lines = 0;
  for (std::string line; std::getline(in, line);) ++lines;
  return lines;
}

// The stage's thread never waits for the disk: while the sync thread is held inside the
// checkpoint callback, RunOnce keeps taking and writing messages, and nothing is reported durable
// (or finished) before the callback returns.
TEST(JsonlSinkTest, SyncAndCheckpointRunOffTheStageThread) {
  const auto dir = std::filesystem::temp_directory_path() / ("mailrail-jsonl-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const auto path = dir / "out.jsonl";

  engine::Channel<Message*> in("in", 64);
  MessagePool pool(64, 1 << 20);
  std::promise<void> entered;
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::vector<std::uint64_t> checkpoints;  // written by the sync thread only
  std::thread::id callback_thread;
  bool first = true;
  auto on_durable = [&](std::uint64_t lsn) {
    callback_thread = std::this_thread::get_id();
    checkpoints.push_back(lsn);
    if (first) {
      first = false;
      entered.set_value();
      released.wait();
    }
  };
  auto sink = JsonlSink::Create(path.string(), &in, &pool, on_durable, std::chrono::milliseconds(0));
  ASSERT_TRUE(sink) << sink.error().message;
  JsonlSink& stage = **sink;

  auto push = [&](std::uint64_t from, std::uint64_t to) {
    for (std::uint64_t lsn = from; lsn <= to; ++lsn) {
      Message* m = pool.TryAcquire(64);
      ASSERT_NE(m, nullptr);
      m->raw = "From: a@x.example\n\nbody\n";
      m->lsn = lsn;
      ASSERT_TRUE(in.Push(m));
    }
  };
  push(1, 10);
  stage.RunOnce();  // takes 1..10, writes them, asks for a sync (the interval is 0)
  ASSERT_EQ(entered.get_future().wait_for(kBound), std::future_status::ready) << "no sync was requested";

  // The sync thread is inside the callback for LSN 10: the stage goes on regardless.
  push(11, 30);
  in.Close();
  for (int i = 0; i < 100; ++i) stage.RunOnce();
  EXPECT_EQ(stage.counters().forwarded.load(), 30u);
  EXPECT_EQ(CountLines(path), 30u) << "the stage's thread waited instead of writing";
  EXPECT_EQ(stage.durable_lsn(), 0u) << "reported durable before the checkpoint was written";
  EXPECT_FALSE(stage.IsFinished());

  release.set_value();
  const auto deadline = std::chrono::steady_clock::now() + kBound;
  while (!stage.IsFinished() && std::chrono::steady_clock::now() < deadline) stage.RunOnce();
  ASSERT_TRUE(stage.IsFinished());
  EXPECT_EQ(stage.durable_lsn(), 30u);
  EXPECT_NE(callback_thread, std::this_thread::get_id());
  ASSERT_FALSE(checkpoints.empty());
  EXPECT_EQ(checkpoints.front(), 10u);
  EXPECT_EQ(checkpoints.back(), 30u);
  EXPECT_TRUE(std::is_sorted(checkpoints.begin(), checkpoints.end()));
  sink->reset();
  std::filesystem::remove_all(dir);
}

double Sample(const engine::Snapshot& snapshot, std::string_view name, std::string_view part = {}) {
  for (const auto& sample : snapshot.samples()) {
    if (sample.name != name) continue;
    if (part.empty() || std::find(sample.labels.begin(), sample.labels.end(),
                                  std::pair<std::string, std::string>("part", std::string(part))) != sample.labels.end()) {
      return sample.value;
    }
  }
  return -1;
}

// The end-to-end latency splits into the three parts the message's stamps mark; a message
// recovered from the WAL (no WAL stamps) counts end to end only.
TEST(LatencyPartsTest, SplitsEndToEndAtTheWalStamps) {
  using std::chrono::milliseconds;
  auto ns = [](milliseconds ms) { return std::chrono::duration_cast<std::chrono::nanoseconds>(ms).count(); };
  LatencyParts parts;
  const std::int64_t t0 = ns(milliseconds(1000));
  for (int i = 0; i < 100; ++i) {
    Message m;
    m.accepted_ns = t0;
    m.logged_ns = t0 + ns(milliseconds(2));
    m.durable_ns = t0 + ns(milliseconds(10));
    parts.RecordUntilDurable(m);
    parts.RecordEnd(m.accepted_ns, m.durable_ns, t0 + ns(milliseconds(40)));
  }
  Message recovered;
  recovered.accepted_ns = t0;
  parts.RecordUntilDurable(recovered);
  parts.RecordEnd(recovered.accepted_ns, recovered.durable_ns, t0 + ns(milliseconds(40)));

  engine::Snapshot snapshot;
  parts.Report(snapshot);
  EXPECT_EQ(Sample(snapshot, "end_to_end_latency_ns_count"), 101);
  for (const char* part : {"accepted_to_logged", "logged_to_durable", "durable_to_end"}) {
    EXPECT_EQ(Sample(snapshot, "latency_part_ns_count", part), 100) << part;
  }
  // Quantiles are bucket upper bounds, within 12.5% of the value.
  auto near = [](double value_ns, double ms) { return value_ns >= ms * 1e6 && value_ns <= ms * 1.125e6; };
  EXPECT_TRUE(near(Sample(snapshot, "latency_part_ns_p99", "accepted_to_logged"), 2));
  EXPECT_TRUE(near(Sample(snapshot, "latency_part_ns_p99", "logged_to_durable"), 8));
  EXPECT_TRUE(near(Sample(snapshot, "latency_part_ns_p99", "durable_to_end"), 30));
  EXPECT_TRUE(near(Sample(snapshot, "end_to_end_latency_ns_p99"), 40));
}

}  // namespace
}  // namespace mailrail::stages
