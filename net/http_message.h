#pragma once
// HttpRequest / HttpResponse: the plain HTTP/1.1 message values shared by the server, the client
// and the handlers, and the helpers that serialize a response or decode a URL.
//
// Threading: plain values, owned by whoever holds them.
// Lifetime: the server reuses one HttpRequest per connection; a handler sees it only for the
//   duration of its call (it may move the body out, e.g. into a pooled Message).
// Header names are stored lower-case (HTTP field names are case-insensitive).

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace mailrail::net {

struct HttpHeader {
  std::string name;   // lower-case
  std::string value;
};

struct HttpRequest {
  std::string method;
  std::string target;  // as received: path plus optional "?query"
  std::vector<HttpHeader> headers;
  std::string body;
  bool keep_alive = true;

  std::string_view path() const;
  std::string_view query() const;  // without '?', empty when absent
  // The first header with this lower-case name, or empty.
  std::string_view Header(std::string_view lower_name) const;
  bool HasHeader(std::string_view lower_name) const;
  void Clear();
};

struct HttpResponse {
  int status = 200;
  std::string content_type;  // omitted when empty
  std::string body;
  std::vector<HttpHeader> headers;  // extra headers, names as they should be sent
  bool close = false;               // close the connection after this response

  static HttpResponse Text(int status, std::string body);
  static HttpResponse Json(int status, std::string body);
  // 503 with Retry-After (seconds): the pipeline applies backpressure.
  static HttpResponse Unavailable(int retry_after_seconds, std::string reason);
};

std::string_view ReasonPhrase(int status);
// Appends the status line, headers and body of `response` to out.
void AppendResponse(std::string& out, const HttpResponse& response, bool keep_alive);

// Percent-decoding of a query component ('+' becomes a space). nullopt on a malformed escape.
std::optional<std::string> UrlDecode(std::string_view text);
// The decoded value of the first `name=` parameter of a query string.
std::optional<std::string> QueryParam(std::string_view query, std::string_view name);

// Case-insensitive ASCII comparison.
bool EqualsIgnoreCase(std::string_view a, std::string_view b);

}  // namespace mailrail::net
