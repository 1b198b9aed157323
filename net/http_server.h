#pragma once
// HttpServer: HTTP/1.1 over io_uring, parsed by llhttp, optionally over TLS (memory BIOs).
//
// What it does per connection: keep-alive and pipelining (responses always leave in request
// order, even when a later request is answered first), chunked request bodies, Expect:
// 100-continue, limits on header bytes (431), body bytes (413) and open connections (503 then
// close), an idle timeout between requests and a request timeout from a request's first byte to
// its last (a slowloris client gets 408 and is closed), 400 with a short reason for anything llhttp
// rejects (bad request line, bad chunk size, Content-Length together with Transfer-Encoding, ...).
// After an error response the server half-closes and drains the client for a short linger time,
// so the client reads the response instead of a reset.
//
// Handlers: Route(method, path, handler). A handler is called on the loop thread with the request
// (valid only during the call; it may move the body out) and a Responder. It must call
// Responder::Send exactly once, on the loop thread, either before returning or later (e.g. when
// the WAL reports the message durable; post to the loop from other threads). If the connection
// closed in the meantime the response is dropped.
//
// Threading: everything runs on the EventLoop's thread except construction, which may happen on
//   any thread before the loop runs. stats() may be read from any thread.
// Lifetime: create the server, Start() it, run the loop; to stop, call Shutdown() on the loop
//   thread, stop the loop, then destroy the server before the loop.

#include <llhttp.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/base/result.h"
#include "net/counter.h"
#include "net/event_loop.h"
#include "net/http_message.h"
#include "net/tls.h"

namespace mailrail::net {

struct HttpServerConfig {
  std::string bind_address = "127.0.0.1";
  std::uint16_t port = 8080;                      // 0: an ephemeral port (see port())
  std::size_t max_header_bytes = 16 * 1024;       // request line + header fields and values
  std::size_t max_body_bytes = 32 * 1024 * 1024;  // larger bodies get 413
  std::size_t max_connections = 4096;
  std::chrono::milliseconds idle_timeout{60000};
  std::chrono::milliseconds request_timeout{10000};
  std::chrono::milliseconds linger_timeout{2000};  // draining after a closing response
  std::chrono::milliseconds timer_tick{200};
  std::string tls_cert_path;  // both set: HTTPS
  std::string tls_key_path;
  int listen_backlog = 4096;
};

struct HttpServerStats {
  Counter connections_accepted;
  Counter connections_rejected;  // over max_connections
  Counter connections_open;
  Counter requests;
  Counter responses_2xx, responses_4xx, responses_5xx, responses_other;
  Counter bad_requests;       // 400 from the parser
  Counter header_too_large;   // 431
  Counter body_too_large;     // 413
  Counter request_timeouts;   // 408 (slow requests)
  Counter idle_closes;
  Counter tls_failures;
};

class HttpServer;

// Responder: answers one request. Copyable handle; Send at most once, on the loop thread.
class Responder {
 public:
  Responder() = default;
  void Send(HttpResponse response) const;
  bool keep_alive() const { return keep_alive_; }

 private:
  friend class HttpServer;
  Responder(HttpServer* server, std::uint64_t connection, std::uint64_t seq, bool keep_alive)
      : server_(server), connection_(connection), seq_(seq), keep_alive_(keep_alive) {}
  HttpServer* server_ = nullptr;
  std::uint64_t connection_ = 0;
  std::uint64_t seq_ = 0;
  bool keep_alive_ = true;
};

using HttpHandler = std::function<void(HttpRequest& request, Responder responder)>;

class HttpServer final : public CompletionHandler {
 public:
  // Binds and listens (so the port is known at once); accepting starts with Start().
  static base::Result<std::unique_ptr<HttpServer>> Create(EventLoop* loop, HttpServerConfig config);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // `path` is matched exactly, or, when it ends with '*', as a prefix (the handler reads the rest
  // from request.path()). Routes are tried in the order they were added.
  void Route(std::string method, std::string path, HttpHandler handler);
  void Start();
  void Shutdown();

  std::uint16_t port() const { return port_; }
  bool is_tls() const { return tls_ != nullptr; }
  const HttpServerStats& stats() const { return stats_; }
  const HttpServerConfig& config() const { return config_; }
  EventLoop* loop() const { return loop_; }

  void OnCompletion(const io_uring_cqe& cqe, unsigned tag) override;

 private:
  friend class Responder;
  struct Connection;
  struct RouteEntry {
    std::string method;
    std::string path;
    HttpHandler handler;
  };

  HttpServer(EventLoop* loop, HttpServerConfig config) : loop_(loop), config_(std::move(config)) {}
  void ArmAccept();
  void OnAccept(int fd);
  void ScheduleTick();
  void Tick();
  void Complete(std::uint64_t connection, std::uint64_t seq, bool keep_alive, HttpResponse response);

  // Connection machinery (http_server.cc).
  void ArmRecv(Connection* c);
  void OnRecv(Connection* c, const io_uring_cqe& cqe);
  void OnSend(Connection* c, const io_uring_cqe& cqe);
  void OnBytes(Connection* c, const char* data, std::size_t size);
  void Parse(Connection* c, const char* data, std::size_t size);
  void Dispatch(Connection* c);
  void QueueError(Connection* c, int status, std::string_view reason);
  void FlushReady(Connection* c);
  void WriteOut(Connection* c, std::string_view bytes);
  void StartSend(Connection* c);
  void BeginLinger(Connection* c);
  void Close(Connection* c);
  void MaybeDestroy(Connection* c);
  void CountResponse(int status);
  static const llhttp_settings_t& ParserSettings();

  EventLoop* loop_;
  HttpServerConfig config_;
  int listen_fd_ = -1;
  std::uint16_t port_ = 0;
  bool multishot_accept_ = true;
  bool accepting_ = false;
  bool shut_down_ = false;
  std::shared_ptr<TlsContext> tls_;
  std::vector<RouteEntry> routes_;
  std::uint64_t next_connection_id_ = 1;
  std::unordered_map<std::uint64_t, Connection*> connections_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
  HttpServerStats stats_;
};

}  // namespace mailrail::net
