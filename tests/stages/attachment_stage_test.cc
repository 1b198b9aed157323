#include "stages/attachment_stage.h"

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>

#include "stages/mime_parser.h"
#include "storage/disk_object_store.h"
#include "tests/support/corpus.h"

namespace mailrail::stages {
namespace {

std::string Base64(std::string_view in) {
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  for (std::size_t i = 0; i < in.size(); i += 3) {
    std::uint32_t n = static_cast<std::uint8_t>(in[i]) << 16;
    if (i + 1 < in.size()) n |= static_cast<std::uint8_t>(in[i + 1]) << 8;
    if (i + 2 < in.size()) n |= static_cast<std::uint8_t>(in[i + 2]);
    out += kAlphabet[n >> 18 & 63];
    out += kAlphabet[n >> 12 & 63];
    out += i + 1 < in.size() ? kAlphabet[n >> 6 & 63] : '=';
    out += i + 2 < in.size() ? kAlphabet[n & 63] : '=';
    if (out.size() % 78 == 76) out += "\r\n";
  }
  return out;
}

std::string Pdf(int seed, std::size_t size) {
  std::string s = "%PDF-1.4\n";
  while (s.size() < size) s += static_cast<char>((seed * 131 + s.size() * 17) % 256);
  return s;
}

// A message with a base64 PDF and a quoted-printable XML attachment.
std::string MessageWith(const std::string& id, const std::string& pdf, std::string_view xml_qp) {
  std::string m = "From: billing@vendor.example\r\nTo: ap@corp.example\r\nMessage-ID: <" + id +
                  ">\r\nSubject: invoice\r\nMIME-Version: 1.0\r\n"
                  "Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\n"
                  "see attached\r\n--b1\r\nContent-Type: application/pdf; name=\"invoice.pdf\"\r\n"
                  "Content-Disposition: attachment; filename=\"invoice.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
                  Base64(pdf) + "\r\n";
  if (!xml_qp.empty()) {
    m += "--b1\r\nContent-Type: application/xml; name=\"invoice.xml\"\r\nContent-Disposition: attachment\r\n"
         "Content-Transfer-Encoding: quoted-printable\r\n\r\n";
    m += xml_qp;
    m += "\r\n";
  }
  m += "--b1--\r\n";
  return m;
}

bool PopOne(engine::Channel<Message*>& channel, Message*& m) { return channel.PopBatch(std::span(&m, 1)) == 1; }

using testing::ReadFile;

class AttachmentStageTest : public ::testing::Test {
 protected:
  AttachmentStageTest() {
    root_ = ::testing::TempDir() + "/attachment_stage_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(root_);
  }
  ~AttachmentStageTest() override { std::filesystem::remove_all(root_); }

  Message* Add(const std::string& raw, InputKind kind = InputKind::kRfc822) {
    auto m = std::make_unique<Message>();
    m->raw = raw;
    m->kind = kind;
    m->lsn = messages_.size() + 1;
    MessageParser parser;
    parser.Parse(*m);
    messages_.push_back(std::move(m));
    return messages_.back().get();
  }

  std::unique_ptr<AttachmentStage> MakeStage(AttachmentStageConfig config, std::uint64_t budget = 0) {
    auto store = storage::DiskObjectStore::Open({root_, budget, 4});
    EXPECT_TRUE(store.has_value());
    store_ = store.value().get();
    return std::make_unique<AttachmentStage>(config, std::move(store).value(), &in_, &out_);
  }

  // Feeds every message, closes the input and runs the stage until all came out (10 s at most).
  std::vector<Message*> Run(AttachmentStage& stage) {
    std::vector<Message*> received;
    std::size_t next = 0;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!stage.IsFinished() && std::chrono::steady_clock::now() < deadline) {
      while (next < messages_.size() && in_.Push(messages_[next].get())) ++next;
      if (next == messages_.size() && !in_.is_closed()) in_.Close();
      stage.RunOnce();
      Message* m = nullptr;
      while (PopOne(out_, m)) received.push_back(m);
    }
    return received;
  }

