#include <gtest/gtest.h>
#include <zlib.h>

#include <array>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "engine/topology.h"
#include "stages/dump_splitter.h"
#include "stages/file_reader.h"
#include "stages/jsonl_sink.h"
#include "stages/replay_source.h"

namespace mailrail::stages {
namespace {

namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "mailrail-test-XXXXXX").string();
    path_ = mkdtemp(pattern.data());
  }
  ~TempDir() { fs::remove_all(path_); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

void WriteFile(const fs::path& path, std::string_view text) {
  fs::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary) << text;
}

void WriteGzip(const fs::path& path, std::string_view text) {
  fs::create_directories(path.parent_path());
  gzFile f = gzopen(path.c_str(), "wb");
  gzwrite(f, text.data(), static_cast<unsigned>(text.size()));
  gzclose(f);
}

std::vector<SplitMessage> SplitAll(std::string_view text, SplitFormat format, std::size_t piece_size,
                                   std::vector<std::string>& storage) {
  DumpSplitter splitter;
  splitter.Reset(format, 0);
  std::vector<SplitMessage> out;
  SplitMessage m;
  for (std::size_t at = 0; at < text.size(); at += piece_size) {
    splitter.Feed(std::span<const char>(text.data() + at, std::min(piece_size, text.size() - at)));
    while (splitter.Next(m)) {
      storage.emplace_back(m.bytes);
      out.push_back(m);
    }
  }
  splitter.Finish();
  while (splitter.Next(m)) {
    storage.emplace_back(m.bytes);
    out.push_back(m);
  }
  for (std::size_t i = 0; i < out.size(); ++i) out[i].bytes = storage[storage.size() - out.size() + i];
  return out;
}

constexpr std::string_view kMbox =
    "From alice@example.com Sat Jan  3 01:05:34 1996\n"
    "Subject: one\n\nbody one\n>From the start\n>>From deeper\n\n"
    "From bob@example.com Sun Jan  4 02:00:00 1996\n"
    "Subject: two\n\nbody two\n\n"
    "From carol@example.com Mon Jan  5 03:00:00 1996\n"
    "Subject: three\n\nbody three\n";

TEST(DumpSplitterTest, SplitsMboxAtEveryPieceSize) {
  for (std::size_t piece : {1u, 2u, 7u, 64u, 4096u}) {
    std::vector<std::string> storage;
    auto messages = SplitAll(kMbox, SplitFormat::kMboxrd, piece, storage);
    ASSERT_EQ(messages.size(), 3u) << "piece size " << piece;
    EXPECT_EQ(messages[0].bytes, "Subject: one\n\nbody one\n>From the start\n>>From deeper\n");
    EXPECT_EQ(messages[1].bytes, "Subject: two\n\nbody two\n");
    EXPECT_EQ(messages[2].bytes, "Subject: three\n\nbody three\n");
    // Only the first message has ">From " lines to unquote; the flag survives every piece boundary.
    EXPECT_TRUE(messages[0].mbox_quoted) << "piece size " << piece;
    EXPECT_FALSE(messages[1].mbox_quoted) << "piece size " << piece;
    EXPECT_FALSE(messages[2].mbox_quoted) << "piece size " << piece;
    EXPECT_EQ(messages[0].position, 0u);
    EXPECT_EQ(messages[1].position, kMbox.find("From bob"));
    EXPECT_EQ(messages[2].position, kMbox.find("From carol"));
    ASSERT_TRUE(messages[1].timestamp_ms.has_value());
    EXPECT_EQ(*messages[1].timestamp_ms, 820720800000);  // 1996-01-04T02:00:00Z
  }
}

