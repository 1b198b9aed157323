#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <random>
#include <string>

#include "engine/histogram.h"
#include "engine/stats.h"
#include "engine/stats_socket.h"

namespace mailrail::engine {
namespace {

TEST(LatencyHistogramTest, QuantilesAreWithinOneBucketOfTheTruth) {
  LatencyHistogram h;
  std::vector<std::uint64_t> values;
  std::mt19937_64 rng(42);
  for (int i = 0; i < 100000; ++i) {
    const std::uint64_t v = rng() % 10'000'000;
    values.push_back(v);
    h.Record(v);
  }
  std::sort(values.begin(), values.end());
  const auto snapshot = h.Take();
  EXPECT_EQ(snapshot.count(), 100000u);
  EXPECT_EQ(snapshot.max, values.back());
  for (double q : {0.5, 0.9, 0.99, 0.999}) {
    const double truth = static_cast<double>(values[static_cast<std::size_t>(q * values.size()) - 1]);
    const double got = static_cast<double>(snapshot.Quantile(q));
    EXPECT_GE(got, truth) << q;
    EXPECT_LE(got, truth * 1.125 + 1) << q;
  }
}

TEST(LatencyHistogramTest, BucketBoundsAreConsistent) {
  for (std::uint64_t v : {0ull, 1ull, 7ull, 8ull, 9ull, 1000ull, 123456789ull, ~0ull}) {
    const int b = LatencyHistogram::BucketOf(v);
    ASSERT_LT(b, LatencyHistogram::kBuckets);
    EXPECT_GE(LatencyHistogram::UpperBoundOf(b), v);
    if (b > 0) {
      EXPECT_LT(LatencyHistogram::UpperBoundOf(b - 1), v);
    }
  }
}

TEST(SnapshotTest, RendersJsonAndPrometheus) {
  Snapshot s;
  s.Counter("stage_messages_in", 10, {{"stage", "parse"}}, "messages taken by the stage");
  s.Gauge("ring_fill", 3, {{"ring", "a->b"}});
  s.Counter("stage_messages_in", 7, {{"stage", "dedup"}});
  s.Gauge("uptime_seconds", 1.5);
  EXPECT_EQ(s.ToJson(),
            "{\"stage_messages_in\":[{\"stage\":\"parse\",\"value\":10},{\"stage\":\"dedup\",\"value\":7}],"
            "\"ring_fill\":[{\"ring\":\"a->b\",\"value\":3}],\"uptime_seconds\":1.5}\n");
  EXPECT_EQ(s.ToPrometheus(),
            "# HELP mailrail_stage_messages_in messages taken by the stage\n"
            "# TYPE mailrail_stage_messages_in counter\n"
            "mailrail_stage_messages_in{stage=\"parse\"} 10\n"
            "mailrail_stage_messages_in{stage=\"dedup\"} 7\n"
            "# TYPE mailrail_ring_fill gauge\n"
            "mailrail_ring_fill{ring=\"a->b\"} 3\n"
            "# TYPE mailrail_uptime_seconds gauge\n"
            "mailrail_uptime_seconds 1.5\n");
}

TEST(StatsSocketTest, AnswersEachConnectionWithOneSnapshot) {
  StatsRegistry registry;
  std::uint64_t calls = 0;
  registry.Add([&](Snapshot& s) { s.Counter("calls", static_cast<double>(++calls)); });
  const std::string path = "/tmp/mailrail-stats-test-" + std::to_string(getpid()) + ".sock";
  auto socket = StatsSocket::Start(path, 0660, &registry);
  ASSERT_TRUE(socket.has_value()) << socket.error().message;
  auto json = ReadStatsSocket(path, "json");
  ASSERT_TRUE(json.has_value());
  EXPECT_EQ(*json, "{\"calls\":1}\n");
  auto prom = ReadStatsSocket(path, "prometheus");
  ASSERT_TRUE(prom.has_value());
  EXPECT_EQ(*prom, "# TYPE mailrail_calls counter\nmailrail_calls 2\n");
  // A second daemon on the same path is refused while the first is alive.
  auto second = StatsSocket::Start(path, 0660, &registry);
  ASSERT_FALSE(second.has_value());
  EXPECT_EQ(second.error().code, "stats.socket_in_use");
  (*socket)->Stop();
  EXPECT_NE(::access(path.c_str(), F_OK), 0);  // removed
  EXPECT_FALSE(ReadStatsSocket(path, "json").has_value());
}

}  // namespace
}  // namespace mailrail::engine
