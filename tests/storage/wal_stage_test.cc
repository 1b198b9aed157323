#include "stages/wal_stage.h"

#include <gtest/gtest.h>

#include <map>
#include <mutex>

#include "engine/topology.h"
#include "stages/wal_recovery_source.h"
#include "storage/checkpoint.h"
#include "tests/storage/wal_test_util.h"

namespace mailrail::stages {
namespace {

using engine::Channel;
using storage::WalWriter;

// Records every ack; checks, on the WAL thread, that each one is durable when announced.
class RecordingAckSink final : public DurableAckSink {
 public:
  explicit RecordingAckSink(const WalWriter* writer) : writer_(writer) {}
  void OnDurable(std::span<const DurableAck> acks) override {
    ++calls_;
    for (const DurableAck& a : acks) {
      if (a.lsn > writer_->durable_lsn()) ++not_durable_;
      if (!acks_.empty() && a.lsn <= acks_.back().lsn) ++out_of_order_;
      acks_.push_back(a);
    }
  }
  std::vector<DurableAck> acks_;
  std::uint64_t calls_ = 0;
  std::uint64_t not_durable_ = 0;
  std::uint64_t out_of_order_ = 0;

 private:
  const WalWriter* writer_;
};

std::string MailText(std::uint64_t i) {
  return "Message-ID: <" + std::to_string(i) + "@test>\r\nSubject: m" + std::to_string(i) + "\r\n\r\n" +
         storage::testing::Body(i, 100 + i % 700);
}

class TestSource final : public engine::Stage {
 public:
  TestSource(MessagePool* pool, Channel<Message*>* out, std::uint64_t count, std::uint64_t first_id,
             std::vector<DurableAckSink*> sinks)
      : pool_(pool), outbox_(out), count_(count), next_(first_id), end_(first_id + count), sinks_(std::move(sinks)) {}
  std::string_view name() const override { return "test-source"; }
  std::size_t RunOnce() override {
    if (!outbox_.Flush()) return 0;
    std::size_t n = 0;
    while (next_ < end_ && n < 8) {
      const std::string body = MailText(next_);
      Message* m = pool_->TryAcquire(body.size());
      if (m == nullptr) break;
      m->raw = body;
      m->source.kind = SourceKind::kWebhook;
      m->source.id = "test";
      m->source.position = std::to_string(next_);
      m->received_at_ms = 1'700'000'000'000 + static_cast<std::int64_t>(next_);
      m->ack_sink = sinks_.empty() ? nullptr : sinks_[next_ % sinks_.size()];
      m->ack_token = next_;
      outbox_.Add(m);
      ++next_;
      ++n;
    }
    outbox_.Flush();
    return n;
  }
  bool IsFinished() const override { return next_ == end_ && outbox_.empty(); }

 private:
  MessagePool* pool_;
  engine::Outbox<Message*> outbox_;
  std::uint64_t count_;
  std::uint64_t next_;
  std::uint64_t end_;
  std::vector<DurableAckSink*> sinks_;
};

struct Seen {
  std::uint64_t lsn;
  std::uint64_t token;
  bool recovered;
  std::string raw;
  std::string position;
};

// Checks durability on arrival, records what it saw, releases the message. When `forward_when_full`
// it plays the forward stage: it reports everything received as forwarded once the WAL is full.
class TestSink final : public engine::Stage {
 public:
  TestSink(MessagePool* pool, Channel<Message*>* in, WalWriter* writer, bool forward_when_full)
      : pool_(pool), in_(in), writer_(writer), forward_when_full_(forward_when_full) {}
  std::string_view name() const override { return "test-sink"; }
  std::size_t RunOnce() override {
    std::array<Message*, 32> batch{};
    const std::size_t n = in_->PopBatch(batch);
    for (std::size_t i = 0; i < n; ++i) {
      Message* m = batch[i];
      // stats().durable_lsn is stored before the WAL stage pushes; the ring's release/acquire
      // makes it visible here.
      if (m->lsn == 0 || m->lsn > writer_->stats().durable_lsn.load(std::memory_order_relaxed)) ++not_durable_;
      seen_.push_back({m->lsn, m->ack_token, m->recovered, m->raw, m->source.position});
      pool_->Release(m);
    }
    if (forward_when_full_ && writer_->is_full() && !seen_.empty()) {
      writer_->set_forwarded_lsn(seen_.back().lsn);
      ++forwards_;
    }
    return n;
  }
  bool IsFinished() const override { return in_->IsDrained(); }
  engine::Clock::time_point next_deadline() const override {
    return forward_when_full_ ? engine::Clock::now() + std::chrono::milliseconds(1) : engine::Clock::time_point::max();
  }

