// HttpClient and ForwardClient against a local downstream (tests/net/downstream.py) that injects
// 429 with Retry-After, 500s, 400s, timeouts, resets and slow answers.
#include "net/forward_client.h"

#include <gtest/gtest.h>
#include <simdjson.h>

#include <filesystem>
#include <fstream>
#include <future>
#include <set>

#include "net/dead_letter_log.h"
#include "net/dead_letter_redrive.h"
#include "tests/net/test_util.h"

namespace mailrail::net {
namespace {

using testing::ChildProcess;
using testing::HttpExchange;
using testing::LoopThread;
using testing::StartDownstream;
using testing::TempDir;

// Polls `done` until it holds or the deadline passes (the conditions are set by other threads).
template <typename F>
bool WaitFor(F done, int timeout_ms = 20000) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::yield();
  }
  return true;
}

struct Downstream {
  std::unique_ptr<ChildProcess> process;
  std::uint16_t port = 0;
  Downstream() { port = StartDownstream(process); }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port); }
  void Plan(std::string_view json) { HttpExchange(port, "POST", "/_control/plan", json); }
  std::set<std::uint64_t> AckedLsns() {
    const std::string body = HttpExchange(port, "GET", "/_control/acked");
    simdjson::dom::parser parser;
    std::set<std::uint64_t> out;
    simdjson::dom::array lsns;
    if (parser.parse(body)["lsns"].get(lsns)) return out;
    for (auto v : lsns) out.insert(std::uint64_t(v));
    return out;
  }
  std::string Received() { return HttpExchange(port, "GET", "/_control/received"); }
};

std::string RecordJson(std::uint64_t lsn) {
  return "{\"lsn\":" + std::to_string(lsn) + ",\"message_id\":\"m" + std::to_string(lsn) + "@x\",\"subject\":\"s\"}";
}

void AppendRange(ForwardClient& client, std::uint64_t first, std::uint64_t last) {
  std::vector<std::string> storage;
  std::vector<ForwardRecord> records;
  for (std::uint64_t lsn = first; lsn <= last; ++lsn) storage.push_back(RecordJson(lsn));
  for (std::uint64_t lsn = first; lsn <= last; ++lsn) records.push_back({lsn, storage[lsn - first]});
  std::span<const ForwardRecord> rest(records);
  while (!rest.empty()) {
    const std::size_t n = client.Append(rest);
    rest = rest.subspan(n);
    if (!rest.empty()) std::this_thread::yield();
  }
}

ForwardConfig TestConfig(const std::string& url, const std::string& dlq) {
  ForwardConfig config;
  config.http.base_url = url;
  config.http.max_connections = 2;
  config.http.request_timeout = std::chrono::milliseconds(500);
  config.batch_max_records = 10;
  config.linger = std::chrono::milliseconds(20);
  config.backoff_base = std::chrono::milliseconds(5);
  config.backoff_max = std::chrono::milliseconds(50);
  config.breaker_threshold = 100;
  config.dead_letter_dir = dlq;
  config.jitter_seed = 42;
  return config;
}

class ForwardClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (downstream_.port == 0) GTEST_FAIL() << "test downstream did not start";
  }
  std::unique_ptr<ForwardClient> Make(ForwardConfig config) {
    auto client = ForwardClient::Create(loop_.loop(), std::move(config));
    MR_CHECK(client.has_value()) << client.error().message;
    if (!started_) {
      loop_.Start();
      started_ = true;
    }
    return std::move(client.value());
  }
  void TearDown() override {
    if (client_ != nullptr) loop_.Call([this] { client_->Shutdown(); });
    loop_.Stop();
  }

  Downstream downstream_;
  TempDir dir_;
  LoopThread loop_;
  bool started_ = false;
  std::unique_ptr<ForwardClient> client_;
  std::vector<std::unique_ptr<ForwardClient>> retired_;  // shut down; destroyed after the loop stopped
};

