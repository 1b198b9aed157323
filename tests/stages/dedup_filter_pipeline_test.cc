// parse -> dedup -> filter behind a source and in front of a terminal stage, on a real Topology
// with pooled messages: every message fed (the SpamAssassin corpus twice, plus an unparseable
// one) must end in exactly one counted state, and the second copies must all be duplicates.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "engine/topology.h"
#include "stages/dedup_stage.h"
#include "stages/filter_stage.h"
#include "stages/parse_stage.h"
#include "stages/quarantine_store.h"
#include "tests/support/corpus.h"

namespace mailrail::stages {
namespace {

using MessageChannel = engine::Channel<Message*>;

class FeedSource final : public engine::Stage {
 public:
  FeedSource(std::vector<std::string> raws, MessagePool* pool, MessageChannel* out)
      : raws_(std::move(raws)), pool_(pool), outbox_(out) {}
  std::string_view name() const override { return "source"; }
  std::size_t RunOnce() override {
    if (!outbox_.Flush()) return 0;
    std::size_t n = 0;
    while (next_ < raws_.size() && n < 32) {
      Message* m = pool_->TryAcquire(raws_[next_].size());
      if (m == nullptr) break;  // pool exhausted: wait for the terminal stage to release
      m->raw = raws_[next_];
      m->lsn = ++next_;
      m->received_at_ms = 1'700'000'000'000;
      outbox_.Add(m);
      ++n;
    }
    outbox_.Flush();
    return n;
  }
  bool IsFinished() const override { return next_ == raws_.size() && outbox_.empty(); }

 private:
  std::vector<std::string> raws_;
  MessagePool* pool_;
  engine::Outbox<Message*> outbox_;
  std::size_t next_ = 0;
};

// Stands in for forward + checkpoint: counts every message by final state and releases it.
class CountingTerminal final : public engine::Stage {
 public:
  CountingTerminal(std::vector<MessageChannel*> inputs, MessageChannel* forwarded, MessagePool* pool)
      : inputs_(std::move(inputs)), forwarded_(forwarded), pool_(pool) {}
  std::string_view name() const override { return "terminal"; }
  std::size_t RunOnce() override {
    std::array<Message*, 64> batch{};
    std::size_t total = 0;
    for (MessageChannel* c : inputs_) {
      const std::size_t n = c->PopBatch(batch);
      for (std::size_t i = 0; i < n; ++i) {
        Message* m = batch[i];
        if (c == forwarded_) {
          m->outcome = Outcome::kForwarded;
          for (std::string_view label : m->record.labels) ++labels_[std::string(label)];
        }
        ++by_outcome_[m->outcome];
        lsns_.push_back(m->lsn);
        pool_->Release(m);
      }
      total += n;
    }
    return total;
  }
  bool IsFinished() const override {
    return std::all_of(inputs_.begin(), inputs_.end(), [](MessageChannel* c) { return c->IsDrained(); });
  }
  std::map<Outcome, std::uint64_t> by_outcome_;
  std::map<std::string, std::uint64_t> labels_;
  std::vector<std::uint64_t> lsns_;