TEST(DumpSplitterTest, UndoesMboxrdAndMboxoQuoting) {
  const std::string_view body = ">From a\n>>From b\nx >From c\n>Fromage\n";
  std::string rd, o;
  DumpSplitter::AppendUnescaped(body, SplitFormat::kMboxrd, rd);
  DumpSplitter::AppendUnescaped(body, SplitFormat::kMboxo, o);
  EXPECT_EQ(rd, "From a\n>From b\nx >From c\n>Fromage\n");
  EXPECT_EQ(o, "From a\n>>From b\nx >From c\n>Fromage\n");
}

TEST(DumpSplitterTest, TrustsContentLengthOverUnquotedFromLines) {
  const std::string body = "line\nFrom inside the body, unquoted (mboxcl2)\nend\n";
  const std::string mbox = "From a@b Sat Jan  3 01:05:34 1996\nSubject: cl\nContent-Length: " +
                           std::to_string(body.size()) + "\n\n" + body + "\nFrom c@d Sat Jan  3 01:05:35 1996\nSubject: next\n\nx\n";
  for (std::size_t piece : {3u, 1000u}) {
    std::vector<std::string> storage;
    auto messages = SplitAll(mbox, SplitFormat::kMboxrd, piece, storage);
    ASSERT_EQ(messages.size(), 2u);
    EXPECT_NE(messages[0].bytes.find("From inside the body"), std::string_view::npos);
    EXPECT_EQ(messages[1].bytes, "Subject: next\n\nx\n");
  }
}

TEST(DumpSplitterTest, WrongContentLengthFallsBackToSeparators) {
  const std::string mbox = "From a@b Sat Jan  3 01:05:34 1996\nContent-Length: 3\n\nabcdef\n\nFrom c@d x\nSubject: n\n\ny\n";
  std::vector<std::string> storage;
  auto messages = SplitAll(mbox, SplitFormat::kMboxrd, 5, storage);
  ASSERT_EQ(messages.size(), 2u);
  EXPECT_EQ(messages[0].bytes, "Content-Length: 3\n\nabcdef\n");
}

TEST(DumpSplitterTest, KeepsLeadingBytesThatAreNotASeparator) {
  std::vector<std::string> storage;
  auto messages = SplitAll("Subject: no separator\n\nbody\n", SplitFormat::kMboxrd, 8, storage);
  ASSERT_EQ(messages.size(), 1u);  // never dropped: the parser decides what it is
  EXPECT_EQ(messages[0].bytes, "Subject: no separator\n\nbody\n");
}

TEST(DumpSplitterTest, SplitsJsonlSkippingBlankLines) {
  const std::string_view jsonl = "{\"id\":\"1\",\"receivedDateTime\":\"2016-10-19T10:37:00Z\"}\n\n  \r\n{\"id\":\"2\"}";
  std::vector<std::string> storage;
  auto messages = SplitAll(jsonl, SplitFormat::kGraphJsonl, 4, storage);
  ASSERT_EQ(messages.size(), 2u);
  EXPECT_EQ(messages[1].bytes, "{\"id\":\"2\"}");
  EXPECT_EQ(messages[1].position, jsonl.find("{\"id\":\"2\""));
  ASSERT_TRUE(messages[0].timestamp_ms.has_value());
  EXPECT_EQ(*messages[0].timestamp_ms, 1476873420000);
}

