#pragma once
// Stats: one snapshot of everything the daemon counts, rendered as JSON (default) or Prometheus
// text. Components do not share counters: each thread owns plain counters, and a StatsSource
// registered with the StatsRegistry reads them (relaxed loads) into a Snapshot when asked.
//
// Naming: a sample is a metric name (snake_case, no "mailrail_" prefix: Prometheus output adds
// it), optional labels, a value and a kind. JSON groups samples by name: an unlabelled sample is
// a number; labelled samples become an array of {label: value, ..., "value": v}.
// Threading: StatsRegistry::Add before the daemon starts; Collect from any thread (the stats
//   socket thread, the control API) while the pipeline runs.

#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "engine/histogram.h"

namespace mailrail::engine {

using Labels = std::vector<std::pair<std::string, std::string>>;

class Snapshot {
 public:
  enum class Kind { kCounter, kGauge };
  struct Sample {
    std::string name;
    Labels labels;
    double value = 0;
    Kind kind = Kind::kCounter;
    std::string help;
  };

  void Counter(std::string name, double value, Labels labels = {}, std::string help = {}) {
    samples_.push_back(Sample{std::move(name), std::move(labels), value, Kind::kCounter, std::move(help)});
  }
  void Gauge(std::string name, double value, Labels labels = {}, std::string help = {}) {
    samples_.push_back(Sample{std::move(name), std::move(labels), value, Kind::kGauge, std::move(help)});
  }
  // p50, p90, p99, p99.9, max and count of a histogram, as gauges `<name>_p50` ... `<name>_count`.
  void Quantiles(const std::string& name, const LatencyHistogram::Snapshot& h, Labels labels = {});

  const std::vector<Sample>& samples() const { return samples_; }
  std::string ToJson() const;
  std::string ToPrometheus() const;

 private:
  std::vector<Sample> samples_;
};

class StatsRegistry {
 public:
  using Source = std::function<void(Snapshot&)>;
  void Add(Source source) {
    std::lock_guard lock(mutex_);
    sources_.push_back(std::move(source));
  }
  Snapshot Collect() const {
    std::lock_guard lock(mutex_);
    Snapshot snapshot;
    for (const auto& source : sources_) source(snapshot);
    return snapshot;
  }

 private:
  mutable std::mutex mutex_;  // taken per snapshot (a few per second), never on the hot path
  std::vector<Source> sources_;
};

}  // namespace mailrail::engine
