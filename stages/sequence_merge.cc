#include "stages/sequence_merge.h"

#include <string>

#include "engine/base/check.h"

namespace mailrail::stages {

SequenceMerge::SequenceMerge(std::vector<MessageChannel*> inputs) : inputs_(inputs.size()) {
  MR_CHECK(!inputs.empty()) << "SequenceMerge needs an input";
  for (std::size_t i = 0; i < inputs.size(); ++i) inputs_[i].channel = inputs[i];
}

SequenceMerge::Input* SequenceMerge::FindNext() {
  bool all_hold_one = true;
  for (std::size_t k = 0; k < inputs_.size(); ++k) {
    Input& in = inputs_[(last_ + k) % inputs_.size()];
    if (in.head == in.size) {
      in.head = 0;
      in.size = in.channel->PopBatch(std::span<Message*>(in.buffer));
    }
    if (in.head == in.size) {
      all_hold_one = false;
      continue;
    }
    if (in.buffer[in.head]->route_seq == next_seq_) {
      last_ = (last_ + k) % inputs_.size();
      return &in;
    }
  }
  if (all_hold_one) {
    std::string heads;
    for (const Input& in : inputs_) heads += " " + std::to_string(in.buffer[in.head]->route_seq);
    MR_CHECK(false) << "sequence merge: expected route_seq " << next_seq_ << ", input heads are" << heads;
  }
  return nullptr;
}

std::size_t SequenceMerge::PopBatch(std::span<Message*> out) {
  if (inputs_.size() == 1) return inputs_[0].channel->PopBatch(out);
  std::size_t n = 0;
  while (n < out.size()) {
    Input* in = FindNext();
    if (in == nullptr) break;
    out[n++] = in->buffer[in->head++];
    ++next_seq_;
  }
  return n;
}

bool SequenceMerge::IsDrained() const {
  for (const Input& in : inputs_) {
    if (in.head != in.size || !in.channel->IsDrained()) return false;
  }
  return true;
}

}  // namespace mailrail::stages
