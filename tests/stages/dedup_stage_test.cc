#include "stages/dedup_stage.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <deque>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "stages/dedup_key.h"
#include "stages/dedup_snapshot.h"

namespace mailrail::stages {
namespace {

using MessageChannel = engine::Channel<Message*>;

std::string TempDir(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / ("mailrail-dedup-" + name + "-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

// Owns messages, the three channels and drives the stage by hand (no threads needed).
struct Harness {
  std::deque<Message> messages;
  MessageChannel in{"parse->dedup", 256};
  MessageChannel out{"dedup->filter", 256};
  MessageChannel done{"dedup->done", 256};
  std::vector<Message*> forwarded, finished;

  Message* Make(std::uint64_t lsn, std::string_view message_id, std::string_view subject = "s") {
    Message& m = messages.emplace_back();
    m.lsn = lsn;
    m.received_at_ms = 1'700'000'000'000;
    if (!message_id.empty()) m.record.message_id = m.arena.Copy(message_id);
    m.record.subject = m.arena.Copy(subject);
    return &m;
  }
  void Feed(DedupStage& stage, const std::vector<Message*>& batch) {
    for (Message* m : batch) ASSERT_TRUE(in.Push(m));
    while (in.size_approx() > 0) stage.RunOnce();
    Collect();
  }
  void Collect() {
    Message* m = nullptr;
    while (out.PopBatch(std::span(&m, 1)) == 1) forwarded.push_back(m);
    while (done.PopBatch(std::span(&m, 1)) == 1) finished.push_back(m);
  }
};

std::unique_ptr<DedupStage> MakeStage(Harness& h, DedupStageConfig config) {
  config.set.capacity = 10'000;
  auto stage = DedupStage::Create(std::move(config), &h.in, &h.out, &h.done);
  EXPECT_TRUE(stage.has_value()) << (stage.has_value() ? "" : stage.error().message);
  return std::move(stage.value());
}

TEST(DedupKeyTest, MessageIdIsNormalized) {
  std::string out;
  ASSERT_TRUE(NormalizeMessageId("  <Abc.123@Mail.EXAMPLE.com> ", out));
  EXPECT_EQ(out, "Abc.123@mail.example.com");
  EXPECT_FALSE(NormalizeMessageId(" <> ", out));
  DedupKeyer keyer;
  Harness h;
  Message* a = h.Make(1, "<X@Example.COM>");
  Message* b = h.Make(2, "X@example.com");
  Message* c = h.Make(3, "x@example.com");
  EXPECT_EQ(keyer.KeyOf(*a).fingerprint, keyer.KeyOf(*b).fingerprint);
  EXPECT_NE(keyer.KeyOf(*a).fingerprint, keyer.KeyOf(*c).fingerprint);  // local part is case-sensitive
  EXPECT_EQ(keyer.KeyOf(*a).kind, DedupKeyKind::kMessageId);
}

TEST(DedupKeyTest, FallsBackToGraphIdThenContent) {
  DedupKeyer keyer;
  Harness h;
  Message* g = h.Make(1, "");
  g->kind = InputKind::kGraphJson;
  g->record.graph_id = "AAMkAGI2";
  EXPECT_EQ(keyer.KeyOf(*g).kind, DedupKeyKind::kGraphId);
  Message* plain = h.Make(2, "", "Hello");
  plain->record.from = Address{"", "Bob@Example.com"};
  plain->record.date_unix_ms = 123;
  plain->record.body_text = "body";
  Message* same = h.Make(3, "", "  Hello ");
  same->record.from = Address{"B.", "bob@example.com"};
  same->record.date_unix_ms = 123;
  same->record.body_text = "body";
  Message* other_body = h.Make(4, "", "Hello");
  other_body->record.from = Address{"", "bob@example.com"};
  other_body->record.date_unix_ms = 123;
  other_body->record.body_text = "body!";
  const DedupKey k = keyer.KeyOf(*plain);
  EXPECT_EQ(k.kind, DedupKeyKind::kContent);
  EXPECT_EQ(k.fingerprint, keyer.KeyOf(*same).fingerprint);
  EXPECT_NE(k.fingerprint, keyer.KeyOf(*other_body).fingerprint);
}

TEST(DedupKeyTest, IdSharedByDifferentMessagesIsKeyedByContent) {
  DedupKeyer keyer;
  Harness h;
  Message* first = h.Make(1, "<broken@generator>", "Order 1");
  Message* resend = h.Make(2, "<broken@generator>", "Order 1");
  Message* second = h.Make(3, "<broken@generator>", "Order 2");
  Message* third = h.Make(4, "<broken@generator>", "Order 1");
  EXPECT_EQ(keyer.KeyOf(*first).kind, DedupKeyKind::kMessageId);
  EXPECT_EQ(keyer.KeyOf(*resend).kind, DedupKeyKind::kMessageId);  // same headers: a real resend
  const DedupKey k2 = keyer.KeyOf(*second);
  EXPECT_EQ(k2.kind, DedupKeyKind::kContent);
  EXPECT_EQ(keyer.bad_ids(), 1u);
  EXPECT_EQ(keyer.KeyOf(*third).kind, DedupKeyKind::kContent);  // now known-bad for everyone
}

TEST(DedupStageTest, DuplicatesGoToDoneAndEveryMessageIsCounted) {
  const std::string dir = TempDir("count");
  Harness h;
  DedupStageConfig config;
  config.duplicates_log_path = dir + "/duplicates.log";
  auto stage = MakeStage(h, config);
  Message* unparsed = h.Make(4, "<a@x>");
  unparsed->parse_failed = true;
  h.Feed(*stage, {h.Make(1, "<a@x>"), h.Make(2, "<b@x>"), h.Make(3, "<a@x>"), unparsed, h.Make(5, "<b@x>")});
  ASSERT_EQ(h.forwarded.size(), 3u);
  EXPECT_EQ(h.forwarded[0]->lsn, 1u);
  EXPECT_EQ(h.forwarded[1]->lsn, 2u);
  EXPECT_EQ(h.forwarded[2], unparsed);  // passed through untouched
  ASSERT_EQ(h.finished.size(), 2u);
  EXPECT_EQ(h.finished[0]->outcome, Outcome::kDuplicate);
  EXPECT_EQ(h.finished[1]->lsn, 5u);
  const DedupCounters& c = stage->counters();
  EXPECT_EQ(c.in.load(), 5u);
  EXPECT_EQ(c.forwarded + c.passed_unparsed + c.duplicates + c.rebuilt, c.in.load());
  EXPECT_EQ(c.duplicates.load(), 2u);
  std::ifstream log(config.duplicates_log_path);
  std::string line;
  ASSERT_TRUE(std::getline(log, line));
  EXPECT_EQ(line.substr(0, 4), "3 1 ");
  EXPECT_NE(line.find("a@x"), std::string::npos);
  std::filesystem::remove_all(dir);
}

TEST(DedupStageTest, RestartFromSnapshotStillCatchesDuplicates) {
  const std::string dir = TempDir("restart");
  DedupStageConfig config;
  config.snapshot_path = dir + "/dedup.snapshot";
  {
    Harness h;
    auto stage = MakeStage(h, config);
    std::vector<Message*> batch;
    for (int i = 1; i <= 100; ++i) batch.push_back(h.Make(i, "<m" + std::to_string(i) + "@x>"));
    h.Feed(*stage, batch);
    EXPECT_EQ(h.forwarded.size(), 100u);
    h.in.Close();  // clean shutdown: the drained stage writes its snapshot and finishes
    stage->RunOnce();
    ASSERT_TRUE(stage->IsFinished());
    EXPECT_EQ(stage->counters().snapshots_written.load(), 1u);
  }
  ASSERT_TRUE(std::filesystem::exists(config.snapshot_path));
  Harness h;
  config.forwarded_through_lsn = 90;
  auto stage = MakeStage(h, config);
  EXPECT_EQ(stage->snapshot_lsn(), 100u);
  EXPECT_EQ(stage->set().size(), 100u);
  Message* rebuilt = h.Make(90, "<m90@x>");
  rebuilt->recovered = true;
  Message* refed = h.Make(95, "<m95@x>");  // recovered, not yet forwarded before the crash
  refed->recovered = true;
  Message* dup = h.Make(101, "<m7@x>");     // a new delivery of an old message
  Message* fresh = h.Make(102, "<m101@x>");
  Message* settled_unparsed = h.Make(80, "");  // quarantined before the crash: not again
  settled_unparsed->recovered = true;
  settled_unparsed->parse_failed = true;
  h.Feed(*stage, {rebuilt, refed, dup, fresh, settled_unparsed});
  ASSERT_EQ(h.forwarded.size(), 2u);
  EXPECT_EQ(h.forwarded[0], refed);
  EXPECT_EQ(h.forwarded[1], fresh);
  ASSERT_EQ(h.finished.size(), 3u);
  EXPECT_EQ(h.finished[0], rebuilt);
  EXPECT_EQ(h.finished[1], dup);
  EXPECT_EQ(h.finished[2], settled_unparsed);
  EXPECT_EQ(dup->outcome, Outcome::kDuplicate);
  EXPECT_EQ(stage->counters().rebuilt.load(), 2u);
  std::filesystem::remove_all(dir);
}

TEST(DedupStageTest, PeriodicSnapshotIsWrittenOneShardPerBatch) {
  const std::string dir = TempDir("periodic");
  Harness h;
  DedupStageConfig config;
  config.set.shards = 4;
  config.snapshot_path = dir + "/dedup.snapshot";
  config.snapshot_interval = std::chrono::milliseconds(1);
  auto stage = MakeStage(h, config);
  int batches = 0;
  for (int i = 1; stage->counters().snapshots_written.load() == 0; ++i) {
    ASSERT_LT(i, 10'000) << "no periodic snapshot";
    h.Feed(*stage, {h.Make(i, "<p" + std::to_string(i) + "@x>")});
    ++batches;
  }
  EXPECT_GE(batches, 4);  // begun on one batch, one shard per batch, finished on the fourth
  EXPECT_FALSE(std::filesystem::exists(config.snapshot_path + ".tmp"));
  DedupSetConfig set_config = config.set;
  set_config.capacity = 10'000;
  DedupSet loaded(set_config);
  auto covered = LoadDedupSnapshot(config.snapshot_path, loaded);
  ASSERT_TRUE(covered.has_value()) << covered.error().message;
  EXPECT_GE(loaded.size(), covered.value());  // every key up to the covered LSN (and maybe more)
  for (std::uint64_t lsn = 1; lsn <= covered.value(); ++lsn) {
    DedupKeyer keyer;
    EXPECT_TRUE(loaded.Contains(keyer.KeyOf(*h.Make(lsn, "<p" + std::to_string(lsn) + "@x>")).fingerprint)) << lsn;
  }
  std::filesystem::remove_all(dir);
}

TEST(DedupStageTest, BadConfigurationIsRejectedNamingTheKey) {
  Harness h;
  DedupStageConfig config;
  config.set.shards = 3;
  auto stage = DedupStage::Create(config, &h.in, &h.out, &h.done);
  ASSERT_FALSE(stage.has_value());
  EXPECT_EQ(stage.error().message.rfind("dedup.shards:", 0), 0u) << stage.error().message;
  config.set.shards = 1;
  config.set.capacity = 1ULL << 33;
  stage = DedupStage::Create(config, &h.in, &h.out, &h.done);
  ASSERT_FALSE(stage.has_value());
  EXPECT_EQ(stage.error().message.rfind("dedup.capacity:", 0), 0u) << stage.error().message;
}

TEST(DedupSnapshotTest, RoundTripKeepsOrderLsnAndAge) {
  const std::string dir = TempDir("snap");
  DedupSetConfig config;
  config.capacity = 1000;
  config.shards = 2;
  config.max_age_ms = 60'000;
  config.age_granularity_ms = 1000;
  DedupSet a(config);
  const std::int64_t t0 = 1'700'000'000'000;
  for (std::uint64_t i = 0; i < 300; ++i) {
    a.InsertOrFind({Fingerprint{i * 0x9E3779B97F4A7C15ULL, i * 0xC2B2AE3D27D4EB4FULL + 7}, 1000 + i,
                    t0 + static_cast<std::int64_t>(i < 150 ? 0 : 30'000)});
  }
  ASSERT_TRUE(WriteDedupSnapshot(a, 1299, dir + "/s").has_value());
  DedupSet b(config);
  auto covered = LoadDedupSnapshot(dir + "/s", b);
  ASSERT_TRUE(covered.has_value());
  EXPECT_EQ(covered.value(), 1299u);
  EXPECT_EQ(b.size(), 300u);
  for (std::size_t s = 0; s < 2; ++s) {
    const auto ea = a.shard(s).Entries(), eb = b.shard(s).Entries();
    ASSERT_EQ(ea.size(), eb.size());
    for (std::size_t i = 0; i < ea.size(); ++i) {
      EXPECT_EQ(ea[i].key64, eb[i].key64);
      EXPECT_EQ(ea[i].lsn, eb[i].lsn);
      EXPECT_EQ(ea[i].time_ms, eb[i].time_ms);
    }
  }
  b.ExpireOlderThan(t0 + 2000);  // ages survived: the first 150 expire, the rest stay
  EXPECT_EQ(b.size(), 150u);

  // A wrong shard count and a corrupted byte are both rejected without touching the set.
  DedupSetConfig four = config;
  four.shards = 4;
  DedupSet c(four);
  EXPECT_EQ(LoadDedupSnapshot(dir + "/s", c).error().code, "dedup.snapshot_shards");
  {
    std::fstream f(dir + "/s", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(100);
    f.put('\x5a');
  }
  DedupSet d(config);
  EXPECT_EQ(LoadDedupSnapshot(dir + "/s", d).error().code, "dedup.snapshot_corrupt");
  EXPECT_EQ(d.size(), 0u);
  EXPECT_EQ(LoadDedupSnapshot(dir + "/missing", d).error().code, "dedup.snapshot_missing");
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace mailrail::stages
