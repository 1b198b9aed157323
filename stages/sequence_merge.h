#pragma once
// SequenceMerge: the input side of a stage behind several dedup workers. It pops from the
// workers' channels and hands messages out in Message::route_seq order (1, 2, 3, ...), which is
// the order the DedupRouter took them in (LSN order).
//
// Why it never waits on the wrong input: every sequence number went to exactly one worker and
//   each worker keeps order, so the next number is always the smallest one not handed out yet,
//   at the head of exactly one input (in its local buffer, or next in its channel). When that
//   input is empty the merge returns what it has and the stage idles until that worker pushes;
//   the other inputs may fill up meanwhile, which only stalls their workers (backpressure).
// One input: messages pass in channel order, route_seq is not looked at.
// Invariant: if every input holds a message and none carries the next number, one was lost or
//   numbered twice upstream: that is a bug and aborts, naming the numbers.
// Threading: owned by the consuming stage (one thread). Allocation: none after construction.

#include <array>
#include <cstdint>
#include <span>
#include <vector>

#include "engine/channel.h"
#include "stages/message.h"

namespace mailrail::stages {

class SequenceMerge {
 public:
  using MessageChannel = engine::Channel<Message*>;

  explicit SequenceMerge(std::vector<MessageChannel*> inputs);

  // Up to out.size() messages in order; 0 when the next one has not arrived yet.
  std::size_t PopBatch(std::span<Message*> out);
  // True once every input is closed and drained and nothing is buffered.
  bool IsDrained() const;
  std::size_t input_count() const { return inputs_.size(); }

 private:
  static constexpr std::size_t kBuffer = 64;
  struct Input {
    MessageChannel* channel = nullptr;
    std::array<Message*, kBuffer> buffer{};
    std::size_t head = 0;
    std::size_t size = 0;
  };
  // The input whose head is next_seq_ (refilling empty buffers), or nullptr when not there yet.
  Input* FindNext();

  std::vector<Input> inputs_;
  std::size_t last_ = 0;  // input of the previous message: runs from one worker are common
  std::uint64_t next_seq_ = 1;
};

}  // namespace mailrail::stages
