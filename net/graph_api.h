#pragma once
// The pieces of the Microsoft Graph mail API that GraphSource needs and that can be parsed and
// tested on their own: delta pages, error bodies, token responses, Retry-After, and the request
// budget of one mailbox (GraphRequestBudget).
//
// Errors: every parser takes untrusted bytes from the network and returns a Result (or nullopt);
//   nothing throws and nothing aborts.
// Threading: pure functions; a GraphRequestBudget belongs to one thread (the loop).

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/base/result.h"

namespace mailrail::net {

// One element of a delta page's "value" array.
struct GraphDeltaItem {
  std::string id;                // Graph message id
  std::string json;              // the whole object, minified (a Graph message resource)
  bool has_attachments = false;  // "hasAttachments": true
  bool removed = false;          // "@removed" present: deleted or moved out of the folder
};

// GET .../messages/delta answers a page of items and exactly one of the two links: nextLink
// (more pages of this round) or deltaLink (the round is complete; use it for the next round).
struct GraphDeltaPage {
  std::vector<GraphDeltaItem> items;
  std::string next_link;
  std::string delta_link;
};
base::Result<GraphDeltaPage> ParseGraphDeltaPage(std::string_view json);

// The error code of Graph's error body {"error":{"code":"...","message":"..."}} or of an OAuth2
// token endpoint's {"error":"invalid_client",...}; "" when the body is neither (an HTML page from a
// proxy, an empty body). Messages and descriptions are not returned: they may quote the request.
std::string GraphErrorCode(std::string_view json);

// OAuth2 token endpoint answer {"access_token":"...","expires_in":3599,...}; expires_in may be a
// number or a numeric string (Azure AD v1 sends strings).
struct GraphAccessToken {
  std::string access_token;  // secret: never logged
  std::chrono::seconds expires_in{0};
};
base::Result<GraphAccessToken> ParseGraphTokenResponse(std::string_view json);

// Retry-After (RFC 9110 10.2.3): delay-seconds or an HTTP-date, relative to now_unix_ms.
// A date in the past is a zero delay; anything unparseable is nullopt.
std::optional<std::chrono::milliseconds> ParseRetryAfter(std::string_view value, std::int64_t now_unix_ms);

// application/x-www-form-urlencoded / URL query component encoding (RFC 3986 unreserved kept).
std::string UrlEncode(std::string_view text);

// GraphRequestBudget: at most `limit` requests in ANY interval of length `window` (Graph's
// "10,000 requests per 10 minutes per mailbox"), by construction. A plain token bucket of
// capacity C refilled at C per window would let 2C through in one window (a full bucket, then the
// refill), so this is a sliding window of `slots` counters instead: time is cut into slots of
// window/slots; a request is allowed while the counts of the slot now and the `slots` before it
// (which together cover at least the last `window`) sum to less than `limit`. Cost: up to one
// slot's worth of the budget is given away; memory: slots + 1 counters.
// TryTake() takes one request; WaitFor() says how long until one is allowed (zero when one is).
// Threading: one thread (the loop); time is passed in, so tests control it.
class GraphRequestBudget {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;
  GraphRequestBudget(std::size_t limit, std::chrono::milliseconds window, TimePoint now, unsigned slots = 10);
  bool TryTake(TimePoint now);
  std::chrono::milliseconds WaitFor(TimePoint now);

 private:
  void Advance(TimePoint now);
  std::uint64_t limit_;
  std::chrono::nanoseconds slot_width_;
  TimePoint origin_;
  std::vector<std::uint64_t> counts_;  // ring of slots + 1; counts_[i % size] is slot i
  std::int64_t current_ = 0;           // index of the slot `now` falls in
  std::uint64_t sum_ = 0;              // counts of slots current_ - slots .. current_
};

}  // namespace mailrail::net
