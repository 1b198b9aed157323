#include "net/sigv4.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

#include <algorithm>
#include <ctime>

#include <fmt/core.h>

namespace mailrail::net {
namespace {

constexpr char kHex[] = "0123456789abcdef";

std::string Hex(const std::uint8_t* bytes, std::size_t n) {
  std::string out(2 * n, '0');
  for (std::size_t i = 0; i < n; ++i) {
    out[2 * i] = kHex[bytes[i] >> 4];
    out[2 * i + 1] = kHex[bytes[i] & 15];
  }
  return out;
}

std::array<std::uint8_t, 32> Hmac(std::string_view key, std::string_view data) {
  std::array<std::uint8_t, 32> out{};
  unsigned length = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(data.data()),
       data.size(), out.data(), &length);
  return out;
}

std::string_view AsView(const std::array<std::uint8_t, 32>& bytes) {
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

std::string_view TrimSpaces(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// Header value as signed: trimmed, inner runs of spaces collapsed to one.
std::string CanonicalValue(std::string_view value) {
  std::string out;
  bool space = false;
  for (char c : TrimSpaces(value)) {
    if (c == ' ' || c == '\t') {
      space = true;
      continue;
    }
    if (space) out += ' ';
    space = false;
    out += c;
  }
  return out;
}

}  // namespace

std::string S3UriEncode(std::string_view text, bool keep_slash) {
  std::string out;
  out.reserve(text.size());
  for (char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    const bool unreserved = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
                            c == '_' || c == '.' || c == '~';
    if (unreserved || (keep_slash && c == '/')) {
      out += ch;
    } else {
      out += '%';
      out += "0123456789ABCDEF"[c >> 4];
      out += "0123456789ABCDEF"[c & 15];
    }
  }
  return out;
}

std::string Sha256Hex(std::string_view bytes) {
  std::uint8_t digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(), digest);
  return Hex(digest, sizeof digest);
}

std::string AmzDate(std::int64_t unix_seconds) {
  const std::time_t t = static_cast<std::time_t>(unix_seconds);
  std::tm tm{};
  gmtime_r(&t, &tm);
  return fmt::format("{:04}{:02}{:02}T{:02}{:02}{:02}Z", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                     tm.tm_min, tm.tm_sec);
}

std::string CanonicalRequest(const SigV4Request& r, std::string* signed_headers_out) {
  std::vector<std::pair<std::string, std::string>> query;
  for (const auto& [name, value] : r.query) query.emplace_back(S3UriEncode(name, false), S3UriEncode(value, false));
  std::sort(query.begin(), query.end());
  std::vector<std::pair<std::string, std::string>> headers;
  for (const auto& [name, value] : r.headers) {
    std::string lower(name);
    std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
    headers.emplace_back(std::move(lower), CanonicalValue(value));
  }
  std::sort(headers.begin(), headers.end());
  std::string out(r.method);
  out += '\n';
  out += r.path;
  out += '\n';
  for (std::size_t i = 0; i < query.size(); ++i) {
    if (i > 0) out += '&';
    out += query[i].first + "=" + query[i].second;
  }
  out += '\n';
  std::string signed_headers;
  for (const auto& [name, value] : headers) {
    out += name + ":" + value + "\n";
    if (!signed_headers.empty()) signed_headers += ';';
    signed_headers += name;
  }
  out += '\n';
  out += signed_headers;
  out += '\n';
  out += r.payload_sha256_hex;
  if (signed_headers_out != nullptr) *signed_headers_out = std::move(signed_headers);
  return out;
}

std::array<std::uint8_t, 32> SigningKey(std::string_view secret, std::string_view date, std::string_view region,
                                        std::string_view service) {
  const std::string first = "AWS4" + std::string(secret);
  const auto k_date = Hmac(first, date);
  const auto k_region = Hmac(AsView(k_date), region);
  const auto k_service = Hmac(AsView(k_region), service);
  return Hmac(AsView(k_service), "aws4_request");
}

std::string Authorization(const SigV4Request& request, const SigV4Credentials& credentials, std::string_view region,
                          std::string_view service, std::string_view amz_date) {
  std::string signed_headers;
  const std::string canonical = CanonicalRequest(request, &signed_headers);
  const std::string_view date = amz_date.substr(0, 8);
  const std::string scope = fmt::format("{}/{}/{}/aws4_request", date, region, service);
  const std::string string_to_sign = fmt::format("AWS4-HMAC-SHA256\n{}\n{}\n{}", amz_date, scope, Sha256Hex(canonical));
  const auto key = SigningKey(credentials.secret_access_key, date, region, service);
  const auto signature = Hmac(AsView(key), string_to_sign);
  return fmt::format("AWS4-HMAC-SHA256 Credential={}/{},SignedHeaders={},Signature={}", credentials.access_key_id,
                     scope, signed_headers, Hex(signature.data(), signature.size()));
}

}  // namespace mailrail::net
