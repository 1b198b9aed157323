// `mailrail quarantine`: inspect and re-drive messages the filter stage quarantined.
#include "tools/cmd_quarantine.h"

#include <fmt/core.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "net/dead_letter_redrive.h"
#include "net/http_message.h"
#include "stages/quarantine_store.h"
#include "stages/record_json.h"

namespace mailrail::tools {
namespace {

struct QuarantineFlags {
  std::string data_dir = "mailrail-data";
  bool json = false;
  std::vector<std::uint64_t> ids;
  std::string url;
  std::string token;
};

base::Result<std::unique_ptr<stages::QuarantineStore>> OpenStore(const QuarantineFlags& flags) {
  const auto dir = std::filesystem::path(flags.data_dir) / "quarantine";
  if (!std::filesystem::exists(dir / "quarantine.log")) {
    return base::MakeError("quarantine.missing", "no quarantine store in " + dir.string());
  }
  // A reader never cuts or writes, so it is safe beside a running daemon (the writer).
  return stages::QuarantineStore::Open(dir.string(), stages::QuarantineStore::Access::kReader);
}

int RunList(const QuarantineFlags& flags) {
  auto store = OpenStore(flags);
  if (!store) {
    fmt::print(stderr, "mailrail quarantine list: {}\n", store.error().message);
    return 1;
  }
  const auto entries = (*store)->List();
  std::size_t pending = 0;
  for (const stages::QuarantineEntry& e : entries) {
    if (!e.redriven) ++pending;
    if (flags.json) {
      std::string line = fmt::format(R"({{"id":{},"lsn":{},"time_ms":{},"raw_bytes":{},"redriven":{},"reason":)", e.id,
                                     e.lsn, e.time_ms, e.raw_bytes, e.redriven);
      stages::AppendJsonString(e.reason, line);
      fmt::print("{}}}\n", line);
    } else {
      fmt::print("{:>8}  lsn {:>10}  {:>9} bytes  {:<8}  {}\n", e.id, e.lsn, e.raw_bytes,
                 e.redriven ? "redriven" : "held", e.reason);
    }
  }
  if (!flags.json) fmt::print("{} quarantined messages, {} not redriven\n", entries.size(), pending);
  return 0;
}

int RunShow(const QuarantineFlags& flags) {
  auto store = OpenStore(flags);
  if (!store) {
    fmt::print(stderr, "mailrail quarantine show: {}\n", store.error().message);
    return 1;
  }
  for (std::uint64_t id : flags.ids) {
    auto raw = (*store)->ReadRaw(id);
    if (!raw) {
      fmt::print(stderr, "mailrail quarantine show: {}\n", raw.error().message);
      return 1;
    }
    for (const auto& e : (*store)->List()) {
      if (e.id == id) fmt::print(stderr, "id {} lsn {}: {}\n", e.id, e.lsn, e.reason);
    }
    std::fwrite(raw->data(), 1, raw->size(), stdout);
  }
  return 0;
}

int RunRedrive(const QuarantineFlags& flags) {
  auto store = OpenStore(flags);
  if (!store) {
    fmt::print(stderr, "mailrail quarantine redrive: {}\n", store.error().message);
    return 1;
  }
  std::vector<std::string> raws;
  for (std::uint64_t id : flags.ids) {
    auto raw = (*store)->ReadRaw(id);
    if (!raw) {
      fmt::print(stderr, "mailrail quarantine redrive: {}\n", raw.error().message);
      return 1;
    }
    raws.push_back(std::move(raw).value());
  }
  net::HttpClientConfig http;
  http.base_url = flags.url;
  http.max_connections = 1;
  std::size_t failed = 0;
  auto make_request = [&](std::size_t i) {
    net::ClientRequest request;
    request.path = "/ingest";
    request.headers = {{"Content-Type", "message/rfc822"}, {"X-Mailrail-Redrive", std::to_string(flags.ids[i])}};
    if (!flags.token.empty()) request.headers.push_back({"Authorization", "Bearer " + flags.token});
    request.body_ref = &raws[i];
    return request;
  };
  auto on_answer = [&](std::size_t i, base::Result<net::ClientResponse> result) {
    if (!result.has_value() || result->status != 202) {
      ++failed;
      fmt::print(stderr, "not redriven: {}: {}\n", flags.ids[i],
                 result.has_value() ? fmt::format("HTTP {}: {}", result->status, result->body.substr(0, 200))
                                    : result.error().message);
    }
  };
  if (auto status = net::SendOneByOne(http, raws.size(), make_request, on_answer); !status) {
    fmt::print(stderr, "mailrail quarantine redrive: {}\n", status.error().message);
    return 1;
  }
  fmt::print("redriven {} of {} messages\n", raws.size() - failed, raws.size());
  return failed == 0 ? 0 : 1;
}

}  // namespace

void AddQuarantineCommands(CLI::App& app) {
  auto flags = std::make_shared<QuarantineFlags>();
  CLI::App* cmd = app.add_subcommand("quarantine", "Inspect and re-drive quarantined messages");
  cmd->require_subcommand(1);
  cmd->add_option("--data-dir", flags->data_dir, "Data directory (the store is in <data dir>/quarantine)")
      ->capture_default_str();

  CLI::App* list = cmd->add_subcommand("list", "List quarantined messages with their reasons");
  list->add_flag("--json", flags->json, "One JSON object per message");
  list->callback([flags] { throw CLI::RuntimeError(RunList(*flags)); });

  CLI::App* show = cmd->add_subcommand("show", "Write quarantined messages (raw) to stdout");
  show->add_option("ids", flags->ids, "Message ids (from list)")->required();
  show->callback([flags] { throw CLI::RuntimeError(RunShow(*flags)); });

  CLI::App* redrive = cmd->add_subcommand("redrive", "Send quarantined messages to a running daemon again");
  redrive->add_option("--url", flags->url, "The daemon's HTTP base URL, e.g. http://127.0.0.1:8025")->required();
  redrive->add_option("--token", flags->token, "Bearer token, if the daemon's HTTP API requires one");
  redrive->add_option("ids", flags->ids, "Message ids (from list)")->required();
  redrive->callback([flags] { throw CLI::RuntimeError(RunRedrive(*flags)); });
}

}  // namespace mailrail::tools
