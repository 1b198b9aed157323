// HttpClient against the project's own HttpServer, plain and over TLS with peer verification.
#include "net/http_client.h"

#include <gtest/gtest.h>

#include <future>

#include "tests/net/test_util.h"

namespace mailrail::net {
namespace {

using testing::LoopThread;
using testing::RunCommand;
using testing::ServerHarness;
using testing::TempDir;

void InstallEcho(HttpServer& server) {
  server.Route("POST", "/api/echo", [](HttpRequest& request, Responder responder) {
    HttpResponse response = HttpResponse::Text(200, request.body);
    response.headers.push_back({"X-Key", std::string(request.Header("idempotency-key"))});
    responder.Send(std::move(response));
  });
}

// Sends `count` requests at once from the loop thread and waits for every answer.
std::vector<base::Result<ClientResponse>> SendAll(LoopThread& loop, HttpClient& client, int count) {
  std::vector<std::optional<base::Result<ClientResponse>>> results(count);
  std::promise<void> done;
  int remaining = count;
  loop.loop()->Post([&] {
    for (int i = 0; i < count; ++i) {
      ClientRequest request;
      request.path = "/echo";
      request.headers = {{"Idempotency-Key", "k" + std::to_string(i)}};
      request.body = "payload " + std::to_string(i);
      client.Send(std::move(request), [&, i](base::Result<ClientResponse> result) {
        results[i].emplace(std::move(result));
        if (--remaining == 0) done.set_value();
      });
    }
  });
  done.get_future().wait();
  std::vector<base::Result<ClientResponse>> out;
  for (auto& r : results) out.push_back(std::move(*r));
  return out;
}

TEST(HttpClientTest, PoolReusesConnectionsAndQueuesBeyondTheLimit) {
  ServerHarness server(HttpServerConfig{}, InstallEcho);
  LoopThread loop;
  HttpClientConfig config;
  config.base_url = server.url("/api");
  config.max_connections = 2;
  auto client = HttpClient::Create(loop.loop(), config);
  ASSERT_TRUE(client.has_value()) << client.error().message;
  loop.Start();
  for (int round = 0; round < 2; ++round) {
    auto results = SendAll(loop, **client, 10);
    for (int i = 0; i < 10; ++i) {
      ASSERT_TRUE(results[i].has_value()) << results[i].error().message;
      EXPECT_EQ(results[i]->status, 200);
      EXPECT_EQ(results[i]->body, "payload " + std::to_string(i));
      EXPECT_EQ(results[i]->Header("x-key"), "k" + std::to_string(i));
    }
  }
  EXPECT_EQ(server.server().stats().connections_accepted.value(), 2u);
  loop.Call([&] { (*client)->Shutdown(); });
  loop.Stop();  // the client is destroyed below, after its loop stopped
}

TEST(HttpClientTest, ConnectionRefusedIsAnError) {
  LoopThread loop;
  HttpClientConfig config;
  config.base_url = "http://127.0.0.1:1";
  auto client = HttpClient::Create(loop.loop(), config);
  ASSERT_TRUE(client.has_value());
  loop.Start();
  auto results = SendAll(loop, **client, 1);
  ASSERT_FALSE(results[0].has_value());
  EXPECT_EQ(results[0].error().code, "connect");
  loop.Call([&] { (*client)->Shutdown(); });  // the loop may still be inside the failing call
  loop.Stop();
}

TEST(HttpClientTest, HttpsVerifiesThePeer) {
  TempDir dir;
  const std::string cert = dir.path() + "/cert.pem";
  const std::string key = dir.path() + "/key.pem";
  auto gen = RunCommand("openssl req -x509 -newkey rsa:2048 -nodes -keyout " + key + " -out " + cert +
                        " -days 1 -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1,DNS:localhost");
  ASSERT_EQ(gen.exit_code, 0) << gen.output;
  HttpServerConfig server_config;
  server_config.tls_cert_path = cert;
  server_config.tls_key_path = key;
  ServerHarness server(server_config, InstallEcho);
  const std::string base = "https://localhost:" + std::to_string(server.port()) + "/api";
  LoopThread loop;
  HttpClientConfig trusted;
  trusted.base_url = base;
  trusted.ca_file = cert;
  auto good = HttpClient::Create(loop.loop(), trusted);
  ASSERT_TRUE(good.has_value()) << good.error().message;
  HttpClientConfig untrusted;
  untrusted.base_url = base;  // system store: the self-signed certificate must be refused
  auto bad = HttpClient::Create(loop.loop(), untrusted);
  ASSERT_TRUE(bad.has_value()) << bad.error().message;
  loop.Start();
  auto results = SendAll(loop, **good, 3);
  for (auto& r : results) {
    ASSERT_TRUE(r.has_value()) << r.error().message;
    EXPECT_EQ(r->status, 200);
  }
  EXPECT_EQ(results[2]->body, "payload 2");
  auto refused = SendAll(loop, **bad, 1);
  ASSERT_FALSE(refused[0].has_value());
  EXPECT_EQ(refused[0].error().code, "tls") << refused[0].error().message;
  loop.Call([&] {
    (*good)->Shutdown();
    (*bad)->Shutdown();
  });
  loop.Stop();
}

}  // namespace
}  // namespace mailrail::net
