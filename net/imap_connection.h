#pragma once
// ImapConnection: one IMAP4rev1 client connection on the EventLoop, over plain TCP, implicit TLS
// (TLS from the first byte, port 993) or STARTTLS (plain greeting, STARTTLS command, then TLS for
// everything after its OK). It frames responses with ImapResponseParser, tags commands ("m1",
// "m2", ...) and routes each tagged completion to the callback given with its command; untagged
// and continuation responses go to the Listener. Commands may be pipelined: Command() sends at
// once and completions arrive in the order the server finishes them.
//
// Lifetime: created with new and never deleted by the owner. io_uring operations still in flight
//   reference the object, so it deletes itself once it is closed and the last operation has
//   completed. The owner ends its use either with Abandon() (no callback follows) or when the
//   listener's OnClosed runs (the connection failed; no other callback follows); in both cases it
//   drops its pointer at once. Pending command callbacks are dropped unrun on close.
// Threading: everything on the loop thread; callbacks run there and may call Command/Abandon.
// Errors: OnClosed gets code "connect", "closed" (EOF, reset, BYE), "tls" or "imap_protocol"
//   (unframeable bytes, a rejected STARTTLS).

#include <netinet/in.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>

#include "net/event_loop.h"
#include "net/imap_parser.h"
#include "net/tls.h"

namespace mailrail::net {

enum class ImapTls { kNone, kImplicit, kStartTls };

class ImapConnection final : public CompletionHandler {
 public:
  class Listener {
   public:
    // The greeting arrived (and, for STARTTLS, the upgrade was accepted): send LOGIN.
    virtual void OnReady(const ImapResponse& greeting) = 0;
    virtual void OnUntagged(ImapResponse& response) = 0;
    virtual void OnContinuation(ImapResponse& response) = 0;
    virtual void OnClosed(const base::Error& error) = 0;

   protected:
    ~Listener() = default;
  };
  // Called with the tagged completion (its text starts with OK, NO or BAD).
  using Done = std::function<void(ImapResponse& completion)>;

  struct Options {
    ImapTls tls = ImapTls::kNone;
    std::shared_ptr<TlsContext> tls_context;  // required unless tls is kNone
    std::string host;                          // SNI and certificate name
    ImapResponseParser::Limits limits;
  };

  // Starts connecting to `address` at once.
  static ImapConnection* Connect(EventLoop* loop, const sockaddr_storage& address, socklen_t length,
                                 Options options, Listener* listener);

  // Sends "<tag> <command>\r\n"; returns the tag. `command` must not contain CR or LF.
  std::string Command(std::string_view command, Done done);
  // Sends a raw line (the IDLE terminator "DONE", an AUTHENTICATE continuation).
  void SendLine(std::string_view line);
  // Closes without calling the listener again; the object frees itself later.
  void Abandon();

  std::size_t pending_commands() const { return pending_.size(); }
  // When the last bytes arrived (or the connection was opened): for the owner's timeouts.
  Clock::time_point last_activity() const { return last_activity_; }
  bool is_ready() const { return ready_; }

  void OnCompletion(const io_uring_cqe& cqe, unsigned tag) override;

 private:
  ImapConnection(EventLoop* loop, Options options, Listener* listener);
  void OnConnected(int res);
  void OnRecv(int res);
  void OnSend(int res);
  void ArmRecv();
  void QueueOutput(std::string_view plaintext);
  void StartSend();
  base::Status Dispatch();
  base::Status StartTls();
  void Fail(std::string code, std::string message);
  void MaybeDestroy();

  EventLoop* loop_;
  Options options_;
  Listener* listener_;  // null once abandoned or failed
  int fd_ = -1;
  int pending_ops_ = 0;
  bool closing_ = false;
  bool ready_ = false;
  bool greeted_ = false;
  bool in_completion_ = false;  // a completion is running: destruction waits for its end
  Clock::time_point last_activity_;

  std::unique_ptr<TlsSession> tls_;
  std::string deferred_error_;  // a TLS error met while sending, reported by the next receive
  ImapResponseParser parser_;
  std::string plaintext_;  // scratch: decrypted bytes of one receive
  std::string out_, sending_;
  std::size_t sent_ = 0;
  bool send_in_flight_ = false;
  std::unique_ptr<char[]> recv_buffer_;

  struct Pending {
    std::string tag;
    Done done;
  };
  std::deque<Pending> pending_;
  std::uint64_t next_tag_ = 1;
};

}  // namespace mailrail::net
