#pragma once
// Channel<T>: one SpscRing between two stages, plus what the runtime needs around it: a close
// flag that carries end-of-stream downstream, and the waiters of the two threads that own the
// producing and the consuming stage, so either side wakes the other only when it is parked.
//
// Threading: one producer stage and one consumer stage, each run by one thread at a time (the
//   Topology guarantees it). Close() is called by the producer side only, once.
// Memory ordering: Close() stores closed_ with release after the producer's last push; IsDrained()
//   loads closed_ with acquire before checking emptiness, so every push before the close is
//   visible to the consumer when it decides the stream has ended.
// Ownership: the Topology owns channels; stages hold plain pointers that outlive them.
//   Items are trivially copyable handles (an envelope pointer); whoever pops one owns it.

#include <atomic>
#include <cstddef>
#include <span>
#include <string>

#include "engine/spsc_ring.h"
#include "engine/waiter.h"

namespace mailrail::engine {

// ChannelBase: the type-erased part the Topology wires and the stats code reads.
class ChannelBase {
 public:
  explicit ChannelBase(std::string name) : name_(std::move(name)) {}
  virtual ~ChannelBase() = default;

  const std::string& name() const { return name_; }
  virtual std::size_t capacity() const = 0;
  virtual std::size_t size_approx() const = 0;

  void Close() {
    closed_.store(true, std::memory_order_release);
    closed_.notify_all();
    if (consumer_waiter_ != nullptr) consumer_waiter_->Notify();
  }
  bool is_closed() const { return closed_.load(std::memory_order_acquire); }
  // Blocks a thread outside the topology (start-up code) until the producer closed the channel.
  void WaitClosed() const { closed_.wait(false, std::memory_order_acquire); }
  // True once the producer closed the channel and the consumer has taken every item.
  bool IsDrained() const { return is_closed() && size_approx() == 0; }

  // Wiring, done by the Topology before any thread starts.
  void set_waiters(Waiter* producer, Waiter* consumer) {
    producer_waiter_ = producer;
    consumer_waiter_ = consumer;
  }
  // The waiter of the consuming stage's thread (null before the Topology wires it): a stage that
  // also waits for something outside its channels (a network reply) notifies it to be run again.
  Waiter* consumer_waiter() const { return consumer_waiter_; }

 protected:
  void WakeConsumer() const {
    if (consumer_waiter_ != nullptr) consumer_waiter_->Notify();
  }
  void WakeProducer() const {
    if (producer_waiter_ != nullptr) producer_waiter_->Notify();
  }

 private:
  std::string name_;
  std::atomic<bool> closed_{false};
  Waiter* producer_waiter_ = nullptr;
  Waiter* consumer_waiter_ = nullptr;
};

template <typename T>
class Channel final : public ChannelBase {
 public:
  Channel(std::string name, std::size_t capacity) : ChannelBase(std::move(name)), ring_(capacity) {}

  // Producer side. Pushes what fits and wakes a parked consumer; returns how many were pushed.
  std::size_t PushBatch(std::span<const T> items) {
    const std::size_t n = ring_.TryPushBatch(items);
    if (n > 0) WakeConsumer();
    return n;
  }
  bool Push(const T& item) { return PushBatch(std::span<const T>(&item, 1)) == 1; }

  // Consumer side. Pops up to out.size() items and wakes a parked producer; returns how many.
  std::size_t PopBatch(std::span<T> out) {
    const std::size_t n = ring_.TryPopBatch(out);
    if (n > 0) WakeProducer();
    return n;
  }

  std::size_t capacity() const override { return ring_.capacity(); }
  std::size_t size_approx() const override { return ring_.size_approx(); }

 private:
  SpscRing<T> ring_;
};

}  // namespace mailrail::engine