  std::string root_;
  engine::Channel<Message*> in_{"in", 4}, out_{"out", 4};
  std::vector<std::unique_ptr<Message>> messages_;
  storage::DiskObjectStore* store_ = nullptr;
};

TEST_F(AttachmentStageTest, StoresAttachmentsOfForwardedMessagesOnceAndKeepsOrder) {
  const std::string pdf = Pdf(1, 50000), other = Pdf(2, 3000), dropped_pdf = Pdf(3, 4000);
  Message* first = Add(MessageWith("1@x", pdf, "<a>caf=C3=A9 =3D 1</a>"));
  Message* duplicate = Add(MessageWith("1@x", other, ""));
  duplicate->outcome = Outcome::kDuplicate;
  Message* dropped = Add(MessageWith("3@x", dropped_pdf, ""));
  dropped->record.action = FilterAction::kDrop;
  Add("From: a@x.example\r\nSubject: no attachments\r\n\r\nhello\r\n");
  Message* same_pdf = Add(MessageWith("5@x", pdf, ""));
  for (int i = 0; i < 7; ++i) Add(MessageWith("more" + std::to_string(i) + "@x", Pdf(10 + i, 2000), ""));

  auto stage = MakeStage({});
  const std::vector<Message*> received = Run(*stage);
  ASSERT_TRUE(stage->IsFinished());
  ASSERT_EQ(received.size(), messages_.size());
  for (std::size_t i = 0; i < received.size(); ++i) EXPECT_EQ(received[i]->lsn, i + 1);

  ASSERT_EQ(first->record.attachments.size(), 2u);
  for (const Attachment& a : first->record.attachments) {
    EXPECT_EQ(a.stored, store_->Reference(a.sha256));
    EXPECT_TRUE(a.not_stored.empty());
  }
  EXPECT_EQ(ReadFile(store_->PathOf(first->record.attachments[0].sha256)), pdf);
  EXPECT_EQ(ReadFile(store_->PathOf(first->record.attachments[1].sha256)), "<a>caf\xC3\xA9 = 1</a>");
  EXPECT_EQ(same_pdf->record.attachments[0].stored, first->record.attachments[0].stored);
  // Duplicates and dropped messages keep their records untouched and store nothing.
  for (const Message* m : {duplicate, dropped}) {
    EXPECT_TRUE(m->record.attachments[0].stored.empty());
    EXPECT_TRUE(m->record.attachments[0].not_stored.empty());
    EXPECT_FALSE(std::filesystem::exists(store_->PathOf(m->record.attachments[0].sha256)));
  }
  const AttachmentCounters& c = stage->counters();
  EXPECT_EQ(c.seen.load(), 10u);
  EXPECT_EQ(c.stored.load(), 10u);
  EXPECT_EQ(store_->counters().stored.load(), 9u);  // the PDF of message 5 was not written again
  EXPECT_EQ(store_->counters().already_present.load() + store_->counters().joined_in_flight.load(), 1u);
}

TEST_F(AttachmentStageTest, TooLargeAndOverBudgetAreNotStoredCountedAndTheMessagesFlow) {
  Add(MessageWith("big@x", Pdf(1, 20000), ""));
  Add(MessageWith("fits@x", Pdf(2, 6000), ""));
  Add(MessageWith("over@x", Pdf(3, 6000), ""));
  AttachmentStageConfig config;
  config.max_bytes = 10000;
  auto stage = MakeStage(config, /*budget=*/10000);
  const std::vector<Message*> received = Run(*stage);
  ASSERT_EQ(received.size(), 3u);
  EXPECT_EQ(received[0]->record.attachments[0].not_stored, "too_large");
  EXPECT_FALSE(received[1]->record.attachments[0].stored.empty());
  EXPECT_EQ(received[2]->record.attachments[0].not_stored, "budget_full");
  EXPECT_TRUE(received[2]->record.attachments[0].stored.empty());
  EXPECT_EQ(stage->counters().too_large.load(), 1u);
  EXPECT_EQ(stage->counters().budget_full.load(), 1u);
  EXPECT_EQ(stage->counters().stored.load(), 1u);
  engine::Snapshot snapshot;
  stage->Report(snapshot);
  double too_large = -1;
  for (const auto& s : snapshot.samples()) {
    if (s.name == "attachments_not_stored" && s.labels.at(0).second == "too_large") too_large = s.value;
  }
  EXPECT_EQ(too_large, 1);
}

TEST_F(AttachmentStageTest, GraphContentBytesAreStoredAndMetadataOnlyAttachmentsSaySo) {
  // "\/" is JSON's escaped '/', part of the base64 alphabet.
  const Message* m = Add(R"({"internetMessageId": "<g@x>", "hasAttachments": true, "attachments": [
      {"name": "a.bin", "contentType": "application/octet-stream", "contentBytes": "\/\/8gaGk="},
      {"name": "meta.pdf", "contentType": "application/pdf", "size": 10}]})",
                         InputKind::kGraphJson);
  ASSERT_EQ(m->record.attachments.size(), 2u);
  auto stage = MakeStage({});
  ASSERT_EQ(Run(*stage).size(), 1u);
  const Attachment& bytes = m->record.attachments[0];
  EXPECT_EQ(bytes.stored, store_->Reference(bytes.sha256));
  EXPECT_EQ(ReadFile(store_->PathOf(bytes.sha256)), "\xFF\xFF hi");
  EXPECT_EQ(m->record.attachments[1].not_stored, "bytes_not_in_input");
  EXPECT_EQ(stage->counters().bytes_not_in_input.load(), 1u);
}

