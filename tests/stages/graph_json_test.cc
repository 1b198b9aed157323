#include "stages/graph_json.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>

#include "stages/mime_parser.h"
#include "stages/parse_defects.h"

namespace mailrail::stages {
namespace {

class GraphJsonTest : public ::testing::Test {
 protected:
  const Record& Parse(std::string json) {
    msg_.Reset();
    msg_.raw = std::move(json);
    msg_.kind = InputKind::kGraphJson;
    parser_.Parse(msg_);
    return msg_.record;
  }
  bool HasDefect(std::string_view d) const {
    return std::find(msg_.record.defects.begin(), msg_.record.defects.end(), d) != msg_.record.defects.end();
  }
  MessageParser parser_;
  Message msg_;
};

constexpr std::string_view kMessage = R"({
  "@odata.etag": "W/\"CQAAABYAAAC4\"",
  "id": "AAMkADhMGAAA=",
  "receivedDateTime": "2018-09-09T03:15:08Z",
  "sentDateTime": "2018-09-09T03:15:06Z",
  "hasAttachments": true,
  "internetMessageId": "<MWHPR6E1BE060@MWHPR1120.namprd22.prod.outlook.com>",
  "subject": "Caf\u00e9 \"quoted\" \ud83d\ude0a",
  "body": {"contentType": "html", "content": "<html><body><p>The group\r\nrepresents   Nevada.</p></body></html>"},
  "sender": {"emailAddress": {"name": "Sender", "address": "sender@Contoso.COM"}},
  "from": {"emailAddress": {"name": "Adele Vance", "address": "AdeleV@contoso.OnMicrosoft.com"}},
  "toRecipients": [{"emailAddress": {"name": "Alex Wilber", "address": "AlexW@contoso.OnMicrosoft.com"}},
                   {"emailAddress": {"address": "b@x.example"}}],
  "ccRecipients": [],
  "replyTo": [{"emailAddress": {"name": "R", "address": "r@X.example"}}],
  "attachments": [
    {"@odata.type": "#microsoft.graph.fileAttachment", "name": "hello.txt", "contentType": "Text/Plain",
     "size": 123, "contentBytes": "aGVsbG8gd29ybGQ="},
    {"@odata.type": "#microsoft.graph.itemAttachment", "name": "item", "contentType": null, "size": 77}
  ]
})";

TEST_F(GraphJsonTest, ReadsEveryField) {
  const Record& r = Parse(std::string(kMessage));
  ASSERT_FALSE(msg_.parse_failed) << msg_.parse_error;
  EXPECT_EQ(r.message_id.value(), "MWHPR6E1BE060@MWHPR1120.namprd22.prod.outlook.com");
  EXPECT_EQ(r.graph_id.value(), "AAMkADhMGAAA=");
  EXPECT_EQ(r.subject, "Caf\xC3\xA9 \"quoted\" \xF0\x9F\x98\x8A");
  ASSERT_TRUE(r.from);
  EXPECT_EQ(r.from->name, "Adele Vance");
  EXPECT_EQ(r.from->address, "AdeleV@contoso.onmicrosoft.com");
  ASSERT_EQ(r.to.size(), 2u);
  EXPECT_EQ(r.to[0].address, "AlexW@contoso.onmicrosoft.com");
  EXPECT_EQ(r.to[1].name, "");
  EXPECT_TRUE(r.cc.empty());
  ASSERT_EQ(r.reply_to.size(), 1u);
  EXPECT_EQ(r.reply_to[0].address, "r@x.example");
  EXPECT_EQ(r.date_unix_ms.value(), 1536462906000);  // sentDateTime
  EXPECT_TRUE(r.has_attachments);
  EXPECT_EQ(r.body_preview, "The group represents Nevada.");
  ASSERT_EQ(r.attachments.size(), 2u);
  EXPECT_EQ(r.attachments[0].filename, "hello.txt");
  EXPECT_EQ(r.attachments[0].content_type, "text/plain");
  EXPECT_EQ(r.attachments[0].size, 11u);  // decoded bytes, not Graph's `size`
  EXPECT_TRUE(r.attachments[0].has_sha256);
  EXPECT_EQ(r.attachments[1].size, 77u);
  EXPECT_FALSE(r.attachments[1].has_sha256);
  // Unescaped strings are views into the raw JSON.
  EXPECT_TRUE(r.graph_id->data() >= msg_.raw.data() && r.graph_id->data() < msg_.raw.data() + msg_.raw.size());
}

TEST_F(GraphJsonTest, SenderAndReceivedDateAreFallbacks) {
  const Record& r = Parse(R"({"id": "x", "receivedDateTime": "2020-01-01T00:00:00.250+01:00",
      "sender": {"emailAddress": {"address": "s@x.example"}}, "body": {"contentType": "text", "content": "plain  text"}})");
  ASSERT_FALSE(msg_.parse_failed);
  EXPECT_EQ(r.from->address, "s@x.example");
  EXPECT_EQ(r.date_unix_ms.value(), 1577833200250);
  EXPECT_EQ(r.body_text, "plain  text");
  EXPECT_EQ(r.body_preview, "plain text");
  EXPECT_TRUE(HasDefect(defect::kMissingMessageId));
}

TEST_F(GraphJsonTest, WrongFieldTypesAreDefects) {
  const Record& r = Parse(R"({"subject": 42, "toRecipients": {}, "sentDateTime": "yesterday", "internetMessageId": "<a@b>"})");
  ASSERT_FALSE(msg_.parse_failed);
  EXPECT_EQ(r.subject, "");
  EXPECT_TRUE(HasDefect(defect::kMalformedJsonField));
  EXPECT_TRUE(HasDefect(defect::kUnparseableDate));
  EXPECT_FALSE(r.date_unix_ms);
}

TEST_F(GraphJsonTest, BadContentBytesIsDefect) {
  Parse(R"({"internetMessageId": "<a@b>", "attachments": [{"name": "a", "contentBytes": "aGV*sbG8"}]})");
  EXPECT_TRUE(HasDefect(defect::kBadBase64));
}

TEST_F(GraphJsonTest, EscapedSlashesInContentBytesAreHandled) {
  const Record& r = Parse(R"({"internetMessageId": "<a@b>", "attachments": [{"name": "a", "contentBytes": "\/\/8="}]})");
  ASSERT_EQ(r.attachments.size(), 1u);
  EXPECT_EQ(r.attachments[0].size, 2u);
  EXPECT_TRUE(r.defects.empty());
}

TEST_F(GraphJsonTest, InvalidJsonIsAParseFailure) {
  Parse(R"({"subject": "unterminated)");
  EXPECT_TRUE(msg_.parse_failed);
  EXPECT_EQ(msg_.parse_error, parse_failure::kInvalidJson);
  Parse("[1, 2]");
  EXPECT_TRUE(msg_.parse_failed);
  EXPECT_EQ(msg_.parse_error, parse_failure::kNotAJsonObject);
  Parse("");
  EXPECT_EQ(msg_.parse_error, parse_failure::kEmpty);
  Parse(R"({"subject": "x", "toRecipients": [)");
  EXPECT_TRUE(msg_.parse_failed);
}

TEST_F(GraphJsonTest, TruncatedDocumentsNeverCrash) {
  const std::string full(kMessage);
  for (std::size_t n = 1; n < full.size(); ++n) {
    Parse(full.substr(0, n));
    EXPECT_TRUE(msg_.parse_failed) << n;
  }
}

}  // namespace
}  // namespace mailrail::stages