 private:
  std::vector<MessageChannel*> inputs_;
  MessageChannel* forwarded_;
  MessagePool* pool_;
};

TEST(DedupFilterPipelineTest, EveryMessageEndsInExactlyOneCountedState) {
  const auto root = mailrail::testing::CorpusDir() / "spamassassin" / "data";
  if (!std::filesystem::is_directory(root)) GTEST_SKIP() << "corpus not found at " << root;
  std::vector<std::string> corpus;
  for (const auto& f : std::filesystem::recursive_directory_iterator(root)) {
    if (f.is_regular_file()) corpus.push_back(mailrail::testing::ReadFile(f.path()));
  }
  std::vector<std::string> raws = corpus;
  raws.insert(raws.end(), corpus.begin(), corpus.end());  // every message delivered twice
  raws.push_back("");                                      // nothing to parse

  const auto dir = std::filesystem::temp_directory_path() / ("mailrail-pipeline-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  auto store = QuarantineStore::Open((dir / "quarantine").string());
  ASSERT_TRUE(store.has_value());
  MessagePool pool(256, 64 << 20);
  engine::TopologyConfig tc;
  tc.allowed_cpus = 2;
  engine::Topology topology(tc);
  auto* to_parse = topology.MakeChannel<Message*>("source->parse", 64);
  auto* to_dedup = topology.MakeChannel<Message*>("parse->dedup", 64);
  auto* to_filter = topology.MakeChannel<Message*>("dedup->filter", 64);
  auto* dedup_done = topology.MakeChannel<Message*>("dedup->done", 64);
  auto* forwarded = topology.MakeChannel<Message*>("filter->forward", 64);
  auto* filter_done = topology.MakeChannel<Message*>("filter->done", 64);
  DedupStageConfig dedup_config;
  dedup_config.set.capacity = 100'000;
  dedup_config.snapshot_path = (dir / "dedup.snapshot").string();
  auto dedup = DedupStage::Create(dedup_config, to_dedup, to_filter, dedup_done);
  ASSERT_TRUE(dedup.has_value()) << dedup.error().message;
  FilterStageConfig filter_config;
  filter_config.quarantine = store.value().get();
  auto filter = FilterStage::Create(filter_config, to_filter, forwarded, filter_done);
  ASSERT_TRUE(filter.has_value()) << filter.error().message;
  DedupStage* dedup_stage = dedup.value().get();
  FilterStage* filter_stage = filter.value().get();

  topology.AddStage(std::make_unique<FeedSource>(raws, &pool, to_parse), {}, {to_parse});
  topology.AddStage(std::make_unique<ParseStage>(to_parse, to_dedup), {to_parse}, {to_dedup});
  topology.AddStage(std::move(dedup.value()), {to_dedup}, {to_filter, dedup_done});
  topology.AddStage(std::move(filter.value()), {to_filter}, {forwarded, filter_done});
  auto* terminal = static_cast<CountingTerminal*>(topology.AddStage(
      std::make_unique<CountingTerminal>(std::vector{forwarded, dedup_done, filter_done}, forwarded, &pool),
      {forwarded, dedup_done, filter_done}, {}));
  ASSERT_TRUE(topology.Start().has_value());
  topology.Wait();

  // Exactly once each.
  std::vector<std::uint64_t> lsns = terminal->lsns_;
  std::sort(lsns.begin(), lsns.end());
  ASSERT_EQ(lsns.size(), raws.size());
  for (std::size_t i = 0; i < lsns.size(); ++i) ASSERT_EQ(lsns[i], i + 1);
  EXPECT_EQ(pool.slots_in_flight(), 0u);

  auto& by = terminal->by_outcome_;
  EXPECT_EQ(by[Outcome::kInFlight], 0u);
  EXPECT_EQ(by[Outcome::kQuarantinedUnparseable], 1u);
  EXPECT_GE(by[Outcome::kDuplicate], corpus.size());  // every second copy, and any in-corpus repeats
  EXPECT_EQ(by[Outcome::kForwarded] + by[Outcome::kQuarantinedByRule] + by[Outcome::kDroppedByRule] +
                by[Outcome::kDuplicate] + by[Outcome::kQuarantinedUnparseable],
            raws.size());
  const DedupCounters& dc = dedup_stage->counters();
  EXPECT_EQ(dc.in.load(), raws.size());
  EXPECT_EQ(dc.duplicates.load(), by[Outcome::kDuplicate]);
  EXPECT_EQ(dc.snapshots_written.load(), 1u);  // at clean shutdown
  const FilterStats fs = filter_stage->Stats();
  EXPECT_EQ(fs.in, raws.size() - by[Outcome::kDuplicate]);
  EXPECT_EQ(fs.by_action[static_cast<int>(FilterAction::kQuarantine)], by[Outcome::kQuarantinedByRule]);
  EXPECT_EQ(store.value()->List().size(), by[Outcome::kQuarantinedByRule] + 1);
  EXPECT_GT(terminal->labels_["spam-suspect"], 0u);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace mailrail::stages