// A store that answers only when the test says so: shows that a slow store holds messages back
// (in order, bounded) instead of dropping or reordering them.
class ManualStore final : public storage::ObjectStore {
 public:
  std::string Reference(const storage::ObjectDigest&) const override { return "manual:"; }
  bool TrySubmit(const storage::ObjectWrite& write) override {
    if (pending.size() >= 2) return false;
    pending.push_back(write.token);
    return true;
  }
  void Poll(std::vector<storage::ObjectWriteResult>& out) override {
    for (std::size_t i = 0; i < release && !pending.empty(); ++i) {
      out.push_back({pending.front(), storage::ObjectWriteOutcome::kStored, ""});
      pending.erase(pending.begin());
    }
    release = 0;
  }
  std::size_t in_flight() const override { return pending.size(); }
  bool needs_polling() const override { return true; }
  void Report(engine::Snapshot&) const override {}
  std::vector<std::uint64_t> pending;
  std::size_t release = 0;
};

TEST_F(AttachmentStageTest, ASlowStoreHoldsMessagesBackInOrderAndStopsTakingInput) {
  for (int i = 0; i < 6; ++i) Add(MessageWith(std::to_string(i) + "@x", Pdf(i, 1000), ""));
  auto owned = std::make_unique<ManualStore>();
  ManualStore* store = owned.get();
  AttachmentStageConfig config;
  config.max_held_messages = 3;
  AttachmentStage stage(config, std::move(owned), &in_, &out_);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(in_.Push(messages_[i].get()));
  for (int i = 0; i < 5; ++i) stage.RunOnce();
  Message* m = nullptr;
  EXPECT_FALSE(PopOne(out_, m));                 // nothing settled yet
  EXPECT_EQ(store->pending.size(), 2u);      // the store's limit
  EXPECT_EQ(in_.size_approx(), 1u);          // at most max_held_messages taken
  store->release = 1;                        // the first object completes: its message leaves
  stage.RunOnce();
  ASSERT_TRUE(PopOne(out_, m));
  EXPECT_EQ(m->lsn, 1u);
  EXPECT_FALSE(PopOne(out_, m));
  std::vector<Message*> rest;
  for (int round = 0; round < 50 && rest.size() < 3; ++round) {
    store->release = 1;
    stage.RunOnce();
    while (PopOne(out_, m)) rest.push_back(m);
  }
  ASSERT_EQ(rest.size(), 3u);
  for (std::size_t i = 0; i < rest.size(); ++i) EXPECT_EQ(rest[i]->lsn, i + 2);
  EXPECT_EQ(rest[0]->record.attachments[0].stored, "manual:");
}

}  // namespace
}  // namespace mailrail::stages
