// HttpServer against raw sockets, curl, httpx and wrk on 127.0.0.1.
#include "net/http_server.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <vector>

#include "tests/net/test_util.h"

namespace mailrail::net {
namespace {

using testing::CommandResult;
using testing::CountResponses;
using testing::FirstStatus;
using testing::RawClient;
using testing::RunCommand;
using testing::ServerHarness;
using testing::TempDir;

// Routes used by most tests: /echo returns the body and a digest of the request;
// /later answers only when /release is called (responses parked in `held`).
struct TestRoutes {
  std::vector<Responder> held;

  void Install(HttpServer& server) {
    auto echo = [](HttpRequest& request, Responder responder) {
      HttpResponse response = HttpResponse::Text(200, request.body);
      response.headers.push_back({"X-Method", request.method});
      response.headers.push_back({"X-Target", request.target});
      response.headers.push_back({"X-Body-Bytes", std::to_string(request.body.size())});
      responder.Send(std::move(response));
    };
    server.Route("POST", "/echo", echo);
    server.Route("GET", "/echo", echo);
    server.Route("GET", "/later", [this](HttpRequest& request, Responder responder) {
      (void)request;
      held.push_back(responder);
    });
    server.Route("GET", "/release", [this](HttpRequest&, Responder responder) {
      // Answer parked requests newest first: the server must still send them in request order.
      for (auto it = held.rbegin(); it != held.rend(); ++it) {
        it->Send(HttpResponse::Text(200, "held " + std::to_string(held.rend() - it) + "\n"));
      }
      held.clear();
      responder.Send(HttpResponse::Text(200, "released\n"));
    });
  }
};

HttpServerConfig SmallLimits() {
  HttpServerConfig config;
  config.max_header_bytes = 2048;
  config.max_body_bytes = 64 * 1024;
  config.request_timeout = std::chrono::milliseconds(400);
  config.idle_timeout = std::chrono::milliseconds(600);
  config.linger_timeout = std::chrono::milliseconds(300);
  config.timer_tick = std::chrono::milliseconds(50);
  return config;
}

class HttpServerTest : public ::testing::TestWithParam<bool> {
 protected:
  HttpServerTest()
      : harness_(SmallLimits(), [this](HttpServer& s) { routes_.Install(s); }, LoopConfig()) {}
  static EventLoopConfig LoopConfig() {
    EventLoopConfig config;
    config.use_buffer_ring = GetParam();
    config.buffer_count = 64;
    config.buffer_size = 4096;
    return config;
  }
  // The server still answers a plain request after whatever the test did.
  void ExpectStillServing() {
    RawClient client(harness_.port());
    ASSERT_TRUE(client.Send("GET /echo HTTP/1.1\r\nHost: x\r\n\r\n"));
    EXPECT_EQ(FirstStatus(client.ReadResponses(1)), 200);
  }

