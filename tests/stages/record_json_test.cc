#include "stages/record_json.h"

#include <gtest/gtest.h>
#include <simdjson.h>

namespace mailrail::stages {
namespace {

TEST(RecordJsonTest, EscapesControlCharactersAndReplacesInvalidUtf8) {
  std::string out;
  AppendJsonString("a\"b\\c\nd\x01 \xC3\xA9 \xFF end \xE2\x82", out);
  EXPECT_EQ(out, "\"a\\\"b\\\\c\\nd\\u0001 \xC3\xA9 \xEF\xBF\xBD end \xEF\xBF\xBD\xEF\xBF\xBD\"");
}

TEST(RecordJsonTest, FormatsRfc3339InUtcWithMilliseconds) {
  std::string out;
  AppendRfc3339(1763892902113, out);
  EXPECT_EQ(out, "2025-11-23T10:15:02.113Z");
  out.clear();
  AppendRfc3339(-1, out);
  EXPECT_EQ(out, "1969-12-31T23:59:59.999Z");
}

TEST(RecordJsonTest, WritesTheBriefsSchemaAsValidJson) {
  Message msg;
  msg.raw = "0123456789";
  msg.lsn = 1042;
  msg.source.kind = SourceKind::kReplay;
  msg.source.id = "dump.mbox";
  msg.source.position = "81233";
  msg.received_at_ms = 1763892902113;
  Record& r = msg.record;
  r.message_id = "CAH3x=abc@mail.example.com";
  r.date_unix_ms = 1777622400000;
  r.from = Address{"Billing", "billing@vendor.example"};
  r.to.push_back(Address{"", "ap@corp.example"});
  r.subject = "Rechnung Nr. 2026-118";
  Attachment a;
  a.filename = "R-2026-118.pdf";
  a.content_type = "application/pdf";
  a.size = 40211;
  a.sha256[0] = 0x9b;
  a.has_sha256 = true;
  r.attachments.push_back(a);
  r.body_preview = "Sehr geehrte Damen und Herren";
  r.labels.push_back("invoice");
  r.rules.push_back("invoice.subject.de");
  r.action = FilterAction::kLabel;
  r.spam_score = 0.4;
  r.dedup_key = Fingerprint{0x0123456789abcdefull, 0xfedcba9876543210ull};

  std::string json;
  AppendRecordJson(msg, json);
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  ASSERT_EQ(parser.parse(json).get(doc), simdjson::SUCCESS) << json;
  EXPECT_EQ(std::string_view(doc["message_id"]), "CAH3x=abc@mail.example.com");
  EXPECT_EQ(std::string_view(doc["dedup_key"]), "fedcba98765432100123456789abcdef");
  EXPECT_EQ(int64_t(doc["lsn"]), 1042);
  EXPECT_EQ(std::string_view(doc["source"]["kind"]), "replay");
  EXPECT_EQ(std::string_view(doc["source"]["position"]), "81233");
  EXPECT_EQ(std::string_view(doc["received_at"]), "2025-11-23T10:15:02.113Z");
  EXPECT_EQ(std::string_view(doc["date"]), "2026-05-01T08:00:00.000Z");
  EXPECT_EQ(std::string_view(doc["from"]["address"]), "billing@vendor.example");
  EXPECT_EQ(std::string_view(doc["to"].at(0)["address"]), "ap@corp.example");
  EXPECT_EQ(doc["cc"].get_array().size(), 0u);
  EXPECT_TRUE(doc["in_reply_to"].is_null());
  EXPECT_EQ(int64_t(doc["size"]), 10);
  EXPECT_TRUE(bool(doc["has_attachments"]));
  EXPECT_EQ(int64_t(doc["attachments"].at(0)["size"]), 40211);
  EXPECT_EQ(std::string_view(doc["attachments"].at(0)["sha256"]).substr(0, 4), "9b00");
  EXPECT_EQ(std::string_view(doc["action"]), "label");
  EXPECT_DOUBLE_EQ(double(doc["spam_score"]), 0.4);
  EXPECT_EQ(std::string_view(doc["rules"].at(0)), "invoice.subject.de");
  EXPECT_EQ(doc["defects"].get_array().size(), 0u);
}

TEST(RecordJsonTest, AttachmentsCarryTheStoreReferenceOrWhyNot) {
  Message msg;
  Attachment stored;
  stored.filename = "a.pdf";
  stored.has_sha256 = true;
  stored.stored = "sha256:9b00";
  Attachment refused = stored;
  refused.stored = {};
  refused.not_stored = "too_large";
  Attachment no_store = stored;
  no_store.stored = {};
  msg.record.attachments = {stored, refused, no_store};
  std::string json;
  AppendRecordJson(msg, json);
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  ASSERT_EQ(parser.parse(json).get(doc), simdjson::SUCCESS) << json;
  simdjson::dom::array list = doc["attachments"].get_array();
  ASSERT_EQ(list.size(), 3u);
  EXPECT_EQ(std::string_view(list.at(0)["stored"]), "sha256:9b00");
  EXPECT_EQ(list.at(0)["not_stored"].error(), simdjson::NO_SUCH_FIELD);
  EXPECT_EQ(std::string_view(list.at(1)["not_stored"]), "too_large");
  EXPECT_EQ(list.at(1)["stored"].error(), simdjson::NO_SUCH_FIELD);
  // Without a store configured the record keeps its old shape.
  EXPECT_EQ(list.at(2)["stored"].error(), simdjson::NO_SUCH_FIELD);
  EXPECT_EQ(list.at(2)["not_stored"].error(), simdjson::NO_SUCH_FIELD);
}

TEST(RecordJsonTest, AbsentFieldsAreNull) {
  Message msg;
  std::string json;
  AppendRecordJson(msg, json);
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  ASSERT_EQ(parser.parse(json).get(doc), simdjson::SUCCESS) << json;
  EXPECT_TRUE(doc["message_id"].is_null());
  EXPECT_TRUE(doc["date"].is_null());
  EXPECT_TRUE(doc["from"].is_null());
  EXPECT_EQ(std::string_view(doc["subject"]), "");
}

}  // namespace
}  // namespace mailrail::stages
