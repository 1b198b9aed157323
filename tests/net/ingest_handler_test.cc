// IngestHandler: POST /ingest and POST /webhook/graph against real clients, with a test double
// for the WAL that acknowledges durability of what it pops from the ingest channel.
#include "net/ingest_handler.h"

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "tests/net/acking_consumer.h"
#include "tests/net/test_util.h"

namespace mailrail::net {
namespace {

using testing::AckingConsumer;
using testing::FirstStatus;
using testing::RawClient;
using testing::RunCommand;
using testing::ServerHarness;

constexpr char kRawMessage[] =
    "From: Billing <billing@vendor.example>\r\nTo: ap@corp.example\r\nSubject: Rechnung\r\n"
    "Message-ID: <abc@vendor.example>\r\n\r\nHello.\r\n";

std::string Post(std::string_view path, std::string_view content_type, std::string_view body) {
  std::string request = "POST " + std::string(path) + " HTTP/1.1\r\nHost: x\r\n";
  if (!content_type.empty()) request += "Content-Type: " + std::string(content_type) + "\r\n";
  request += "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + std::string(body);
  return request;
}

std::string BodyOf(const std::string& response) {
  const std::size_t at = response.find("\r\n\r\n");
  return at == std::string::npos ? std::string() : response.substr(at + 4);
}

class IngestHandlerTest : public ::testing::Test {
 protected:
  explicit IngestHandlerTest(std::size_t slots = 64, std::size_t channel_capacity = 64)
      : pool_(slots, 64 << 20),
        channel_("ingest", channel_capacity),
        consumer_(&channel_, &pool_, /*record=*/true),
        harness_(HttpServerConfig{}, [this](HttpServer& server) {
          IngestConfig config;
          config.graph_client_state = "secretClientValue";
          handler_ = std::make_unique<IngestHandler>(server.loop(), &pool_, &channel_, config);
          handler_->Install(server);
        }) {}

  stages::MessagePool pool_;
  engine::Channel<stages::Message*> channel_;
  AckingConsumer consumer_;
  std::unique_ptr<IngestHandler> handler_;
  ServerHarness harness_;
};

TEST_F(IngestHandlerTest, RawMessageIsAcceptedWithItsLsnAfterDurability) {
  const testing::CommandResult curl = RunCommand(
      "printf '%s' '" + std::string("Subject: hi\r\nMessage-ID: <1@x>\r\n\r\nbody\r\n") +
      "' | curl -sS --http1.1 -H 'Content-Type: message/rfc822' --data-binary @- -w ' %{http_code}' '" +
      harness_.url("/ingest") + "'");
  EXPECT_EQ(curl.output, "{\"lsns\":[1]} 202");
  const auto seen = consumer_.seen();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].raw, "Subject: hi\r\nMessage-ID: <1@x>\r\n\r\nbody\r\n");
  EXPECT_EQ(seen[0].kind, stages::InputKind::kRfc822);
  EXPECT_EQ(seen[0].source_kind, stages::SourceKind::kWebhook);
  EXPECT_EQ(handler_->stats().messages_durable.value(), 1u);
}

TEST_F(IngestHandlerTest, JsonArrayBecomesOneMessagePerElement) {
  RawClient client(harness_.port());
  const std::string body =
      R"([{"id":"a","subject":"one"}, {"id":"b","body":{"content":"x[1]"}} ,{"id":"c"}])";
  ASSERT_TRUE(client.Send(Post("/ingest", "application/json; charset=utf-8", body)));
  const std::string response = client.ReadResponses(1);
  EXPECT_EQ(FirstStatus(response), 202) << response;
  EXPECT_EQ(BodyOf(response), "{\"lsns\":[1,2,3]}");
  const auto seen = consumer_.seen();
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(seen[0].raw, R"({"id":"a","subject":"one"})");
  EXPECT_EQ(seen[1].raw, R"({"id":"b","body":{"content":"x[1]"}})");
  EXPECT_EQ(seen[2].raw, R"({"id":"c"})");
  for (const auto& m : seen) EXPECT_EQ(m.kind, stages::InputKind::kGraphJson);
}

