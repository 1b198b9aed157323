#pragma once
// StatsSocket: a Unix domain socket that answers each connection with one snapshot of the
// StatsRegistry and closes it. A client that writes "prometheus\n" (or "prom\n") first gets
// Prometheus text; one that writes "json\n" or nothing within 20 ms gets JSON.
//
// Threading: one background thread accepts and answers connections one at a time (a snapshot
//   takes microseconds); Stop() from any thread ends it. The registry must outlive the socket.
// Files: the socket file is created with `mode` (default 0660) and removed on Stop; a stale file
//   left by a killed daemon is replaced, a live one (another daemon answering) is an error.

#include <sys/types.h>

#include <string>
#include <thread>

#include "engine/base/result.h"
#include "engine/stats.h"

namespace mailrail::engine {

class StatsSocket {
 public:
  static base::Result<std::unique_ptr<StatsSocket>> Start(std::string path, mode_t mode, const StatsRegistry* registry);
  ~StatsSocket();
  void Stop();
  const std::string& path() const { return path_; }

 private:
  StatsSocket(std::string path, int listen_fd, int stop_fd, const StatsRegistry* registry);
  void Serve();

  std::string path_;
  int listen_fd_;
  int stop_fd_;  // eventfd: written by Stop to wake the accept loop
  const StatsRegistry* registry_;
  std::thread thread_;
};

// Client side: connects, asks for `format` ("json" or "prometheus"), returns the whole answer.
base::Result<std::string> ReadStatsSocket(const std::string& path, const std::string& format);

}  // namespace mailrail::engine