TEST_F(ForwardClientTest, BatchesBySizeAndLingerWithIdempotencyKeys) {
  client_ = Make(TestConfig(downstream_.url(), dir_.path() + "/dlq"));
  AppendRange(*client_, 1, 95);  // 9 full batches by size, the last 5 records sent by linger
  ASSERT_TRUE(WaitFor([&] { return client_->acknowledged_through() == 95; }));
  EXPECT_TRUE(client_->idle());
  const auto acked = downstream_.AckedLsns();
  EXPECT_EQ(acked.size(), 95u);
  EXPECT_EQ(*acked.begin(), 1u);
  EXPECT_EQ(*acked.rbegin(), 95u);
  const std::string received = downstream_.Received();
  EXPECT_NE(received.find("\"batch_id\": \"lsn-1-10\", \"key\": \"mailrail-lsn-1-10\""), std::string::npos) << received;
  EXPECT_NE(received.find("\"key\": \"mailrail-lsn-91-95\""), std::string::npos) << received;
  EXPECT_NE(received.find("\"content_type\": \"application/json\""), std::string::npos);
  EXPECT_EQ(client_->stats().batches_acknowledged.value(), 10u);
  EXPECT_EQ(client_->stats().records_acknowledged.value(), 95u);
}

TEST_F(ForwardClientTest, BatchCutsAreRememberedAcrossARestartSoResentBatchesKeepTheirKeys) {
  ForwardConfig config = TestConfig(downstream_.url(), dir_.path() + "/dlq");
  config.batch_journal_path = dir_.path() + "/forward.batches";
  client_ = Make(config);
  AppendRange(*client_, 1, 25);  // 1-10 and 11-20 by size, 21-25 by linger
  ASSERT_TRUE(WaitFor([&] { return client_->acknowledged_through() == 25; }));
  loop_.Call([this] { client_->Shutdown(); });
  retired_.push_back(std::move(client_));

  // A restart whose checkpoint is 10: 11..25 come again, now with different batch limits.
  config.forwarded_through_lsn = 10;
  config.batch_max_records = 4;
  config.linger = std::chrono::milliseconds(1);
  client_ = Make(config);
  AppendRange(*client_, 11, 30);
  client_->Flush();
  ASSERT_TRUE(WaitFor([&] { return client_->acknowledged_through() == 30; }));
  const std::string received = downstream_.Received();
  auto count = [&](std::string_view key) {
    std::size_t n = 0;
    for (auto at = received.find(key); at != std::string::npos; at = received.find(key, at + 1)) ++n;
    return n;
  };
  EXPECT_EQ(count("\"key\": \"mailrail-lsn-1-10\""), 1u);
  EXPECT_EQ(count("\"key\": \"mailrail-lsn-11-20\""), 2u) << received;  // the same key both times
  EXPECT_EQ(count("\"key\": \"mailrail-lsn-21-25\""), 2u) << received;
  EXPECT_EQ(count("\"key\": \"mailrail-lsn-26-29\""), 1u) << received;  // new records: the new limits
  EXPECT_EQ(client_->stats().batches_recut.value(), 2u);
  std::ifstream journal(config.batch_journal_path);
  const std::string text((std::istreambuf_iterator<char>(journal)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, "11 20\n21 25\n26 29\n30 30\n");  // compacted at open: 1-10 is behind the checkpoint
}

TEST_F(ForwardClientTest, SkippedLsnsLetTheCheckpointPass) {
  client_ = Make(TestConfig(downstream_.url(), dir_.path() + "/dlq"));
  client_->Skip(1);
  client_->Skip(2);
  EXPECT_EQ(client_->acknowledged_through(), 2u);
  AppendRange(*client_, 3, 5);
  client_->Skip(6);  // inside the open batch's range
  client_->Flush();
  ASSERT_TRUE(WaitFor([&] { return client_->acknowledged_through() == 6; }));
  client_->Skip(7);
  EXPECT_EQ(client_->acknowledged_through(), 7u);
}

TEST_F(ForwardClientTest, FaultsAreRetriedAndNothingIsLost) {
  ForwardConfig config = TestConfig(downstream_.url(), dir_.path() + "/dlq");
  config.max_in_flight = 1;  // the plan is consumed in batch order
  client_ = Make(config);
  downstream_.Plan(R"([{"status": 500}, {"status": 429, "retry_after": "1"}, {"reset": true},
                       {"sleep": 1.0}, {"sleep": 0.2, "status": 200}, {"status": 503}, {"status": 408},
                       {"status": 400}])");
  AppendRange(*client_, 1, 60);
  client_->Flush();
  ASSERT_TRUE(WaitFor([&] { return client_->acknowledged_through() == 60; }, 30000));
  // Every record is acknowledged downstream or dead-lettered, none twice in the DLQ.
  const auto acked = downstream_.AckedLsns();
  auto dlq = DeadLetterLog::Read(dir_.path() + "/dlq");
  ASSERT_TRUE(dlq.has_value());
  ASSERT_EQ(dlq->letters.size(), 1u);
  const DeadLetter& letter = dlq->letters[0];
  EXPECT_EQ(letter.status, 400);
  EXPECT_NE(letter.response_body.find("injected 400"), std::string::npos) << letter.response_body;
  EXPECT_EQ(letter.records, 10u);
  // (A batch may be both: the downstream may commit a request whose answer came after our
  // timeout, and the retry can then be refused. At-least-once allows it; losing one does not.)
  std::set<std::uint64_t> all = acked;
  for (std::uint64_t lsn = letter.first_lsn; lsn <= letter.last_lsn; ++lsn) all.insert(lsn);
  EXPECT_EQ(all.size(), 60u);
  // Retries: 500, 429, reset, timeout, 503 and 408 each cost one retry; the 400 none.
  const ForwardStats& stats = client_->stats();
  EXPECT_EQ(stats.retries.value(), 6u);
  EXPECT_EQ(stats.responses_429.value(), 1u);
  EXPECT_EQ(stats.responses_5xx.value(), 2u);
  EXPECT_EQ(stats.transport_errors.value(), 2u);  // reset and timeout
  EXPECT_EQ(stats.batches_dead_lettered.value(), 1u);
  // Retry-After: 1 was honoured: the next attempt came at least ~1 s after the 429.
  simdjson::dom::parser parser;
  simdjson::dom::array attempts;
  const std::string received = downstream_.Received();
  ASSERT_FALSE(parser.parse(received).get(attempts));
  double at_429 = -1, next = -1;
  for (auto a : attempts) {
    if (at_429 >= 0 && next < 0) next = double(a["at"]);
    simdjson::dom::element answer = a["answer"];
    if (answer.is_int64() && int64_t(answer) == 429) at_429 = double(a["at"]);
  }
  ASSERT_GE(at_429, 0);
  EXPECT_GE(next - at_429, 0.9);
}

