#include "net/http_client.h"

#include <netdb.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>

#include "engine/base/check.h"

namespace mailrail::net {
namespace {

constexpr unsigned kTagConnect = 1;
constexpr unsigned kTagRecv = 2;
constexpr unsigned kTagSend = 3;
constexpr std::size_t kRecvBufferSize = 16384;

enum class HeaderState { kNone, kField, kValue };
enum class State { kConnecting, kBusy, kIdle };

}  // namespace

std::string_view ClientResponse::Header(std::string_view lower_name) const {
  for (const auto& h : headers) {
    if (h.name == lower_name) return h.value;
  }
  return {};
}

base::Result<ParsedUrl> ParseHttpUrl(std::string_view url) {
  ParsedUrl out;
  if (url.starts_with("http://")) {
    url.remove_prefix(7);
    out.port = 80;
  } else if (url.starts_with("https://")) {
    url.remove_prefix(8);
    out.tls = true;
    out.port = 443;
  } else {
    return base::MakeError("url", "URL must start with http:// or https://: " + std::string(url));
  }
  const std::size_t slash = url.find('/');
  std::string_view authority = url.substr(0, slash);
  std::string_view path = slash == std::string_view::npos ? std::string_view() : url.substr(slash);
  while (path.ends_with('/')) path.remove_suffix(1);
  const std::size_t colon = authority.rfind(':');
  if (colon != std::string_view::npos && authority.find(']') == std::string_view::npos) {
    std::string_view port = authority.substr(colon + 1);
    unsigned value = 0;
    auto [ptr, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
    if (ec != std::errc() || ptr != port.data() + port.size() || value == 0 || value > 65535) {
      return base::MakeError("url", "bad port in URL: " + std::string(port));
    }
    out.port = static_cast<std::uint16_t>(value);
    authority = authority.substr(0, colon);
  }
  if (authority.empty()) return base::MakeError("url", "URL without a host");
  out.host = std::string(authority);
  out.prefix = std::string(path);
  return out;
}

struct HttpClient::Connection final : CompletionHandler {
  HttpClient* client = nullptr;
  int fd = -1;
  State state = State::kConnecting;
  int pending_ops = 0;
  bool closing = false;
  bool recv_armed = false;
  Clock::time_point deadline;

  std::unique_ptr<TlsSession> tls;
  llhttp_t parser{};
  HeaderState header_state = HeaderState::kNone;
  ClientResponse response;
  bool response_complete = false;
  bool keep_alive = true;

  std::unique_ptr<Pending> current;
  std::string out, sending;
  std::size_t sent = 0;
  bool send_in_flight = false;
  char recv_buffer[kRecvBufferSize];
  std::string plaintext;

  void OnCompletion(const io_uring_cqe& cqe, unsigned tag) override {
    --pending_ops;
    if (tag == kTagConnect) {
      client->OnConnect(this, cqe);
    } else if (tag == kTagRecv) {
      client->OnRecv(this, cqe);
    } else {
      client->OnSend(this, cqe);
    }
  }
};

base::Result<std::unique_ptr<HttpClient>> HttpClient::Create(EventLoop* loop, HttpClientConfig config) {
  std::unique_ptr<HttpClient> client(new HttpClient(loop, std::move(config)));
  auto url = ParseHttpUrl(client->config_.base_url);
  if (!url) return url.error();
  client->url_ = std::move(url.value());
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* result = nullptr;
  const std::string port = std::to_string(client->url_.port);
  if (int rc = ::getaddrinfo(client->url_.host.c_str(), port.c_str(), &hints, &result); rc != 0) {
    return base::MakeError("resolve", client->url_.host + ": " + ::gai_strerror(rc));
  }
  std::memcpy(&client->address_, result->ai_addr, result->ai_addrlen);
  client->address_length_ = result->ai_addrlen;
  ::freeaddrinfo(result);
  if (client->url_.tls) {
    auto tls = TlsContext::CreateClient(client->config_.verify_peer, client->config_.ca_file);
    if (!tls) return tls.error();
    client->tls_ = std::move(tls.value());
  }
  client->ScheduleTick();
  return client;
}

HttpClient::~HttpClient() {
  *alive_ = false;
  // Callbacks still owed an answer get one, so whatever they hold is released.
  std::deque<Pending> queued;
  queued.swap(queue_);
  for (auto& p : queued) p.callback(base::MakeError("closed", "client destroyed"));
  for (Connection* c : connections_) {
    if (c->current != nullptr) c->current->callback(base::MakeError("closed", "client destroyed"));
    if (c->fd >= 0) ::close(c->fd);
    delete c;
  }
}

void HttpClient::Send(ClientRequest request, ResponseCallback callback) {
  if (shut_down_) {
    callback(base::MakeError("closed", "client shut down"));
    return;
  }
  queue_.push_back({std::move(request), std::move(callback)});
  Pump();
}

void HttpClient::Pump() {
  while (!queue_.empty()) {
    Connection* idle = nullptr;
    for (Connection* c : connections_) {
      if (c->state == State::kIdle && !c->closing) {
        idle = c;
        break;
      }
    }
    if (idle != nullptr) {
      Pending pending = std::move(queue_.front());
      queue_.pop_front();
      Start(idle, std::move(pending));
      continue;
    }
    if (connections_.size() >= config_.max_connections) return;
    // Open a new connection for the request at the head of the queue.
    const int fd = ::socket(address_.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      Pending pending = std::move(queue_.front());
      queue_.pop_front();
      pending.callback(base::MakeError("connect", std::string("socket: ") + std::strerror(errno)));
      continue;
    }
    const int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    auto* c = new Connection;
    c->client = this;
    c->fd = fd;
    c->state = State::kConnecting;
    llhttp_init(&c->parser, HTTP_RESPONSE, &ParserSettings());
    c->parser.data = c;
    connections_.push_back(c);
    c->current = std::make_unique<Pending>(std::move(queue_.front()));
    queue_.pop_front();
    c->deadline = loop_->now() + config_.request_timeout;
    io_uring_prep_connect(loop_->Prepare(c, kTagConnect), fd, reinterpret_cast<sockaddr*>(&address_),
                          address_length_);
    ++c->pending_ops;
  }
}

void HttpClient::Start(Connection* c, Pending pending) {
  c->current = std::make_unique<Pending>(std::move(pending));
  c->state = State::kBusy;
  c->deadline = loop_->now() + config_.request_timeout;
  WriteRequest(c);
}

void HttpClient::OnConnect(Connection* c, const io_uring_cqe& cqe) {
  if (c->closing) return MaybeDestroy(c);
  if (cqe.res < 0) {
    Fail(c, "connect", std::string("connect to ") + url_.host + ":" + std::to_string(url_.port) + ": " +
                           std::strerror(-cqe.res));
    return;
  }
  c->state = State::kBusy;
  if (tls_ != nullptr) {
    auto session = TlsSession::Create(tls_, url_.host);
    if (!session) return Fail(c, "tls", session.error().message);
    c->tls = std::move(session.value());
    if (auto status = c->tls->StartHandshake(); !status) return Fail(c, "tls", status.error().message);
    c->tls->TakeOutput(c->out);
  }
  ArmRecv(c);
  WriteRequest(c);
}

void HttpClient::WriteRequest(Connection* c) {
  const ClientRequest& r = c->current->request;
  std::string head = r.method + " " + url_.prefix + r.path + " HTTP/1.1\r\nHost: " + url_.host;
  if ((url_.tls && url_.port != 443) || (!url_.tls && url_.port != 80)) head += ":" + std::to_string(url_.port);
  head += "\r\nContent-Length: " + std::to_string(r.body_bytes().size()) + "\r\n";
  for (const auto& h : r.headers) head += h.name + ": " + h.value + "\r\n";
  head += "\r\n";
  c->response = ClientResponse{};
  c->response_complete = false;
  c->header_state = HeaderState::kNone;
  llhttp_reset(&c->parser);
  if (c->tls != nullptr) {
    if (!c->tls->Send(head) || !c->tls->Send(r.body_bytes())) return Fail(c, "tls", TakeOpenSslErrors());
    c->tls->TakeOutput(c->out);
  } else {
    c->out += head;
    c->out += r.body_bytes();
  }
  StartSend(c);
}

void HttpClient::StartSend(Connection* c) {
  if (c->send_in_flight || c->closing) return;
  if (c->sending.size() == c->sent) {
    if (c->out.empty()) return;
    c->sending.clear();
    c->sending.swap(c->out);
    c->sent = 0;
  }
  io_uring_prep_send(loop_->Prepare(c, kTagSend), c->fd, c->sending.data() + c->sent, c->sending.size() - c->sent,
                     MSG_NOSIGNAL);
  c->send_in_flight = true;
  ++c->pending_ops;
}

void HttpClient::OnSend(Connection* c, const io_uring_cqe& cqe) {
  c->send_in_flight = false;
  if (c->closing) return MaybeDestroy(c);
  if (cqe.res < 0) return Fail(c, "closed", std::string("send: ") + std::strerror(-cqe.res));
  c->sent += static_cast<std::size_t>(cqe.res);
  StartSend(c);
}

void HttpClient::ArmRecv(Connection* c) {
  io_uring_prep_recv(loop_->Prepare(c, kTagRecv), c->fd, c->recv_buffer, sizeof(c->recv_buffer), 0);
  c->recv_armed = true;
  ++c->pending_ops;
}

void HttpClient::OnRecv(Connection* c, const io_uring_cqe& cqe) {
  c->recv_armed = false;
  if (c->closing) return MaybeDestroy(c);
  if (cqe.res <= 0) {
    if (c->state == State::kBusy) {
      // A response delimited by EOF completes here; anything else was cut short.
      if (cqe.res == 0 && llhttp_finish(&c->parser) == HPE_OK && c->response_complete) {
        c->keep_alive = false;
        return Finish(c, std::move(c->response), false);
      }
      return Fail(c, "closed", cqe.res == 0 ? "connection closed before a full response"
                                            : std::string("recv: ") + std::strerror(-cqe.res));
    }
    Close(c);  // an idle keep-alive connection the server closed
    return MaybeDestroy(c);
  }
  const char* data = c->recv_buffer;
  std::size_t size = static_cast<std::size_t>(cqe.res);
  if (c->tls != nullptr) {
    c->plaintext.clear();
    auto status = c->tls->Receive({data, size}, c->plaintext);
    c->tls->TakeOutput(c->out);
    StartSend(c);
    if (!status) return Fail(c, "tls", status.error().message);
    data = c->plaintext.data();
    size = c->plaintext.size();
  }
  if (size > 0) {
    if (c->state != State::kBusy) {
      Close(c);  // bytes nobody asked for
      return MaybeDestroy(c);
    }
    const llhttp_errno_t err = llhttp_execute(&c->parser, data, size);
    if (c->response_complete) {
      return Finish(c, std::move(c->response), c->keep_alive && err == HPE_PAUSED);
    }
    if (err != HPE_OK) return Fail(c, "protocol", llhttp_get_error_reason(&c->parser));
  }
  ArmRecv(c);
}

void HttpClient::Finish(Connection* c, base::Result<ClientResponse> result, bool reusable) {
  std::unique_ptr<Pending> done = std::move(c->current);
  if (reusable && !shut_down_) {
    c->state = State::kIdle;
    if (!c->recv_armed) ArmRecv(c);  // notices when the server closes the idle connection
  } else {
    Close(c);
  }
  MaybeDestroy(c);
  if (done != nullptr) done->callback(std::move(result));
  Pump();
}

void HttpClient::Fail(Connection* c, std::string code, std::string message) {
  Close(c);
  std::unique_ptr<Pending> done = std::move(c->current);
  MaybeDestroy(c);
  if (done != nullptr) done->callback(base::MakeError(std::move(code), std::move(message)));
  Pump();
}

void HttpClient::Close(Connection* c) {
  if (c->closing) return;
  c->closing = true;
  ::shutdown(c->fd, SHUT_RDWR);
}

void HttpClient::MaybeDestroy(Connection* c) {
  if (!c->closing || c->pending_ops > 0) return;
  ::close(c->fd);
  connections_.erase(std::find(connections_.begin(), connections_.end(), c));
  std::unique_ptr<Pending> orphan = std::move(c->current);
  delete c;
  if (orphan != nullptr) orphan->callback(base::MakeError("closed", "connection closed"));
}

void HttpClient::Shutdown() {
  shut_down_ = true;
  std::deque<Pending> queued;
  queued.swap(queue_);
  for (auto& p : queued) p.callback(base::MakeError("closed", "client shut down"));
  const std::vector<Connection*> all = connections_;
  for (Connection* c : all) {
    Close(c);
    MaybeDestroy(c);
  }
}

void HttpClient::ScheduleTick() {
  std::weak_ptr<bool> alive = alive_;
  loop_->RunAfter(std::chrono::milliseconds(50), [this, alive] {
    if (alive.expired() || shut_down_) return;
    const Clock::time_point now = loop_->now();
    const std::vector<Connection*> all = connections_;
    for (Connection* c : all) {
      if (!c->closing && c->state != State::kIdle && now >= c->deadline) {
        Fail(c, "timeout", "no complete response within " + std::to_string(config_.request_timeout.count()) + " ms");
      }
    }
    ScheduleTick();
  });
}

const llhttp_settings_t& HttpClient::ParserSettings() {
  static const llhttp_settings_t settings = [] {
    llhttp_settings_t s;
    llhttp_settings_init(&s);
    s.on_header_field = [](llhttp_t* p, const char* at, std::size_t n) -> int {
      auto* c = static_cast<Connection*>(p->data);
      if (c->header_state != HeaderState::kField) c->response.headers.emplace_back();
      c->header_state = HeaderState::kField;
      for (std::size_t i = 0; i < n; ++i) {
        char ch = at[i];
        if (ch >= 'A' && ch <= 'Z') ch = static_cast<char>(ch - 'A' + 'a');
        c->response.headers.back().name += ch;
      }
      return 0;
    };
    s.on_header_value = [](llhttp_t* p, const char* at, std::size_t n) -> int {
      auto* c = static_cast<Connection*>(p->data);
      if (c->header_state == HeaderState::kNone) c->response.headers.emplace_back();
      c->header_state = HeaderState::kValue;
      c->response.headers.back().value.append(at, n);
      return 0;
    };
    s.on_headers_complete = [](llhttp_t* p) -> int {
      auto* c = static_cast<Connection*>(p->data);
      c->response.status = p->status_code;
      // A response to HEAD has no body whatever its Content-Length says (1: skip the body).
      return c->current != nullptr && c->current->request.method == "HEAD" ? 1 : 0;
    };
    s.on_body = [](llhttp_t* p, const char* at, std::size_t n) -> int {
      static_cast<Connection*>(p->data)->response.body.append(at, n);
      return 0;
    };
    s.on_message_complete = [](llhttp_t* p) -> int {
      auto* c = static_cast<Connection*>(p->data);
      if (c->response.status >= 100 && c->response.status < 200) {  // interim: wait for the final answer
        c->response = ClientResponse{};
        c->header_state = HeaderState::kNone;
        return 0;
      }
      c->response_complete = true;
      c->keep_alive = llhttp_should_keep_alive(p) != 0;
      return HPE_PAUSED;  // one response per request; nothing may follow it
    };
    return s;
  }();
  return settings;
}

}  // namespace mailrail::net
