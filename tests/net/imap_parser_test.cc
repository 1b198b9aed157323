#include "net/imap_parser.h"

#include <gtest/gtest.h>

#include <random>

namespace mailrail::net {
namespace {

using Kind = ImapResponse::Kind;

std::vector<ImapResponse> Drain(ImapResponseParser& parser) {
  std::vector<ImapResponse> out;
  for (;;) {
    auto next = parser.Next();
    EXPECT_TRUE(next.has_value()) << next.error().message;
    if (!next.has_value() || !next->has_value()) return out;
    out.push_back(std::move(**next));
  }
}

const std::string kStream =
    "* OK [CAPABILITY IMAP4rev1 IDLE] ready\r\n"
    "* 2 FETCH (UID 41 BODY[] {12}\r\nSubject: a\r\n)\r\n"
    "* 3 FETCH (FLAGS (\\Seen) BODY[] {5}\r\nx{1}\n UID 42)\r\n"
    "+ idling\r\n"
    "a7 OK [READ-WRITE] Fetch completed.\r\n";

void ExpectStream(const std::vector<ImapResponse>& r) {
  ASSERT_EQ(r.size(), 5u);
  EXPECT_EQ(r[0].kind, Kind::kUntagged);
  EXPECT_EQ(r[0].text, "OK [CAPABILITY IMAP4rev1 IDLE] ready");
  EXPECT_EQ(r[1].text, "2 FETCH (UID 41 BODY[] {12})");
  ASSERT_EQ(r[1].literals.size(), 1u);
  EXPECT_EQ(r[1].literals[0], "Subject: a\r\n");
  // A literal whose bytes look like a line end and another announcement stays opaque.
  ASSERT_EQ(r[2].literals.size(), 1u);
  EXPECT_EQ(r[2].literals[0], "x{1}\n");
  EXPECT_EQ(r[2].text, "3 FETCH (FLAGS (\\Seen) BODY[] {5} UID 42)");
  EXPECT_EQ(r[3].kind, Kind::kContinuation);
  EXPECT_EQ(r[3].text, "idling");
  EXPECT_EQ(r[4].kind, Kind::kTagged);
  EXPECT_EQ(r[4].tag, "a7");
  EXPECT_EQ(StatusOf(r[4].text), ImapStatus::kOk);
}

TEST(ImapParserTest, WholeStreamAtOnce) {
  ImapResponseParser parser;
  parser.Feed(kStream);
  ExpectStream(Drain(parser));
  EXPECT_EQ(parser.buffered(), 0u);
}

TEST(ImapParserTest, EverySplitPointGivesTheSameResponses) {
  for (std::size_t cut = 0; cut <= kStream.size(); ++cut) {
    ImapResponseParser parser;
    std::vector<ImapResponse> got;
    parser.Feed(std::string_view(kStream).substr(0, cut));
    for (auto& r : Drain(parser)) got.push_back(std::move(r));
    parser.Feed(std::string_view(kStream).substr(cut));
    for (auto& r : Drain(parser)) got.push_back(std::move(r));
    SCOPED_TRACE("cut at " + std::to_string(cut));
    ExpectStream(got);
  }
}

TEST(ImapParserTest, ByteByByteWithRandomChunks) {
  std::mt19937 rng(7);
  for (int round = 0; round < 50; ++round) {
    ImapResponseParser parser;
    std::vector<ImapResponse> got;
    std::size_t at = 0;
    while (at < kStream.size()) {
      const std::size_t n = std::min<std::size_t>(kStream.size() - at, 1 + rng() % 7);
      parser.Feed(std::string_view(kStream).substr(at, n));
      at += n;
      for (auto& r : Drain(parser)) got.push_back(std::move(r));
    }
    ExpectStream(got);
  }
}

TEST(ImapParserTest, LargeLiteralAndNonSynchronizingAnnouncement) {
  ImapResponseParser parser;
  const std::string body(200000, 'b');
  parser.Feed("* 1 FETCH (UID 9 BODY[] {200000+}\r\n");
  EXPECT_FALSE(parser.Next().value().has_value());
  parser.Feed(body.substr(0, 100000));
  EXPECT_FALSE(parser.Next().value().has_value());
  parser.Feed(body.substr(100000) + ")\r\n");
  auto r = parser.Next();
  ASSERT_TRUE(r.has_value() && r->has_value());
  EXPECT_EQ((*r)->literals.at(0).size(), body.size());
  auto fetched = ParseFetch(**r);
  ASSERT_TRUE(fetched.has_value()) << fetched.error().message;
  EXPECT_EQ(fetched->uid, 9u);
  EXPECT_EQ(fetched->literal, 0u);
}

TEST(ImapParserTest, LimitsAreProtocolErrors) {
  ImapResponseParser parser(ImapResponseParser::Limits{.max_line_bytes = 64, .max_literal_bytes = 100});
  parser.Feed("* 1 FETCH (UID 1 BODY[] {101}\r\n");
  auto r = parser.Next();
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message.find("literal of 101 bytes"), std::string::npos);

