#include "stages/parse_stage.h"

#include <gtest/gtest.h>

#include <array>
#include <memory>
#include <vector>

namespace mailrail::stages {
namespace {

TEST(ParseStageTest, ParsesEveryMessageInOrderAndCountsDefectsAndFailures) {
  engine::Channel<Message*> in("in", 8), out("out", 8);
  ParseStage stage(&in, &out);
  EXPECT_GT(stage.cost_hint(), 1u);
  std::vector<std::unique_ptr<Message>> messages;
  for (int i = 0; i < 20; ++i) {
    auto m = std::make_unique<Message>();
    if (i % 5 == 4) {
      m->raw = "";  // unparseable
    } else if (i % 5 == 3) {
      m->kind = InputKind::kGraphJson;
      m->raw = R"({"internetMessageId": "<g@x>", "subject": "graph"})";
    } else {
      m->raw = "From: a@x.example\nSubject: s" + std::to_string(i) + "\n\nbody\n";  // no Date, no Message-ID
    }
    messages.push_back(std::move(m));
  }
  std::size_t next_in = 0;
  std::vector<Message*> received;
  // Small rings: the stage must stall on a full output and resume, dropping nothing.
  while (received.size() < messages.size()) {
    while (next_in < messages.size() && in.Push(messages[next_in].get())) ++next_in;
    if (next_in == messages.size() && !in.is_closed()) in.Close();
    stage.RunOnce();
    std::array<Message*, 3> batch{};
    const std::size_t n = out.PopBatch(batch);
    received.insert(received.end(), batch.begin(), batch.begin() + static_cast<std::ptrdiff_t>(n));
  }
  stage.RunOnce();
  EXPECT_TRUE(stage.IsFinished());
  for (std::size_t i = 0; i < messages.size(); ++i) {
    ASSERT_EQ(received[i], messages[i].get());
    if (i % 5 == 4) {
      EXPECT_TRUE(received[i]->parse_failed);
    } else if (i % 5 == 3) {
      EXPECT_EQ(received[i]->record.subject, "graph");
    } else {
      EXPECT_EQ(received[i]->record.subject, "s" + std::to_string(i));
    }
  }
  const ParseCounters c = stage.counters();
  EXPECT_EQ(c.messages, 20u);
  EXPECT_EQ(c.failures[parse_failure::ReasonIndex(parse_failure::kEmpty)], 4u);
  EXPECT_EQ(c.defects[defect::DefectIndex(defect::kMissingDate)], 12u);
  EXPECT_EQ(c.defects[defect::DefectIndex(defect::kMissingMessageId)], 12u);
  EXPECT_EQ(c.messages_with_defects, 12u);
  std::uint64_t bytes = 0;
  for (const auto& m : messages) bytes += m->raw.size();
  EXPECT_EQ(c.bytes, bytes);
}

}  // namespace
}  // namespace mailrail::stages
