#pragma once
// IMAP4rev1 (RFC 3501) response framing and the few response shapes the IMAP source reads.
//
// ImapResponseParser turns the byte stream from the server into whole responses. A response is
// one line, unless the line ends with a literal announcement `{n}` (or `{n+}`): then n raw bytes
// follow after CRLF and the response continues on the line after them, possibly with more
// literals. Bytes may arrive split anywhere (inside the CRLF, the announcement or the literal);
// Feed() keeps what is incomplete and Next() returns a response only once it is whole.
//
//   * 3 FETCH (UID 42 BODY[] {310}\r\n<310 bytes>)\r\n
//   -> kind kUntagged, text "3 FETCH (UID 42 BODY[] {310})", literals = {<310 bytes>}
//
// `text` keeps each literal's announcement in place (so tokens keep their positions) and drops
// the tag or the "* " / "+ " prefix. Literal bytes are moved out with the response, never copied
// again.
// Limits: a line (without its literals) longer than max_line_bytes, or a literal longer than
//   max_literal_bytes, is a protocol error; the connection must then be closed, since the
//   stream can no longer be framed.
// Threading: one parser per connection, used by its loop thread only.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/base/result.h"

namespace mailrail::net {

struct ImapResponse {
  enum class Kind { kUntagged, kTagged, kContinuation };
  Kind kind = Kind::kUntagged;
  std::string tag;   // kTagged only
  std::string text;  // after the tag / "* " / "+ "
  std::vector<std::string> literals;
};

class ImapResponseParser {
 public:
  struct Limits {
    std::size_t max_line_bytes = 1 << 20;
    std::size_t max_literal_bytes = 256u << 20;
  };
  ImapResponseParser() = default;
  explicit ImapResponseParser(Limits limits) : limits_(limits) {}

  void Feed(std::string_view bytes);
  // The next whole response, nullopt when more bytes are needed, or an error (framing lost).
  base::Result<std::optional<ImapResponse>> Next();
  // Bytes received but not yet returned in a response (buffered line or literal).
  std::size_t buffered() const { return buffer_.size() - pos_; }
  void Reset();

 private:
  Limits limits_;
  std::string buffer_;
  std::size_t pos_ = 0;         // first byte not yet consumed
  std::size_t scan_from_ = 0;   // where to resume looking for CRLF (absolute)
  ImapResponse current_;
  bool has_partial_ = false;    // current_ holds a line with literals still to come
  std::size_t literal_needed_ = 0;
  bool in_literal_ = false;
};

// Response shapes. ---------------------------------------------------------------------------
// Tagged status: "OK ...", "NO ...", "BAD ..." (case-insensitive).
enum class ImapStatus { kOk, kNo, kBad, kOther };
ImapStatus StatusOf(std::string_view text);
// The first word of `text` after an optional number: "3 FETCH (...)" -> "FETCH", "SEARCH 1 2"
// -> "SEARCH", "OK [UIDVALIDITY 7] ..." -> "OK". Upper-cased.
std::string ResponseName(std::string_view text);
// The leading number of "3 EXISTS"; nullopt when the text does not start with one.
std::optional<std::uint64_t> LeadingNumber(std::string_view text);
// A bracketed response code's numeric argument: CodeNumber("OK [UIDVALIDITY 7] x", "UIDVALIDITY") == 7.
std::optional<std::uint64_t> CodeNumber(std::string_view text, std::string_view code);
// "SEARCH 4 9 12" -> {4, 9, 12}; an error when a token is not a number.
base::Result<std::vector<std::uint64_t>> ParseSearch(std::string_view text);
// "CAPABILITY IMAP4rev1 IDLE ..." or "OK [CAPABILITY IMAP4rev1 IDLE ...] ...": whether `name` is listed.
bool HasCapability(std::string_view text, std::string_view name);

// One FETCH response: the UID and whether BODY[] came as a literal (its index in literals).
struct FetchedBody {
  std::uint64_t uid = 0;
  std::optional<std::size_t> literal;  // nullopt: BODY[] was NIL, a quoted string or absent
};
// Parses "<seq> FETCH (... UID n ... BODY[] {k} ...)"; an error when it is not a FETCH with a UID.
base::Result<FetchedBody> ParseFetch(const ImapResponse& response);

// Command building. ----------------------------------------------------------------------------
// A quoted string ("a\"b"); an error for CR, LF or NUL, which quoted strings cannot carry.
base::Result<std::string> Quote(std::string_view s);
// Sorted UIDs as a compact set: {1,2,3,7,9,10} -> "1:3,7,9:10".
std::string FormatUidSet(const std::vector<std::uint64_t>& sorted_uids);
// SEARCH SINCE date (RFC 3501 date: 4-Feb-2026) for a Unix time in seconds, in UTC.
std::string ImapDate(std::int64_t unix_seconds);

}  // namespace mailrail::net