TEST(FileReaderTest, ReadsFilesInOrderInChunksAndReportsMissingOnes) {
  TempDir dir;
  std::string big(3 * 4096 + 17, 'x');
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>('a' + i % 26);
  WriteFile(dir.path() / "big", big);
  WriteFile(dir.path() / "empty", "");
  WriteFile(dir.path() / "small", "hello");
  auto reader = FileReader::Create({.chunk_bytes = 4096, .depth = 2, .open_ahead = 2});
  ASSERT_TRUE(reader.has_value());
  (*reader)->AddFile((dir.path() / "big").string());
  (*reader)->AddFile((dir.path() / "missing").string());
  (*reader)->AddFile((dir.path() / "empty").string());
  (*reader)->AddFile((dir.path() / "small").string(), 2);
  std::vector<std::string> contents(4);
  std::vector<std::string> errors(4);
  std::vector<int> ends(4, 0);
  while (!(*reader)->done()) {
    auto piece = (*reader)->Poll();
    if (!piece) {
      (*reader)->WaitForCompletion();
      continue;
    }
    ASSERT_EQ(piece->offset - (piece->file_index == 3 ? 2 : 0), contents[piece->file_index].size());
    contents[piece->file_index].append(piece->data.data(), piece->data.size());
    errors[piece->file_index] += piece->error;
    ends[piece->file_index] += piece->last_of_file ? 1 : 0;
  }
  EXPECT_EQ(contents[0], big);
  EXPECT_NE(errors[1].find("No such file"), std::string::npos);
  EXPECT_EQ(contents[2], "");
  EXPECT_EQ(contents[3], "llo");
  EXPECT_EQ(ends, (std::vector<int>{1, 1, 1, 1}));
}

// Test double for the WAL: marks messages durable in order (lsn) and acks their sources.
class AckingStage final : public engine::Stage {
 public:
  AckingStage(engine::Channel<Message*>* in, engine::Channel<Message*>* out) : in_(in), outbox_(out) {}
  std::string_view name() const override { return "wal"; }
  std::size_t RunOnce() override {
    if (!outbox_.Flush()) return 0;
    std::array<Message*, 16> batch{};
    const std::size_t n = in_->PopBatch(batch);
    for (std::size_t i = 0; i < n; ++i) {
      batch[i]->lsn = ++lsn_;
      const DurableAck ack{batch[i]->ack_token, batch[i]->lsn};
      batch[i]->ack_sink->OnDurable(std::span(&ack, 1));
      outbox_.Add(batch[i]);
    }
    outbox_.Flush();
    return n;
  }
  bool IsFinished() const override { return in_->IsDrained() && outbox_.empty(); }

 private:
  engine::Channel<Message*>* in_;
  engine::Outbox<Message*> outbox_;
  std::uint64_t lsn_ = 0;
};

class CollectStage final : public engine::Stage {
 public:
  CollectStage(engine::Channel<Message*>* in, MessagePool* pool) : in_(in), pool_(pool) {}
  std::string_view name() const override { return "collect"; }
  std::size_t RunOnce() override {
    std::array<Message*, 16> batch{};
    const std::size_t n = in_->PopBatch(batch);
    for (std::size_t i = 0; i < n; ++i) {
      seen.push_back(batch[i]->source.id + "@" + batch[i]->source.position + "=" + batch[i]->raw);
      kinds.push_back(batch[i]->kind);
      accepted_ns.push_back(batch[i]->accepted_ns);
      pool_->Release(batch[i]);
    }
    return n;
  }
  bool IsFinished() const override { return in_->IsDrained(); }
  std::vector<std::string> seen;
  std::vector<InputKind> kinds;
  std::vector<std::int64_t> accepted_ns;

 private:
  engine::Channel<Message*>* in_;
  MessagePool* pool_;
};

struct ReplayRun {
  std::vector<std::string> seen;
  std::vector<InputKind> kinds;
  std::vector<std::int64_t> accepted_ns;
  std::uint64_t skipped = 0;
};

