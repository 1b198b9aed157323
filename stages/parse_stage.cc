#include "stages/parse_stage.h"

namespace mailrail::stages {

ParseStage::ParseStage(engine::Channel<Message*>* in, engine::Channel<Message*>* out, ParseLimits limits,
                       std::string_view name)
    : name_(name), in_(in), outbox_(out), parser_(limits) {}

void ParseStage::Count(const Message& msg) {
  messages_.Add(1);
  bytes_.Add(msg.raw.size());
  if (msg.parse_failed) {
    const std::size_t r = parse_failure::ReasonIndex(msg.parse_error);
    if (r < failures_.size()) failures_[r].Add(1);
  }
  if (!msg.record.defects.empty()) messages_with_defects_.Add(1);
  for (Defect d : msg.record.defects) {
    const std::size_t i = defect::DefectIndex(d);
    if (i < defects_.size()) defects_[i].Add(1);
  }
}

std::size_t ParseStage::RunOnce() {
  if (!outbox_.Flush()) return 0;
  std::array<Message*, kBatch> batch{};
  const std::size_t n = in_->PopBatch(batch);
  for (std::size_t i = 0; i < n; ++i) {
    Message* msg = batch[i];
    parser_.Parse(*msg);
    Count(*msg);
    outbox_.Add(msg);
  }
  if (n > 0) outbox_.Flush();
  return n;
}

ParseCounters ParseStage::counters() const {
  ParseCounters c;
  c.messages = messages_.Load();
  c.bytes = bytes_.Load();
  c.messages_with_defects = messages_with_defects_.Load();
  for (std::size_t i = 0; i < defects_.size(); ++i) c.defects[i] = defects_[i].Load();
  for (std::size_t i = 0; i < failures_.size(); ++i) c.failures[i] = failures_[i].Load();
  return c;
}

void ParseStage::Report(engine::Snapshot& s) const {
  const ParseCounters c = counters();
  const engine::Labels stage = {{"stage", std::string(name_)}};
  s.Counter("stage_messages_in", static_cast<double>(c.messages), stage);
  s.Counter("parse_bytes", static_cast<double>(c.bytes), stage, "bytes of the messages parsed");
  s.Counter("parse_messages_with_defects", static_cast<double>(c.messages_with_defects), stage,
            "messages parsed with at least one defect");
  for (std::size_t i = 0; i < c.defects.size(); ++i) {
    if (c.defects[i] == 0) continue;
    s.Counter("parse_defects", static_cast<double>(c.defects[i]),
              {{"stage", std::string(name_)}, {"defect", std::string(defect::kAll[i])}},
              "defects found, by kind (kinds with none are left out)");
  }
  for (std::size_t i = 0; i < c.failures.size(); ++i) {
    s.Counter("parse_failures", static_cast<double>(c.failures[i]),
              {{"stage", std::string(name_)}, {"reason", std::string(parse_failure::kAll[i])}},
              "messages nothing could be parsed of (quarantined), by reason");
  }
}

}  // namespace mailrail::stages
