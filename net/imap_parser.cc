#include "net/imap_parser.h"

#include <charconv>
#include <ctime>

#include <fmt/core.h>

namespace mailrail::net {
namespace {

char Upper(char c) { return c >= 'a' && c <= 'z' ? static_cast<char>(c - 'a' + 'A') : c; }

bool EqualsNoCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (Upper(a[i]) != Upper(b[i])) return false;
  }
  return true;
}

std::optional<std::uint64_t> ToNumber(std::string_view s) {
  std::uint64_t v = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || ptr != s.data() + s.size() || s.empty()) return std::nullopt;
  return v;
}

// The literal announcement ending `line` ("... {123}" or "{123+}"): its size.
std::optional<std::uint64_t> TrailingLiteral(std::string_view line) {
  if (line.empty() || line.back() != '}') return std::nullopt;
  const std::size_t open = line.rfind('{');
  if (open == std::string_view::npos) return std::nullopt;
  std::string_view digits = line.substr(open + 1, line.size() - open - 2);
  if (!digits.empty() && digits.back() == '+') digits.remove_suffix(1);
  return ToNumber(digits);
}

}  // namespace

void ImapResponseParser::Feed(std::string_view bytes) {
  // Drop what responses already consumed before the buffer grows again.
  if (pos_ > 0 && (pos_ == buffer_.size() || pos_ > 65536)) {
    buffer_.erase(0, pos_);
    scan_from_ -= pos_;
    pos_ = 0;
  }
  buffer_.append(bytes);
}

void ImapResponseParser::Reset() {
  buffer_.clear();
  pos_ = scan_from_ = 0;
  current_ = ImapResponse{};
  has_partial_ = in_literal_ = false;
  literal_needed_ = 0;
}

base::Result<std::optional<ImapResponse>> ImapResponseParser::Next() {
  for (;;) {
    if (in_literal_) {
      if (buffer_.size() - pos_ < literal_needed_) return std::optional<ImapResponse>();
      current_.literals.emplace_back(buffer_, pos_, literal_needed_);
      pos_ += literal_needed_;
      scan_from_ = pos_;
      in_literal_ = false;
      continue;
    }
    if (scan_from_ < pos_) scan_from_ = pos_;
    const std::size_t lf = buffer_.find('\n', scan_from_);
    if (lf == std::string::npos) {
      scan_from_ = buffer_.size();
      // + 1: the line's CR may already be here; the limit counts the line without it.
      if (buffer_.size() - pos_ + current_.text.size() > limits_.max_line_bytes + 1) {
        return base::MakeError("imap_protocol", fmt::format("response line longer than {} bytes", limits_.max_line_bytes));
      }
      return std::optional<ImapResponse>();
    }
    std::size_t end = lf;
    if (end > pos_ && buffer_[end - 1] == '\r') --end;  // CRLF; a bare LF is tolerated
    const std::string_view line(buffer_.data() + pos_, end - pos_);
    if (current_.text.size() + line.size() > limits_.max_line_bytes) {
      return base::MakeError("imap_protocol", fmt::format("response line longer than {} bytes", limits_.max_line_bytes));
    }
    pos_ = lf + 1;
    scan_from_ = pos_;
    if (!has_partial_) {
      // The first line of a response: classify and strip the prefix.
      std::string_view rest = line;
      if (rest.starts_with("* ") || rest == "*") {
        current_.kind = ImapResponse::Kind::kUntagged;
        rest.remove_prefix(std::min<std::size_t>(2, rest.size()));
      } else if (rest.starts_with("+")) {
        current_.kind = ImapResponse::Kind::kContinuation;
        rest.remove_prefix(rest.starts_with("+ ") ? 2 : 1);
      } else {
        const std::size_t space = rest.find(' ');
        if (space == 0 || space == std::string_view::npos) {
          return base::MakeError("imap_protocol", fmt::format("malformed response line: '{}'", line.substr(0, 80)));
        }
        current_.kind = ImapResponse::Kind::kTagged;
        current_.tag.assign(rest.substr(0, space));
        rest.remove_prefix(space + 1);
      }
      current_.text.assign(rest);
    } else {
      current_.text.append(line);
    }
    if (current_.kind != ImapResponse::Kind::kContinuation) {
      if (auto size = TrailingLiteral(line)) {
        if (*size > limits_.max_literal_bytes) {
          return base::MakeError("imap_protocol",
                                 fmt::format("literal of {} bytes exceeds the limit of {}", *size, limits_.max_literal_bytes));
        }
        has_partial_ = true;
        in_literal_ = true;
        literal_needed_ = static_cast<std::size_t>(*size);
        continue;
      }
    }
    has_partial_ = false;
    std::optional<ImapResponse> out(std::move(current_));
    current_ = ImapResponse{};
    return out;
  }
}