TEST_F(IngestHandlerTest, SingleJsonObjectIsOneMessage) {
  RawClient client(harness_.port());
  ASSERT_TRUE(client.Send(Post("/ingest", "application/json", R"({"id":"only"})")));
  const std::string response = client.ReadResponses(1);
  EXPECT_EQ(FirstStatus(response), 202);
  EXPECT_EQ(BodyOf(response), "{\"lsns\":[1]}");
  ASSERT_EQ(consumer_.seen().size(), 1u);
  EXPECT_EQ(consumer_.seen()[0].raw, R"({"id":"only"})");
}

TEST_F(IngestHandlerTest, BadBodiesAreRejectedAndNothingIsEnqueued) {
  struct Case {
    const char* content_type;
    const char* body;
    int status;
  };
  for (const Case& c : {Case{"application/json", "[{\"id\":1}, 42]", 400}, Case{"application/json", "{\"id\":", 400},
                        Case{"application/json", "\"text\"", 400}, Case{"text/plain", "hello", 415},
                        Case{"", "hello", 415}, Case{"message/rfc822", "", 400}}) {
    SCOPED_TRACE(std::string(c.content_type) + " " + c.body);
    RawClient client(harness_.port());
    ASSERT_TRUE(client.Send(Post("/ingest", c.content_type, c.body)));
    EXPECT_EQ(FirstStatus(client.ReadResponses(1)), c.status);
  }
  EXPECT_TRUE(consumer_.seen().empty());
  EXPECT_EQ(pool_.slots_in_flight(), 0u);
}

TEST_F(IngestHandlerTest, PipelinedIngestAnswersInOrder) {
  RawClient client(harness_.port());
  ASSERT_TRUE(client.Send(Post("/ingest", "message/rfc822", kRawMessage) + Post("/ingest", "application/json", "[{},{}]") +
                          Post("/ingest", "message/rfc822", kRawMessage)));
  const std::string responses = client.ReadResponses(3);
  const std::size_t a = responses.find("{\"lsns\":[1]}");
  const std::size_t b = responses.find("{\"lsns\":[2,3]}");
  const std::size_t c = responses.find("{\"lsns\":[4]}");
  ASSERT_NE(a, std::string::npos) << responses;
  EXPECT_LT(a, b);
  EXPECT_LT(b, c);
}

TEST_F(IngestHandlerTest, GraphValidationHandshakeEchoesTheDecodedToken) {
  const testing::CommandResult curl = RunCommand(
      "curl -sS --http1.1 -X POST -D - '" + harness_.url("/webhook/graph") +
      "?validationToken=Validation%3A%20Testing%20client%20application%20at%2010%2F18%2F2016'");
  EXPECT_NE(curl.output.find("HTTP/1.1 200 OK"), std::string::npos) << curl.output;
  EXPECT_NE(curl.output.find("Content-Type: text/plain"), std::string::npos) << curl.output;
  EXPECT_TRUE(curl.output.ends_with("\r\n\r\nValidation: Testing client application at 10/18/2016")) << curl.output;
  EXPECT_EQ(handler_->stats().graph_validations.value(), 1u);
}

