#pragma once
// HttpClient: a keep-alive connection pool to one downstream origin (http:// or https://), on
// io_uring, with llhttp parsing the responses. One request per connection at a time (no
// pipelining); requests beyond max_connections wait in FIFO order for a free connection.
//
// TLS: OpenSSL over memory BIOs; the peer certificate is verified against the system store (or
// ca_file) and the URL's host name unless verify_peer is false.
// Errors: Send's callback gets a Result: a response (any status) or an Error whose code is
//   "connect", "timeout", "closed" (reset or EOF before a full response), "tls" or "protocol";
//   all of them mean the request may or may not have reached the server.
// Timeouts: request_timeout covers connect, TLS handshake, sending and the whole response.
// HEAD: the response is complete after its headers (its Content-Length describes the object).
//
// Threading: Create on any thread; everything else on the loop thread. The callback runs on the
//   loop thread and may call Send again.
// Lifetime: Shutdown() fails queued and in-flight requests ("closed") and closes the sockets;
//   destroy the client after the loop stopped.

#include <llhttp.h>
#include <netinet/in.h>

#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/base/result.h"
#include "net/event_loop.h"
#include "net/http_message.h"
#include "net/tls.h"

namespace mailrail::net {

struct HttpClientConfig {
  std::string base_url;  // scheme://host[:port][/path-prefix]
  std::size_t max_connections = 4;
  std::chrono::milliseconds request_timeout{10000};
  bool verify_peer = true;
  std::string ca_file;  // PEM bundle for verification; empty: system store
};

struct ClientRequest {
  std::string method = "POST";
  std::string path;  // appended to the base URL's path prefix
  std::vector<HttpHeader> headers;
  std::string body;
  // When set, the body is *body_ref instead (no copy); it must live until the callback runs.
  const std::string* body_ref = nullptr;
  std::string_view body_bytes() const { return body_ref != nullptr ? std::string_view(*body_ref) : body; }
};

struct ClientResponse {
  int status = 0;
  std::vector<HttpHeader> headers;  // names lower-case
  std::string body;
  std::string_view Header(std::string_view lower_name) const;
};

using ResponseCallback = std::function<void(base::Result<ClientResponse>)>;

// The parts of an http(s) URL the client needs.
struct ParsedUrl {
  bool tls = false;
  std::string host;
  std::uint16_t port = 0;
  std::string prefix;  // path without a trailing '/'
};
base::Result<ParsedUrl> ParseHttpUrl(std::string_view url);

class HttpClient {
 public:
  // Resolves the host once (getaddrinfo, blocking) and prepares TLS when the URL is https.
  static base::Result<std::unique_ptr<HttpClient>> Create(EventLoop* loop, HttpClientConfig config);
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  void Send(ClientRequest request, ResponseCallback callback);
  void Shutdown();

  std::size_t open_connections() const { return connections_.size(); }
  std::size_t queued() const { return queue_.size(); }
  const ParsedUrl& url() const { return url_; }

 private:
  struct Connection;
  struct Pending {
    ClientRequest request;
    ResponseCallback callback;
  };

  HttpClient(EventLoop* loop, HttpClientConfig config) : loop_(loop), config_(std::move(config)) {}
  void Pump();
  void Start(Connection* c, Pending pending);
  void WriteRequest(Connection* c);
  void ArmRecv(Connection* c);
  void OnConnect(Connection* c, const io_uring_cqe& cqe);
  void OnRecv(Connection* c, const io_uring_cqe& cqe);
  void OnSend(Connection* c, const io_uring_cqe& cqe);
  void StartSend(Connection* c);
  void Finish(Connection* c, base::Result<ClientResponse> result, bool reusable);
  void Fail(Connection* c, std::string code, std::string message);
  void Close(Connection* c);
  void MaybeDestroy(Connection* c);
  void ScheduleTick();
  static const llhttp_settings_t& ParserSettings();

  EventLoop* loop_;
  HttpClientConfig config_;
  ParsedUrl url_;
  sockaddr_storage address_{};
  socklen_t address_length_ = 0;
  std::shared_ptr<TlsContext> tls_;
  std::deque<Pending> queue_;
  std::vector<Connection*> connections_;
  bool shut_down_ = false;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace mailrail::net
