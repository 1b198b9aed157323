// HttpForwardStage on a real Topology against the local test downstream (tests/net/downstream.py):
// every message ends in exactly one counted state, every forwarded record is acknowledged by the
// downstream despite injected faults and a tiny byte budget, records refused by the downstream
// are dead-lettered, and the checkpoint reaches the last LSN only when all of that is settled.
#include "net/http_forward_stage.h"

#include <gtest/gtest.h>

#include <mutex>
#include <set>
#include <vector>

#include "engine/topology.h"
#include "net/dead_letter_log.h"
#include "tests/net/test_util.h"

namespace mailrail::net {
namespace {

using stages::Message;
using stages::MessagePool;
using stages::Outcome;
using testing::ChildProcess;
using testing::HttpExchange;
using testing::StartDownstream;
using testing::TempDir;
using MessageChannel = engine::Channel<Message*>;

// Feeds messages with LSNs 1..n; every `duplicate_every`-th one arrives already settled upstream.
class FeedSource final : public engine::Stage {
 public:
  FeedSource(std::uint64_t n, std::uint64_t duplicate_every, MessagePool* pool, MessageChannel* out)
      : n_(n), duplicate_every_(duplicate_every), pool_(pool), outbox_(out) {}
  std::string_view name() const override { return "source"; }
  std::size_t RunOnce() override {
    if (!outbox_.Flush()) return 0;
    std::size_t taken = 0;
    while (next_ < n_ && taken < 32) {
      Message* m = pool_->TryAcquire(64);
      if (m == nullptr) break;
      m->lsn = ++next_;
      // Record fields are views into the message's own bytes.
      const std::string id = "m" + std::to_string(m->lsn) + "@test.example";
      m->raw = id + "|subject " + std::to_string(m->lsn);
      m->record.message_id = std::string_view(m->raw).substr(0, id.size());
      m->record.subject = std::string_view(m->raw).substr(id.size() + 1);
      if (m->lsn % duplicate_every_ == 0) m->outcome = Outcome::kDuplicate;
      outbox_.Add(m);
      ++taken;
    }
    outbox_.Flush();
    return taken;
  }
  bool IsFinished() const override { return next_ == n_ && outbox_.empty(); }

 private:
  std::uint64_t n_;
  std::uint64_t duplicate_every_;
  MessagePool* pool_;
  engine::Outbox<Message*> outbox_;
  std::uint64_t next_ = 0;
};

std::set<std::uint64_t> AckedLsns(std::uint16_t port) {
  const std::string body = HttpExchange(port, "GET", "/_control/acked");
  std::set<std::uint64_t> out;
  const auto begin = body.find('[');
  const auto end = body.find(']');
  if (begin == std::string::npos || end == std::string::npos) return out;
  std::size_t pos = begin + 1;
  while (pos < end) {
    std::size_t used = 0;
    out.insert(std::stoull(body.substr(pos, end - pos), &used));
    pos += used;
    while (pos < end && (body[pos] == ',' || body[pos] == ' ')) ++pos;
  }
  return out;
}

std::string DeadLetterErrors(const std::string& dir) {
  auto dlq = DeadLetterLog::Read(dir);
  if (!dlq) return dlq.error().message;
  std::string out = "unreadable lines " + std::to_string(dlq->torn_lines) + "; ";
  for (const DeadLetter& d : dlq->letters) out += d.batch_id + ": " + std::to_string(d.status) + " " + d.error + "; ";
  return out;
}

struct RunResult {
  std::vector<std::uint64_t> durable_calls;
  std::uint64_t forwarded = 0, duplicates = 0, dead_lettered = 0, total = 0, durable_lsn = 0;
  std::size_t slots_in_flight = 0;
  std::uint64_t retries = 0;
};

RunResult RunStage(const HttpForwardConfig& config, std::uint64_t n, std::uint64_t duplicate_every) {
  MessagePool pool(128, 1 << 20);
  engine::TopologyConfig tc;
  tc.allowed_cpus = 2;
  engine::Topology topology(tc);
  auto* channel = topology.MakeChannel<Message*>("filter->forward", 64);
  RunResult result;
  std::mutex mutex;
  auto stage = HttpForwardStage::Create(config, channel, &pool, [&](std::uint64_t lsn) {
    std::lock_guard lock(mutex);
    result.durable_calls.push_back(lsn);
  });
  MR_CHECK(stage.has_value()) << stage.error().message;
  HttpForwardStage* forward = stage.value().get();
  topology.AddStage(std::make_unique<FeedSource>(n, duplicate_every, &pool, channel), {}, {channel});
  topology.AddStage(std::move(stage).value(), {channel}, {});
  MR_CHECK(topology.Start().has_value());
  topology.Wait();
  const stages::OutcomeCounters& c = forward->counters();
  result.forwarded = c.forwarded.load();
  result.duplicates = c.duplicates.load();
  result.dead_lettered = c.dead_lettered.load();
  result.total = c.total();
  result.durable_lsn = forward->durable_lsn();
  result.retries = forward->client_stats().retries.value();
  result.slots_in_flight = pool.slots_in_flight();
  return result;
}

HttpForwardConfig TestConfig(const std::string& url, const std::string& dlq) {
  HttpForwardConfig config;
  ForwardConfig& client = config.client;
  client.http.base_url = url;
  client.http.max_connections = 2;
  client.http.request_timeout = std::chrono::milliseconds(500);
  client.batch_max_records = 25;
  client.linger = std::chrono::milliseconds(5);
  client.backoff_base = std::chrono::milliseconds(5);
  client.backoff_max = std::chrono::milliseconds(50);
  client.breaker_threshold = 100;
  client.dead_letter_dir = dlq;
  client.jitter_seed = 7;
  config.checkpoint_interval = std::chrono::milliseconds(1);
  return config;
}

class HttpForwardStageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    port_ = StartDownstream(downstream_);
    if (port_ == 0) GTEST_FAIL() << "test downstream did not start";
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  void Plan(std::string_view json) { HttpExchange(port_, "POST", "/_control/plan", json); }

