// `mailrail dlq`: inspect and re-send the forward stage's dead-letter log (<data dir>/dlq).
#include "tools/cmd_dlq.h"

#include <fmt/core.h>

#include <filesystem>
#include <memory>
#include <string>

#include "net/dead_letter_log.h"
#include "net/dead_letter_redrive.h"
#include "stages/record_json.h"

namespace mailrail::tools {
namespace {

struct DlqFlags {
  std::string data_dir = "mailrail-data";
  bool json = false;
  std::string url;
  std::string path = "/batch-metadata";
  std::string batch;
  std::string ca_file;
  bool insecure = false;
};

std::string DlqDir(const DlqFlags& flags) { return (std::filesystem::path(flags.data_dir) / "dlq").string(); }

int RunList(const DlqFlags& flags) {
  auto entries = net::DeadLetterLog::Read(DlqDir(flags));
  if (!entries) {
    fmt::print(stderr, "mailrail dlq list: {}\n", entries.error().message);
    return 1;
  }
  std::size_t pending = 0;
  for (const net::DeadLetter& d : entries->letters) {
    const bool redriven = entries->IsRedriven(d.batch_id);
    if (!redriven) ++pending;
    if (flags.json) {
      std::string line = "{\"batch_id\":";
      stages::AppendJsonString(d.batch_id, line);
      line += fmt::format(",\"first_lsn\":{},\"last_lsn\":{},\"records\":{},\"status\":{},\"error\":", d.first_lsn,
                          d.last_lsn, d.records, d.status);
      stages::AppendJsonString(d.error, line);
      line += fmt::format(",\"dead_lettered_at_ms\":{},\"redriven\":{}}}", d.dead_lettered_at_ms, redriven);
      fmt::print("{}\n", line);
    } else {
      fmt::print("{:<28} lsn {:>10}-{:<10} {:>6} records  status {:>3}  {}{}\n", d.batch_id, d.first_lsn, d.last_lsn,
                 d.records, d.status, redriven ? "redriven" : "pending",
                 d.error.empty() ? std::string() : "  (" + d.error + ")");
    }
  }
  if (!flags.json) {
    fmt::print("{} dead-lettered batches, {} pending redrive{}\n", entries->letters.size(), pending,
               entries->torn_lines > 0 ? fmt::format(", {} torn lines skipped", entries->torn_lines) : "");
  }
  return 0;
}

int RunRedrive(const DlqFlags& flags) {
  net::HttpClientConfig http;
  http.base_url = flags.url;
  http.max_connections = 1;
  http.verify_peer = !flags.insecure;
  http.ca_file = flags.ca_file;
  auto report = net::RedriveDeadLetters(DlqDir(flags), http, flags.path, flags.batch);
  if (!report) {
    fmt::print(stderr, "mailrail dlq redrive: {}\n", report.error().message);
    return 1;
  }
  for (const std::string& failure : report->failures) fmt::print(stderr, "not redriven: {}\n", failure);
  fmt::print("redriven {} of {} batches\n", report->redriven, report->attempted);
  return report->failures.empty() ? 0 : 1;
}

}  // namespace

void AddDlqCommands(CLI::App& app) {
  auto flags = std::make_shared<DlqFlags>();
  CLI::App* dlq = app.add_subcommand("dlq", "Inspect and re-send batches in the forward dead-letter log");
  dlq->require_subcommand(1);
  dlq->add_option("--data-dir", flags->data_dir, "Data directory (the log is in <data dir>/dlq)")
      ->capture_default_str();

  CLI::App* list = dlq->add_subcommand("list", "List dead-lettered batches and whether they were redriven");
  list->add_flag("--json", flags->json, "One JSON object per batch");
  list->callback([flags] { throw CLI::RuntimeError(RunList(*flags)); });

  CLI::App* redrive = dlq->add_subcommand(
      "redrive", "Re-send pending dead-lettered batches with their original Idempotency-Key");
  redrive->add_option("--url", flags->url, "Downstream base URL (POST {url}{path})")->required();
  redrive->add_option("--path", flags->path, "Path appended to the URL")->capture_default_str();
  redrive->add_option("--batch", flags->batch, "Only this batch id");
  redrive->add_option("--ca-file", flags->ca_file, "PEM bundle to verify an https downstream");
  redrive->add_flag("--insecure", flags->insecure, "Do not verify the downstream's certificate");
  redrive->callback([flags] { throw CLI::RuntimeError(RunRedrive(*flags)); });
}

}  // namespace mailrail::tools
