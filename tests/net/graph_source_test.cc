// GraphSource on a real EventLoop against the Graph double (tests/graph/graph_double.py, a child
// process on a free loopback port), with a stand-in for the WAL that acknowledges what it pops:
// the control methods the sync-job API uses (HasMailbox, StartBackfill, SyncNow, Progress) and
// the checkpoint written at shutdown.
#include "net/graph_source.h"

#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include "tests/net/acking_consumer.h"
#include "tests/net/test_util.h"

namespace mailrail::net {
namespace {

using testing::AckingConsumer;
using testing::ChildProcess;
using testing::LoopThread;
using testing::TempDir;

constexpr int kMessages = 30;

class GraphSourceTest : public ::testing::Test {
 protected:
  GraphSourceTest() : pool_(256, 64 << 20), channel_("ingest", 256), consumer_(&channel_, &pool_, /*record=*/true) {}

  void SetUp() override {
    double_ = std::make_unique<ChildProcess>(std::vector<std::string>{
        testing::Python(), testing::ScriptDir() + "/../graph/graph_double.py", "--messages", std::to_string(kMessages),
        "--corpus", MAILRAIL_CORPUS_DIR});
    const std::string line = double_->ReadLine();
    ASSERT_TRUE(line.starts_with("port=")) << "graph double did not start: '" << line << "'";
    const std::string origin = "http://127.0.0.1:" + line.substr(5);
    GraphSourceConfig config;
    config.base_url = origin + "/v1.0";
    config.token_url = origin + "/test-tenant/oauth2/v2.0/token";
    config.client_id = "mailrail-test-client";
    config.client_secret = "s3cr3t-graph-client-secret-never-logged";
    config.page_size = 7;
    config.checkpoint_path = dir_.path() + "/graph.checkpoint";
    config.mailboxes.push_back({"user0", "box0", {"inbox"}, 0});
    checkpoint_path_ = config.checkpoint_path;
    auto created = GraphSource::Create(loop_.loop(), &pool_, &channel_, config,
                                       [](std::string_view, const GraphLogFields&) {});
    ASSERT_TRUE(created) << created.error().message;
    source_ = std::move(created).value();
    loop_.Start();
    loop_.Call([this] { source_->Start(); });
  }

  void TearDown() override {
    if (source_ != nullptr) loop_.Call([this] { source_->Shutdown(); });
    loop_.Stop();
  }

  GraphMailboxProgress ProgressOf(std::string_view user) {
    GraphMailboxProgress copy;
    loop_.Call([&] { copy = *source_->MailboxProgress(user); });
    return copy;
  }

  // Waits (bounded) until the mailbox caught up with `durable` messages durable.
  void WaitCaughtUp(std::uint64_t durable) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    GraphMailboxProgress p;
    while (std::chrono::steady_clock::now() < deadline) {
      p = ProgressOf("user0");
      if (p.caught_up && p.messages_durable == durable) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));  // poll interval of a bounded wait
    }
    FAIL() << "not caught up: durable " << p.messages_durable << " of " << durable << ", error '" << p.last_error << "'";
  }

  TempDir dir_;
  std::string checkpoint_path_;
  stages::MessagePool pool_;
  engine::Channel<stages::Message*> channel_;
  AckingConsumer consumer_;
  LoopThread loop_;
  std::unique_ptr<ChildProcess> double_;
  std::unique_ptr<GraphSource> source_;
};

