// webhook_server: the net layer's ingest path for bench/webhook/run.sh. One network thread runs
// HttpServer + IngestHandler on 127.0.0.1:PORT.
//
//   webhook_server PORT                 a stand-in WAL thread acknowledges each message as soon as
//                                       it pops it (tests/net/acking_consumer.h): NOT durable;
//                                       measures the HTTP/ingest path alone.
//   webhook_server PORT --wal DIR       the real WAL: a Topology runs stages::WalStage (append +
//                                       fdatasync per commit group, acks through DurableAckSink)
//                                       and a drain stage that releases durable messages and
//                                       advances the forwarded LSN. 202 = durable.
// Runs until SIGINT/SIGTERM; prints its counters on exit.
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "engine/topology.h"
#include "net/event_loop.h"
#include "net/http_server.h"
#include "net/ingest_handler.h"
#include "stages/wal_stage.h"
#include "storage/wal_writer.h"
#include "tests/net/acking_consumer.h"

namespace mailrail {
namespace {

net::EventLoop* g_loop = nullptr;
void OnSignal(int) {
  if (g_loop != nullptr) g_loop->Stop();
}

// Releases durable messages back to the pool and lets the WAL delete forwarded segments.
class DrainStage final : public engine::Stage {
 public:
  DrainStage(engine::Channel<stages::Message*>* input, stages::MessagePool* pool, storage::WalWriter* writer)
      : input_(input), pool_(pool), writer_(writer) {}
  std::string_view name() const override { return "drain"; }
  std::size_t RunOnce() override {
    stages::Message* batch[256];
    const std::size_t n = input_->PopBatch(std::span(batch));
    for (std::size_t i = 0; i < n; ++i) {
      last_lsn_ = batch[i]->lsn;
      pool_->Release(batch[i]);
    }
    if (n > 0) writer_->set_forwarded_lsn(last_lsn_);
    return n;
  }
  bool IsFinished() const override { return input_->IsDrained(); }

 private:
  engine::Channel<stages::Message*>* input_;
  stages::MessagePool* pool_;
  storage::WalWriter* writer_;
  std::uint64_t last_lsn_ = 0;
};

int Main(int argc, char** argv) {
  if (argc != 2 && !(argc == 4 && std::strcmp(argv[2], "--wal") == 0)) {
    std::fprintf(stderr, "usage: %s PORT [--wal DIR]\n", argv[0]);
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
  std::unique_ptr<net::testing::AckingConsumer> fake_wal;
  std::unique_ptr<storage::WalWriter> writer;
  // On a small machine the WAL threads' idle spinning competes with the network thread and the
  // clients: spin briefly, then park (WalStage's next_deadline still wakes it for the disk).
  engine::TopologyConfig topology_config;
  if (const char* spin = std::getenv("MAILRAIL_BENCH_SPIN_ROUNDS")) {
    topology_config.wait.spin_rounds = static_cast<std::uint32_t>(std::atoi(spin));
  }
  engine::Topology topology(topology_config);
  engine::Channel<stages::Message*>* ingest = topology.MakeChannel<stages::Message*>("ingest", 16384);
  if (argc == 4) {
    storage::WalConfig wal;
    wal.dir = argv[3];
    auto opened = storage::WalWriter::Open(wal);
    if (!opened) {
      std::fprintf(stderr, "wal: %s\n", opened.error().message.c_str());
      return 1;
    }
    writer = std::move(opened.value());
    auto* durable = topology.MakeChannel<stages::Message*>("durable", 16384);
    topology.AddStage(std::make_unique<stages::WalStage>(writer.get(), nullptr, ingest, durable), {ingest},
                      {durable});
    topology.AddStage(std::make_unique<DrainStage>(durable, &pool, writer.get()), {durable}, {});
    if (auto started = topology.Start(); !started) {
      std::fprintf(stderr, "topology: %s\n", started.error().message.c_str());
      return 1;
    }
  } else {
    fake_wal = std::make_unique<net::testing::AckingConsumer>(ingest, &pool, /*record=*/false);
  }
  net::IngestHandler handler(loop->get(), &pool, ingest, {});
  handler.Install(**server);
  (*server)->Start();
  g_loop = loop->get();
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  std::printf("listening on 127.0.0.1:%u (%s)\n", (*server)->port(), writer ? "WAL: durable 202" : "ack on pop");
  std::fflush(stdout);
  (*loop)->Run();
  (*server)->Shutdown();
  if (writer) {
    ingest->Close();
    topology.Wait();
    const auto& wal = writer->stats();
    std::printf("wal: %lu records in %lu commit groups (%.1f records/group)\n",
                static_cast<unsigned long>(wal.records.load()), static_cast<unsigned long>(wal.groups.load()),
                wal.groups.load() == 0 ? 0.0 : static_cast<double>(wal.records.load()) / wal.groups.load());
  }
  std::printf("requests %lu, messages durable %lu, 503 %lu\n",
              static_cast<unsigned long>(handler.stats().requests.value()),
              static_cast<unsigned long>(handler.stats().messages_durable.value()),
              static_cast<unsigned long>(handler.stats().backpressure_rejections.value()));
  return 0;
}

}  // namespace
}  // namespace mailrail

int main(int argc, char** argv) { return mailrail::Main(argc, argv); }