TEST_F(IngestHandlerTest, GraphNotificationSequence) {
  RawClient client(harness_.port());
  // 1. The subscription's validation handshake.
  ASSERT_TRUE(client.Send(Post("/webhook/graph?validationToken=abc%2Bdef", "", "")));
  std::string response = client.ReadResponses(1);
  EXPECT_EQ(FirstStatus(response), 200);
  EXPECT_EQ(BodyOf(response), "abc+def");
  // 2. Two change notifications, one with a wrong clientState (discarded and counted).
  const std::string notifications = R"({"value":[
    {"subscriptionId":"sub-1","clientState":"secretClientValue","changeType":"created",
     "resource":"users/u1/messages/m1","resourceData":{"id":"m1"}},
    {"subscriptionId":"sub-1","clientState":"forged","changeType":"created",
     "resource":"users/u1/messages/evil","resourceData":{"id":"evil"}},
    {"subscriptionId":"sub-2","clientState":"secretClientValue","changeType":"created",
     "resource":"users/u2/messages/m2","resourceData":{"id":"m2"}}]})";
  ASSERT_TRUE(client.Send(Post("/webhook/graph", "application/json", notifications)));
  response = client.ReadResponses(1);
  EXPECT_EQ(FirstStatus(response), 202) << response;
  EXPECT_EQ(BodyOf(response), "{\"lsns\":[1,2]}");
  // 3. Lifecycle notifications.
  const std::string lifecycle = R"({"value":[
    {"subscriptionId":"sub-1","clientState":"secretClientValue","lifecycleEvent":"reauthorizationRequired"},
    {"subscriptionId":"sub-1","clientState":"secretClientValue","lifecycleEvent":"missed"},
    {"subscriptionId":"sub-2","clientState":"secretClientValue","lifecycleEvent":"subscriptionRemoved"},
    {"subscriptionId":"sub-2","clientState":"nope","lifecycleEvent":"subscriptionRemoved"}]})";
  ASSERT_TRUE(client.Send(Post("/webhook/graph", "application/json", lifecycle)));
  response = client.ReadResponses(1);
  EXPECT_EQ(FirstStatus(response), 202);
  // 4. Not a notification collection.
  ASSERT_TRUE(client.Send(Post("/webhook/graph", "application/json", "[1,2]")));
  EXPECT_EQ(FirstStatus(client.ReadResponses(1)), 400);

  const auto seen = consumer_.seen();
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].kind, stages::InputKind::kGraphNotification);
  EXPECT_EQ(seen[0].source_kind, stages::SourceKind::kGraph);
  EXPECT_EQ(seen[0].source_id, "sub-1");
  EXPECT_EQ(seen[0].position, "users/u1/messages/m1");
  EXPECT_NE(seen[0].raw.find("\"resourceData\":{\"id\":\"m1\"}"), std::string::npos) << seen[0].raw;
  EXPECT_EQ(seen[1].position, "users/u2/messages/m2");
  const IngestStats& stats = handler_->stats();
  EXPECT_EQ(stats.graph_notifications.value(), 2u);
  EXPECT_EQ(stats.graph_client_state_mismatches.value(), 2u);
  EXPECT_EQ(stats.graph_lifecycle_reauthorization_required.value(), 1u);
  EXPECT_EQ(stats.graph_lifecycle_missed.value(), 1u);
  EXPECT_EQ(stats.graph_lifecycle_subscription_removed.value(), 1u);
  std::string metrics;
  AppendIngestMetrics(metrics, stats);
  EXPECT_NE(metrics.find("mailrail_ingest_graph_lifecycle_total{event=\"missed\"} 1\n"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("mailrail_ingest_graph_client_state_mismatches_total 2\n"), std::string::npos) << metrics;
}

// With a Graph source configured, notifications for its mailboxes go to the source (no
// Message); the others stay durable fetch requests, as without one.
class RecordingGraphTarget final : public GraphNotificationTarget {
 public:
  bool OnGraphChange(std::string_view resource, std::string_view subscription_id) override {
    changes.push_back(std::string(resource) + " " + std::string(subscription_id));
    return resource.find("/known/") != std::string_view::npos;
  }
  void OnGraphLifecycle(std::string_view subscription_id, std::string_view event) override {
    lifecycles.push_back(std::string(subscription_id) + " " + std::string(event));
  }
  std::vector<std::string> changes, lifecycles;  // loop thread; read after the responses arrived
};

class IngestHandlerGraphTargetTest : public ::testing::Test {
 protected:
  IngestHandlerGraphTargetTest()
      : pool_(64, 64 << 20),
        channel_("ingest", 64),
        consumer_(&channel_, &pool_, /*record=*/true),
        harness_(HttpServerConfig{}, [this](HttpServer& server) {
          IngestConfig config;
          config.graph_client_state = "secretClientValue";
          config.graph_target = &target_;
          handler_ = std::make_unique<IngestHandler>(server.loop(), &pool_, &channel_, config);
          handler_->Install(server);
        }) {}
  RecordingGraphTarget target_;
  stages::MessagePool pool_;
  engine::Channel<stages::Message*> channel_;
  AckingConsumer consumer_;
  std::unique_ptr<IngestHandler> handler_;
  ServerHarness harness_;
};