ImapStatus StatusOf(std::string_view text) {
  const std::string_view word = text.substr(0, text.find(' '));
  if (EqualsNoCase(word, "OK")) return ImapStatus::kOk;
  if (EqualsNoCase(word, "NO")) return ImapStatus::kNo;
  if (EqualsNoCase(word, "BAD")) return ImapStatus::kBad;
  return ImapStatus::kOther;
}

std::string ResponseName(std::string_view text) {
  if (!text.empty() && text[0] >= '0' && text[0] <= '9') {
    const std::size_t space = text.find(' ');
    text = space == std::string_view::npos ? std::string_view() : text.substr(space + 1);
  }
  std::string name(text.substr(0, text.find_first_of(" [(")));
  for (char& c : name) c = Upper(c);
  return name;
}

std::optional<std::uint64_t> LeadingNumber(std::string_view text) { return ToNumber(text.substr(0, text.find(' '))); }

std::optional<std::uint64_t> CodeNumber(std::string_view text, std::string_view code) {
  const std::size_t open = text.find('[');
  if (open == std::string_view::npos) return std::nullopt;
  const std::size_t close = text.find(']', open);
  if (close == std::string_view::npos) return std::nullopt;
  std::string_view inside = text.substr(open + 1, close - open - 1);
  const std::size_t space = inside.find(' ');
  if (space == std::string_view::npos || !EqualsNoCase(inside.substr(0, space), code)) return std::nullopt;
  return ToNumber(inside.substr(space + 1));
}

base::Result<std::vector<std::uint64_t>> ParseSearch(std::string_view text) {
  if (ResponseName(text) != "SEARCH") return base::MakeError("imap_protocol", "not a SEARCH response");
  std::vector<std::uint64_t> uids;
  std::string_view rest = text.substr(6);
  while (!rest.empty()) {
    const std::size_t start = rest.find_first_not_of(' ');
    if (start == std::string_view::npos) break;
    rest.remove_prefix(start);
    const std::size_t end = std::min(rest.find(' '), rest.size());
    const auto uid = ToNumber(rest.substr(0, end));
    if (!uid) return base::MakeError("imap_protocol", fmt::format("bad UID in SEARCH response: '{}'", rest.substr(0, end)));
    uids.push_back(*uid);
    rest.remove_prefix(end);
  }
  return uids;
}

bool HasCapability(std::string_view text, std::string_view name) {
  std::size_t at = 0;
  while (at < text.size()) {
    const std::size_t start = text.find_first_not_of(" []", at);
    if (start == std::string_view::npos) return false;
    const std::size_t end = std::min(text.find_first_of(" []", start), text.size());
    if (EqualsNoCase(text.substr(start, end - start), name)) return true;
    at = end;
  }
  return false;
}

