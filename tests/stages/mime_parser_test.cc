#include "stages/mime_parser.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>

#include "stages/parse_defects.h"
#include "stages/text_codec.h"

namespace mailrail::stages {
namespace {

std::string Hex(const std::array<std::uint8_t, 32>& d) {
  static const char* kDigits = "0123456789abcdef";
  std::string out;
  for (auto b : d) {
    out.push_back(kDigits[b >> 4]);
    out.push_back(kDigits[b & 15]);
  }
  return out;
}

bool HasDefect(const Record& r, std::string_view d) {
  return std::find(r.defects.begin(), r.defects.end(), d) != r.defects.end();
}

class MimeParserTest : public ::testing::Test {
 protected:
  const Record& Parse(std::string raw) {
    msg_.Reset();
    msg_.raw = std::move(raw);
    msg_.kind = InputKind::kRfc822;
    parser_.Parse(msg_);
    return msg_.record;
  }
  // Same message with LF line ends turned into CRLF.
  static std::string Crlf(std::string_view lf) {
    std::string out;
    for (char c : lf) {
      if (c == '\n') out.push_back('\r');
      out.push_back(c);
    }
    return out;
  }

  MessageParser parser_;
  Message msg_;
};

constexpr std::string_view kSimple =
    "From: Billing <billing@Vendor.EXAMPLE>\n"
    "To: ap@corp.example, \"Doe, Jane\" <jane@corp.example>\n"
    "Subject: Rechnung Nr. 2026-118\n"
    "Date: Fri, 01 May 2026 10:00:00 +0200\n"
    "Message-ID: <CAH3x=abc@mail.example.com>\n"
    "\n"
    "Sehr geehrte Damen und Herren,\n\nanbei die Rechnung.\n";

TEST_F(MimeParserTest, ParsesBasicFieldsAsViewsIntoRaw) {
  const Record& r = Parse(std::string(kSimple));
  ASSERT_FALSE(msg_.parse_failed);
  ASSERT_TRUE(r.from);
  EXPECT_EQ(r.from->name, "Billing");
  EXPECT_EQ(r.from->address, "billing@vendor.example");
  ASSERT_EQ(r.to.size(), 2u);
  EXPECT_EQ(r.to[0].address, "ap@corp.example");
  EXPECT_EQ(r.to[0].name, "");
  EXPECT_EQ(r.to[1].name, "Doe, Jane");
  EXPECT_EQ(r.to[1].address, "jane@corp.example");
  EXPECT_EQ(r.subject, "Rechnung Nr. 2026-118");
  EXPECT_EQ(r.message_id.value(), "CAH3x=abc@mail.example.com");
  EXPECT_EQ(r.date_unix_ms.value(), 1777622400000);  // 2026-05-01T08:00:00Z
  EXPECT_EQ(r.body_preview, "Sehr geehrte Damen und Herren, anbei die Rechnung.");
  EXPECT_TRUE(r.defects.empty());
  EXPECT_EQ(r.headers.size(), 5u);
  // Zero copy: the subject and message id point into the raw buffer.
  const char* b = msg_.raw.data();
  const char* e = b + msg_.raw.size();
  EXPECT_TRUE(r.subject.data() >= b && r.subject.data() < e);
  EXPECT_TRUE(r.message_id->data() >= b && r.message_id->data() < e);
}

TEST_F(MimeParserTest, CrlfAndLfGiveTheSameRecord) {
  const Record& lf = Parse(std::string(kSimple));
  const std::string subject(lf.subject), preview(lf.body_preview);
  const Record& crlf = Parse(Crlf(kSimple));
  EXPECT_EQ(crlf.subject, subject);
  EXPECT_EQ(crlf.body_preview, preview);
  EXPECT_TRUE(crlf.defects.empty());
}

TEST_F(MimeParserTest, UnfoldsHeadersAndMatchesNamesCaseInsensitively) {
  const Record& r = Parse(
      "FROM: a@b.example\nsUbJeCt: a long\n   folded\n\tsubject\nDATE: 1 Jan 2020 00:00:00 +0000\n"
      "message-id: <x@y>\nX-Custom: one\n two\n\nbody\n");
  EXPECT_EQ(r.subject, "a long   folded\tsubject");
  ASSERT_EQ(r.headers.size(), 5u);
  EXPECT_EQ(r.headers[4].name, "X-Custom");
  EXPECT_EQ(r.headers[4].value, "one two");
  EXPECT_EQ(r.from->address, "a@b.example");
}

TEST_F(MimeParserTest, RepeatedAddressFieldsAccumulateAndSingletonsKeepTheFirst) {
  const Record& r = Parse(
      "From: a@x.example\nTo: one@x.example\nTo: two@x.example\nSubject: first\nSubject: second\n"
      "Date: 1 Jan 2020 00:00:00 +0000\nMessage-ID: <1@x>\n\n");
  ASSERT_EQ(r.to.size(), 2u);
  EXPECT_EQ(r.to[1].address, "two@x.example");
  EXPECT_EQ(r.subject, "first");
  EXPECT_TRUE(HasDefect(r, defect::kDuplicateSingletonHeader));
}

TEST_F(MimeParserTest, DecodesEncodedWordsBAndQWithCharsets) {
  const Record& r = Parse(
      "From: =?ISO-8859-1?Q?Andr=E9?= Pirard <PIRARD@vm1.ULG.AC.BE>\n"
      "To: =?utf-8?B?SsO8cmdlbg==?= <j@x.example>\n"
      "Subject: =?ISO-8859-1?B?SWYgeW91IGNhbiByZWFkIHRoaXMgeW8=?=\n"
      " =?ISO-8859-2?B?dSB1bmRlcnN0YW5kIHRoZSBleGFtcGxlLg==?= tail =?koi8-r?B?8NLJ18XU?=\n"
      "Date: 1 Jan 2020 00:00:00 +0000\nMessage-ID: <1@x>\n\nx\n");
  EXPECT_EQ(r.from->name, "Andr\xC3\xA9 Pirard");
  EXPECT_EQ(r.from->address, "PIRARD@vm1.ulg.ac.be");
  EXPECT_EQ(r.to[0].name, "J\xC3\xBCrgen");
  EXPECT_EQ(r.subject, "If you can read this you understand the example. tail \xD0\x9F\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82");
  EXPECT_TRUE(r.defects.empty());
}

TEST_F(MimeParserTest, EncodedWordQUnderscoreAndAdjacentWordsJoin) {
  const Record& r = Parse(
      "From: a@x\nSubject: =?utf-8?Q?hello_world?= =?utf-8?Q?=E2=82?= =?utf-8?Q?=AC?=\n"
      "Date: 1 Jan 2020 00:00:00 +0000\nMessage-ID: <1@x>\n\n");
  // The euro sign is split across two words; they are joined before charset conversion.
  EXPECT_EQ(r.subject, "hello world\xE2\x82\xAC");
}

TEST_F(MimeParserTest, SplitCharacterJoinsAcrossWordsWhoseCharsetDiffersOnlyInCaseAndLanguage) {
  const Record& r = Parse("From: a@x\nSubject: =?utf-8*sl?Q?omre=C5?=  =?Utf-8*SL?q?=BEje?=\n"
                          "Date: 1 Jan 2020 00:00:00 +0000\nMessage-ID: <1@x>\n\n");
  EXPECT_EQ(r.subject, "omre\xC5\xBEje");
  EXPECT_TRUE(r.defects.empty());
}

TEST_F(MimeParserTest, WhitespaceOnlyLineEndsTheHeaderBlock) {
  const Record& r = Parse(std::string("From: a@x\nDate: 1 Jan 2020 00:00:00 +0000\nMessage-ID: <1@x>\n"
                                      "Content-Type: multipart/alternative;\n boundary=\"--b=:1\"\n \n"
                                      "----b=:1\nContent-Type: text/plain\n\nhello\n----b=:1--\n"));
  ASSERT_EQ(r.parts.size(), 2u);
  EXPECT_EQ(r.body_text, "hello");
  EXPECT_EQ(r.headers.size(), 4u);
}

TEST_F(MimeParserTest, BadEncodedWordIsKeptLiterallyWithADefect) {
  const Record& r = Parse("From: a@x\nSubject: =?utf-8?X?abc?= ok\nDate: 1 Jan 2020 00:00:00 +0000\nMessage-ID: <1@x>\n\n");
  EXPECT_EQ(r.subject, "=?utf-8?X?abc?= ok");
  EXPECT_TRUE(HasDefect(r, defect::kBadEncodedWord));
}

TEST_F(MimeParserTest, UnknownCharsetFallsBackWithADefect) {
  const Record& r = Parse("From: a@x\nSubject: =?x-no-such-charset?Q?caf=E9?=\nDate: 1 Jan 2020 00:00:00 +0000\nMessage-ID: <1@x>\n\n");
  EXPECT_EQ(r.subject, "caf\xC3\xA9");  // treated as ISO-8859-1
  EXPECT_TRUE(HasDefect(r, defect::kUnknownCharset));
}

TEST_F(MimeParserTest, RawEightBitHeaderIsConvertedFromWindows1252) {
  const Record& r = Parse("From: a@x\nSubject: caf\xE9 \x80\nDate: 1 Jan 2020 00:00:00 +0000\nMessage-ID: <1@x>\n\n");
  EXPECT_EQ(r.subject, "caf\xC3\xA9 \xE2\x82\xAC");
  EXPECT_TRUE(HasDefect(r, defect::kNonAsciiHeader));
}

TEST_F(MimeParserTest, AddressListForms) {
  const Record& r = Parse(
      "From: a@x\n"
      "To: Group Name: one@x.example, \"Two \\\"Q\\\"\" <two@X.Example>;, three@x.example (Three Comment),\n"
      "  <@route.example,@r2:four@x.example>, five @ x.example, Mary Q. Smith <mary(c)@x.example>,\n"
      "  undisclosed-recipients:;\n"
      "Cc: \"Quoted\"@example.com\n"
      "Date: 1 Jan 2020 00:00:00 +0000\nMessage-ID: <1@x>\n\n");
  ASSERT_EQ(r.to.size(), 6u);
  EXPECT_EQ(r.to[0].address, "one@x.example");
  EXPECT_EQ(r.to[1].name, "Two \"Q\"");
  EXPECT_EQ(r.to[1].address, "two@x.example");
  EXPECT_EQ(r.to[2].address, "three@x.example");
  EXPECT_EQ(r.to[2].name, "Three Comment");
  EXPECT_EQ(r.to[3].address, "four@x.example");
  EXPECT_EQ(r.to[4].address, "five@x.example");
  EXPECT_EQ(r.to[5].name, "Mary Q. Smith");
  EXPECT_EQ(r.to[5].address, "mary@x.example");
  ASSERT_EQ(r.cc.size(), 1u);
  EXPECT_EQ(r.cc[0].address, "\"Quoted\"@example.com");
}

TEST_F(MimeParserTest, AddressesWithoutCommasOrWithBareDisplayNames) {
  const Record& r = Parse("From: Big Bug bb@Bug.com\nTo: tim@x.example concierge@x.example\n"
                          "Date: 1 Jan 2020 00:00:00 +0000\nMessage-ID: <1@x>\n\n");
  ASSERT_TRUE(r.from);
  EXPECT_EQ(r.from->name, "Big Bug");
  EXPECT_EQ(r.from->address, "bb@bug.com");
  ASSERT_EQ(r.to.size(), 2u);
  EXPECT_EQ(r.to[0].address, "tim@x.example");
  EXPECT_EQ(r.to[1].address, "concierge@x.example");
  EXPECT_TRUE(HasDefect(r, defect::kMalformedAddress));
}

TEST_F(MimeParserTest, StrayLineInsideTheHeaderIsSkippedWhenFieldsFollow) {
  const Record& r = Parse("Received: x\nquite Delivered-To: y\nFrom: a@x.example\nSubject: s\n"
                          "Date: 1 Jan 2020 00:00:00 +0000\nMessage-ID: <1@x>\n\nbody\n");
  EXPECT_EQ(r.subject, "s");
  EXPECT_EQ(r.body_text, "body\n");
  EXPECT_TRUE(HasDefect(r, defect::kMalformedHeaderLine));
  EXPECT_FALSE(HasDefect(r, defect::kMissingHeaderBodySeparator));
}

TEST_F(MimeParserTest, LongAddressListsStayLinearInMemory) {
  std::string to = "To: ";
  for (int i = 0; i < 20000; ++i) to += "\"Name " + std::to_string(i) + "\" <u" + std::to_string(i) + "@x.example>, ";
  const Record& r = Parse("From: a@x\n" + to + "\nDate: 1 Jan 2020 00:00:00 +0000\nMessage-ID: <1@x>\n\n");
  EXPECT_EQ(r.to.size(), 20000u);
  EXPECT_EQ(r.to[19999].name, "Name 19999");
  EXPECT_LT(msg_.arena.bytes_reserved(), 4 * msg_.raw.size() + 64 * 1024);
}

TEST_F(MimeParserTest, MalformedAddressIsDefect) {
  const Record& r = Parse("From: just-a-name\nDate: 1 Jan 2020 00:00:00 +0000\nMessage-ID: <1@x>\n\n");
  EXPECT_TRUE(HasDefect(r, defect::kMalformedAddress));
}

TEST_F(MimeParserTest, MissingFromDateAndMessageIdAreDefects) {
  const Record& r = Parse("Subject: hi\n\nbody\n");
  EXPECT_FALSE(r.from);
  EXPECT_FALSE(r.date_unix_ms);
  EXPECT_FALSE(r.message_id);
  EXPECT_TRUE(HasDefect(r, defect::kMissingFrom));
  EXPECT_TRUE(HasDefect(r, defect::kMissingDate));
  EXPECT_TRUE(HasDefect(r, defect::kMissingMessageId));
}

TEST_F(MimeParserTest, DateForms) {
  auto date = [&](std::string value) {
    Parse("From: a@x\nMessage-ID: <1@x>\nDate: " + value + "\n\n");
    return msg_.record.date_unix_ms;
  };
  const std::int64_t t = 1136214245000;  // 2006-01-02T15:04:05Z
  EXPECT_EQ(date("Mon, 02 Jan 2006 15:04:05 +0000").value(), t);
  EXPECT_EQ(date("Mon, 2 Jan 2006 08:04:05 -0700 (MST)").value(), t);
  EXPECT_EQ(date("2 Jan 06 10:04:05 EST").value(), t);          // two-digit year, named zone
  EXPECT_EQ(date("02 Jan 106 15:04:05 GMT").value(), t);        // three-digit year
  EXPECT_EQ(date("Mon Jan  2 15:04:05 2006").value(), t);       // asctime
  EXPECT_EQ(date("Mon, 2 Jan 2006 15:04 Z").value(), t - 5000); // no seconds, military zone
  EXPECT_EQ(date("2006-01-02T15:04:05Z").value(), t);
  EXPECT_EQ(date("Monday, 2-Jan-2006 15:04:05 GMT").has_value(), false);
  EXPECT_FALSE(date("not a date"));
  EXPECT_TRUE(HasDefect(msg_.record, defect::kUnparseableDate));
  EXPECT_FALSE(date("31 Feb 2020 00:00:00 +0000"));
}

TEST_F(MimeParserTest, MessageIdNormalization) {
  Parse("From: a@x\nDate: 1 Jan 2020 00:00:00 +0000\nMessage-ID:\n <abc.def@host.example>  (comment)\n"
        "In-Reply-To: <p1@x> <p2@x>\nReferences: <r1@x>\n <r2@x> junk <r3@x>\n\n");
  EXPECT_EQ(msg_.record.message_id.value(), "abc.def@host.example");
  EXPECT_EQ(msg_.record.in_reply_to.value(), "p1@x");
  ASSERT_EQ(msg_.record.references.size(), 3u);
  EXPECT_EQ(msg_.record.references[2], "r3@x");
  Parse("From: a@x\nDate: 1 Jan 2020 00:00:00 +0000\nMessage-ID: bare@id.example\n\n");
  EXPECT_EQ(msg_.record.message_id.value(), "bare@id.example");
  EXPECT_TRUE(HasDefect(msg_.record, defect::kInvalidMessageId));
}

constexpr std::string_view kHeaders = "From: a@x.example\nDate: 1 Jan 2020 00:00:00 +0000\nMessage-ID: <1@x>\n";

TEST_F(MimeParserTest, MultipartAlternativeWithAttachmentAndPreambleEpilogue) {
  const Record& r = Parse(std::string(kHeaders) +
                          "MIME-Version: 1.0\n"
                          "Content-Type: multipart/mixed; boundary=\"outer\"\n\n"
                          "This is the preamble.\n"
                          "--outer\n"
                          "Content-Type: multipart/alternative; boundary=inner\n\n"
                          "--inner\n"
                          "Content-Type: text/plain; charset=iso-8859-1\n"
                          "Content-Transfer-Encoding: quoted-printable\n\n"
                          "Gr=FC=DFe,=\n soft break\n"
                          "--inner\n"
                          "Content-Type: text/html\n\n"
                          "<p>ignored</p>\n"
                          "--inner--\n"
                          "--outer\n"
                          "Content-Type: application/PDF; name=\"R-2026-118.pdf\"\n"
                          "Content-Disposition: attachment\n"
                          "Content-Transfer-Encoding: base64\n\n"
                          "aGVsbG8gd29y\nbGQ=\n"
                          "--outer--\n"
                          "epilogue\n");
  EXPECT_TRUE(r.defects.empty()) << r.defects.size() << " " << (r.defects.empty() ? "" : r.defects[0]);
  EXPECT_EQ(r.body_text, "Gr\xC3\xBC\xC3\x9F" "e, soft break");
  ASSERT_EQ(r.attachments.size(), 1u);
  EXPECT_EQ(r.attachments[0].filename, "R-2026-118.pdf");
  EXPECT_EQ(r.attachments[0].content_type, "application/pdf");
  EXPECT_EQ(r.attachments[0].size, 11u);
  EXPECT_EQ(Hex(r.attachments[0].sha256), "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9");
  EXPECT_TRUE(r.has_attachments);
  ASSERT_EQ(r.parts.size(), 5u);
  EXPECT_EQ(r.parts[0].content_type, "multipart/mixed");
  EXPECT_EQ(r.parts[1].content_type, "multipart/alternative");
  EXPECT_EQ(r.parts[2].content_type, "text/plain");
  EXPECT_EQ(r.parts[2].depth, 2u);
  EXPECT_EQ(r.parts[3].content_type, "text/html");
  EXPECT_EQ(r.parts[4].content_type, "application/pdf");
  EXPECT_EQ(r.parts[4].depth, 1u);
  EXPECT_EQ(r.parts[4].decoded_size, 11u);
}

TEST_F(MimeParserTest, HtmlOnlyBodyIsStrippedForTheBodyText) {
  const Record& r = Parse(std::string(kHeaders) +
                          "Content-Type: text/html; charset=utf-8\n\n"
                          "<html><head><style>p{color:red}</style><script>x()</script></head>"
                          "<body><p>Hello&nbsp;&amp; welcome</p><!-- c --><div>to &#x263A; &#9731;</div></body></html>\n");
  EXPECT_EQ(r.body_preview, "Hello & welcome to \xE2\x98\xBA \xE2\x98\x83");
}

TEST_F(MimeParserTest, PreviewIsAtMost256CharactersWithWhitespaceCollapsed) {
  std::string body;
  for (int i = 0; i < 300; ++i) body += "\xC3\xA9  \n";
  const Record& r = Parse(std::string(kHeaders) + "Content-Type: text/plain; charset=utf-8\n\n" + body);
  std::size_t chars = 0;
  for (unsigned char c : r.body_preview) chars += (c & 0xC0) != 0x80;
  EXPECT_EQ(chars, 256u);
  EXPECT_EQ(r.body_preview.substr(0, 5), "\xC3\xA9 \xC3\xA9");
}

TEST_F(MimeParserTest, MessageRfc822PartIsParsedAndItsBodyIsNotTheBody) {
  const Record& r = Parse(std::string(kHeaders) +
                          "Content-Type: multipart/mixed; boundary=b\n\n"
                          "--b\n"
                          "Content-Type: message/rfc822\n\n"
                          "From: inner@x\nSubject: inner\n\n"
                          "--b\n"
                          "Content-Type: application/octet-stream\n\nbytes\n"
                          "--b--\n");
  EXPECT_EQ(r.subject, "");
  EXPECT_EQ(r.body_text, "");
  // An octet-stream without a filename or disposition is not an attachment.
  EXPECT_TRUE(r.attachments.empty());
  EXPECT_TRUE(r.defects.empty());
}

TEST_F(MimeParserTest, AttachedMessageWithDispositionIsAnAttachmentAndItsAttachmentsToo) {
  const Record& r = Parse(std::string(kHeaders) +
                          "Content-Type: multipart/mixed; boundary=b\n\n"
                          "--b\nContent-Type: text/plain\n\nouter body\n"
                          "--b\n"
                          "Content-Type: message/rfc822\nContent-Disposition: attachment; filename=fwd.eml\n\n"
                          "From: inner@x\nContent-Type: multipart/mixed; boundary=c\n\n"
                          "--c\nContent-Type: text/plain\n\ninner body\n"
                          "--c\nContent-Type: image/png\nContent-Disposition: attachment; filename=a.png\n\nPNG\n"
                          "--c--\n"
                          "--b--\n");
  EXPECT_EQ(r.body_text, "outer body");
  ASSERT_EQ(r.attachments.size(), 2u);
  EXPECT_EQ(r.attachments[0].filename, "fwd.eml");
  EXPECT_EQ(r.attachments[0].content_type, "message/rfc822");
  EXPECT_EQ(r.attachments[1].filename, "a.png");
  EXPECT_EQ(r.attachments[1].size, 3u);
}

TEST_F(MimeParserTest, Rfc2231ContinuationsAndCharsets) {
  const Record& r = Parse(std::string(kHeaders) +
                          "Content-Type: multipart/mixed; boundary=b\n\n"
                          "--b\n"
                          "Content-Type: application/octet-stream\n"
                          "Content-Disposition: attachment;\n"
                          " filename*0*=utf-8''Rechnung%20f%C3%BCr%20;\n"
                          " filename*1=\"Mai 2026\";\n"
                          " filename*2*=%2Epdf\n\nx\n"
                          "--b\n"
                          "Content-Type: application/octet-stream; name*=iso-8859-1'de'caf%E9.txt\n\ny\n"
                          "--b\n"
                          "Content-Type: application/octet-stream; name=\"=?utf-8?B?w6TDtsO8LnR4dA==?=\"\n\nz\n"
                          "--b--\n");
  ASSERT_EQ(r.attachments.size(), 3u);
  EXPECT_EQ(r.attachments[0].filename, "Rechnung f\xC3\xBCr Mai 2026.pdf");
  EXPECT_EQ(r.attachments[1].filename, "caf\xC3\xA9.txt");
  EXPECT_EQ(r.attachments[2].filename, "\xC3\xA4\xC3\xB6\xC3\xBC.txt");
}

TEST_F(MimeParserTest, TransferEncodings) {
  const std::string part = "Content-Type: application/octet-stream\nContent-Disposition: attachment\n";
  const Record& r = Parse(std::string(kHeaders) +
                          "Content-Type: multipart/mixed; boundary=b\n\n"
                          "--b\n" + part + "Content-Transfer-Encoding: 7bit\n\nseven\n"
                          "--b\n" + part + "Content-Transfer-Encoding: 8bit\n\n\xC3\xA9ight\n"
                          "--b\n" + part + "Content-Transfer-Encoding: binary\n\nbin\x01\n"
                          "--b\n" + part + "Content-Transfer-Encoding: BASE64\n\nAAEC\n"
                          "--b\n" + part + "Content-Transfer-Encoding: Quoted-Printable\n\na=3Db=\nc\n"
                          "--b--\n");
  ASSERT_EQ(r.attachments.size(), 5u);
  EXPECT_EQ(r.attachments[0].size, 5u);
  EXPECT_EQ(r.attachments[1].size, 6u);
  EXPECT_EQ(r.attachments[2].size, 4u);
  EXPECT_EQ(r.attachments[3].size, 3u);
  EXPECT_EQ(r.attachments[4].size, 4u);  // "a=bc"
  EXPECT_TRUE(r.defects.empty());
}

// --- one test per defect kind ------------------------------------------------------------------

TEST_F(MimeParserTest, DefectMissingBoundary) {
  const Record& r = Parse(std::string(kHeaders) + "Content-Type: multipart/mixed\n\nsome text\n");
  EXPECT_TRUE(HasDefect(r, defect::kMissingBoundary));
  EXPECT_EQ(r.body_text, "some text\n");
}

TEST_F(MimeParserTest, DefectBoundaryNotFound) {
  const Record& r = Parse(std::string(kHeaders) + "Content-Type: multipart/mixed; boundary=zzz\n\n--other\n\ntext\n");
  EXPECT_TRUE(HasDefect(r, defect::kBoundaryNotFound));
  EXPECT_NE(r.body_text.find("text"), std::string_view::npos);
}

TEST_F(MimeParserTest, DefectMissingClosingBoundary) {
  const Record& r = Parse(std::string(kHeaders) + "Content-Type: multipart/mixed; boundary=b\n\n--b\n\nlast part\n");
  EXPECT_TRUE(HasDefect(r, defect::kMissingClosingBoundary));
  EXPECT_EQ(r.body_text, "last part\n");
}

TEST_F(MimeParserTest, DefectBadBase64AndTruncatedBase64) {
  const Record& r = Parse(std::string(kHeaders) +
                          "Content-Type: multipart/mixed; boundary=b\n\n"
                          "--b\nContent-Disposition: attachment\nContent-Transfer-Encoding: base64\n\naGVs*bG8=\n"
                          "--b\nContent-Disposition: attachment\nContent-Transfer-Encoding: base64\n\naGVsbG8gd\n"
                          "--b--\n");
  EXPECT_TRUE(HasDefect(r, defect::kBadBase64));
  EXPECT_TRUE(HasDefect(r, defect::kTruncatedBase64));
  ASSERT_EQ(r.attachments.size(), 2u);
  EXPECT_EQ(r.attachments[0].size, 5u);  // "hello" despite the stray '*'
  EXPECT_EQ(r.attachments[1].size, 6u);  // "hello " then a dangling sextet
}

TEST_F(MimeParserTest, DefectBadQuotedPrintable) {
  const Record& r = Parse(std::string(kHeaders) + "Content-Transfer-Encoding: quoted-printable\n\na=ZZb =4\n");
  EXPECT_TRUE(HasDefect(r, defect::kBadQuotedPrintable));
  EXPECT_EQ(r.body_text, "a=ZZb =4\n");
}

TEST_F(MimeParserTest, DefectUnknownTransferEncoding) {
  const Record& r = Parse(std::string(kHeaders) + "Content-Transfer-Encoding: x-uuencode\n\nbody\n");
  EXPECT_TRUE(HasDefect(r, defect::kUnknownTransferEncoding));
  EXPECT_EQ(r.body_text, "body\n");
}

TEST_F(MimeParserTest, DefectMissingHeaderBodySeparator) {
  const Record& r = Parse(std::string(kHeaders) + "this line has no colon\nbody\n");
  EXPECT_TRUE(HasDefect(r, defect::kMissingHeaderBodySeparator));
  EXPECT_EQ(r.body_text, "this line has no colon\nbody\n");
}

TEST_F(MimeParserTest, DefectMalformedHeaderLine) {
  const Record& r = Parse(std::string(" leading continuation\n") + std::string(kHeaders) + "\nbody\n");
  EXPECT_TRUE(HasDefect(r, defect::kMalformedHeaderLine));
  EXPECT_EQ(r.from->address, "a@x.example");
}

TEST_F(MimeParserTest, DefectTooManyHeaders) {
  std::string raw(kHeaders);
  for (int i = 0; i < 1100; ++i) raw += "X-H: v\n";
  raw += "\nbody\n";
  const Record& r = Parse(raw);
  EXPECT_TRUE(HasDefect(r, defect::kTooManyHeaders));
  EXPECT_EQ(r.headers.size(), 1000u);
  EXPECT_EQ(r.body_text, "body\n");
}

TEST_F(MimeParserTest, DefectMalformedContentTypeAndParameter) {
  const Record& r = Parse(std::string(kHeaders) + "Content-Type: garbage; charset=utf-8; broken\n\nbody\n");
  EXPECT_TRUE(HasDefect(r, defect::kMalformedContentType));
  EXPECT_TRUE(HasDefect(r, defect::kMalformedParameter));
  EXPECT_EQ(r.body_text, "body\n");
}

TEST_F(MimeParserTest, DefectInvalidCharsetData) {
  const Record& r = Parse(std::string(kHeaders) + "Content-Type: text/plain; charset=utf-8\n\nbad \xFF byte\n");
  EXPECT_TRUE(HasDefect(r, defect::kInvalidCharsetData));
  EXPECT_EQ(r.body_text, "bad \xEF\xBF\xBD byte\n");
}

TEST_F(MimeParserTest, DefectEightBitIn7Bit) {
  const Record& r = Parse(std::string(kHeaders) + "Content-Transfer-Encoding: 7bit\n\nna\xC3\xAFve\n");
  EXPECT_TRUE(HasDefect(r, defect::kEightBitIn7Bit));
}

TEST_F(MimeParserTest, DefectNestingTooDeepIsBounded) {
  std::string raw(kHeaders);
  for (int i = 0; i < 100; ++i) raw += "Content-Type: multipart/mixed; boundary=b" + std::to_string(i) + "\n\n--b" + std::to_string(i) + "\n";
  raw += "\ninnermost\n";
  const Record& r = Parse(raw);
  EXPECT_TRUE(HasDefect(r, defect::kNestingTooDeep));
  EXPECT_FALSE(msg_.parse_failed);
}

TEST_F(MimeParserTest, DefectTooManyParts) {
  std::string raw = std::string(kHeaders) + "Content-Type: multipart/mixed; boundary=b\n\n";
  for (int i = 0; i < 1500; ++i) raw += "--b\n\np\n";
  raw += "--b--\n";
  const Record& r = Parse(raw);
  EXPECT_TRUE(HasDefect(r, defect::kTooManyParts));
}

TEST_F(MimeParserTest, EveryDefectNameIsStableSnakeCaseAndUnique) {
  for (std::size_t i = 0; i < defect::kAll.size(); ++i) {
    for (char c : defect::kAll[i]) EXPECT_TRUE((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_') << defect::kAll[i];
    for (std::size_t j = i + 1; j < defect::kAll.size(); ++j) EXPECT_NE(defect::kAll[i], defect::kAll[j]);
    EXPECT_EQ(defect::DefectIndex(defect::kAll[i]), i);
  }
}

// --- unparseable input ---------------------------------------------------------------------------

TEST_F(MimeParserTest, EmptyInputFails) {
  Parse("");
  EXPECT_TRUE(msg_.parse_failed);
  EXPECT_EQ(msg_.parse_error, parse_failure::kEmpty);
}

TEST_F(MimeParserTest, BinaryGarbageFails) {
  std::string garbage;
  for (int i = 0; i < 512; ++i) garbage.push_back(static_cast<char>((i * 7919) & 0xFF));
  Parse(garbage);
  EXPECT_TRUE(msg_.parse_failed);
  EXPECT_EQ(msg_.parse_error, parse_failure::kNoHeaders);
}

TEST_F(MimeParserTest, MboxFromLineIsSkipped) {
  const Record& r = Parse("From sender@x Mon Jan  2 15:04:05 2006\n" + std::string(kSimple));
  EXPECT_FALSE(msg_.parse_failed);
  EXPECT_EQ(r.subject, "Rechnung Nr. 2026-118");
  EXPECT_TRUE(r.defects.empty());
}

TEST_F(MimeParserTest, TruncatedMessagesNeverFailOrReadOutOfBounds) {
  const std::string full = std::string(kHeaders) +
                           "Subject: =?utf-8?B?w6TDtsO8?=\n"
                           "Content-Type: multipart/mixed; boundary=\"b\"\n\n"
                           "--b\nContent-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: quoted-printable\n\nhi=E9=\n"
                           "--b\nContent-Type: image/png; name*0*=utf-8''a%C3;\n name*1=b.png\nContent-Transfer-Encoding: base64\n\naGVsbG8=\n"
                           "--b--\n";
  for (std::size_t n = 1; n <= full.size(); ++n) {
    Parse(full.substr(0, n));  // ASan/UBSan builds check the bounds
    if (!msg_.parse_failed) {
      EXPECT_LE(msg_.record.attachments.size(), 1u);
    }
  }
}

TEST_F(MimeParserTest, ReusedMessageAndParserGiveIdenticalResults) {
  const std::string raw(kSimple);
  Parse(raw);
  const std::string first(msg_.record.body_preview);
  for (int i = 0; i < 3; ++i) {
    Parse(raw);
    EXPECT_EQ(msg_.record.body_preview, first);
    EXPECT_EQ(msg_.record.to.size(), 2u);
  }
}

}  // namespace
}  // namespace mailrail::stages
