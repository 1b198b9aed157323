#pragma once
// Helpers for net tests: an event loop with an HTTP server on its own thread, a blocking raw
// socket client with bounded waits, and running a shell command with a timeout.

#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <sys/types.h>

#include "net/event_loop.h"
#include "net/http_server.h"

namespace mailrail::net::testing {

// Runs an EventLoop on a thread; Call() runs a function on the loop thread and waits for it.
class LoopThread {
 public:
  explicit LoopThread(EventLoopConfig config = {});
  ~LoopThread();
  EventLoop* loop() { return loop_.get(); }
  void Start();
  void Call(std::function<void()> fn);
  void Stop();

 private:
  std::unique_ptr<EventLoop> loop_;
  std::thread thread_;
};

// A server on 127.0.0.1 with an ephemeral port, configured by `setup` before it starts.
class ServerHarness {
 public:
  ServerHarness(HttpServerConfig config, const std::function<void(HttpServer&)>& setup,
                EventLoopConfig loop_config = {});
  ~ServerHarness();
  std::uint16_t port() const { return server_->port(); }
  HttpServer& server() { return *server_; }
  LoopThread& thread() { return thread_; }
  std::string url(std::string_view path) const;

 private:
  LoopThread thread_;
  std::unique_ptr<HttpServer> server_;
};

// Blocking TCP client with a deadline on every read.
class RawClient {
 public:
  explicit RawClient(std::uint16_t port);
  ~RawClient();
  bool connected() const { return fd_ >= 0; }
  bool Send(std::string_view bytes);
  // Reads until the peer closes or `timeout_ms` passes; returns what arrived.
  std::string ReadUntilClose(int timeout_ms = 5000);
  // Reads until `count` complete responses (by Content-Length) arrived, or timeout.
  std::string ReadResponses(int count, int timeout_ms = 5000);
  // Reads until `marker` appeared or timeout; returns everything read so far and consumes it.
  std::string ReadUntil(std::string_view marker, int timeout_ms = 5000);
  // True when the peer closed (read returns 0 or reset) within the timeout.
  bool WaitClosed(int timeout_ms = 5000);

 private:
  int fd_ = -1;
  std::string buffered_;
};

// Number of complete HTTP responses at the start of `data`.
int CountResponses(std::string_view data);
// Status code of the first response in `data`, or 0.
int FirstStatus(std::string_view data);

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr
};
// Runs `command` with /bin/sh, killed after timeout_s seconds.
CommandResult RunCommand(const std::string& command, int timeout_s = 30);

// A child process started with fork/exec, its stdout on a pipe; killed (SIGTERM, then SIGKILL) by
// PID and reaped at destruction.
class ChildProcess {
 public:
  explicit ChildProcess(const std::vector<std::string>& argv);
  ~ChildProcess();
  pid_t pid() const { return pid_; }
  // One line of stdout without the newline, or "" after timeout/EOF.
  std::string ReadLine(int timeout_ms = 10000);

 private:
  pid_t pid_ = -1;
  int stdout_fd_ = -1;
  std::string buffered_;
};

// Starts tests/net/downstream.py and returns its port (0 on failure).
std::uint16_t StartDownstream(std::unique_ptr<ChildProcess>& process, bool quiet = false);
// A one-shot HTTP/1.1 exchange with Connection: close; returns the response body ("" on failure).
std::string HttpExchange(std::uint16_t port, std::string_view method, std::string_view path, std::string_view body = {});

// A fresh temporary directory, removed at destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Directory of the test scripts (tests/net in the source tree).
std::string ScriptDir();
// The system Python 3 (with Debian's python3-httpx).
std::string Python();

}  // namespace mailrail::net::testing