ReplayRun Replay(const std::vector<std::string>& paths, DumpFormat format, const std::string& checkpoint = "",
                 std::size_t pool_slots = 4, double rate = 0) {
  auto inputs = ExpandReplayPaths(paths, format);
  EXPECT_TRUE(inputs.has_value()) << (inputs ? "" : inputs.error().message);
  MessagePool pool(pool_slots, 1 << 20);  // few slots: exercises backpressure
  engine::TopologyConfig config;
  config.allowed_cpus = 2;
  engine::Topology topology(config);
  auto* a = topology.MakeChannel<Message*>("ingest->wal", 4);
  auto* b = topology.MakeChannel<Message*>("wal->collect", 4);
  ReplayOptions options;
  options.inputs = *inputs;
  options.checkpoint_path = checkpoint;
  options.rate = rate;
  auto source = ReplaySource::Create(options, &pool, a);
  EXPECT_TRUE(source.has_value());
  ReplaySource* source_ptr = source->get();
  topology.AddStage(std::move(source).value(), {}, {a});
  topology.AddStage(std::make_unique<AckingStage>(a, b), {a}, {b});
  auto* collect = static_cast<CollectStage*>(topology.AddStage(std::make_unique<CollectStage>(b, &pool), {b}, {}));
  EXPECT_TRUE(topology.Start().has_value());
  topology.Wait();
  EXPECT_TRUE(source_ptr->WriteCheckpoint().has_value());
  EXPECT_EQ(pool.slots_in_flight(), 0u);
  return ReplayRun{collect->seen, collect->kinds, collect->accepted_ns,
                   source_ptr->counters().skipped_before_checkpoint.load()};
}

TEST(ReplaySourceTest, ReplaysEveryFormatIncludingGzip) {
  TempDir dir;
  const fs::path& d = dir.path();
  WriteFile(d / "dump.mbox", kMbox);
  WriteGzip(d / "dump2.mbox.gz", kMbox);
  WriteFile(d / "maildir/cur/1.host:2,S", "Subject: cur\n\nc\n");
  WriteFile(d / "maildir/new/2.host", "Subject: new\n\nn\n");
  WriteFile(d / "maildir/tmp/3.host", "Subject: tmp is never read\n\nt\n");
  WriteFile(d / "tree/a/x.eml", "Subject: x\n\nx\n");
  WriteGzip(d / "tree/b/y.eml.gz", "Subject: y\n\ny\n");
  WriteFile(d / "tree/b/notes.txt", "not a message");
  WriteFile(d / "graph.jsonl", "{\"id\":\"g1\"}\n{\"id\":\"g2\"}\n");
  WriteFile(d / "single.msg", "Subject: single\n\ns\n");

  ReplayRun run = Replay({(d / "dump.mbox").string(), (d / "dump2.mbox.gz").string(), (d / "maildir").string(),
                          (d / "tree").string(), (d / "graph.jsonl").string(), (d / "single.msg").string()},
                         DumpFormat::kAuto);
  ASSERT_EQ(run.seen.size(), 3u + 3u + 2u + 2u + 2u + 1u);
  EXPECT_EQ(run.seen[0], (d / "dump.mbox").string() + "@0=Subject: one\n\nbody one\nFrom the start\n>From deeper\n");
  EXPECT_EQ(run.seen[3].substr(run.seen[3].find('=')), "=Subject: one\n\nbody one\nFrom the start\n>From deeper\n");
  EXPECT_EQ(run.seen[6], (d / "maildir/cur/1.host:2,S").string() + "@0=Subject: cur\n\nc\n");
  EXPECT_EQ(run.seen[7], (d / "maildir/new/2.host").string() + "@0=Subject: new\n\nn\n");
  EXPECT_EQ(run.seen[9], (d / "tree/b/y.eml.gz").string() + "@0=Subject: y\n\ny\n");
  EXPECT_EQ(run.seen[10], (d / "graph.jsonl").string() + "@0={\"id\":\"g1\"}");
  EXPECT_EQ(run.kinds[10], InputKind::kGraphJson);
  EXPECT_EQ(run.kinds[0], InputKind::kRfc822);
  EXPECT_EQ(run.seen[12], (d / "single.msg").string() + "@0=Subject: single\n\ns\n");
}

TEST(ReplaySourceTest, FormatFlagOverridesDetection) {
  TempDir dir;
  WriteFile(dir.path() / "weird.txt", kMbox);
  EXPECT_EQ(Replay({(dir.path() / "weird.txt").string()}, DumpFormat::kEml).seen.size(), 1u);
  EXPECT_EQ(Replay({(dir.path() / "weird.txt").string()}, DumpFormat::kMbox).seen.size(), 3u);
}

