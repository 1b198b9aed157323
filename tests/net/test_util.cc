#include "tests/net/test_util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <future>

namespace mailrail::net::testing {

LoopThread::LoopThread(EventLoopConfig config) {
  auto loop = EventLoop::Create(config);
  MR_CHECK(loop.has_value()) << loop.error().message;
  loop_ = std::move(loop.value());
}

LoopThread::~LoopThread() { Stop(); }

void LoopThread::Start() {
  thread_ = std::thread([this] { loop_->Run(); });
}

void LoopThread::Call(std::function<void()> fn) {
  std::promise<void> done;
  loop_->Post([&] {
    fn();
    done.set_value();
  });
  done.get_future().wait();
}

void LoopThread::Stop() {
  if (!thread_.joinable()) return;
  loop_->Stop();
  thread_.join();
}

ServerHarness::ServerHarness(HttpServerConfig config, const std::function<void(HttpServer&)>& setup,
                             EventLoopConfig loop_config)
    : thread_(loop_config) {
  config.bind_address = "127.0.0.1";
  config.port = 0;
  auto server = HttpServer::Create(thread_.loop(), std::move(config));
  MR_CHECK(server.has_value()) << server.error().message;
  server_ = std::move(server.value());
  setup(*server_);
  server_->Start();
  thread_.Start();
}

ServerHarness::~ServerHarness() {
  thread_.Call([this] { server_->Shutdown(); });
  thread_.Stop();
  server_.reset();
}

std::string ServerHarness::url(std::string_view path) const {
  return (server_->is_tls() ? "https://127.0.0.1:" : "http://127.0.0.1:") + std::to_string(port()) +
         std::string(path);
}

RawClient::RawClient(std::uint16_t port) {
  fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd_);
    fd_ = -1;
  }
}

RawClient::~RawClient() {
  if (fd_ >= 0) ::close(fd_);
}

bool RawClient::Send(std::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n <= 0) return false;
    bytes.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

namespace {
// Reads once with a deadline; returns bytes read, 0 on close, -1 on timeout/error.
ssize_t ReadSome(int fd, std::string& out, std::chrono::steady_clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
  if (left.count() <= 0) return -1;
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) return -1;
  char buf[65536];
  const ssize_t n = ::read(fd, buf, sizeof(buf));
  if (n < 0) return 0;  // reset counts as closed
  out.append(buf, static_cast<std::size_t>(n));
  return n;
}
}  // namespace

std::string RawClient::ReadUntilClose(int timeout_ms) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (ReadSome(fd_, buffered_, deadline) > 0) {
  }
  return std::exchange(buffered_, {});
}

std::string RawClient::ReadResponses(int count, int timeout_ms) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (CountResponses(buffered_) < count) {
    if (ReadSome(fd_, buffered_, deadline) <= 0) break;
  }
  return std::exchange(buffered_, {});
}

std::string RawClient::ReadUntil(std::string_view marker, int timeout_ms) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (buffered_.find(marker) == std::string::npos) {
    if (ReadSome(fd_, buffered_, deadline) <= 0) break;
  }
  return std::exchange(buffered_, {});
}

bool RawClient::WaitClosed(int timeout_ms) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    const ssize_t n = ReadSome(fd_, buffered_, deadline);
    if (n == 0) return true;
    if (n < 0) return false;
  }
}

int CountResponses(std::string_view data) {
  int count = 0;
  while (true) {
    const std::size_t end = data.find("\r\n\r\n");
    if (end == std::string_view::npos) return count;
    std::string_view head = data.substr(0, end);
    std::size_t length = 0;
    for (std::string_view key : {"Content-Length: ", "content-length: "}) {
      const std::size_t at = head.find(key);
      if (at != std::string_view::npos) length = std::strtoul(std::string(head.substr(at + key.size())).c_str(), nullptr, 10);
    }
    if (head.starts_with("HTTP/1.1 100")) length = 0;
    if (data.size() < end + 4 + length) return count;
    if (!head.starts_with("HTTP/1.1 100")) ++count;
    data.remove_prefix(end + 4 + length);
  }
}

int FirstStatus(std::string_view data) {
  if (data.size() < 12 || !data.starts_with("HTTP/1.")) return 0;
  return std::atoi(std::string(data.substr(9, 3)).c_str());
}

CommandResult RunCommand(const std::string& command, int timeout_s) {
  std::string quoted = "'";
  for (const char c : command) {
    if (c == '\'') {
      quoted += "'\\''";
    } else {
      quoted += c;
    }
  }
  quoted += "'";
  const std::string full = "timeout -k 2 " + std::to_string(timeout_s) + " /bin/sh -c " + quoted + " 2>&1";
  CommandResult result;
  FILE* pipe = ::popen(full.c_str(), "r");
  if (pipe == nullptr) return result;
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), pipe)) > 0) result.output.append(buf, n);
  const int status = ::pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

TempDir::TempDir() {
  char tmpl[] = "/tmp/mailrail-net-XXXXXX";
  path_ = ::mkdtemp(tmpl);
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

ChildProcess::ChildProcess(const std::vector<std::string>& argv) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return;
  pid_ = ::fork();
  if (pid_ == 0) {
    ::dup2(fds[1], STDOUT_FILENO);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  ::close(fds[1]);
  stdout_fd_ = fds[0];
}

ChildProcess::~ChildProcess() {
  if (pid_ > 0) {
    ::kill(pid_, SIGTERM);
    for (int i = 0; i < 100; ++i) {
      if (::waitpid(pid_, nullptr, WNOHANG) == pid_) {
        pid_ = -1;
        break;
      }
      pollfd none{-1, 0, 0};
      ::poll(&none, 0, 20);  // bounded reap wait, not synchronisation of the test itself
    }
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  if (stdout_fd_ >= 0) ::close(stdout_fd_);
}

std::string ChildProcess::ReadLine(int timeout_ms) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (buffered_.find('\n') == std::string::npos) {
    if (ReadSome(stdout_fd_, buffered_, deadline) <= 0) return {};
  }
  const std::size_t nl = buffered_.find('\n');
  std::string line = buffered_.substr(0, nl);
  buffered_.erase(0, nl + 1);
  return line;
}

std::uint16_t StartDownstream(std::unique_ptr<ChildProcess>& process, bool quiet) {
  std::vector<std::string> argv = {Python(), ScriptDir() + "/downstream.py"};
  if (quiet) argv.push_back("--quiet");
  process = std::make_unique<ChildProcess>(argv);
  const std::string line = process->ReadLine();
  if (!line.starts_with("PORT ")) return 0;
  return static_cast<std::uint16_t>(std::atoi(line.c_str() + 5));
}

std::string HttpExchange(std::uint16_t port, std::string_view method, std::string_view path, std::string_view body) {
  RawClient client(port);
  std::string request = std::string(method) + " " + std::string(path) +
                        " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: " +
                        std::to_string(body.size()) + "\r\n\r\n" + std::string(body);
  if (!client.Send(request)) return {};
  const std::string response = client.ReadUntilClose();
  const std::size_t at = response.find("\r\n\r\n");
  return at == std::string::npos ? std::string() : response.substr(at + 4);
}

std::string ScriptDir() { return MAILRAIL_NET_TEST_SCRIPTS; }

std::string Python() { return "/usr/bin/python3"; }

}  // namespace mailrail::net::testing