  std::vector<Seen> seen_;
  std::uint64_t not_durable_ = 0;
  std::uint64_t forwards_ = 0;

 private:
  MessagePool* pool_;
  Channel<Message*>* in_;
  WalWriter* writer_;
  bool forward_when_full_;
};

engine::TopologyConfig ThreadPerStage() {
  engine::TopologyConfig config;
  config.placement = engine::TopologyConfig::Placement::kThreadPerStage;
  config.wait.max_park = std::chrono::milliseconds(2);
  return config;
}

std::unique_ptr<WalWriter> OpenWriter(const storage::WalConfig& config) {
  auto w = WalWriter::Open(config);
  EXPECT_TRUE(w.has_value()) << (w ? "" : w.error().message);
  return w ? std::move(w.value()) : nullptr;
}

TEST(WalStageTest, MessagesLeaveInOrderOnlyAfterDurabilityAndSourcesAreAcked) {
  storage::testing::ScratchDir dir;
  constexpr std::uint64_t kCount = 3000;
  auto writer = OpenWriter(storage::testing::SmallConfig(dir.path()));
  ASSERT_NE(writer, nullptr);
  MessagePool pool(256, 1 << 20);
  RecordingAckSink sink_a(writer.get()), sink_b(writer.get());
  TestSink* sink = nullptr;
  WalStage* wal = nullptr;
  {
    engine::Topology topology(ThreadPerStage());
    auto* in = topology.MakeChannel<Message*>("ingest->wal", 64);
    auto* out = topology.MakeChannel<Message*>("wal->parse", 64);
    topology.AddStage(std::make_unique<TestSource>(&pool, in, kCount, 1, std::vector<DurableAckSink*>{&sink_a, &sink_b}),
                      {}, {in});
    wal = static_cast<WalStage*>(
        topology.AddStage(std::make_unique<WalStage>(writer.get(), nullptr, in, out), {in}, {out}));
    sink = static_cast<TestSink*>(
        topology.AddStage(std::make_unique<TestSink>(&pool, out, writer.get(), false), {out}, {}));
    ASSERT_TRUE(topology.Start().has_value());
    topology.Wait();

    ASSERT_EQ(sink->seen_.size(), kCount);
    EXPECT_EQ(sink->not_durable_, 0u);
    for (std::uint64_t i = 0; i < kCount; ++i) {
      ASSERT_EQ(sink->seen_[i].lsn, i + 1);
      ASSERT_EQ(sink->seen_[i].token, i + 1);
      ASSERT_FALSE(sink->seen_[i].recovered);
    }
    EXPECT_EQ(wal->stats().appended.load(), kCount);
    EXPECT_EQ(wal->stats().acks.load(), kCount);
  }
  // Every token acked exactly once, by its own sink, in LSN order, and only when durable.
  for (RecordingAckSink* s : {&sink_a, &sink_b}) {
    EXPECT_EQ(s->not_durable_, 0u);
    EXPECT_EQ(s->out_of_order_, 0u);
    EXPECT_EQ(s->acks_.size(), kCount / 2);
    EXPECT_LT(s->calls_, kCount / 2);  // grouped: fewer calls than acks
    for (const DurableAck& a : s->acks_) {
      EXPECT_EQ(a.token, a.lsn);
      EXPECT_EQ(a.token % 2, s == &sink_a ? 0u : 1u);
    }
  }
  EXPECT_LT(writer->stats().groups.load(), kCount);
  writer.reset();
  const auto back = storage::testing::ReadAll(dir.path());
  ASSERT_EQ(back.lsns.size(), kCount);
  EXPECT_EQ(back.raws[0], MailText(1));
  EXPECT_EQ(back.raws[kCount - 1], MailText(kCount));
}

TEST(WalStageTest, RecoveredMessagesPrecedeNewInputAndKeepTheirLsns) {
  storage::testing::ScratchDir dir;
  const storage::WalConfig config = storage::testing::SmallConfig(dir.path());
  {
    auto writer = OpenWriter(config);
    std::vector<std::string> bodies;
    for (std::uint64_t i = 1; i <= 100; ++i) bodies.push_back(MailText(i));
    ASSERT_EQ(storage::testing::AppendAll(*writer, bodies).size(), 100u);
  }
  ASSERT_TRUE(storage::WriteCheckpoint(dir.path(), 40).has_value());
  auto writer = OpenWriter(config);
  ASSERT_NE(writer, nullptr);
  EXPECT_EQ(writer->open_report().checkpoint_lsn, 40u);
  EXPECT_EQ(writer->open_report().next_lsn, 101u);
  // Smaller than the backlog, so recovery must recycle slots. New input holds at most 16 slots
  // (its ring and one outbox of 8) while it waits: ingest sharing the pool with recovery must
  // leave recovery at least one slot, or the two deadlock.
  MessagePool pool(24, 1 << 20);
  engine::Topology topology(ThreadPerStage());
  auto* rec = topology.MakeChannel<Message*>("recovery->wal", 8);
  auto* in = topology.MakeChannel<Message*>("ingest->wal", 8);
  auto* out = topology.MakeChannel<Message*>("wal->parse", 8);
  auto recovery = WalRecoverySource::Open(dir.path(), writer->open_report().checkpoint_lsn,
                                          writer->open_report().next_lsn, &pool, rec);
  ASSERT_TRUE(recovery.has_value());
  auto* recovery_stage = static_cast<WalRecoverySource*>(topology.AddStage(std::move(recovery.value()), {}, {rec}));
  topology.AddStage(std::make_unique<TestSource>(&pool, in, 50, 1001, std::vector<DurableAckSink*>{}), {}, {in});
  topology.AddStage(std::make_unique<WalStage>(writer.get(), rec, in, out), {rec, in}, {out});
  auto* sink =
      static_cast<TestSink*>(topology.AddStage(std::make_unique<TestSink>(&pool, out, writer.get(), false), {out}, {}));
  ASSERT_TRUE(topology.Start().has_value());
  topology.Wait();

  ASSERT_EQ(sink->seen_.size(), 110u);
  for (std::size_t i = 0; i < 60; ++i) {
    EXPECT_TRUE(sink->seen_[i].recovered);
    EXPECT_EQ(sink->seen_[i].lsn, 41 + i);
    EXPECT_EQ(sink->seen_[i].raw, MailText(41 + i));
    EXPECT_EQ(sink->seen_[i].position, std::to_string(40 + i));  // AppendAll's positions are 0-based
  }
  for (std::size_t i = 60; i < 110; ++i) {
    EXPECT_FALSE(sink->seen_[i].recovered);
    EXPECT_EQ(sink->seen_[i].lsn, 101 + (i - 60));
  }
  EXPECT_EQ(recovery_stage->recovered(), 60u);
  EXPECT_FALSE(recovery_stage->report().has_damage());
  EXPECT_EQ(sink->not_durable_, 0u);
}

TEST(WalStageTest, FullDiskBudgetHoldsInputUntilForwardingFreesSpace) {
  storage::testing::ScratchDir dir;
  storage::WalConfig config = storage::testing::SmallConfig(dir.path());
  config.disk_budget_bytes = 3 * config.segment_bytes;
  auto writer = OpenWriter(config);
  ASSERT_NE(writer, nullptr);
  constexpr std::uint64_t kCount = 1500;  // ~750 KiB through a 192 KiB budget
  MessagePool pool(128, 1 << 20);
  engine::Topology topology(ThreadPerStage());
  auto* in = topology.MakeChannel<Message*>("ingest->wal", 32);
  auto* out = topology.MakeChannel<Message*>("wal->parse", 32);
  topology.AddStage(std::make_unique<TestSource>(&pool, in, kCount, 1, std::vector<DurableAckSink*>{}), {}, {in});
  auto* wal =
      static_cast<WalStage*>(topology.AddStage(std::make_unique<WalStage>(writer.get(), nullptr, in, out), {in}, {out}));
  auto* sink =
      static_cast<TestSink*>(topology.AddStage(std::make_unique<TestSink>(&pool, out, writer.get(), true), {out}, {}));
  ASSERT_TRUE(topology.Start().has_value());
  topology.Wait();
  ASSERT_EQ(sink->seen_.size(), kCount);
  for (std::uint64_t i = 0; i < kCount; ++i) ASSERT_EQ(sink->seen_[i].token, i + 1);  // nothing dropped
  EXPECT_GT(wal->stats().full_stalls.load(), 0u);
  EXPECT_GT(writer->stats().disk_full_events.load(), 0u);
  EXPECT_GT(writer->stats().segments_deleted.load(), 0u);
  EXPECT_LE(writer->stats().log_bytes.load(), config.disk_budget_bytes);
}

}  // namespace
}  // namespace mailrail::stages
