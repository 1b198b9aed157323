#include "net/http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "engine/base/check.h"

namespace mailrail::net {
namespace {

constexpr unsigned kTagAccept = 1;
constexpr unsigned kTagRecv = 1;
constexpr unsigned kTagSend = 2;

enum class HeaderState { kNone, kField, kValue };

void ToLowerAppend(std::string& out, const char* data, std::size_t size) {
  for (std::size_t i = 0; i < size; ++i) {
    char c = data[i];
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    out += c;
  }
}

}  // namespace

// One accepted socket. Owned by the server's map; freed when closed and no operation is pending.
struct HttpServer::Connection final : CompletionHandler {
  HttpServer* server = nullptr;
  std::uint64_t id = 0;
  int fd = -1;
  int pending_ops = 0;
  bool recv_armed = false;
  bool closing = false;       // shut down; waiting for pending operations
  bool lingering = false;     // final response sent, draining input until EOF or deadline
  bool close_after_flush = false;
  bool input_done = false;    // no more requests are parsed (error or final request seen)
  Clock::time_point last_activity;
  Clock::time_point request_started;
  Clock::time_point linger_deadline;
  bool in_request = false;

  llhttp_t parser{};
  HttpRequest request;
  HeaderState header_state = HeaderState::kNone;
  std::size_t header_bytes = 0;
  int error_status = 0;
  std::string error_reason;

  std::unique_ptr<TlsSession> tls;
  std::string plaintext;  // decrypted input (TLS only)

  std::vector<char> recv_buffer;  // fallback when the loop has no provided-buffer ring

  // Ordered responses: slot i answers request seq (first_unsent_seq + i).
  std::deque<std::optional<std::string>> responses;
  std::uint64_t next_seq = 0;
  std::uint64_t first_unsent_seq = 0;
  std::optional<std::uint64_t> close_after_seq;

  std::string out;      // bytes waiting to be sent
  std::string sending;  // bytes handed to the kernel
  std::size_t sent = 0;
  bool send_in_flight = false;

  void OnCompletion(const io_uring_cqe& cqe, unsigned tag) override {
    --pending_ops;
    if (tag == kTagRecv) {
      server->OnRecv(this, cqe);
    } else {
      server->OnSend(this, cqe);
    }
  }
};

base::Result<std::unique_ptr<HttpServer>> HttpServer::Create(EventLoop* loop, HttpServerConfig config) {
  std::unique_ptr<HttpServer> server(new HttpServer(loop, std::move(config)));
  const HttpServerConfig& cfg = server->config_;
  if (!cfg.tls_cert_path.empty() || !cfg.tls_key_path.empty()) {
    auto tls = TlsContext::CreateServer(cfg.tls_cert_path, cfg.tls_key_path);
    if (!tls) return tls.error();
    server->tls_ = std::move(tls.value());
  }
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(cfg.port);
  if (::inet_pton(AF_INET, cfg.bind_address.c_str(), &addr.sin_addr) != 1) {
    return base::MakeError("bind_address", "not an IPv4 address: " + cfg.bind_address);
  }
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return base::MakeError("socket", std::strerror(errno));
  server->listen_fd_ = fd;
  const int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return base::MakeError("bind", cfg.bind_address + ":" + std::to_string(cfg.port) + ": " + std::strerror(errno));
  }
  if (::listen(fd, cfg.listen_backlog) != 0) return base::MakeError("listen", std::strerror(errno));
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  server->port_ = ntohs(addr.sin_port);
  return server;
}

HttpServer::~HttpServer() {
  *alive_ = false;
  for (auto& [id, c] : connections_) {
    if (c->fd >= 0) ::close(c->fd);
    delete c;
  }
  if (listen_fd_ >= 0) ::close(listen_fd_);
}

void HttpServer::Route(std::string method, std::string path, HttpHandler handler) {
  routes_.push_back({std::move(method), std::move(path), std::move(handler)});
}

void HttpServer::Start() {
  accepting_ = true;
  ArmAccept();
  ScheduleTick();
}

void HttpServer::Shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  accepting_ = false;
  ::shutdown(listen_fd_, SHUT_RDWR);  // completes the pending accept
  std::vector<Connection*> all;
  for (auto& [id, c] : connections_) all.push_back(c);
  for (Connection* c : all) Close(c);
}

