// Forward throughput: ForwardClient batching pre-serialized ~600-byte records to a local
// downstream, in batches of 500 records. Peers in the same run:
//   BM_ForwardClient_NativeDownstream  the project's HttpServer answering 200 (client-bound)
//   BM_ForwardClient_PythonDownstream  tests/net/downstream.py --quiet (a Python http.server,
//                                      like the MS4 services the seeds describe)
// Items are records; the batches counter is batches/s. Each iteration forwards 20,000 records and
// waits until acknowledged_through() reaches the last LSN.
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "net/event_loop.h"
#include "net/forward_client.h"
#include "net/http_server.h"

namespace mailrail::net {
namespace {

constexpr std::size_t kRecordsPerIteration = 20000;
constexpr std::size_t kBatchRecords = 500;

std::string Record(std::uint64_t lsn) {
  std::string r = "{\"lsn\":" + std::to_string(lsn) +
                  ",\"message_id\":\"CAH3x=abc" + std::to_string(lsn) +
                  "@mail.example.com\",\"dedup_key\":\"5f0c0000000000000000000000000000\","
                  "\"source\":{\"kind\":\"replay\",\"id\":\"dump-2026-05.mbox\",\"position\":\"81233\"},"
                  "\"received_at\":\"2026-11-23T10:15:02.113Z\",\"date\":\"2026-05-01T08:00:00Z\","
                  "\"from\":{\"name\":\"Billing\",\"address\":\"billing@vendor.example\"},"
                  "\"to\":[{\"name\":\"\",\"address\":\"ap@corp.example\"}],\"cc\":[],\"reply_to\":[],"
                  "\"subject\":\"Rechnung Nr. 2026-118\",\"in_reply_to\":null,\"references\":[],"
                  "\"size\":48213,\"has_attachments\":false,\"attachments\":[],"
                  "\"body_preview\":\"Sehr geehrte Damen und Herren, anbei die Rechnung\","
                  "\"labels\":[\"invoice\"],\"spam_score\":0.4,\"action\":\"label\",\"rules\":[],\"defects\":[]}";
  return r;
}

// A loop on its own thread.
struct LoopRunner {
  std::unique_ptr<EventLoop> loop;
  std::thread thread;
  LoopRunner() {
    loop = std::move(EventLoop::Create({}).value());
  }
  void Start() { thread = std::thread([this] { loop->Run(); }); }
  ~LoopRunner() {
    loop->Stop();
    if (thread.joinable()) thread.join();
  }
};

void RunForward(benchmark::State& state, const std::string& base_url) {
  const std::string dlq = "/tmp/mailrail-bench-forward-dlq-" + std::to_string(::getpid());
  LoopRunner runner;
  ForwardConfig config;
  config.http.base_url = base_url;
  config.http.max_connections = 4;
  config.batch_max_records = kBatchRecords;
  config.batch_max_bytes = 4 << 20;
  config.max_in_flight = static_cast<std::size_t>(state.range(0));
  config.dead_letter_dir = dlq;
  auto client = ForwardClient::Create(runner.loop.get(), config);
  if (!client) {
    state.SkipWithError(client.error().message.c_str());
    return;
  }
  runner.Start();
  std::vector<std::string> storage;
  for (std::size_t i = 0; i < kRecordsPerIteration; ++i) storage.push_back(Record(i + 1));
  std::vector<ForwardRecord> records(kRecordsPerIteration);
  std::uint64_t lsn = 0;
  for (auto _ : state) {
    for (std::size_t i = 0; i < kRecordsPerIteration; ++i) records[i] = {++lsn, storage[i]};
    std::span<const ForwardRecord> rest(records);
    while (!rest.empty()) rest = rest.subspan((*client)->Append(rest));
    (*client)->Flush();
    while ((*client)->acknowledged_through() < lsn) std::this_thread::yield();
  }
  const auto& stats = (*client)->stats();
  if (stats.batches_dead_lettered.value() > 0 || stats.retries.value() > 0) {
    state.SkipWithError("downstream refused batches");
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * kRecordsPerIteration));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * kRecordsPerIteration * storage[0].size()));
  state.counters["batches"] = benchmark::Counter(static_cast<double>(stats.batches_acknowledged.value()),
                                                 benchmark::Counter::kIsRate);
  runner.loop->Post([&] { (*client)->Shutdown(); });
  runner.loop->Stop();
  runner.thread.join();
  std::filesystem::remove_all(dlq);
}

void BM_ForwardClient_NativeDownstream(benchmark::State& state) {
  LoopRunner server_loop;
  HttpServerConfig config;
  config.port = 0;
  auto server = HttpServer::Create(server_loop.loop.get(), config);
  (*server)->Route("POST", "/batch-metadata", [](HttpRequest&, Responder responder) {
    responder.Send(HttpResponse::Json(200, "{\"accepted\":true}"));
  });
  (*server)->Start();
  server_loop.Start();
  RunForward(state, "http://127.0.0.1:" + std::to_string((*server)->port()));
  server_loop.loop->Post([&] { (*server)->Shutdown(); });
}

// Starts downstream.py --quiet (stopped by PID when the benchmark ends).
void BM_ForwardClient_PythonDownstream(benchmark::State& state) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return state.SkipWithError("pipe");
  const std::string script = std::string(MAILRAIL_SOURCE_DIR) + "/tests/net/downstream.py";
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(fds[1], STDOUT_FILENO);
    ::execl("/usr/bin/python3", "python3", script.c_str(), "--quiet", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::close(fds[1]);
  std::string line;
  char c;
  pollfd p{fds[0], POLLIN, 0};
  while (::poll(&p, 1, 10000) > 0 && ::read(fds[0], &c, 1) == 1 && c != '\n') line += c;
  ::close(fds[0]);
  if (line.rfind("PORT ", 0) == 0) {
    RunForward(state, "http://127.0.0.1:" + line.substr(5));
  } else {
    state.SkipWithError("downstream.py did not start");
  }
  ::kill(pid, SIGTERM);
  ::waitpid(pid, nullptr, 0);
}

BENCHMARK(BM_ForwardClient_NativeDownstream)->Arg(1)->Arg(4)->ArgName("in_flight")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_ForwardClient_PythonDownstream)->Arg(1)->Arg(4)->ArgName("in_flight")->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
}  // namespace mailrail::net

BENCHMARK_MAIN();
