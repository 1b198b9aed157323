// ControlApi: the control routes with a recording ControlService.
#include "net/control_api.h"

#include <gtest/gtest.h>

#include <thread>

#include "tests/net/test_util.h"

namespace mailrail::net {
namespace {

using testing::FirstStatus;
using testing::RawClient;
using testing::RunCommand;
using testing::ServerHarness;

class RecordingService final : public ControlService {
 public:
  ControlReply StartSession(const SessionStartRequest& request) override {
    last_start = request;
    ++starts;
    return {200, "{\"status\":\"started\",\"session_id\":\"s-1\"}"};
  }
  ControlReply StopSession(std::string_view reason) override {
    last_reason = std::string(reason);
    return {200, "{\"status\":\"stopped\"}"};
  }
  ControlReply SessionStatus() override { return {200, "{\"state\":\"running\",\"total\":10,\"percent\":50.0}"}; }
  ControlReply TriggerPolling() override { return {409, "{\"detail\":\"no session\"}"}; }
  void ReloadRules(std::function<void(ControlReply)> reply) override {
    ++reloads;
    // Answered from another thread, as the daemon's reloader does.
    std::thread([reply = std::move(reply), answer = reload_answer] { reply(answer); }).join();
  }
  ControlReply StartSyncJob(std::string_view user_id, unsigned months) override {
    sync_calls.push_back("start " + std::string(user_id) + " " + std::to_string(months));
    return {200, R"({"message":"Email sync started"})"};
  }
  ControlReply SyncJobStatus(std::string_view user_id) override {
    sync_calls.push_back("status " + std::string(user_id));
    return {404, R"({"detail":"no sync job found for this user"})"};
  }
  ControlReply SyncJobHistory(std::string_view user_id, std::size_t limit) override {
    sync_calls.push_back("history " + std::string(user_id) + " " + std::to_string(limit));
    return {200, R"({"jobs":[]})"};
  }
  ControlReply SyncJobStats() override {
    sync_calls.push_back("stats");
    return {200, R"({"total_jobs":0})"};
  }
  HealthReport Health() override { return health; }
  std::string Metrics() override { return "# TYPE mailrail_messages_total counter\nmailrail_messages_total 7\n"; }

