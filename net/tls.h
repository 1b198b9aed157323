#pragma once
// TlsContext / TlsSession: TLS over io_uring with OpenSSL memory BIOs. The socket I/O stays on the
// event loop; OpenSSL only transforms bytes: ciphertext received from the socket goes in with
// Receive(), plaintext for the peer goes in with Send(), and TakeOutput() hands back the
// ciphertext (handshake records included) that must be written to the socket.
//
// Threading: a TlsContext is immutable after creation and may be shared by any threads;
//   a TlsSession belongs to one connection and is used by its loop thread only.
// Ownership: sessions keep their context alive (shared_ptr).
// Blocking: never; OpenSSL works on memory BIOs.

#include <openssl/ssl.h>

#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "engine/base/result.h"

namespace mailrail::net {

class TlsContext {
 public:
  // Server side: certificate chain and private key in PEM files.
  static base::Result<std::shared_ptr<TlsContext>> CreateServer(const std::string& cert_path,
                                                               const std::string& key_path);
  // Client side: verifies the peer against the system store, or against ca_file when not empty.
  static base::Result<std::shared_ptr<TlsContext>> CreateClient(bool verify_peer,
                                                               const std::string& ca_file);
  ~TlsContext();
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;

  SSL_CTX* native() const { return ctx_; }
  bool is_server() const { return is_server_; }

 private:
  TlsContext(SSL_CTX* ctx, bool is_server) : ctx_(ctx), is_server_(is_server) {}
  SSL_CTX* ctx_;
  bool is_server_;
};

class TlsSession {
 public:
  // host: SNI and the name verified in the peer certificate (client side only).
  static base::Result<std::unique_ptr<TlsSession>> Create(std::shared_ptr<TlsContext> context,
                                                         std::string_view host);
  ~TlsSession();
  TlsSession(const TlsSession&) = delete;
  TlsSession& operator=(const TlsSession&) = delete;

  // Client side: produces the ClientHello (collect it with TakeOutput).
  base::Status StartHandshake();
  // Feeds ciphertext from the socket; appends whatever plaintext it yields to `plaintext`.
  // An error means the peer violated the protocol or failed verification: close the connection.
  base::Status Receive(std::span<const char> ciphertext, std::string& plaintext);
  // Encrypts plaintext for the peer; before the handshake completes it is held and sent after.
  base::Status Send(std::string_view plaintext);
  // Appends the ciphertext waiting for the socket to `out`.
  void TakeOutput(std::string& out);
  bool handshake_done() const { return handshake_done_; }

 private:
  TlsSession(std::shared_ptr<TlsContext> context, SSL* ssl, BIO* in, BIO* out)
      : context_(std::move(context)), ssl_(ssl), in_(in), out_(out) {}
  base::Status Advance();
  base::Status FlushPending();

  std::shared_ptr<TlsContext> context_;
  SSL* ssl_;
  BIO* in_;   // ciphertext from the peer (owned by ssl_)
  BIO* out_;  // ciphertext for the peer (owned by ssl_)
  bool handshake_done_ = false;
  std::string pending_plaintext_;
};

// The OpenSSL error queue as one line (and cleared), for error messages.
std::string TakeOpenSslErrors();

}  // namespace mailrail::net