  ImapResponseParser lines(ImapResponseParser::Limits{.max_line_bytes = 64, .max_literal_bytes = 100});
  lines.Feed("* " + std::string(100, 'x'));  // no line end yet, already too long
  EXPECT_FALSE(lines.Next().has_value());
}

TEST(ImapParserTest, LineAtTheLimitPassesWhereverItIsSplit) {
  const std::string line = "* 12345678\r\n";  // 10 bytes without CRLF: exactly the limit
  for (std::size_t cut = 0; cut <= line.size(); ++cut) {
    ImapResponseParser parser(ImapResponseParser::Limits{.max_line_bytes = 10, .max_literal_bytes = 100});
    parser.Feed(line.substr(0, cut));
    auto first = parser.Next();
    ASSERT_TRUE(first.has_value()) << "cut at " << cut << ": " << first.error().message;
    parser.Feed(line.substr(cut));
    auto r = first->has_value() ? std::move(first) : parser.Next();
    ASSERT_TRUE(r.has_value() && r->has_value()) << "cut at " << cut;
    EXPECT_EQ((*r)->text, "12345678");
  }
  ImapResponseParser parser(ImapResponseParser::Limits{.max_line_bytes = 10, .max_literal_bytes = 100});
  parser.Feed("* 123456789\r\n");  // one byte over
  EXPECT_FALSE(parser.Next().has_value());
}

TEST(ImapParserTest, MalformedTaggedLineIsAnError) {
  ImapResponseParser parser;
  parser.Feed("garbage\r\n");
  EXPECT_FALSE(parser.Next().has_value());
}

TEST(ImapParserTest, ResponseShapes) {
  EXPECT_EQ(ResponseName("3 EXISTS"), "EXISTS");
  EXPECT_EQ(ResponseName("OK [UIDVALIDITY 7] UIDs valid"), "OK");
  EXPECT_EQ(ResponseName("search 1 2"), "SEARCH");
  EXPECT_EQ(LeadingNumber("17 EXISTS"), 17u);
  EXPECT_FALSE(LeadingNumber("OK fine").has_value());
  EXPECT_EQ(CodeNumber("OK [UIDVALIDITY 1700000000] UIDs valid", "UIDVALIDITY"), 1700000000u);
  EXPECT_FALSE(CodeNumber("OK [UIDNEXT 5] x", "UIDVALIDITY").has_value());
  EXPECT_EQ(StatusOf("no [AUTHENTICATIONFAILED] bad"), ImapStatus::kNo);
  EXPECT_EQ(StatusOf("BAD what"), ImapStatus::kBad);

  auto uids = ParseSearch("SEARCH 4 9 12");
  ASSERT_TRUE(uids.has_value());
  EXPECT_EQ(*uids, (std::vector<std::uint64_t>{4, 9, 12}));
  EXPECT_TRUE(ParseSearch("SEARCH")->empty());
  EXPECT_FALSE(ParseSearch("SEARCH 4 x").has_value());

  EXPECT_TRUE(HasCapability("CAPABILITY IMAP4rev1 SASL-IR IDLE", "idle"));
  EXPECT_TRUE(HasCapability("OK [CAPABILITY IMAP4rev1 IDLE] Logged in", "IDLE"));
  EXPECT_FALSE(HasCapability("CAPABILITY IMAP4rev1 IDLEX", "IDLE"));
  // Found by the fuzzer: a word after the closing bracket used to loop forever.
  EXPECT_FALSE(HasCapability("OK [UIDVALIDITY 17] UIDs valid", "IDLE"));
  EXPECT_TRUE(HasCapability("OK [CAPABILITY IMAP4rev1][x] IDLE", "IDLE"));
}

TEST(ImapParserTest, FetchWithoutBodyOrUid) {
  ImapResponse nil{Kind::kUntagged, "", "5 FETCH (UID 77 BODY[] NIL)", {}};
  auto f = ParseFetch(nil);
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->uid, 77u);
  EXPECT_FALSE(f->literal.has_value());

  ImapResponse flags_only{Kind::kUntagged, "", "5 FETCH (FLAGS (\\Seen))", {}};
  EXPECT_FALSE(ParseFetch(flags_only).has_value());

  ImapResponse lying{Kind::kUntagged, "", "5 FETCH (UID 1 BODY[] {3})", {}};  // literal missing
  EXPECT_FALSE(ParseFetch(lying).has_value());
}

TEST(ImapParserTest, CommandBuilding) {
  EXPECT_EQ(Quote("pa\"ss\\word").value(), "\"pa\\\"ss\\\\word\"");
  EXPECT_FALSE(Quote("a\r\nb").has_value());
  EXPECT_EQ(FormatUidSet({1, 2, 3, 7, 9, 10}), "1:3,7,9:10");
  EXPECT_EQ(FormatUidSet({5}), "5");
  EXPECT_EQ(ImapDate(1770163200), "4-Feb-2026");  // 2026-02-04T00:00:00Z
}

}  // namespace
}  // namespace mailrail::net
