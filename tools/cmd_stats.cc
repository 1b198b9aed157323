// mailrail stats / mailrail top: read the daemon's stats socket.
#include "tools/cmd_stats.h"

#include <poll.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <map>
#include <optional>
#include <string_view>
#include <thread>

#include <fmt/core.h>
#include <simdjson.h>

#include "engine/stats_socket.h"
#include "tools/config.h"

namespace mailrail::tools {
namespace {

struct SocketFlags {
  std::string socket;
  std::string config;
};

std::string ResolveSocket(const SocketFlags& flags) {
  if (!flags.socket.empty()) return flags.socket;
  auto config = LoadConfig(flags.config);
  return config ? config->stats.socket : "mailrail-data/mailrail.sock";
}

// One sample of a snapshot: "name{label=value,...}" -> value.
using Flat = std::map<std::string, double>;

base::Result<Flat> Flatten(const std::string& json) {
  simdjson::dom::parser parser;
  simdjson::dom::object root;
  if (parser.parse(json).get(root) != simdjson::SUCCESS) {
    return base::MakeError("stats.parse", "the stats socket answered something that is not JSON");
  }
  Flat flat;
  for (auto [key, value] : root) {
    double number = 0;
    if (value.get(number) == simdjson::SUCCESS) {
      flat[std::string(key)] = number;
      continue;
    }
    simdjson::dom::array list;
    if (value.get(list) != simdjson::SUCCESS) continue;
    for (simdjson::dom::element item : list) {
      simdjson::dom::object fields;
      if (item.get(fields) != simdjson::SUCCESS) continue;
      std::string labels;
      double v = 0;
      for (auto [k, field] : fields) {
        if (k == "value") {
          if (field.get(v) != simdjson::SUCCESS) v = 0;
        } else {
          std::string_view text;
          if (field.get(text) == simdjson::SUCCESS) {
            labels += (labels.empty() ? "" : ",") + std::string(k) + "=" + std::string(text);
          }
        }
      }
      flat[std::string(key) + "{" + labels + "}"] = v;
    }
  }
  return flat;
}

int RunStats(const SocketFlags& flags, bool json, bool prom) {
  const std::string path = ResolveSocket(flags);
  auto answer = engine::ReadStatsSocket(path, prom ? "prometheus" : "json");
  if (!answer) {
    fmt::print(stderr, "mailrail stats: {}\n", answer.error().message);
    return 1;
  }
  if (json || prom) {
    fmt::print("{}", *answer);
    return 0;
  }
  auto flat = Flatten(*answer);
  if (!flat) {
    fmt::print(stderr, "mailrail stats: {}\n", flat.error().message);
    return 1;
  }
  std::size_t width = 0;
  for (const auto& [k, v] : *flat) width = std::max(width, k.size());
  for (const auto& [k, v] : *flat) fmt::print("{:<{}}  {:.10g}\n", k, width, v);
  return 0;
}

// --- top ------------------------------------------------------------------------------------------

volatile std::sig_atomic_t g_resized = 0;

class RawTerminal {
 public:
  RawTerminal() {
    if (tcgetattr(STDIN_FILENO, &saved_) == 0) {
      termios raw = saved_;
      raw.c_lflag &= static_cast<tcflag_t>(~(ICANON | ECHO));
      raw.c_cc[VMIN] = 0;
      raw.c_cc[VTIME] = 0;
      active_ = tcsetattr(STDIN_FILENO, TCSANOW, &raw) == 0;
    }
    fmt::print("\x1b[?25l");  // hide cursor
  }
  ~RawTerminal() {
    if (active_) tcsetattr(STDIN_FILENO, TCSANOW, &saved_);
    fmt::print("\x1b[?25h\n");
  }

