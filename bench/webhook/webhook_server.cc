// webhook_server: the net layer's ingest path alone, for bench/webhook/run.sh. One network
// thread runs HttpServer + IngestHandler on 127.0.0.1:PORT; a second thread stands in for the
// WAL and acknowledges each message as soon as it pops it (tests/net/acking_consumer.h), so the
// 202 here is NOT durable. The durable figure comes from running the script with the daemon.
//
// usage: webhook_server PORT   (runs until SIGINT/SIGTERM)
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "net/event_loop.h"
#include "net/http_server.h"
#include "net/ingest_handler.h"
#include "tests/net/acking_consumer.h"

namespace {
mailrail::net::EventLoop* g_loop = nullptr;
void OnSignal(int) {
  if (g_loop != nullptr) g_loop->Stop();
}
}  // namespace

int main(int argc, char** argv) {
  using namespace mailrail;
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s PORT\n", argv[0]);
    return 2;
  }
  auto loop = net::EventLoop::Create({});
  if (!loop) {
    std::fprintf(stderr, "event loop: %s\n", loop.error().message.c_str());
    return 1;
  }
  net::HttpServerConfig config;
  config.port = static_cast<std::uint16_t>(std::atoi(argv[1]));
  auto server = net::HttpServer::Create(loop->get(), config);
  if (!server) {
    std::fprintf(stderr, "server: %s\n", server.error().message.c_str());
    return 1;
  }
  stages::MessagePool pool(16384, 512u << 20);
  engine::Channel<stages::Message*> channel("ingest", 16384);
  net::testing::AckingConsumer consumer(&channel, &pool, /*record=*/false);
  net::IngestHandler ingest(loop->get(), &pool, &channel, {});
  ingest.Install(**server);
  (*server)->Start();
  g_loop = loop->get();
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  std::printf("listening on 127.0.0.1:%u\n", (*server)->port());
  std::fflush(stdout);
  (*loop)->Run();
  (*server)->Shutdown();
  std::printf("requests %lu, messages durable %lu, 503 %lu\n",
              static_cast<unsigned long>(ingest.stats().requests.value()),
              static_cast<unsigned long>(ingest.stats().messages_durable.value()),
              static_cast<unsigned long>(ingest.stats().backpressure_rejections.value()));
  return 0;
}