TEST_F(ForwardClientTest, ExhaustedRetriesAreDeadLetteredAndRedriven) {
  ForwardConfig config = TestConfig(downstream_.url(), dir_.path() + "/dlq");
  config.max_attempts = 3;
  config.max_in_flight = 1;
  client_ = Make(config);
  downstream_.Plan(R"([{"status": 500}, {"status": 502}, {"status": 503}])");
  AppendRange(*client_, 1, 10);
  client_->Flush();
  ASSERT_TRUE(WaitFor([&] { return client_->acknowledged_through() == 10; }));
  downstream_.Plan(R"([{"status": 422}])");
  AppendRange(*client_, 11, 20);
  client_->Flush();
  ASSERT_TRUE(WaitFor([&] { return client_->acknowledged_through() == 20; }));
  auto dlq = DeadLetterLog::Read(dir_.path() + "/dlq");
  ASSERT_TRUE(dlq.has_value());
  ASSERT_EQ(dlq->letters.size(), 2u);
  EXPECT_EQ(dlq->letters[0].status, 503);
  EXPECT_NE(dlq->letters[0].error.find("retries exhausted"), std::string::npos);
  EXPECT_EQ(dlq->letters[1].status, 422);
  EXPECT_EQ(downstream_.AckedLsns().size(), 0u);

  // Redrive: both batches go through with their original keys and are marked redriven.
  HttpClientConfig http;
  http.base_url = downstream_.url();
  auto report = RedriveDeadLetters(dir_.path() + "/dlq", http, "/batch-metadata", "");
  ASSERT_TRUE(report.has_value()) << report.error().message;
  EXPECT_EQ(report->attempted, 2u);
  EXPECT_EQ(report->redriven, 2u);
  EXPECT_TRUE(report->failures.empty());
  EXPECT_EQ(downstream_.AckedLsns().size(), 20u);
  EXPECT_NE(downstream_.Received().find("\"key\": \"mailrail-lsn-1-10\""), std::string::npos);
  // A second redrive has nothing left to send.
  auto again = RedriveDeadLetters(dir_.path() + "/dlq", http, "/batch-metadata", "");
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->attempted, 0u);
}

