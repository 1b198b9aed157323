#include "engine/stats_socket.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace mailrail::engine {
namespace {

base::Result<sockaddr_un> Address(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) {
    return base::MakeError("stats.socket_path", "stats socket path is too long (max 107 bytes): " + path);
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return addr;
}

void WriteAll(int fd, const std::string& text) {
  std::size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::send(fd, text.data() + done, text.size() - done, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // the client went away: nothing to do
    done += static_cast<std::size_t>(n);
  }
}

}  // namespace

base::Result<std::unique_ptr<StatsSocket>> StatsSocket::Start(std::string path, mode_t mode,
                                                              const StatsRegistry* registry) {
  auto addr = Address(path);
  if (!addr) return addr.error();
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return base::MakeError("stats.socket", std::string("socket: ") + std::strerror(errno));
  if (::bind(fd, reinterpret_cast<const sockaddr*>(&*addr), sizeof(sockaddr_un)) != 0) {
    if (errno != EADDRINUSE) {
      const std::string message = std::strerror(errno);
      ::close(fd);
      return base::MakeError("stats.socket_bind", "cannot bind stats socket " + path + ": " + message);
    }
    // A file is there: a live daemon answers on it, a stale one (after a kill) does not.
    const int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const bool live = ::connect(probe, reinterpret_cast<const sockaddr*>(&*addr), sizeof(sockaddr_un)) == 0;
    ::close(probe);
    if (live) {
      ::close(fd);
      return base::MakeError("stats.socket_in_use", "stats socket " + path + " is in use by a running daemon");
    }
    ::unlink(path.c_str());
    if (::bind(fd, reinterpret_cast<const sockaddr*>(&*addr), sizeof(sockaddr_un)) != 0) {
      const std::string message = std::strerror(errno);
      ::close(fd);
      return base::MakeError("stats.socket_bind", "cannot bind stats socket " + path + ": " + message);
    }
  }
  if (::chmod(path.c_str(), mode) != 0 || ::listen(fd, 16) != 0) {
    const std::string message = std::strerror(errno);
    ::close(fd);
    return base::MakeError("stats.socket_bind", "cannot listen on stats socket " + path + ": " + message);
  }
  const int stop_fd = ::eventfd(0, EFD_CLOEXEC);
  std::unique_ptr<StatsSocket> socket(new StatsSocket(std::move(path), fd, stop_fd, registry));
  socket->thread_ = std::thread([raw = socket.get()] { raw->Serve(); });
  return socket;
}

StatsSocket::StatsSocket(std::string path, int listen_fd, int stop_fd, const StatsRegistry* registry)
    : path_(std::move(path)), listen_fd_(listen_fd), stop_fd_(stop_fd), registry_(registry) {}

StatsSocket::~StatsSocket() { Stop(); }

void StatsSocket::Stop() {
  if (!thread_.joinable()) return;
  const std::uint64_t one = 1;
  (void)::write(stop_fd_, &one, sizeof(one));
  thread_.join();
  ::close(listen_fd_);
  ::close(stop_fd_);
  ::unlink(path_.c_str());
}

void StatsSocket::Serve() {
  for (;;) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents != 0) return;
    const int client = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (client < 0) continue;
    // The request is optional: wait briefly for a format line, default to JSON.
    char request[64] = {};
    pollfd in{client, POLLIN, 0};
    if (::poll(&in, 1, 20) > 0) (void)::recv(client, request, sizeof(request) - 1, MSG_DONTWAIT);
    const bool prometheus = std::strncmp(request, "prom", 4) == 0;
    const Snapshot snapshot = registry_->Collect();
    WriteAll(client, prometheus ? snapshot.ToPrometheus() : snapshot.ToJson());
    ::close(client);
  }
}

base::Result<std::string> ReadStatsSocket(const std::string& path, const std::string& format) {
  auto addr = Address(path);
  if (!addr) return addr.error();
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || ::connect(fd, reinterpret_cast<const sockaddr*>(&*addr), sizeof(sockaddr_un)) != 0) {
    const std::string message = std::strerror(errno);
    if (fd >= 0) ::close(fd);
    return base::MakeError("stats.connect", "cannot connect to stats socket " + path + ": " + message +
                                                " (is the daemon running? see stats.socket in the config)");
  }
  const std::string request = format + "\n";
  WriteAll(fd, request);
  std::string answer;
  char buf[16384];
  for (;;) {
    const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    answer.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return answer;
}

}  // namespace mailrail::engine
