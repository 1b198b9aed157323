#include "net/imap_connection.h"

#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/core.h>

#include "engine/base/check.h"

namespace mailrail::net {
namespace {

constexpr unsigned kTagConnect = 1;
constexpr unsigned kTagRecv = 2;
constexpr unsigned kTagSend = 3;
constexpr std::size_t kRecvBufferSize = 256 * 1024;  // backfills are bulk transfers

}  // namespace

ImapConnection::ImapConnection(EventLoop* loop, Options options, Listener* listener)
    : loop_(loop),
      options_(std::move(options)),
      listener_(listener),
      last_activity_(loop->now()),
      parser_(options_.limits),
      recv_buffer_(new char[kRecvBufferSize]) {}

ImapConnection* ImapConnection::Connect(EventLoop* loop, const sockaddr_storage& address, socklen_t length,
                                        Options options, Listener* listener) {
  MR_CHECK(options.tls == ImapTls::kNone || options.tls_context != nullptr) << "IMAP over TLS needs a TLS context";
  auto* c = new ImapConnection(loop, std::move(options), listener);
  c->fd_ = ::socket(address.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (c->fd_ < 0) {
    // Report from the loop, not from inside the caller's call.
    const int err = errno;
    ++c->pending_ops_;  // the timer holds the object like an I/O operation
    loop->RunAfter(std::chrono::milliseconds(0), [c, err] {
      --c->pending_ops_;
      c->Fail("connect", std::string("socket: ") + std::strerror(err));
      c->MaybeDestroy();
    });
    return c;
  }
  const int one = 1;
  ::setsockopt(c->fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  io_uring_prep_connect(loop->Prepare(c, kTagConnect), c->fd_, reinterpret_cast<const sockaddr*>(&address), length);
  ++c->pending_ops_;
  return c;
}

void ImapConnection::OnCompletion(const io_uring_cqe& cqe, unsigned tag) {
  --pending_ops_;
  in_completion_ = true;
  if (tag == kTagConnect) {
    OnConnected(cqe.res);
  } else if (tag == kTagRecv) {
    OnRecv(cqe.res);
  } else {
    OnSend(cqe.res);
  }
  in_completion_ = false;
  MaybeDestroy();
}

void ImapConnection::OnConnected(int res) {
  if (closing_) return;
  if (res < 0) return Fail("connect", std::string("connect to ") + options_.host + ": " + std::strerror(-res));
  last_activity_ = loop_->now();
  if (options_.tls == ImapTls::kImplicit) {
    if (auto status = StartTls(); !status) return Fail("tls", status.error().message);
  }
  ArmRecv();
}

base::Status ImapConnection::StartTls() {
  auto session = TlsSession::Create(options_.tls_context, options_.host);
  if (!session) return session.error();
  tls_ = std::move(session).value();
  if (auto status = tls_->StartHandshake(); !status) return status;
  tls_->TakeOutput(out_);
  StartSend();
  return base::OkStatus();
}

void ImapConnection::ArmRecv() {
  io_uring_prep_recv(loop_->Prepare(this, kTagRecv), fd_, recv_buffer_.get(), kRecvBufferSize, 0);
  ++pending_ops_;
}

void ImapConnection::OnRecv(int res) {
  if (closing_) return;
  if (!deferred_error_.empty()) return Fail("tls", deferred_error_);
  if (res <= 0) {
    return Fail("closed", res == 0 ? "server closed the connection" : std::string("recv: ") + std::strerror(-res));
  }
  last_activity_ = loop_->now();
  std::string_view bytes(recv_buffer_.get(), static_cast<std::size_t>(res));
  if (tls_ != nullptr) {
    plaintext_.clear();
    auto status = tls_->Receive(bytes, plaintext_);
    tls_->TakeOutput(out_);
    StartSend();
    if (!status) return Fail("tls", status.error().message);
    bytes = plaintext_;
  }
  parser_.Feed(bytes);
  if (auto status = Dispatch(); !status) return Fail(status.error().code, status.error().message);
  if (!closing_) ArmRecv();
}

base::Status ImapConnection::Dispatch() {
  while (!closing_) {
    auto next = parser_.Next();
    if (!next) return next.error();
    if (!next->has_value()) return base::OkStatus();
    ImapResponse& r = **next;
    if (!greeted_) {
      const std::string name = ResponseName(r.text);
      if (r.kind != ImapResponse::Kind::kUntagged || (name != "OK" && name != "PREAUTH")) {
        return base::MakeError("closed", fmt::format("server refused the session: '{}'", r.text.substr(0, 200)));
      }
      greeted_ = true;
      if (options_.tls == ImapTls::kStartTls) {
        auto greeting = std::make_shared<ImapResponse>(std::move(r));
        Command("STARTTLS", [this, greeting](ImapResponse& done) {
          if (StatusOf(done.text) != ImapStatus::kOk) {
            return Fail("imap_protocol", fmt::format("STARTTLS refused: '{}'", done.text.substr(0, 200)));
          }
          // Bytes after the OK and before the handshake would be unprotected: refuse them.
          if (parser_.buffered() > 0) return Fail("imap_protocol", "plaintext after STARTTLS OK (injection?)");
          if (auto status = StartTls(); !status) return Fail("tls", status.error().message);
          ready_ = true;
          listener_->OnReady(*greeting);
        });
        continue;
      }
      ready_ = true;
      listener_->OnReady(r);
      continue;
    }
    switch (r.kind) {
      case ImapResponse::Kind::kTagged: {
        auto it = pending_.begin();
        while (it != pending_.end() && it->tag != r.tag) ++it;
        if (it == pending_.end()) {
          return base::MakeError("imap_protocol", fmt::format("completion for unknown tag '{}'", r.tag.substr(0, 40)));
        }
        Done done = std::move(it->done);
        pending_.erase(it);
        done(r);
        break;
      }
      case ImapResponse::Kind::kUntagged:
        if (ResponseName(r.text) == "BYE") {
          return base::MakeError("closed", fmt::format("server said BYE: '{}'", r.text.substr(0, 200)));
        }
        listener_->OnUntagged(r);
        break;
      case ImapResponse::Kind::kContinuation:
        listener_->OnContinuation(r);
        break;
    }
  }
  return base::OkStatus();
}

std::string ImapConnection::Command(std::string_view command, Done done) {
  MR_CHECK(command.find_first_of("\r\n") == std::string_view::npos) << "IMAP command with a line break";
  std::string tag = fmt::format("m{}", next_tag_++);
  if (closing_) return tag;
  if (pending_.empty()) last_activity_ = loop_->now();  // the response timeout starts now
  pending_.push_back({tag, std::move(done)});
  QueueOutput(fmt::format("{} {}\r\n", tag, command));
  return tag;
}

void ImapConnection::SendLine(std::string_view line) {
  if (closing_) return;
  std::string text(line);
  text += "\r\n";
  QueueOutput(text);
}

void ImapConnection::QueueOutput(std::string_view plaintext) {
  if (tls_ != nullptr) {
    if (auto status = tls_->Send(plaintext); !status) {
      // Not reported from inside Command(): its caller still holds the connection. The shutdown
      // ends the armed receive, whose completion reports the error.
      if (deferred_error_.empty()) deferred_error_ = status.error().message;
      ::shutdown(fd_, SHUT_RDWR);
      return;
    }
    tls_->TakeOutput(out_);
  } else {
    out_.append(plaintext);
  }
  StartSend();
}

void ImapConnection::StartSend() {
  if (send_in_flight_ || closing_ || fd_ < 0) return;
  if (sending_.size() == sent_) {
    if (out_.empty()) return;
    sending_.clear();
    sending_.swap(out_);
    sent_ = 0;
  }
  io_uring_prep_send(loop_->Prepare(this, kTagSend), fd_, sending_.data() + sent_, sending_.size() - sent_,
                     MSG_NOSIGNAL);
  send_in_flight_ = true;
  ++pending_ops_;
}

void ImapConnection::OnSend(int res) {
  send_in_flight_ = false;
  if (closing_) return;
  if (res < 0) return Fail("closed", std::string("send: ") + std::strerror(-res));
  sent_ += static_cast<std::size_t>(res);
  StartSend();
}

void ImapConnection::Fail(std::string code, std::string message) {
  if (closing_) return;
  closing_ = true;
  pending_.clear();
  if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
  Listener* listener = listener_;
  listener_ = nullptr;
  if (listener != nullptr) listener->OnClosed(base::MakeError(std::move(code), std::move(message)));
}

void ImapConnection::Abandon() {
  listener_ = nullptr;
  if (!closing_) {
    closing_ = true;
    pending_.clear();
    if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
  }
  if (!in_completion_) MaybeDestroy();
}

void ImapConnection::MaybeDestroy() {
  if (!closing_ || pending_ops_ > 0 || in_completion_) return;
  if (fd_ >= 0) ::close(fd_);
  delete this;
}

}  // namespace mailrail::net