  SessionStartRequest last_start;
  int starts = 0;
  std::string last_reason;
  HealthReport health;
  int reloads = 0;
  std::vector<std::string> sync_calls;
  ControlReply reload_answer{200, R"({"status":"reloaded","version":2,"rules":3,"thresholds":0})"};
};

std::string Request(std::string_view method, std::string_view path, std::string_view body = {},
                    std::string_view token = {}) {
  std::string r = std::string(method) + " " + std::string(path) + " HTTP/1.1\r\nHost: x\r\n";
  if (!token.empty()) r += "Authorization: Bearer " + std::string(token) + "\r\n";
  r += "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + std::string(body);
  return r;
}

std::string Exchange(std::uint16_t port, const std::string& request) {
  RawClient client(port);
  client.Send(request);
  return client.ReadResponses(1);
}

class ControlApiTest : public ::testing::Test {
 protected:
  explicit ControlApiTest(std::string token = {})
      : api_(&service_, ControlApiConfig{std::move(token)}),
        harness_(HttpServerConfig{}, [this](HttpServer& server) {
          api_.AddMetrics([&server](std::string& out) { AppendHttpServerMetrics(out, "control", server.stats()); });
          api_.Install(server);
        }) {}
  RecordingService service_;
  ControlApi api_;
  ServerHarness harness_;
};

TEST_F(ControlApiTest, SessionStartParsesTheBodyOfThePythonService) {
  const std::string response = Exchange(
      harness_.port(),
      Request("POST", "/session/start", R"({"polling_mode": "manual", "polling_interval": 60, "enable_webhook": false})"));
  EXPECT_EQ(FirstStatus(response), 200);
  EXPECT_NE(response.find("\"session_id\":\"s-1\""), std::string::npos);
  EXPECT_EQ(service_.last_start.polling_mode, "manual");
  EXPECT_EQ(service_.last_start.polling_interval_seconds, 60);
  EXPECT_FALSE(service_.last_start.enable_webhook);
  // An empty object (as the Python README's curl example sends) takes the defaults.
  EXPECT_EQ(FirstStatus(Exchange(harness_.port(), Request("POST", "/session/start", "{}"))), 200);
  EXPECT_EQ(service_.last_start.polling_mode, "scheduled");
  EXPECT_EQ(service_.last_start.polling_interval_seconds, 300);
}

TEST_F(ControlApiTest, InvalidStartBodiesGet400WithAReason) {
  for (const char* body : {R"({"polling_mode":"sometimes"})", R"({"polling_interval":-5})",
                           R"({"enable_webhook":"yes"})", "[1]", "{"}) {
    SCOPED_TRACE(body);
    const std::string response = Exchange(harness_.port(), Request("POST", "/session/start", body));
    EXPECT_EQ(FirstStatus(response), 400) << response;
    EXPECT_NE(response.find("\"detail\""), std::string::npos);
  }
  EXPECT_EQ(service_.starts, 0);
}

TEST_F(ControlApiTest, StopStatusTriggerAndHealth) {
  EXPECT_EQ(FirstStatus(Exchange(harness_.port(), Request("POST", "/session/stop", R"({"reason":"manual_stop"})"))), 200);
  EXPECT_EQ(service_.last_reason, "manual_stop");
  EXPECT_EQ(FirstStatus(Exchange(harness_.port(), Request("POST", "/session/stop"))), 200);
  EXPECT_EQ(service_.last_reason, "user_requested");
  const std::string status = Exchange(harness_.port(), Request("GET", "/session/status"));
  EXPECT_NE(status.find("\"state\":\"running\""), std::string::npos);
  EXPECT_EQ(FirstStatus(Exchange(harness_.port(), Request("POST", "/polling/trigger"))), 409);
  EXPECT_EQ(FirstStatus(Exchange(harness_.port(), Request("GET", "/health"))), 200);
  service_.health.reasons = {"WAL not writable", "downstream circuit open"};
  const std::string unhealthy = Exchange(harness_.port(), Request("GET", "/health"));
  EXPECT_EQ(FirstStatus(unhealthy), 503);
  EXPECT_NE(unhealthy.find(R"("reasons":["WAL not writable","downstream circuit open"])"), std::string::npos);
}

TEST_F(ControlApiTest, RulesReloadAnswersWithTheOutcomeFromAnotherThread) {
  const std::string ok = Exchange(harness_.port(), Request("POST", "/rules/reload"));
  EXPECT_EQ(FirstStatus(ok), 200) << ok;
  EXPECT_NE(ok.find(R"("version":2,"rules":3)"), std::string::npos) << ok;
  service_.reload_answer = {422, R"({"status":"rejected","error":"rules.toml:5: rule 'x': unknown action","version":2})"};
  const std::string rejected = Exchange(harness_.port(), Request("POST", "/rules/reload"));
  EXPECT_EQ(FirstStatus(rejected), 422) << rejected;
  EXPECT_NE(rejected.find("rules.toml:5: rule 'x'"), std::string::npos) << rejected;
  EXPECT_EQ(service_.reloads, 2);
  EXPECT_EQ(FirstStatus(Exchange(harness_.port(), Request("GET", "/rules/reload"))), 405);
}

TEST_F(ControlApiTest, MetricsAreValidPrometheusTextWithNetCounters) {
  Exchange(harness_.port(), Request("GET", "/nope"));
  const testing::CommandResult curl = RunCommand("curl -sS --http1.1 '" + harness_.url("/metrics") + "'");
  EXPECT_NE(curl.output.find("mailrail_messages_total 7\n"), std::string::npos) << curl.output;
  EXPECT_NE(curl.output.find("mailrail_http_responses_total{server=\"control\",class=\"4xx\"} 1\n"), std::string::npos)
      << curl.output;
  // Every sample line is "name{labels} value" or "name value".
  std::size_t pos = 0;
  int samples = 0;
  while (pos < curl.output.size()) {
    const std::size_t end = curl.output.find('\n', pos);
    ASSERT_NE(end, std::string::npos) << "metrics must end with a newline";
    const std::string line = curl.output.substr(pos, end - pos);
    pos = end + 1;
    if (line.empty() || line[0] == '#') continue;
    ++samples;
    const std::size_t space = line.rfind(' ');
    ASSERT_NE(space, std::string::npos) << line;
    EXPECT_NO_THROW((void)std::stod(line.substr(space + 1))) << line;
  }
  EXPECT_GT(samples, 10);
}

TEST_F(ControlApiTest, SyncJobRoutesDecodeTheUserAndValidateTheQuery) {
  const std::uint16_t port = harness_.port();
  EXPECT_EQ(FirstStatus(Exchange(port, Request("POST", "/api/v1/email-sync/start/user%40corp?months=3"))), 200);
  EXPECT_EQ(FirstStatus(Exchange(port, Request("POST", "/api/v1/email-sync/start/u-1"))), 200);  // months 6
  EXPECT_EQ(FirstStatus(Exchange(port, Request("GET", "/api/v1/email-sync/status/u-1"))), 404);
  EXPECT_EQ(FirstStatus(Exchange(port, Request("GET", "/api/v1/email-sync/history/u-1?limit=2"))), 200);
  EXPECT_EQ(FirstStatus(Exchange(port, Request("GET", "/api/v1/email-sync/history/u-1"))), 200);  // limit 10
  EXPECT_EQ(FirstStatus(Exchange(port, Request("GET", "/api/v1/email-sync/stats"))), 200);
  const std::vector<std::string> expected{"start user@corp 3", "start u-1 6", "status u-1", "history u-1 2",
                                          "history u-1 10", "stats"};
  EXPECT_EQ(service_.sync_calls, expected);
  // Bad input never reaches the service.
  for (const char* bad : {"/api/v1/email-sync/start/u-1?months=0", "/api/v1/email-sync/start/u-1?months=121",
                          "/api/v1/email-sync/start/u-1?months=six", "/api/v1/email-sync/start/",
                          "/api/v1/email-sync/start/a%2Fb", "/api/v1/email-sync/start/a%zz"}) {
    EXPECT_EQ(FirstStatus(Exchange(port, Request("POST", bad))), 400) << bad;
  }
  EXPECT_EQ(FirstStatus(Exchange(port, Request("GET", "/api/v1/email-sync/history/u-1?limit=0"))), 400);
  EXPECT_EQ(FirstStatus(Exchange(port, Request("GET", "/api/v1/email-sync/start/u-1"))), 405);
  EXPECT_EQ(service_.sync_calls.size(), expected.size());
}

class ControlApiAuthTest : public ControlApiTest {
 protected:
  ControlApiAuthTest() : ControlApiTest("s3cret") {}
};

TEST_F(ControlApiAuthTest, BearerTokenIsRequiredOnControlRoutes) {
  EXPECT_EQ(FirstStatus(Exchange(harness_.port(), Request("POST", "/session/start", "{}"))), 401);
  EXPECT_EQ(FirstStatus(Exchange(harness_.port(), Request("POST", "/session/start", "{}", "wrong!"))), 401);
  EXPECT_EQ(FirstStatus(Exchange(harness_.port(), Request("GET", "/session/status", "", "s3cre"))), 401);
  EXPECT_EQ(service_.starts, 0);
  EXPECT_EQ(FirstStatus(Exchange(harness_.port(), Request("POST", "/session/start", "{}", "s3cret"))), 200);
  EXPECT_EQ(service_.starts, 1);
  EXPECT_EQ(FirstStatus(Exchange(harness_.port(), Request("POST", "/rules/reload"))), 401);
  EXPECT_EQ(FirstStatus(Exchange(harness_.port(), Request("POST", "/rules/reload", "", "wrong!"))), 401);
  EXPECT_EQ(service_.reloads, 0);
  EXPECT_EQ(FirstStatus(Exchange(harness_.port(), Request("POST", "/rules/reload", "", "s3cret"))), 200);
  EXPECT_EQ(service_.reloads, 1);
  EXPECT_EQ(FirstStatus(Exchange(harness_.port(), Request("POST", "/api/v1/email-sync/start/u-1"))), 401);
  EXPECT_EQ(FirstStatus(Exchange(harness_.port(), Request("GET", "/api/v1/email-sync/stats", "", "wrong!"))), 401);
  EXPECT_TRUE(service_.sync_calls.empty());
  EXPECT_EQ(FirstStatus(Exchange(harness_.port(), Request("GET", "/api/v1/email-sync/stats", "", "s3cret"))), 200);
  // Health stays open for load balancers.
  EXPECT_EQ(FirstStatus(Exchange(harness_.port(), Request("GET", "/health"))), 200);
}

}  // namespace
}  // namespace mailrail::net
