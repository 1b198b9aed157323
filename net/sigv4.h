#pragma once
// AWS Signature Version 4 for S3-compatible services, written with OpenSSL (SHA-256 and
// HMAC-SHA256), after the AWS documentation "Authenticating Requests: Using the Authorization
// Header" (S3 API reference, sig-v4-header-based-auth) and "Signature Version 4 signing process".
//
// What is signed: the method, the URI-encoded path, the sorted and encoded query, every header
// given to Sign (names lower-cased, values trimmed, sorted) plus host, x-amz-date and
// x-amz-content-sha256, and the payload hash. mailrail always sends the SHA-256 of the body
// (never UNSIGNED-PAYLOAD), so a body altered on the way fails the signature check.
// Secrets: the secret key is used only to derive the signing key; nothing here logs.
// Threading: pure functions; callable from any thread.

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace mailrail::net {

// An access key pair; the secret is only ever passed to SigningKey.
struct SigV4Credentials {
  std::string access_key_id;
  std::string secret_access_key;
};

// What a signature covers; views must outlive the call that signs.
struct SigV4Request {
  std::string_view method;
  std::string_view path;  // already URI-encoded (see S3UriEncode), starting with '/'
  std::vector<std::pair<std::string, std::string>> query;  // raw (unencoded) names and values
  std::vector<std::pair<std::string, std::string>> headers;  // must include host
  std::string payload_sha256_hex;
};

// RFC 3986 unreserved characters kept, every other byte %XX (upper case); '/' kept when
// `keep_slash` (object keys in paths).
std::string S3UriEncode(std::string_view text, bool keep_slash);
std::string Sha256Hex(std::string_view bytes);
// "20130524T000000Z" for a Unix time.
std::string AmzDate(std::int64_t unix_seconds);

std::string CanonicalRequest(const SigV4Request& request, std::string* signed_headers = nullptr);
std::array<std::uint8_t, 32> SigningKey(std::string_view secret, std::string_view date, std::string_view region,
                                        std::string_view service);
// The value of the Authorization header. `amz_date` is the x-amz-date value, which, like
// x-amz-content-sha256, must already be among request.headers.
std::string Authorization(const SigV4Request& request, const SigV4Credentials& credentials, std::string_view region,
                          std::string_view service, std::string_view amz_date);

}  // namespace mailrail::net