TEST_F(IngestHandlerGraphTargetTest, KnownMailboxesGoToTheSourceOthersStayFetchRequests) {
  RawClient client(harness_.port());
  const std::string notifications = R"({"value":[
    {"subscriptionId":"sub-1","clientState":"secretClientValue","changeType":"created",
     "resource":"Users/known/Messages/m1"},
    {"subscriptionId":"sub-1","clientState":"forged","changeType":"created","resource":"Users/known/Messages/x"},
    {"subscriptionId":"sub-2","clientState":"secretClientValue","changeType":"created",
     "resource":"Users/other/Messages/m2"},
    {"subscriptionId":"sub-1","clientState":"secretClientValue","lifecycleEvent":"missed"}]})";
  ASSERT_TRUE(client.Send(Post("/webhook/graph", "application/json", notifications)));
  const std::string response = client.ReadResponses(1);
  EXPECT_EQ(FirstStatus(response), 202) << response;
  EXPECT_EQ(BodyOf(response), "{\"lsns\":[1]}");  // only the unknown mailbox's request was enqueued
  EXPECT_EQ(target_.changes, (std::vector<std::string>{"Users/known/Messages/m1 sub-1", "Users/other/Messages/m2 sub-2"}));
  EXPECT_EQ(target_.lifecycles, (std::vector<std::string>{"sub-1 missed"}));
  const auto seen = consumer_.seen();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].position, "Users/other/Messages/m2");
  EXPECT_EQ(handler_->stats().graph_notifications.value(), 2u);
  EXPECT_EQ(handler_->stats().graph_client_state_mismatches.value(), 1u);
  EXPECT_EQ(handler_->stats().graph_lifecycle_missed.value(), 1u);
}

TEST_F(IngestHandlerTest, GraphDocumentationSampleIsAccepted) {
  const std::filesystem::path sample = std::filesystem::path(MAILRAIL_CORPUS_DIR) /
                                       "msgraph-docs/concepts/change-notifications-delivery-webhooks/"
                                       "change-notification-message-created.json";
  if (!std::filesystem::exists(sample)) GTEST_SKIP() << "corpus sample absent: " << sample;
  std::ifstream in(sample);
  std::stringstream body;
  body << in.rdbuf();
  RawClient client(harness_.port());
  ASSERT_TRUE(client.Send(Post("/webhook/graph", "application/json", body.str())));
  EXPECT_EQ(FirstStatus(client.ReadResponses(1)), 202);
  ASSERT_EQ(consumer_.seen().size(), 1u);
  EXPECT_EQ(consumer_.seen()[0].source_id, "{subscription_guid}");
}

class IngestBackpressureTest : public IngestHandlerTest {
 protected:
  IngestBackpressureTest() : IngestHandlerTest(/*slots=*/2, /*channel_capacity=*/64) {}
};

TEST_F(IngestBackpressureTest, NoAnswerBeforeDurableAnd503WhenThePoolIsExhausted) {
  consumer_.Pause();
  RawClient first(harness_.port()), second(harness_.port()), third(harness_.port());
  ASSERT_TRUE(first.Send(Post("/ingest", "message/rfc822", kRawMessage)));
  ASSERT_TRUE(second.Send(Post("/ingest", "message/rfc822", kRawMessage)));
  // Both requests hold their slot before the third one arrives (bounded wait for the server).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (pool_.slots_in_flight() < 2 && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
  ASSERT_EQ(pool_.slots_in_flight(), 2u);
  // Not durable yet: no answer (bounded wait for something that must not happen).
  EXPECT_EQ(first.ReadResponses(1, 300), "");
  // Both slots are in flight: the third request is refused with Retry-After.
  ASSERT_TRUE(third.Send(Post("/ingest", "message/rfc822", kRawMessage)));
  const std::string refused = third.ReadResponses(1);
  EXPECT_EQ(FirstStatus(refused), 503) << refused;
  EXPECT_NE(refused.find("Retry-After: 1"), std::string::npos);
  EXPECT_EQ(handler_->stats().backpressure_rejections.value(), 1u);
  consumer_.Resume();
  EXPECT_EQ(FirstStatus(first.ReadResponses(1)), 202);
  EXPECT_EQ(FirstStatus(second.ReadResponses(1)), 202);
  // Slots came back: the retry succeeds.
  ASSERT_TRUE(third.Send(Post("/ingest", "message/rfc822", kRawMessage)));
  EXPECT_EQ(FirstStatus(third.ReadResponses(1)), 202);
}

TEST_F(IngestBackpressureTest, ArrayLargerThanThePoolIsRefusedWhole) {
  RawClient client(harness_.port());
  ASSERT_TRUE(client.Send(Post("/ingest", "application/json", "[{},{},{}]")));
  EXPECT_EQ(FirstStatus(client.ReadResponses(1)), 503);
  EXPECT_TRUE(consumer_.seen().empty());
  EXPECT_EQ(pool_.slots_in_flight(), 0u);
}

}  // namespace
}  // namespace mailrail::net
