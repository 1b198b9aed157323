#pragma once
// Stage: one step of the pipeline. It moves items from its input channels to its output channels
// and knows nothing of threads: the Topology decides which thread runs it.
//
// Threading: RunOnce, IsFinished and next_deadline are called by exactly one thread at a time,
//   the thread the Topology placed the stage on; several stages may share that thread and then
//   run round-robin. RequestStop may be called from any thread.
// Blocking: never. A stage whose output is full keeps what it holds (see Outbox) and returns 0;
//   its thread spins, then parks, and the consumer wakes it when it frees space. Nothing is
//   dropped for lack of room.
// End of stream: a stage is finished when its inputs are closed and drained and it holds nothing;
//   the Topology then closes its outputs, so end-of-stream flows down the pipeline.

#include <chrono>
#include <cstdint>
#include <cstddef>
#include <span>
#include <string_view>
#include <vector>

#include "engine/channel.h"
#include "engine/stats.h"

namespace mailrail::engine {

using Clock = std::chrono::steady_clock;

// Clock::now() as nanoseconds: the stamps messages carry for their latency.
inline std::int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

class Stage {
 public:
  virtual ~Stage() = default;

  virtual std::string_view name() const = 0;
  // Moves up to one batch from inputs to outputs. Returns how many items it handled;
  // 0 tells the thread's waiting policy that this stage is idle.
  virtual std::size_t RunOnce() = 0;
  // True once the stage will never produce again.
  virtual bool IsFinished() const = 0;
  // Sources override: stop taking new input, flush what is held, then report finished.
  virtual void RequestStop() {}
  // The earliest time the stage must run again even without new input (a batch linger timer,
  // rate pacing); time_point::max() when it only reacts to input.
  virtual Clock::time_point next_deadline() const { return Clock::time_point::max(); }
  // CPU cost per item in microseconds (rounded, at least 1), used by automatic placement to balance
  // stages over threads; only the ratios matter. The stages' values were measured with
  // `mailrail replay --placement thread-per-stage` (CPU per thread) on the development VM.
  virtual unsigned cost_hint() const { return 1; }
  // Adds the stage's counters to a stats snapshot. Called from the stats thread: read counters
  // with relaxed loads only (they are written by the stage's thread with relaxed stores).
  virtual void Report(Snapshot& /*snapshot*/) const {}
};

// Outbox<T>: items a stage produced but could not push yet because the output ring was full.
// A stage calls Flush() first in every RunOnce and takes no new input while it is not empty;
// that is how a full ring stalls the producer stage instead of dropping anything.
// Threading: owned by one stage.
template <typename T>
class Outbox {
 public:
  explicit Outbox(Channel<T>* channel) : channel_(channel) {}

  void Add(const T& item) { pending_.push_back(item); }
  // Pushes as much as fits; returns true when nothing is left pending.
  bool Flush() {
    if (pending_.size() > flushed_) {
      flushed_ += channel_->PushBatch(std::span<const T>(pending_).subspan(flushed_));
    }
    if (flushed_ == pending_.size()) {
      pending_.clear();
      flushed_ = 0;
      return true;
    }
    return false;
  }
  bool empty() const { return pending_.size() == flushed_; }
  Channel<T>* channel() const { return channel_; }

 private:
  Channel<T>* channel_;
  std::vector<T> pending_;
  std::size_t flushed_ = 0;
};

}  // namespace mailrail::engine