  TestRoutes routes_;
  ServerHarness harness_;
};

TEST_P(HttpServerTest, KeepAliveServesSeveralRequestsOnOneConnection) {
  RawClient client(harness_.port());
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(client.Send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"));
    const std::string response = client.ReadResponses(1);
    EXPECT_EQ(FirstStatus(response), 200);
    EXPECT_NE(response.find("\r\n\r\nhello"), std::string::npos);
    EXPECT_EQ(response.find("Connection: close"), std::string::npos);
  }
}

TEST_P(HttpServerTest, PipelinedResponsesKeepRequestOrderWhenAnsweredOutOfOrder) {
  RawClient client(harness_.port());
  ASSERT_TRUE(client.Send(
      "GET /later HTTP/1.1\r\nHost: x\r\n\r\n"
      "GET /later HTTP/1.1\r\nHost: x\r\n\r\n"
      "GET /echo?third HTTP/1.1\r\nHost: x\r\n\r\n"
      "GET /release HTTP/1.1\r\nHost: x\r\n\r\n"));
  const std::string responses = client.ReadResponses(4);
  ASSERT_EQ(CountResponses(responses), 4) << responses;
  const std::size_t first = responses.find("held 1");
  const std::size_t second = responses.find("held 2");
  const std::size_t third = responses.find("X-Target: /echo?third");
  const std::size_t fourth = responses.find("released");
  ASSERT_NE(first, std::string::npos);
  EXPECT_LT(first, second);
  EXPECT_LT(second, third);
  EXPECT_LT(third, fourth);
}

TEST_P(HttpServerTest, ChunkedBodyIsReassembled) {
  RawClient client(harness_.port());
  ASSERT_TRUE(client.Send(
      "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
      "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"));
  const std::string response = client.ReadResponses(1);
  EXPECT_EQ(FirstStatus(response), 200);
  EXPECT_NE(response.find("\r\n\r\nhello world"), std::string::npos) << response;
}

TEST_P(HttpServerTest, ExpectContinueGets100BeforeTheBody) {
  RawClient client(harness_.port());
  ASSERT_TRUE(client.Send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"));
  const std::string interim = client.ReadUntil("\r\n\r\n");
  EXPECT_TRUE(interim.starts_with("HTTP/1.1 100 Continue\r\n\r\n")) << interim;
  ASSERT_TRUE(client.Send("data"));
  const std::string response = client.ReadResponses(1);
  EXPECT_EQ(FirstStatus(response), 200);
}

TEST_P(HttpServerTest, ExpectContinueWithOversizedLengthGets413WithoutBody) {
  RawClient client(harness_.port());
  ASSERT_TRUE(client.Send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\nExpect: 100-continue\r\n\r\n"));
  const std::string response = client.ReadUntilClose();
  EXPECT_EQ(FirstStatus(response), 413) << response;
  ExpectStillServing();
}

TEST_P(HttpServerTest, UnknownPathIs404AndWrongMethodIs405) {
  RawClient client(harness_.port());
  ASSERT_TRUE(client.Send("GET /nope HTTP/1.1\r\nHost: x\r\n\r\nDELETE /echo HTTP/1.1\r\nHost: x\r\n\r\n"));
  const std::string responses = client.ReadResponses(2);
  EXPECT_EQ(FirstStatus(responses), 404);
  EXPECT_NE(responses.find("HTTP/1.1 405"), std::string::npos);
}

TEST_P(HttpServerTest, Http10WithoutKeepAliveIsClosedAfterTheResponse) {
  RawClient client(harness_.port());
  ASSERT_TRUE(client.Send("GET /echo HTTP/1.0\r\n\r\n"));
  const std::string response = client.ReadUntilClose();
  EXPECT_EQ(FirstStatus(response), 200);
  EXPECT_NE(response.find("Connection: close"), std::string::npos);
}

struct MalformedCase {
  const char* name;
  std::string request;
  int status;
};

TEST_P(HttpServerTest, MalformedRequestsGetTheirStatusAndTheServerKeepsServing) {
  const std::vector<MalformedCase> cases = {
      {"bad method", "G@T / HTTP/1.1\r\nHost: x\r\n\r\n", 400},
      {"bad version", "GET / HTTP/9.x\r\nHost: x\r\n\r\n", 400},
      {"space in target", "GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", 400},
      {"missing version", "GET /\r\n\r\n", 400},
      {"bare LF garbage", "\x01\x02\x03\r\n\r\n", 400},
      {"bad header token", "GET / HTTP/1.1\r\nHo st: x\r\n\r\n", 400},
      {"header overflow", "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(4096, 'a') + "\r\n\r\n", 431},
      {"url overflow", "GET /" + std::string(4096, 'a') + " HTTP/1.1\r\nHost: x\r\n\r\n", 431},
      {"invalid chunk size", "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", 400},
      {"chunk size overflow", "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n", 400},
      {"CL plus TE smuggling",
       "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
      {"TE plus CL smuggling",
       "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n", 400},
      {"duplicate content length", "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400},
      {"negative content length", "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400},
      {"TE not ending in chunked", "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400},
      {"oversized body", "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + std::string(1000, 'b'), 413},
      {"oversized chunked body",
       "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10000\r\n" + std::string(65536, 'c') +
           "\r\n10\r\n" + std::string(16, 'c') + "\r\n0\r\n\r\n",
       413},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    RawClient client(harness_.port());
    ASSERT_TRUE(client.connected());
    client.Send(c.request);
    const std::string response = client.ReadUntilClose();
    EXPECT_EQ(FirstStatus(response), c.status) << response;
    EXPECT_NE(response.find("Connection: close"), std::string::npos) << response;
  }
  ExpectStillServing();
  EXPECT_GE(harness_.server().stats().bad_requests.value(), 10u);
}

TEST_P(HttpServerTest, ErrorAfterPipelinedRequestComesAfterItsResponse) {
  RawClient client(harness_.port());
  ASSERT_TRUE(client.Send("GET /echo HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE\r\n\r\n"));
  const std::string responses = client.ReadUntilClose();
  EXPECT_EQ(FirstStatus(responses), 200);
  EXPECT_NE(responses.find("HTTP/1.1 400"), std::string::npos) << responses;
}

TEST_P(HttpServerTest, SlowlorisClientIsTimedOutWith408AndClosed) {
  RawClient slow(harness_.port());
  ASSERT_TRUE(slow.Send("GET /echo HTTP/1.1\r\nHost: x\r\nX-A: "));  // never finishes the headers
  const std::string response = slow.ReadUntilClose(5000);
  EXPECT_EQ(FirstStatus(response), 408) << response;
  EXPECT_GE(harness_.server().stats().request_timeouts.value(), 1u);
  ExpectStillServing();
}

TEST_P(HttpServerTest, IdleConnectionIsClosed) {
  RawClient idle(harness_.port());
  ASSERT_TRUE(idle.Send("GET /echo HTTP/1.1\r\nHost: x\r\n\r\n"));
  EXPECT_EQ(FirstStatus(idle.ReadResponses(1)), 200);
  EXPECT_TRUE(idle.WaitClosed(5000));
  EXPECT_GE(harness_.server().stats().idle_closes.value(), 1u);
}

TEST_P(HttpServerTest, CurlKeepAliveChunkedUploadAndExpectContinue) {
  TempDir dir;
  const std::string file = dir.path() + "/body.bin";
  {
    std::ofstream out(file, std::ios::binary);
    for (int i = 0; i < 3000; ++i) out << "line " << i << " of the body\n";  // ~60 KB
  }
  // Two URLs in one invocation share the connection.
  CommandResult keep_alive = RunCommand("curl -sv --http1.1 '" + harness_.url("/echo?a") + "' '" +
                                        harness_.url("/echo?b") + "'");
  EXPECT_EQ(keep_alive.exit_code, 0) << keep_alive.output;
  EXPECT_NE(keep_alive.output.find("Re-using existing connection"), std::string::npos) << keep_alive.output;
  // Chunked upload.
  CommandResult chunked = RunCommand("curl -sS --http1.1 -H 'Transfer-Encoding: chunked' --data-binary @" + file +
                                     " -D - -o /dev/null '" + harness_.url("/echo") + "'");
  EXPECT_EQ(chunked.exit_code, 0) << chunked.output;
  EXPECT_NE(chunked.output.find("X-Body-Bytes: " + std::to_string(std::filesystem::file_size(file))),
            std::string::npos)
      << chunked.output;
  // Expect: 100-continue (curl sends it for large bodies; force it explicitly).
  CommandResult expect = RunCommand("curl -sv --http1.1 -H 'Expect: 100-continue' --data-binary @" + file +
                                    " -o /dev/null '" + harness_.url("/echo") + "'");
  EXPECT_EQ(expect.exit_code, 0) << expect.output;
  EXPECT_NE(expect.output.find("HTTP/1.1 100 Continue"), std::string::npos) << expect.output;
  EXPECT_NE(expect.output.find("HTTP/1.1 200 OK"), std::string::npos) << expect.output;
}

TEST_P(HttpServerTest, HttpxClientKeepAliveAndChunked) {
  CommandResult result = RunCommand(testing::Python() + " " + testing::ScriptDir() + "/httpx_client.py " +
                                    std::to_string(harness_.port()));
  EXPECT_EQ(result.exit_code, 0) << result.output;
  EXPECT_NE(result.output.find("httpx ok"), std::string::npos) << result.output;
}

TEST_P(HttpServerTest, ShortWrkRunHasNoErrors) {
  CommandResult result = RunCommand("wrk -t1 -c16 -d1s --latency '" + harness_.url("/echo") + "'", 20);
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_NE(result.output.find("Requests/sec"), std::string::npos) << result.output;
  EXPECT_EQ(result.output.find("Non-2xx"), std::string::npos) << result.output;
  EXPECT_EQ(result.output.find("Socket errors"), std::string::npos) << result.output;
  ExpectStillServing();
}

INSTANTIATE_TEST_SUITE_P(Receive, HttpServerTest, ::testing::Values(true, false),
                         [](const auto& info) { return info.param ? "BufferRing" : "SingleShot"; });

TEST(HttpServerLimitsTest, ConnectionsOverTheLimitGet503) {
  HttpServerConfig config = SmallLimits();
  config.max_connections = 2;
  TestRoutes routes;
  ServerHarness harness(config, [&](HttpServer& s) { routes.Install(s); });
  RawClient a(harness.port()), b(harness.port());
  ASSERT_TRUE(a.Send("GET /echo HTTP/1.1\r\nHost: x\r\n\r\n"));
  ASSERT_TRUE(b.Send("GET /echo HTTP/1.1\r\nHost: x\r\n\r\n"));
  ASSERT_EQ(FirstStatus(a.ReadResponses(1)), 200);
  ASSERT_EQ(FirstStatus(b.ReadResponses(1)), 200);
  RawClient c(harness.port());
  const std::string response = c.ReadUntilClose();
  EXPECT_EQ(FirstStatus(response), 503) << response;
  EXPECT_NE(response.find("Retry-After: 1"), std::string::npos);
  EXPECT_EQ(harness.server().stats().connections_rejected.value(), 1u);
}

TEST(HttpServerTlsTest, CurlAndHttpxOverTlsWithSelfSignedCertificate) {
  TempDir dir;
  const std::string cert = dir.path() + "/cert.pem";
  const std::string key = dir.path() + "/key.pem";
  CommandResult gen = RunCommand("openssl req -x509 -newkey rsa:2048 -nodes -keyout " + key + " -out " + cert +
                                 " -days 1 -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1,DNS:localhost");
  ASSERT_EQ(gen.exit_code, 0) << gen.output;
  HttpServerConfig config = SmallLimits();
  config.tls_cert_path = cert;
  config.tls_key_path = key;
  TestRoutes routes;
  ServerHarness harness(config, [&](HttpServer& s) { routes.Install(s); });
  ASSERT_TRUE(harness.server().is_tls());
  CommandResult curl = RunCommand("curl -sS --http1.1 --cacert " + cert + " --data-binary hello-tls '" +
                                  harness.url("/echo") + "' '" + harness.url("/echo?again") + "'");
  EXPECT_EQ(curl.exit_code, 0) << curl.output;
  EXPECT_EQ(curl.output, "hello-tlshello-tls");
  // Without the CA the client must refuse the self-signed certificate.
  CommandResult untrusted = RunCommand("curl -sS --http1.1 '" + harness.url("/echo") + "'");
  EXPECT_NE(untrusted.exit_code, 0);
  CommandResult httpx = RunCommand(testing::Python() + " " + testing::ScriptDir() + "/httpx_client.py " +
                                   std::to_string(harness.port()) + " " + cert);
  EXPECT_EQ(httpx.exit_code, 0) << httpx.output;
  // The server keeps serving TLS after a client that failed verification.
  CommandResult again = RunCommand("curl -sS --http1.1 --cacert " + cert + " '" + harness.url("/echo") + "'");
  EXPECT_EQ(again.exit_code, 0) << again.output;
}

}  // namespace
}  // namespace mailrail::net