base::Result<FetchedBody> ParseFetch(const ImapResponse& response) {
  std::string_view text = response.text;
  if (ResponseName(text) != "FETCH") return base::MakeError("imap_protocol", "not a FETCH response");
  const std::size_t open = text.find('(');
  if (open == std::string_view::npos) return base::MakeError("imap_protocol", "FETCH response without a list");
  FetchedBody out;
  bool has_uid = false;
  std::size_t literal_index = 0;
  std::size_t i = open + 1;
  // Reads one item: an atom (with [...] and <...> sections), a quoted string, a literal
  // announcement or a parenthesised list. Returns it; `literal` tells which literal it was.
  auto next_item = [&](std::optional<std::size_t>& literal) -> std::string_view {
    literal.reset();
    while (i < text.size() && text[i] == ' ') ++i;
    const std::size_t start = i;
    if (i >= text.size() || text[i] == ')') return {};
    if (text[i] == '"') {
      for (++i; i < text.size() && text[i] != '"'; ++i) {
        if (text[i] == '\\') ++i;
      }
      ++i;
    } else if (text[i] == '{') {
      i = text.find('}', i);
      i = i == std::string_view::npos ? text.size() : i + 1;
      literal = literal_index++;
    } else if (text[i] == '(') {
      int depth = 0;
      for (; i < text.size(); ++i) {
        if (text[i] == '(') ++depth;
        if (text[i] == ')' && --depth == 0) break;
        if (text[i] == '{') ++literal_index;  // literals nested in lists keep the count right
        if (text[i] == '"') {
          for (++i; i < text.size() && text[i] != '"'; ++i) {
            if (text[i] == '\\') ++i;
          }
        }
      }
      ++i;
    } else {
      int bracket = 0;
      for (; i < text.size(); ++i) {
        const char c = text[i];
        if (c == '[') ++bracket;
        if (c == ']') --bracket;
        if (bracket == 0 && (c == ' ' || c == ')' || c == '(')) break;
      }
    }
    return text.substr(start, std::min(i, text.size()) - start);
  };
  for (;;) {
    std::optional<std::size_t> literal;
    const std::string_view key = next_item(literal);
    if (key.empty()) break;
    const std::string_view value = next_item(literal);
    if (value.empty()) return base::MakeError("imap_protocol", fmt::format("FETCH item {} without a value", key));
    if (EqualsNoCase(key, "UID")) {
      const auto uid = ToNumber(value);
      if (!uid) return base::MakeError("imap_protocol", fmt::format("bad UID in FETCH response: '{}'", value));
      out.uid = *uid;
      has_uid = true;
    } else if (EqualsNoCase(key, "BODY[]") || EqualsNoCase(key, "RFC822")) {
      out.literal = literal;
    }
  }
  if (!has_uid) return base::MakeError("imap_protocol", "FETCH response without UID");
  if (out.literal && *out.literal >= response.literals.size()) {
    return base::MakeError("imap_protocol", "FETCH response announces more literals than it carries");
  }
  return out;
}

base::Result<std::string> Quote(std::string_view s) {
  std::string out = "\"";
  for (const char c : s) {
    if (c == '\r' || c == '\n' || c == '\0') return base::MakeError("imap_quote", "CR, LF and NUL cannot be sent in a quoted string");
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  out += '"';
  return out;
}

std::string FormatUidSet(const std::vector<std::uint64_t>& uids) {
  std::string out;
  for (std::size_t i = 0; i < uids.size();) {
    std::size_t j = i;
    while (j + 1 < uids.size() && uids[j + 1] == uids[j] + 1) ++j;
    if (!out.empty()) out += ',';
    out += std::to_string(uids[i]);
    if (j > i) out += ':' + std::to_string(uids[j]);
    i = j + 1;
  }
  return out;
}

std::string ImapDate(std::int64_t unix_seconds) {
  static constexpr const char* kMonths[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                            "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  const std::time_t t = static_cast<std::time_t>(unix_seconds);
  std::tm tm{};
  gmtime_r(&t, &tm);
  return fmt::format("{}-{}-{}", tm.tm_mday, kMonths[tm.tm_mon], tm.tm_year + 1900);
}

}  // namespace mailrail::net
