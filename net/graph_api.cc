#include "net/graph_api.h"

#include <simdjson.h>

#include <algorithm>
#include <charconv>

#include "stages/date_time.h"

namespace mailrail::net {

base::Result<GraphDeltaPage> ParseGraphDeltaPage(std::string_view json) {
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  if (auto error = parser.parse(json.data(), json.size()).get(root); error) {
    return base::MakeError("graph_protocol", std::string("delta page is not JSON: ") + simdjson::error_message(error));
  }
  simdjson::dom::array values;
  if (root["value"].get_array().get(values)) {
    return base::MakeError("graph_protocol", "delta page without a \"value\" array");
  }
  GraphDeltaPage page;
  std::string_view link;
  if (!root["@odata.nextLink"].get_string().get(link)) page.next_link = std::string(link);
  if (!root["@odata.deltaLink"].get_string().get(link)) page.delta_link = std::string(link);
  if (page.next_link.empty() == page.delta_link.empty()) {
    return base::MakeError("graph_protocol", "delta page must carry exactly one of @odata.nextLink and @odata.deltaLink");
  }
  page.items.reserve(values.size());
  for (simdjson::dom::element value : values) {
    simdjson::dom::object object;
    std::string_view id;
    if (value.get_object().get(object) || object["id"].get_string().get(id) || id.empty()) {
      return base::MakeError("graph_protocol", "delta item without a string \"id\"");
    }
    GraphDeltaItem& item = page.items.emplace_back();
    item.id = std::string(id);
    simdjson::dom::element ignored;
    item.removed = !object["@removed"].get(ignored);
    bool has = false;
    item.has_attachments = !object["hasAttachments"].get_bool().get(has) && has;
    if (!item.removed) item.json = simdjson::minify(value);
  }
  return page;
}

std::string GraphErrorCode(std::string_view json) {
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  std::string_view code;
  if (parser.parse(json.data(), json.size()).get(root)) return {};
  if (!root["error"]["code"].get_string().get(code) || !root["error"].get_string().get(code)) return std::string(code);
  return {};
}

base::Result<GraphAccessToken> ParseGraphTokenResponse(std::string_view json) {
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  if (parser.parse(json.data(), json.size()).get(root) || !root.is_object()) {
    return base::MakeError("graph_token", "token response is not a JSON object");
  }
  GraphAccessToken token;
  std::string_view access;
  if (root["access_token"].get_string().get(access) || access.empty()) {
    return base::MakeError("graph_token", "token response without access_token");
  }
  token.access_token = std::string(access);
  std::int64_t seconds = 0;
  std::string_view text;
  if (root["expires_in"].get_int64().get(seconds)) {  // not a number: a numeric string, or nothing usable
    seconds = -1;
    if (!root["expires_in"].get_string().get(text)) {
      auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), seconds);
      if (ec != std::errc() || ptr != text.data() + text.size()) seconds = -1;
    }
  }
  if (seconds <= 0) return base::MakeError("graph_token", "token response without a positive expires_in");
  token.expires_in = std::chrono::seconds(seconds);
  return token;
}

std::optional<std::chrono::milliseconds> ParseRetryAfter(std::string_view value, std::int64_t now_unix_ms) {
  while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
  while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) value.remove_suffix(1);
  if (value.empty()) return std::nullopt;
  if (std::all_of(value.begin(), value.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    std::uint64_t seconds = 0;
    auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), seconds);
    if (ec != std::errc() || seconds > 365u * 24 * 3600) return std::nullopt;  // absurd: not a delay we honour blindly
    return std::chrono::milliseconds(seconds * 1000);
  }
  const auto at = stages::ParseRfc5322DateMs(value);  // IMF-fixdate is a subset of RFC 5322 dates
  if (!at) return std::nullopt;
  return std::chrono::milliseconds(std::max<std::int64_t>(0, *at - now_unix_ms));
}

std::string UrlEncode(std::string_view text) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(text.size());
  for (const char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if ((u >= 'A' && u <= 'Z') || (u >= 'a' && u <= 'z') || (u >= '0' && u <= '9') || u == '-' || u == '.' ||
        u == '_' || u == '~') {
      out += c;
    } else {
      out += '%';
      out += kHex[u >> 4];
      out += kHex[u & 15];
    }
  }
  return out;
}

GraphRequestBudget::GraphRequestBudget(std::size_t limit, std::chrono::milliseconds window, TimePoint now,
                                       unsigned slots)
    : limit_(limit),
      slot_width_(std::max<std::int64_t>(1, std::chrono::nanoseconds(window).count() / std::max(1u, slots))),
      origin_(now),
      counts_(std::max(1u, slots) + 1, 0) {}

void GraphRequestBudget::Advance(TimePoint now) {
  if (now < origin_) return;
  const std::int64_t slot = (now - origin_) / slot_width_;
  const auto size = static_cast<std::int64_t>(counts_.size());
  // Slots that fall out of the window are zeroed as the index moves past them (at most a ring's worth).
  for (std::int64_t i = current_ + 1; i <= slot && i <= current_ + size; ++i) {
    std::uint64_t& leaving = counts_[static_cast<std::size_t>(i % size)];
    sum_ -= leaving;
    leaving = 0;
  }
  current_ = std::max(current_, slot);
}

bool GraphRequestBudget::TryTake(TimePoint now) {
  Advance(now);
  if (sum_ >= limit_) return false;
  ++counts_[static_cast<std::size_t>(current_ % static_cast<std::int64_t>(counts_.size()))];
  ++sum_;
  return true;
}

std::chrono::milliseconds GraphRequestBudget::WaitFor(TimePoint now) {
  Advance(now);
  if (sum_ < limit_) return std::chrono::milliseconds(0);
  // Walk forward: after j more slots, the j oldest slots have left the window.
  const auto size = static_cast<std::int64_t>(counts_.size());
  std::uint64_t sum = sum_;
  for (std::int64_t j = 1; j <= size; ++j) {
    sum -= counts_[static_cast<std::size_t>((current_ + j) % size)];  // slot current_ + j - size leaves
    if (sum < limit_) {
      const TimePoint at = origin_ + slot_width_ * (current_ + j);
      return std::max(std::chrono::milliseconds(1), std::chrono::ceil<std::chrono::milliseconds>(at - now));
    }
  }
  return std::chrono::ceil<std::chrono::milliseconds>(slot_width_ * size);  // limit_ == 0 cannot happen (config >= 1)
}

}  // namespace mailrail::net