TEST_F(ForwardClientTest, CircuitOpensAndClosesAfterAProbe) {
  ForwardConfig config = TestConfig(downstream_.url(), dir_.path() + "/dlq");
  config.breaker_threshold = 3;
  config.breaker_open = std::chrono::milliseconds(300);
  config.max_in_flight = 1;
  client_ = Make(config);
  downstream_.Plan(R"([{"status": 503}, {"status": 503}, {"status": 503}, {"status": 503}])");
  AppendRange(*client_, 1, 10);
  client_->Flush();
  ASSERT_TRUE(WaitFor([&] { return client_->circuit_state() == CircuitState::kOpen; }));
  ASSERT_TRUE(WaitFor([&] { return client_->acknowledged_through() == 10; }));
  EXPECT_EQ(client_->circuit_state(), CircuitState::kClosed);
  // Three failures opened it; the first probe failed (reopened); the second probe closed it.
  EXPECT_EQ(client_->stats().circuit_opens.value(), 2u);
  EXPECT_EQ(downstream_.AckedLsns().size(), 10u);
}

TEST_F(ForwardClientTest, AppendStopsAtTheBufferBudget) {
  ForwardConfig config = TestConfig("http://127.0.0.1:1", dir_.path() + "/dlq");  // nothing listens
  config.max_buffered_bytes = 1000;
  config.max_attempts = 1000;
  client_ = Make(config);
  std::vector<std::string> storage;
  std::vector<ForwardRecord> records;
  for (std::uint64_t lsn = 1; lsn <= 100; ++lsn) storage.push_back(RecordJson(lsn));
  for (std::uint64_t lsn = 1; lsn <= 100; ++lsn) records.push_back({lsn, storage[lsn - 1]});
  const std::size_t taken = client_->Append(records);
  EXPECT_GT(taken, 0u);
  EXPECT_LT(taken, 100u);
  EXPECT_LE(client_->buffered_bytes(), 1000u);
  EXPECT_EQ(client_->acknowledged_through(), 0u);
}

TEST(ParseRetryAfterTest, SecondsAndHttpDates) {
  const auto now = std::chrono::system_clock::from_time_t(784111777);  // Sun, 06 Nov 1994 08:49:37 GMT
  EXPECT_EQ(ParseRetryAfter("120", now), std::chrono::milliseconds(120000));
  EXPECT_EQ(ParseRetryAfter("Sun, 06 Nov 1994 08:49:47 GMT", now), std::chrono::milliseconds(10000));
  EXPECT_EQ(ParseRetryAfter("Sun, 06 Nov 1994 08:49:00 GMT", now), std::chrono::milliseconds(0));
  EXPECT_FALSE(ParseRetryAfter("soon", now).has_value());
  EXPECT_FALSE(ParseRetryAfter("", now).has_value());
  EXPECT_FALSE(ParseRetryAfter("-5", now).has_value());
}

}  // namespace
}  // namespace mailrail::net