TEST(ReplaySourceTest, MissingPathIsAClearError) {
  auto inputs = ExpandReplayPaths({"/nonexistent/dump.mbox"}, DumpFormat::kAuto);
  ASSERT_FALSE(inputs.has_value());
  EXPECT_NE(inputs.error().message.find("/nonexistent/dump.mbox"), std::string::npos);
}

TEST(ReplaySourceTest, CheckpointResumesAfterTheLastDurableMessage) {
  TempDir dir;
  const std::string mbox = (dir.path() / "d.mbox").string();
  const std::string eml = (dir.path() / "m.eml").string();
  WriteFile(mbox, kMbox);
  WriteFile(eml, "Subject: eml\n\ne\n");
  const std::string checkpoint = (dir.path() / "replay.checkpoint").string();

  // A previous run got as far as the second mbox message (durable), then died.
  WriteFile(checkpoint, "# test\n" + std::to_string(kMbox.find("From bob") + 1) + "\t" + mbox + "\n0\t" + eml + "\n");
  ReplayRun resumed = Replay({mbox, eml}, DumpFormat::kAuto, checkpoint);
  ASSERT_EQ(resumed.seen.size(), 2u);
  EXPECT_NE(resumed.seen[0].find("Subject: three"), std::string::npos);
  EXPECT_NE(resumed.seen[1].find("Subject: eml"), std::string::npos);
  EXPECT_EQ(resumed.skipped, 2u);

  // Everything is now durable: the checkpoint says so and a rerun replays nothing.
  std::ifstream in(checkpoint);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("done\t" + mbox), std::string::npos);
  EXPECT_NE(text.find("done\t" + eml), std::string::npos);
  EXPECT_TRUE(Replay({mbox, eml}, DumpFormat::kAuto, checkpoint).seen.empty());
}

TEST(ReplaySourceTest, ManyMessagesThroughATinyPoolLoseNothing) {
  TempDir dir;
  std::string mbox;
  for (int i = 0; i < 5000; ++i) {
    mbox += "From x@y Sat Jan  3 01:05:34 1996\nMessage-ID: <" + std::to_string(i) + "@t>\n\nbody\n\n";
  }
  WriteGzip(dir.path() / "many.mbox.gz", mbox);
  ReplayRun run = Replay({(dir.path() / "many.mbox.gz").string()}, DumpFormat::kAuto, "", 2);
  ASSERT_EQ(run.seen.size(), 5000u);
  for (int i = 0; i < 5000; i += 499) EXPECT_NE(run.seen[i].find("<" + std::to_string(i) + "@t>"), std::string::npos);
}

TEST(ReplaySourceTest, RatePacingStampsTheScheduledSendTime) {
  // With a pool of one slot the source falls behind its schedule whenever the consumer is slow;
  // accepted_ns must still be start + i / rate exactly, so that latency counts the lag.
  TempDir dir;
  std::string mbox;
  for (int i = 0; i < 200; ++i) {
    mbox += "From x@y Sat Jan  3 01:05:34 1996\nMessage-ID: <" + std::to_string(i) + "@t>\n\nb\n\n";
  }
  WriteFile(dir.path() / "paced.mbox", mbox);
  constexpr double kRate = 20000;
  ReplayRun run = Replay({(dir.path() / "paced.mbox").string()}, DumpFormat::kAuto, "", 1, kRate);
  ASSERT_EQ(run.accepted_ns.size(), 200u);
  for (std::size_t i = 0; i < run.accepted_ns.size(); ++i) {
    const auto expected = std::chrono::duration_cast<engine::Clock::duration>(
        std::chrono::duration<double>(static_cast<double>(i) / kRate));
    EXPECT_EQ(run.accepted_ns[i] - run.accepted_ns[0], expected.count()) << "message " << i;
  }
}

}  // namespace
}  // namespace mailrail::stages
