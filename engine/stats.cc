#include "engine/stats.h"

#include <cmath>
#include <cstdio>
#include <map>

namespace mailrail::engine {
namespace {

void AppendJsonString(std::string_view s, std::string& out) {
  out += '"';
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", c);
      out += buf;
    } else {
      out += c;
    }
  }
  out += '"';
}

void AppendNumber(double v, std::string& out) {
  char buf[32];
  if (!std::isfinite(v)) {
    out += "null";
    return;
  }
  if (v == std::floor(v) && std::fabs(v) < 9e15) {
    std::snprintf(buf, sizeof(buf), "%.0f", v);
  } else {
    std::snprintf(buf, sizeof(buf), "%.6g", v);
  }
  out += buf;
}

}  // namespace

void Snapshot::Quantiles(const std::string& name, const LatencyHistogram::Snapshot& h, Labels labels) {
  Gauge(name + "_p50", static_cast<double>(h.Quantile(0.50)), labels);
  Gauge(name + "_p90", static_cast<double>(h.Quantile(0.90)), labels);
  Gauge(name + "_p99", static_cast<double>(h.Quantile(0.99)), labels);
  Gauge(name + "_p999", static_cast<double>(h.Quantile(0.999)), labels);
  Gauge(name + "_max", static_cast<double>(h.max), labels);
  Counter(name + "_count", static_cast<double>(h.count()), std::move(labels));
}

std::string Snapshot::ToJson() const {
  // Keep first-seen order of names.
  std::vector<std::string> order;
  std::map<std::string, std::vector<const Sample*>> by_name;
  for (const Sample& s : samples_) {
    auto [it, inserted] = by_name.try_emplace(s.name);
    if (inserted) order.push_back(s.name);
    it->second.push_back(&s);
  }
  std::string out = "{";
  bool first = true;
  for (const std::string& name : order) {
    const auto& list = by_name[name];
    if (!first) out += ',';
    first = false;
    AppendJsonString(name, out);
    out += ':';
    if (list.size() == 1 && list[0]->labels.empty()) {
      AppendNumber(list[0]->value, out);
      continue;
    }
    out += '[';
    for (std::size_t i = 0; i < list.size(); ++i) {
      if (i > 0) out += ',';
      out += '{';
      for (const auto& [k, v] : list[i]->labels) {
        AppendJsonString(k, out);
        out += ':';
        AppendJsonString(v, out);
        out += ',';
      }
      out += "\"value\":";
      AppendNumber(list[i]->value, out);
      out += '}';
    }
    out += ']';
  }
  out += "}\n";
  return out;
}

std::string Snapshot::ToPrometheus() const {
  // Samples of one metric must be contiguous after its TYPE line: group by name, first-seen order.
  std::vector<std::string> order;
  std::map<std::string, std::vector<const Sample*>> by_name;
  for (const Sample& s : samples_) {
    auto [it, inserted] = by_name.try_emplace(s.name);
    if (inserted) order.push_back(s.name);
    it->second.push_back(&s);
  }
  std::string out;
  for (const std::string& name : order) {
    const auto& list = by_name[name];
    const std::string metric = "mailrail_" + name;
    if (!list[0]->help.empty()) out += "# HELP " + metric + " " + list[0]->help + "\n";
    out += "# TYPE " + metric + (list[0]->kind == Kind::kCounter ? " counter\n" : " gauge\n");
    for (const Sample* s : list) {
      out += metric;
      if (!s->labels.empty()) {
        out += '{';
        for (std::size_t i = 0; i < s->labels.size(); ++i) {
          if (i > 0) out += ',';
          out += s->labels[i].first + "=";
          AppendJsonString(s->labels[i].second, out);  // Prometheus label values escape like JSON
        }
        out += '}';
      }
      out += ' ';
      AppendNumber(s->value, out);
      out += '\n';
    }
  }
  return out;
}

}  // namespace mailrail::engine