void HttpServer::ArmAccept() {
  io_uring_sqe* sqe = loop_->Prepare(this, kTagAccept);
  if (multishot_accept_) {
    io_uring_prep_multishot_accept(sqe, listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
  } else {
    io_uring_prep_accept(sqe, listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
  }
}

void HttpServer::OnCompletion(const io_uring_cqe& cqe, unsigned tag) {
  MR_CHECK(tag == kTagAccept) << "unexpected server completion tag " << tag;
  const bool more = (cqe.flags & IORING_CQE_F_MORE) != 0;
  if (cqe.res >= 0) {
    OnAccept(cqe.res);
  } else if (cqe.res == -EINVAL && multishot_accept_ && !more) {
    multishot_accept_ = false;  // kernel without multishot accept: one accept per completion
  }
  if (!more && accepting_) {
    if (cqe.res == -EMFILE || cqe.res == -ENFILE || cqe.res == -ENOBUFS || cqe.res == -ENOMEM) {
      std::weak_ptr<bool> alive = alive_;
      loop_->RunAfter(config_.timer_tick, [this, alive] {
        if (!alive.expired() && accepting_) ArmAccept();
      });
    } else {
      ArmAccept();
    }
  }
}

void HttpServer::OnAccept(int fd) {
  if (!accepting_) {
    ::close(fd);
    return;
  }
  if (connections_.size() >= config_.max_connections) {
    stats_.connections_rejected.Add();
    static constexpr char kBusy[] =
        "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\nConnection: close\r\n\r\n";
    [[maybe_unused]] ssize_t n = ::send(fd, kBusy, sizeof(kBusy) - 1, MSG_DONTWAIT | MSG_NOSIGNAL);
    ::close(fd);
    return;
  }
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  auto* c = new Connection;
  c->server = this;
  c->id = next_connection_id_++;
  c->fd = fd;
  c->last_activity = loop_->now();
  llhttp_init(&c->parser, HTTP_REQUEST, &ParserSettings());
  c->parser.data = c;
  if (tls_ != nullptr) {
    auto session = TlsSession::Create(tls_, {});
    if (!session) {
      stats_.tls_failures.Add();
      ::close(fd);
      delete c;
      return;
    }
    c->tls = std::move(session.value());
  }
  if (!loop_->has_buffer_ring()) c->recv_buffer.resize(loop_->buffer_size());
  connections_.emplace(c->id, c);
  stats_.connections_accepted.Add();
  stats_.connections_open.Set(connections_.size());
  ArmRecv(c);
}

void HttpServer::ArmRecv(Connection* c) {
  io_uring_sqe* sqe = loop_->Prepare(c, kTagRecv);
  if (loop_->has_buffer_ring()) {
    io_uring_prep_recv_multishot(sqe, c->fd, nullptr, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = EventLoop::kBufferGroup;
  } else {
    io_uring_prep_recv(sqe, c->fd, c->recv_buffer.data(), c->recv_buffer.size(), 0);
  }
  c->recv_armed = true;
  ++c->pending_ops;
}

void HttpServer::OnRecv(Connection* c, const io_uring_cqe& cqe) {
  const bool more = (cqe.flags & IORING_CQE_F_MORE) != 0;
  if (more) {
    ++c->pending_ops;  // a multishot receive stays pending until a completion without F_MORE
  } else {
    c->recv_armed = false;
  }
  if (cqe.res > 0) {
    const std::size_t n = static_cast<std::size_t>(cqe.res);
    if (cqe.flags & IORING_CQE_F_BUFFER) {
      std::span<char> data = loop_->BufferOf(cqe, n);
      if (!c->closing) OnBytes(c, data.data(), n);
      loop_->RecycleBuffer(cqe);
    } else if (!c->closing) {
      OnBytes(c, c->recv_buffer.data(), n);
    }
    if (!c->recv_armed && !c->closing) ArmRecv(c);
  } else if (cqe.res == -ENOBUFS && !c->closing) {
    if (!c->recv_armed) ArmRecv(c);  // provided buffers ran dry for a moment
  } else {
    // EOF or error: the peer is gone (or we shut the socket down).
    Close(c);
  }
  MaybeDestroy(c);
}

void HttpServer::OnBytes(Connection* c, const char* data, std::size_t size) {
  c->last_activity = loop_->now();
  if (c->lingering || c->input_done) return;  // draining: discard
  if (c->tls != nullptr) {
    c->plaintext.clear();
    auto status = c->tls->Receive({data, size}, c->plaintext);
    std::string cipher;
    c->tls->TakeOutput(cipher);
    if (!cipher.empty()) {
      c->out += cipher;
      StartSend(c);
    }
    if (!status) {
      stats_.tls_failures.Add();
      Close(c);
      return;
    }
    if (!c->plaintext.empty()) Parse(c, c->plaintext.data(), c->plaintext.size());
    return;
  }
  Parse(c, data, size);
}

void HttpServer::Parse(Connection* c, const char* data, std::size_t size) {
  const llhttp_errno_t err = llhttp_execute(&c->parser, data, size);
  if (err == HPE_OK || c->input_done) return;
  if (err == HPE_PAUSED_UPGRADE) {
    c->input_done = true;  // the request before the upgrade was dispatched; no protocol switch
    if (!c->close_after_seq) c->close_after_seq = c->next_seq == 0 ? 0 : c->next_seq - 1;
    FlushReady(c);
    return;
  }
  const int status = c->error_status != 0 ? c->error_status : 400;
  const std::string reason = c->error_status != 0 ? c->error_reason : llhttp_get_error_reason(&c->parser);
  if (c->error_status == 0) stats_.bad_requests.Add();
  QueueError(c, status, reason);
}

void HttpServer::QueueError(Connection* c, int status, std::string_view reason) {
  c->input_done = true;
  c->in_request = false;
  const std::uint64_t seq = c->next_seq++;
  c->responses.emplace_back();
  c->close_after_seq = seq;
  HttpResponse response = HttpResponse::Text(status, std::string(reason) + "\n");
  response.close = true;
  CountResponse(status);
  std::string bytes;
  AppendResponse(bytes, response, false);
  c->responses.back() = std::move(bytes);
  FlushReady(c);
}

void HttpServer::Dispatch(Connection* c) {
  stats_.requests.Add();
  const std::uint64_t seq = c->next_seq++;
  c->responses.emplace_back();
  const bool keep_alive = llhttp_should_keep_alive(&c->parser) != 0;
  c->request.keep_alive = keep_alive;
  if (!keep_alive) {
    c->close_after_seq = seq;
    c->input_done = true;
  }
  const std::string_view path = c->request.path();
  const RouteEntry* found = nullptr;
  bool path_known = false;
  for (const auto& route : routes_) {
    const bool matches = route.path.ends_with('*')
                             ? path.starts_with(std::string_view(route.path).substr(0, route.path.size() - 1))
                             : route.path == path;
    if (!matches) continue;
    path_known = true;
    if (route.method == c->request.method) {
      found = &route;
      break;
    }
  }
  Responder responder(this, c->id, seq, keep_alive);
  if (found != nullptr) {
    found->handler(c->request, responder);
  } else if (path_known) {
    responder.Send(HttpResponse::Text(405, "method not allowed\n"));
  } else {
    responder.Send(HttpResponse::Text(404, "not found\n"));
  }
}

void Responder::Send(HttpResponse response) const {
  MR_CHECK(server_ != nullptr) << "Send on an empty Responder";
  server_->Complete(connection_, seq_, keep_alive_, std::move(response));
}

void HttpServer::Complete(std::uint64_t connection, std::uint64_t seq, bool keep_alive, HttpResponse response) {
  auto it = connections_.find(connection);
  CountResponse(response.status);
  if (it == connections_.end()) return;  // the client left before the answer
  Connection* c = it->second;
  if (c->closing || seq < c->first_unsent_seq) return;
  const std::size_t index = seq - c->first_unsent_seq;
  MR_CHECK(index < c->responses.size()) << "response for an unknown request seq=" << seq;
  MR_CHECK(!c->responses[index].has_value()) << "second response for request seq=" << seq;
  if (response.close && (!c->close_after_seq || *c->close_after_seq > seq)) {
    c->close_after_seq = seq;
    c->input_done = true;
  }
  const bool last = c->close_after_seq && *c->close_after_seq == seq;
  std::string bytes;
  AppendResponse(bytes, response, keep_alive && !last);
  c->responses[index] = std::move(bytes);
  FlushReady(c);
}

void HttpServer::CountResponse(int status) {
  if (status >= 200 && status < 300) {
    stats_.responses_2xx.Add();
  } else if (status >= 400 && status < 500) {
    stats_.responses_4xx.Add();
  } else if (status >= 500) {
    stats_.responses_5xx.Add();
  } else {
    stats_.responses_other.Add();
  }
}

void HttpServer::FlushReady(Connection* c) {
  while (!c->responses.empty() && c->responses.front().has_value() && !c->close_after_flush) {
    WriteOut(c, *c->responses.front());
    c->responses.pop_front();
    const std::uint64_t seq = c->first_unsent_seq++;
    if (c->close_after_seq && *c->close_after_seq == seq) {
      c->close_after_flush = true;
      c->responses.clear();
    }
  }
  StartSend(c);
  if (c->close_after_flush && !c->send_in_flight && c->out.empty()) BeginLinger(c);
}

void HttpServer::WriteOut(Connection* c, std::string_view bytes) {
  if (c->tls != nullptr) {
    if (!c->tls->Send(bytes)) {
      stats_.tls_failures.Add();
      Close(c);
      return;
    }
    c->tls->TakeOutput(c->out);
  } else {
    c->out.append(bytes);
  }
}

void HttpServer::StartSend(Connection* c) {
  if (c->send_in_flight || c->closing) return;
  if (c->sending.size() == c->sent) {
    if (c->out.empty()) return;
    c->sending.clear();
    c->sending.swap(c->out);
    c->sent = 0;
  }
  io_uring_sqe* sqe = loop_->Prepare(c, kTagSend);
  io_uring_prep_send(sqe, c->fd, c->sending.data() + c->sent, c->sending.size() - c->sent, MSG_NOSIGNAL);
  c->send_in_flight = true;
  ++c->pending_ops;
}

void HttpServer::OnSend(Connection* c, const io_uring_cqe& cqe) {
  c->send_in_flight = false;
  if (cqe.res < 0) {
    Close(c);
  } else if (!c->closing) {
    c->sent += static_cast<std::size_t>(cqe.res);  // short writes resume from here
    StartSend(c);
    if (!c->send_in_flight && c->close_after_flush) BeginLinger(c);
  }
  MaybeDestroy(c);
}

void HttpServer::BeginLinger(Connection* c) {
  if (c->lingering || c->closing) return;
  c->lingering = true;
  c->linger_deadline = loop_->now() + config_.linger_timeout;
  ::shutdown(c->fd, SHUT_WR);  // FIN after the response; keep reading so the client sees no reset
}

void HttpServer::Close(Connection* c) {
  if (c->closing) return;
  c->closing = true;
  ::shutdown(c->fd, SHUT_RDWR);  // completes the pending receive (and any send) promptly
}

void HttpServer::MaybeDestroy(Connection* c) {
  if (!c->closing || c->pending_ops > 0) return;
  ::close(c->fd);
  connections_.erase(c->id);
  stats_.connections_open.Set(connections_.size());
  delete c;
}

void HttpServer::ScheduleTick() {
  std::weak_ptr<bool> alive = alive_;
  loop_->RunAfter(config_.timer_tick, [this, alive] {
    if (alive.expired() || shut_down_) return;
    Tick();
    ScheduleTick();
  });
}

void HttpServer::Tick() {
  const Clock::time_point now = loop_->now();
  std::vector<Connection*> expired;
  for (auto& [id, c] : connections_) {
    if (c->closing) continue;
    if (c->lingering) {
      if (now >= c->linger_deadline) expired.push_back(c);
    } else if (c->in_request && !c->input_done) {
      if (now - c->request_started >= config_.request_timeout) {
        stats_.request_timeouts.Add();
        QueueError(c, 408, "request timeout");
      }
    } else if (c->responses.empty() && c->out.empty() && !c->send_in_flight &&
               now - c->last_activity >= config_.idle_timeout) {
      stats_.idle_closes.Add();
      expired.push_back(c);
    }
  }
  for (Connection* c : expired) {
    Close(c);
    MaybeDestroy(c);
  }
}

// --- llhttp callbacks ----------------------------------------------------------------------------

const llhttp_settings_t& HttpServer::ParserSettings() {
  static const llhttp_settings_t settings = [] {
    llhttp_settings_t s;
    llhttp_settings_init(&s);
    s.on_message_begin = [](llhttp_t* p) -> int {
      auto* c = static_cast<Connection*>(p->data);
      c->request.Clear();
      c->in_request = true;
      c->request_started = c->server->loop_->now();
      c->header_state = HeaderState::kNone;
      c->header_bytes = 0;
      return 0;
    };
    s.on_method = [](llhttp_t* p, const char* at, std::size_t n) -> int {
      static_cast<Connection*>(p->data)->request.method.append(at, n);
      return 0;
    };
    s.on_url = [](llhttp_t* p, const char* at, std::size_t n) -> int {
      auto* c = static_cast<Connection*>(p->data);
      c->header_bytes += n;
      if (c->header_bytes > c->server->config_.max_header_bytes) {
        c->server->stats_.header_too_large.Add();
        c->error_status = 431;
        c->error_reason = "request line too long";
        return -1;
      }
      c->request.target.append(at, n);
      return 0;
    };
    s.on_header_field = [](llhttp_t* p, const char* at, std::size_t n) -> int {
      auto* c = static_cast<Connection*>(p->data);
      c->header_bytes += n;
      if (c->header_bytes > c->server->config_.max_header_bytes) {
        c->server->stats_.header_too_large.Add();
        c->error_status = 431;
        c->error_reason = "request headers too large";
        return -1;
      }
      if (c->header_state != HeaderState::kField) c->request.headers.emplace_back();
      c->header_state = HeaderState::kField;
      ToLowerAppend(c->request.headers.back().name, at, n);
      return 0;
    };
    s.on_header_value = [](llhttp_t* p, const char* at, std::size_t n) -> int {
      auto* c = static_cast<Connection*>(p->data);
      c->header_bytes += n;
      if (c->header_bytes > c->server->config_.max_header_bytes) {
        c->server->stats_.header_too_large.Add();
        c->error_status = 431;
        c->error_reason = "request headers too large";
        return -1;
      }
      if (c->header_state == HeaderState::kNone) c->request.headers.emplace_back();
      c->header_state = HeaderState::kValue;
      c->request.headers.back().value.append(at, n);
      return 0;
    };
    s.on_headers_complete = [](llhttp_t* p) -> int {
      auto* c = static_cast<Connection*>(p->data);
      HttpServer* server = c->server;
      if (p->http_major != 1) {
        c->error_status = 400;
        c->error_reason = "unsupported HTTP version";
        server->stats_.bad_requests.Add();
        return -1;
      }
      const std::size_t limit = server->config_.max_body_bytes;
      const bool has_length = (p->flags & F_CONTENT_LENGTH) != 0;
      if (has_length && p->content_length > limit) {
        server->stats_.body_too_large.Add();
        c->error_status = 413;
        c->error_reason = "request body too large";
        return -1;
      }
      if (has_length) c->request.body.reserve(p->content_length);
      if (EqualsIgnoreCase(c->request.Header("expect"), "100-continue") &&
          c->first_unsent_seq == c->next_seq && c->out.empty()) {
        server->WriteOut(c, "HTTP/1.1 100 Continue\r\n\r\n");
        server->StartSend(c);
      }
      return 0;
    };
    s.on_body = [](llhttp_t* p, const char* at, std::size_t n) -> int {
      auto* c = static_cast<Connection*>(p->data);
      if (c->request.body.size() + n > c->server->config_.max_body_bytes) {
        c->server->stats_.body_too_large.Add();
        c->error_status = 413;
        c->error_reason = "request body too large";
        return -1;
      }
      c->request.body.append(at, n);
      return 0;
    };
    s.on_message_complete = [](llhttp_t* p) -> int {
      auto* c = static_cast<Connection*>(p->data);
      c->in_request = false;
      c->server->Dispatch(c);
      // After the final request of a connection, stop parsing what follows.
      return c->input_done ? HPE_PAUSED : 0;
    };
    return s;
  }();
  return settings;
}

}  // namespace mailrail::net