  std::unique_ptr<ChildProcess> downstream_;
  std::uint16_t port_ = 0;
  TempDir dir_;
};

TEST_F(HttpForwardStageTest, EveryForwardedRecordIsAcknowledgedDespiteFaultsAndATinyBudget) {
  Plan(R"([{"status": 500}, {"reset": true}, {"status": 429, "retry_after": "0"}, {"status": 503},
           {"sleep": 0.05, "status": 200}])");
  HttpForwardConfig config = TestConfig(url(), dir_.path() + "/dlq");
  config.client.max_buffered_bytes = 4096;  // a few dozen records: the stage must wait for room
  constexpr std::uint64_t kMessages = 2000;
  const RunResult r = RunStage(config, kMessages, 7);

  std::set<std::uint64_t> expected;
  for (std::uint64_t lsn = 1; lsn <= kMessages; ++lsn) {
    if (lsn % 7 != 0) expected.insert(lsn);
  }
  EXPECT_EQ(AckedLsns(port_), expected);  // settled messages are never sent; the rest all arrive
  EXPECT_EQ(r.forwarded, expected.size());
  EXPECT_EQ(r.duplicates, kMessages / 7);
  EXPECT_EQ(r.dead_lettered, 0u) << DeadLetterErrors(dir_.path() + "/dlq");
  EXPECT_EQ(r.total, kMessages);
  EXPECT_GE(r.retries, 4u);
  EXPECT_EQ(r.slots_in_flight, 0u);  // every message went back to the pool
  ASSERT_FALSE(r.durable_calls.empty());
  EXPECT_TRUE(std::is_sorted(r.durable_calls.begin(), r.durable_calls.end()));
  EXPECT_EQ(r.durable_calls.back(), kMessages);  // the last LSN is settled (a duplicate: skipped)
  EXPECT_EQ(r.durable_lsn, kMessages);
  const std::string received = HttpExchange(port_, "GET", "/_control/received");
  EXPECT_NE(received.find("\"key\": \"mailrail-lsn-1-"), std::string::npos);
}

TEST_F(HttpForwardStageTest, RefusedBatchesAreDeadLetteredAndTheCheckpointPassesThem) {
  Plan(R"([{"status": 400}])");
  HttpForwardConfig config = TestConfig(url(), dir_.path() + "/dlq");
  config.client.max_in_flight = 1;  // the first batch is the refused one
  constexpr std::uint64_t kMessages = 100;
  const RunResult r = RunStage(config, kMessages, 1000);

  auto dlq = DeadLetterLog::Read(dir_.path() + "/dlq");
  ASSERT_TRUE(dlq.has_value()) << dlq.error().message;
  ASSERT_EQ(dlq->letters.size(), 1u);
  EXPECT_EQ(dlq->letters[0].status, 400);
  EXPECT_EQ(dlq->letters[0].first_lsn, 1u);
  EXPECT_EQ(r.dead_lettered, dlq->letters[0].records);
  EXPECT_EQ(r.forwarded + r.dead_lettered, kMessages);
  EXPECT_EQ(AckedLsns(port_).size(), r.forwarded);
  EXPECT_EQ(r.durable_lsn, kMessages);
}

}  // namespace
}  // namespace mailrail::net
