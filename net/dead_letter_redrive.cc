#include "net/dead_letter_redrive.h"

#include "net/dead_letter_log.h"
#include "net/event_loop.h"

namespace mailrail::net {

base::Status SendOneByOne(const HttpClientConfig& http, std::size_t count,
                          const std::function<ClientRequest(std::size_t)>& make_request,
                          const std::function<void(std::size_t, base::Result<ClientResponse>)>& on_answer) {
  if (count == 0) return base::OkStatus();
  EventLoopConfig loop_config;
  loop_config.ring_entries = 64;
  loop_config.use_buffer_ring = false;
  auto loop = EventLoop::Create(loop_config);
  if (!loop) return loop.error();
  auto client = HttpClient::Create(loop->get(), http);
  if (!client) return client.error();
  std::size_t next = 0;
  std::function<void()> send_next = [&] {
    if (next == count) {
      (*loop)->Stop();
      return;
    }
    const std::size_t i = next++;
    (*client)->Send(make_request(i), [&, i](base::Result<ClientResponse> result) {
      on_answer(i, std::move(result));
      send_next();
    });
  };
  (*loop)->Post(send_next);
  (*loop)->Run();
  (*client)->Shutdown();
  return base::OkStatus();
}

base::Result<RedriveReport> RedriveDeadLetters(const std::string& dir, const HttpClientConfig& http,
                                               const std::string& path, std::string_view only_batch_id) {
  auto entries = DeadLetterLog::Read(dir);
  if (!entries) return entries.error();
  std::vector<const DeadLetter*> selected;
  for (const DeadLetter& d : entries->letters) {
    if (entries->IsRedriven(d.batch_id)) continue;
    if (!only_batch_id.empty() && d.batch_id != only_batch_id) continue;
    selected.push_back(&d);
  }
  RedriveReport report;
  if (selected.empty()) return report;
  auto log = DeadLetterLog::Open(dir);
  if (!log) return log.error();
  auto make_request = [&](std::size_t i) {
    ++report.attempted;
    ClientRequest request;
    request.path = path;
    request.headers = {{"Content-Type", "application/json"}, {"Idempotency-Key", selected[i]->idempotency_key}};
    request.body_ref = &selected[i]->batch;
    return request;
  };
  auto on_answer = [&](std::size_t i, base::Result<ClientResponse> result) {
    const DeadLetter& letter = *selected[i];
    if (!result.has_value()) {
      report.failures.push_back(letter.batch_id + ": " + result.error().code + ": " + result.error().message);
    } else if (result->status >= 200 && result->status < 300) {
      if (auto marked = log->MarkRedriven(letter.batch_id, result->status); marked) {
        ++report.redriven;
      } else {
        report.failures.push_back(letter.batch_id + ": acknowledged but not recorded: " + marked.error().message);
      }
    } else {
      report.failures.push_back(letter.batch_id + ": HTTP " + std::to_string(result->status) + ": " +
                                result->body.substr(0, 200));
    }
  };
  if (auto status = SendOneByOne(http, selected.size(), make_request, on_answer); !status) return status.error();
  return report;
}

}  // namespace mailrail::net