 private:
  termios saved_{};
  bool active_ = false;
};

std::pair<int, int> TerminalSize() {
  winsize ws{};
  if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return {ws.ws_row, ws.ws_col};
  return {24, 80};
}

double Get(const Flat& f, const std::string& key) {
  auto it = f.find(key);
  return it == f.end() ? 0 : it->second;
}

// The sum of every sample of `metric` labelled stage=`stage`, whatever its other labels (the dedup
// workers report one sample each, labelled worker=N); nullopt when there is none.
std::optional<double> SumForStage(const Flat& f, std::string_view metric, std::string_view stage) {
  const std::string prefix = fmt::format("{}{{", metric);
  const std::string label = fmt::format("stage={}", stage);
  std::optional<double> sum;
  for (auto it = f.lower_bound(prefix); it != f.end() && it->first.starts_with(prefix); ++it) {
    const std::string_view labels = std::string_view(it->first).substr(prefix.size());
    const std::size_t at = labels.find(label);
    if (at == std::string_view::npos || (at > 0 && labels[at - 1] != ',')) continue;
    const char after = labels[at + label.size()];
    if (after != ',' && after != '}') continue;
    sum = sum.value_or(0) + it->second;
  }
  return sum;
}

std::string Bar(double fill, double capacity, int width) {
  const int n = capacity > 0 ? static_cast<int>(width * std::min(1.0, fill / capacity) + 0.5) : 0;
  return std::string(static_cast<std::size_t>(n), '#') + std::string(static_cast<std::size_t>(width - n), '.');
}

std::string Render(const Flat& now, const Flat& before, double seconds, const std::string& path, int rows, int cols) {
  std::string out = "\x1b[H\x1b[2J";
  auto line = [&](const std::string& text) {
    if (rows-- <= 1) return;
    out += text.substr(0, static_cast<std::size_t>(cols));
    out += "\r\n";
  };
  line(fmt::format("mailrail top — {} — refresh 1 s — q quits", path));
  line("");
  line(fmt::format("{:<10} {:>14} {:>12} {:>14} {:>12}", "stage", "in", "in/s", "out", "out/s"));
  for (const char* stage : {"ingest", "wal", "parse", "dedup", "filter", "forward"}) {
    const auto in = SumForStage(now, "stage_messages_in", stage);
    const auto out_n = SumForStage(now, "stage_messages_out", stage);
    if (!in && !out_n) continue;
    const double in_v = in.value_or(0), out_v = out_n.value_or(0);
    line(fmt::format("{:<10} {:>14.0f} {:>12.0f} {:>14.0f} {:>12.0f}", stage, in_v,
                     (in_v - SumForStage(before, "stage_messages_in", stage).value_or(0)) / seconds, out_v,
                     (out_v - SumForStage(before, "stage_messages_out", stage).value_or(0)) / seconds));
  }
  line("");
  line(fmt::format("{:<44} {:>7} {:>7}", "thread {stages}", "cpu %", "busy %"));
  for (const auto& [k, cpu] : now) {
    if (!k.starts_with("thread_cpu_seconds{")) continue;
    const std::string labels = k.substr(k.find('{'));
    const double busy = Get(now, "thread_busy_rounds" + labels) - Get(before, "thread_busy_rounds" + labels);
    const double idle = Get(now, "thread_idle_rounds" + labels) - Get(before, "thread_idle_rounds" + labels);
    line(fmt::format("{:<44} {:>7.1f} {:>7.1f}", labels, 100 * (cpu - Get(before, k)) / seconds,
                     busy + idle > 0 ? 100 * busy / (busy + idle) : 0.0));
  }
  line("");
  line(fmt::format("{:<24} {:>8} {:>8}  {}", "ring", "fill", "capacity", "fill"));
  for (const auto& [k, v] : now) {
    if (k.rfind("ring_fill{ring=", 0) != 0) continue;
    const std::string ring = k.substr(15, k.size() - 16);
    const double capacity = Get(now, "ring_capacity{ring=" + ring + "}");
    line(fmt::format("{:<24} {:>8.0f} {:>8.0f}  [{}]", ring, v, capacity, Bar(v, capacity, 30)));
  }
  line("");
  line(fmt::format("end-to-end latency: p50 {:.3f} ms  p90 {:.3f} ms  p99 {:.3f} ms  p99.9 {:.3f} ms  max {:.3f} ms",
                   Get(now, "end_to_end_latency_ns_p50") / 1e6, Get(now, "end_to_end_latency_ns_p90") / 1e6,
                   Get(now, "end_to_end_latency_ns_p99") / 1e6, Get(now, "end_to_end_latency_ns_p999") / 1e6,
                   Get(now, "end_to_end_latency_ns_max") / 1e6));
  line(fmt::format("  p99 by part: accepted -> logged {:.3f} ms  logged -> durable {:.3f} ms  durable -> end {:.3f} ms",
                   Get(now, "latency_part_ns_p99{part=accepted_to_logged}") / 1e6,
                   Get(now, "latency_part_ns_p99{part=logged_to_durable}") / 1e6,
                   Get(now, "latency_part_ns_p99{part=durable_to_end}") / 1e6));
  std::string outcomes;
  for (const auto& [k, v] : now) {
    if (k.rfind("messages_final{outcome=", 0) == 0) outcomes += fmt::format("{} {:.0f}  ", k.substr(23, k.size() - 24), v);
  }
  line("final: " + outcomes);
  std::string wal;
  for (const auto& [k, v] : now) {
    if (k.rfind("wal_", 0) == 0 || k.rfind("forward_", 0) == 0) wal += fmt::format("{} {:.0f}  ", k, v);
  }
  if (!wal.empty()) line(wal);
  return out;
}

int RunTop(const SocketFlags& flags) {
  const std::string path = ResolveSocket(flags);
  std::signal(SIGWINCH, [](int) { g_resized = 1; });
  RawTerminal terminal;
  Flat before;
  auto before_time = std::chrono::steady_clock::now();
  for (;;) {
    auto answer = engine::ReadStatsSocket(path, "json");
    const auto [rows, cols] = TerminalSize();
    g_resized = 0;
    if (!answer) {
      fmt::print("\x1b[H\x1b[2Jmailrail top — waiting for the daemon at {} ({})\r\nq quits\r\n", path,
                 answer.error().message);
      before.clear();
    } else if (auto flat = Flatten(*answer); flat) {
      const auto now_time = std::chrono::steady_clock::now();
      const double seconds = std::max(1e-3, std::chrono::duration<double>(now_time - before_time).count());
      fmt::print("{}", Render(*flat, before.empty() ? *flat : before, seconds, path, rows, cols));
      before = std::move(flat).value();
      before_time = now_time;
    }
    std::fflush(stdout);
    // Wait a second for a key (q quits); a resize redraws at once.
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(1);
    while (std::chrono::steady_clock::now() < until && !g_resized) {
      pollfd in{STDIN_FILENO, POLLIN, 0};
      if (poll(&in, 1, 100) > 0) {
        char c = 0;
        if (read(STDIN_FILENO, &c, 1) == 1 && (c == 'q' || c == 'Q')) return 0;
      }
    }
  }
}

}  // namespace

void AddStatsCommands(CLI::App& app) {
  auto flags = std::make_shared<SocketFlags>();
  auto json = std::make_shared<bool>(false);
  auto prom = std::make_shared<bool>(false);
  CLI::App* stats = app.add_subcommand("stats", "Print one snapshot of a running daemon's statistics");
  stats->add_option("--socket", flags->socket, "Stats socket (default: from --config, else mailrail-data/mailrail.sock)");
  stats->add_option("--config", flags->config, "Daemon config file, to find the stats socket");
  auto* j = stats->add_flag("--json", *json, "Print the JSON snapshot as is");
  stats->add_flag("--prom", *prom, "Print Prometheus text format")->excludes(j);
  stats->callback([=] { throw CLI::RuntimeError(RunStats(*flags, *json, *prom)); });

  CLI::App* top = app.add_subcommand("top", "Live view of a running daemon (refreshed every second, q quits)");
  top->add_option("--socket", flags->socket, "Stats socket (default: from --config, else mailrail-data/mailrail.sock)");
  top->add_option("--config", flags->config, "Daemon config file, to find the stats socket");
  top->callback([=] { throw CLI::RuntimeError(RunTop(*flags)); });
}

}  // namespace mailrail::tools
