// libFuzzer target: ImapResponseParser on arbitrary server bytes, fed whole and fed in two pieces
// split where the first byte says. Both must give the same responses (framing does not depend on
// how the bytes arrive) and fail after the same number of responses; the response-shape helpers
// run on every response.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>
#include <vector>

#include "net/imap_parser.h"

namespace {

using mailrail::net::ImapResponse;
using mailrail::net::ImapResponseParser;

struct Outcome {
  std::vector<ImapResponse> responses;
  bool failed = false;
};

void Drain(ImapResponseParser& parser, Outcome& out) {
  while (!out.failed) {
    auto next = parser.Next();
    if (!next.has_value()) {
      out.failed = true;
      return;
    }
    if (!next->has_value()) return;
    out.responses.push_back(std::move(**next));
  }
}

Outcome Run(std::string_view bytes, std::size_t split) {
  ImapResponseParser parser(ImapResponseParser::Limits{.max_line_bytes = 4096, .max_literal_bytes = 65536});
  Outcome out;
  parser.Feed(bytes.substr(0, split));
  Drain(parser, out);
  if (!out.failed) {
    parser.Feed(bytes.substr(split));
    Drain(parser, out);
  }
  return out;
}

bool Same(const ImapResponse& a, const ImapResponse& b) {
  return a.kind == b.kind && a.tag == b.tag && a.text == b.text && a.literals == b.literals;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::string_view bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
  const std::size_t split = bytes.empty() ? 0 : data[0] % (bytes.size() + 1);
  const Outcome whole = Run(bytes, bytes.size());
  const Outcome pieces = Run(bytes, split);
  if (whole.failed != pieces.failed || whole.responses.size() != pieces.responses.size()) std::abort();
  for (std::size_t i = 0; i < whole.responses.size(); ++i) {
    if (!Same(whole.responses[i], pieces.responses[i])) std::abort();
    const ImapResponse& r = whole.responses[i];
    (void)mailrail::net::ResponseName(r.text);
    (void)mailrail::net::StatusOf(r.text);
    (void)mailrail::net::LeadingNumber(r.text);
    (void)mailrail::net::CodeNumber(r.text, "UIDVALIDITY");
    (void)mailrail::net::HasCapability(r.text, "IDLE");
    (void)mailrail::net::ParseSearch(r.text);
    auto fetched = mailrail::net::ParseFetch(r);
    if (fetched.has_value() && fetched->literal && *fetched->literal >= r.literals.size()) std::abort();
  }
  return 0;
}
