#include "net/tls.h"

#include <openssl/err.h>
#include <openssl/x509v3.h>

namespace mailrail::net {

std::string TakeOpenSslErrors() {
  std::string out;
  while (unsigned long code = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(code, buf, sizeof(buf));
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "unknown TLS error" : out;
}

base::Result<std::shared_ptr<TlsContext>> TlsContext::CreateServer(const std::string& cert_path,
                                                                  const std::string& key_path) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == nullptr) return base::MakeError("tls_context", TakeOpenSslErrors());
  std::shared_ptr<TlsContext> context(new TlsContext(ctx, true));
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  if (SSL_CTX_use_certificate_chain_file(ctx, cert_path.c_str()) != 1) {
    return base::MakeError("tls_cert", cert_path + ": " + TakeOpenSslErrors());
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, key_path.c_str(), SSL_FILETYPE_PEM) != 1) {
    return base::MakeError("tls_key", key_path + ": " + TakeOpenSslErrors());
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    return base::MakeError("tls_key", key_path + ": key does not match certificate " + cert_path);
  }
  return context;
}

base::Result<std::shared_ptr<TlsContext>> TlsContext::CreateClient(bool verify_peer,
                                                                  const std::string& ca_file) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  if (ctx == nullptr) return base::MakeError("tls_context", TakeOpenSslErrors());
  std::shared_ptr<TlsContext> context(new TlsContext(ctx, false));
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  if (verify_peer) {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
    const int ok = ca_file.empty() ? SSL_CTX_set_default_verify_paths(ctx)
                                   : SSL_CTX_load_verify_locations(ctx, ca_file.c_str(), nullptr);
    if (ok != 1) return base::MakeError("tls_ca", ca_file + ": " + TakeOpenSslErrors());
  } else {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
  }
  return context;
}

TlsContext::~TlsContext() { SSL_CTX_free(ctx_); }

base::Result<std::unique_ptr<TlsSession>> TlsSession::Create(std::shared_ptr<TlsContext> context,
                                                            std::string_view host) {
  SSL* ssl = SSL_new(context->native());
  if (ssl == nullptr) return base::MakeError("tls_session", TakeOpenSslErrors());
  BIO* in = BIO_new(BIO_s_mem());
  BIO* out = BIO_new(BIO_s_mem());
  BIO_set_mem_eof_return(in, -1);
  BIO_set_mem_eof_return(out, -1);
  SSL_set_bio(ssl, in, out);
  const bool is_server = context->is_server();
  std::unique_ptr<TlsSession> session(new TlsSession(std::move(context), ssl, in, out));
  if (is_server) {
    SSL_set_accept_state(ssl);
  } else {
    SSL_set_connect_state(ssl);
    const std::string name(host);
    SSL_set_tlsext_host_name(ssl, name.c_str());
    SSL_set1_host(ssl, name.c_str());
  }
  return session;
}

TlsSession::~TlsSession() { SSL_free(ssl_); }

base::Status TlsSession::StartHandshake() { return Advance(); }

base::Status TlsSession::Advance() {
  if (handshake_done_) return base::OkStatus();
  const int rc = SSL_do_handshake(ssl_);
  if (rc == 1) {
    handshake_done_ = true;
    return FlushPending();
  }
  const int err = SSL_get_error(ssl_, rc);
  if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) return base::OkStatus();
  return base::MakeError("tls_handshake", TakeOpenSslErrors());
}

base::Status TlsSession::FlushPending() {
  if (pending_plaintext_.empty()) return base::OkStatus();
  std::string data;
  data.swap(pending_plaintext_);
  return Send(data);
}

base::Status TlsSession::Receive(std::span<const char> ciphertext, std::string& plaintext) {
  if (!ciphertext.empty() && BIO_write(in_, ciphertext.data(), static_cast<int>(ciphertext.size())) <= 0) {
    return base::MakeError("tls_bio", "BIO_write failed");
  }
  if (auto status = Advance(); !status) return status;
  if (!handshake_done_) return base::OkStatus();
  char buf[16384];
  for (;;) {
    const int n = SSL_read(ssl_, buf, sizeof(buf));
    if (n > 0) {
      plaintext.append(buf, static_cast<std::size_t>(n));
      continue;
    }
    const int err = SSL_get_error(ssl_, n);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) return base::OkStatus();
    if (err == SSL_ERROR_ZERO_RETURN) return base::MakeError("tls_closed", "peer sent close_notify");
    return base::MakeError("tls_read", TakeOpenSslErrors());
  }
}

base::Status TlsSession::Send(std::string_view plaintext) {
  if (!handshake_done_) {
    pending_plaintext_.append(plaintext);
    return base::OkStatus();
  }
  while (!plaintext.empty()) {
    const int n = SSL_write(ssl_, plaintext.data(), static_cast<int>(plaintext.size()));
    if (n <= 0) return base::MakeError("tls_write", TakeOpenSslErrors());
    plaintext.remove_prefix(static_cast<std::size_t>(n));
  }
  return base::OkStatus();
}

void TlsSession::TakeOutput(std::string& out) {
  char* data = nullptr;
  const long size = BIO_get_mem_data(out_, &data);
  if (size <= 0) return;
  out.append(data, static_cast<std::size_t>(size));
  (void)BIO_reset(out_);
}

}  // namespace mailrail::net