TEST_F(GraphSourceTest, BackfillThenControlMethodsAndCheckpoint) {
  WaitCaughtUp(kMessages);
  GraphMailboxProgress p = ProgressOf("user0");
  EXPECT_EQ(p.messages_found, static_cast<std::uint64_t>(kMessages));
  EXPECT_EQ(p.messages_pushed, static_cast<std::uint64_t>(kMessages));
  EXPECT_EQ(p.messages_failed, 0u);
  EXPECT_EQ(p.last_error, "");
  auto seen = consumer_.seen();
  ASSERT_EQ(seen.size(), static_cast<std::size_t>(kMessages));
  std::set<std::string> ids;
  for (const auto& m : seen) {
    EXPECT_EQ(m.kind, stages::InputKind::kGraphJson);
    EXPECT_EQ(m.source_kind, stages::SourceKind::kGraph);
    EXPECT_EQ(m.source_id, "box0/inbox");
    EXPECT_NE(m.raw.find("\"internetMessageId\":\"<bench0-"), std::string::npos) << m.raw.substr(0, 200);
    ids.insert(m.position);
  }
  EXPECT_EQ(ids.size(), static_cast<std::size_t>(kMessages)) << "a Graph id was pushed twice";

  bool known = false, by_name = false, unknown = true;
  loop_.Call([&] {
    known = source_->HasMailbox("USER0");
    by_name = source_->HasMailbox("box0");
    unknown = source_->HasMailbox("nobody");
  });
  EXPECT_TRUE(known);
  EXPECT_TRUE(by_name);
  EXPECT_FALSE(unknown);

  // An incremental round (one empty page) finds nothing new.
  EXPECT_EQ(source_->stats().pages.value(), 5u);  // ceil(30 / 7)
  loop_.Call([&] { source_->SyncNow("user0"); });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (source_->stats().pages.value() < 6 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));  // poll interval of a bounded wait
  }
  EXPECT_EQ(source_->stats().pages.value(), 6u);
  WaitCaughtUp(kMessages);
  EXPECT_EQ(ProgressOf("user0").messages_found, static_cast<std::uint64_t>(kMessages));

  // A backfill restarts the delta from scratch: every message again (dedup's job downstream),
  // with the progress counted afresh.
  bool missing = true, started = false;
  loop_.Call([&] {
    missing = source_->StartBackfill("nobody", 3, /*resume=*/false);
    started = source_->StartBackfill("user0", 0, /*resume=*/false);
  });
  EXPECT_FALSE(missing);
  ASSERT_TRUE(started);
  WaitCaughtUp(kMessages);
  EXPECT_EQ(ProgressOf("user0").messages_found, static_cast<std::uint64_t>(kMessages));
  // The sync-job view of the same run: every message found, durable and (terminal LSN beyond all)
  // settled; none before the terminal stage reports them.
  MailboxSyncProgress run, unsettled;
  loop_.Call([&] {
    unsettled = source_->Progress("user0", 0);
    run = source_->Progress("user0", UINT64_MAX);
  });
  EXPECT_TRUE(unsettled.started);
  EXPECT_FALSE(unsettled.done);
  EXPECT_EQ(unsettled.settled, 0u);
  EXPECT_TRUE(run.done);
  EXPECT_EQ(run.found, static_cast<std::uint64_t>(kMessages));
  EXPECT_EQ(run.durable, static_cast<std::uint64_t>(kMessages));
  EXPECT_EQ(run.settled, static_cast<std::uint64_t>(kMessages));
  EXPECT_EQ(run.failed, 0u);
  // An incremental run starts afresh: not done before its round answered, then done with nothing
  // new found (the delta link returns an empty page).
  MailboxSyncProgress incremental_start;
  loop_.Call([&] {
    EXPECT_TRUE(source_->SyncNow("user0"));
    incremental_start = source_->Progress("user0", UINT64_MAX);
  });
  EXPECT_FALSE(incremental_start.started);
  EXPECT_FALSE(incremental_start.done);
  const auto run_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  MailboxSyncProgress incremental;
  while (std::chrono::steady_clock::now() < run_deadline) {
    loop_.Call([&] { incremental = source_->Progress("user0", UINT64_MAX); });
    if (incremental.done) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));  // poll interval of a bounded wait
  }
  EXPECT_TRUE(incremental.done);
  EXPECT_EQ(incremental.found, 0u);
  EXPECT_EQ(incremental.durable, 0u);
  EXPECT_EQ(consumer_.seen().size(), 2u * kMessages);
  EXPECT_EQ(source_->stats().delta_restarts.value(), 1u);
  // ceil(30 / 7) per full round; the two incremental rounds are one empty page each.
  EXPECT_EQ(source_->stats().pages.value(), 5u + 1u + 5u + 1u);
  EXPECT_EQ(source_->stats().token_refreshes.value(), 1u);

  // Shutdown, then the checkpoint: the folder's delta link.
  std::size_t in_flight = 1;
  base::Status written = base::OkStatus();
  loop_.Call([&] {
    source_->Shutdown();
    in_flight = source_->in_flight();
    written = source_->WriteCheckpoint();
  });
  EXPECT_EQ(in_flight, 0u);
  ASSERT_TRUE(written) << written.error().message;
  std::ifstream in(checkpoint_path_);
  std::stringstream text;
  text << in.rdbuf();
  EXPECT_NE(text.str().find("box0/inbox\thttp://127.0.0.1:"), std::string::npos) << text.str();
  EXPECT_NE(text.str().find("$deltatoken="), std::string::npos) << text.str();
}

}  // namespace
}  // namespace mailrail::net
