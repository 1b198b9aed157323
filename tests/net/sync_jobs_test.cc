// SyncJobManager with a scripted MailboxSyncSource: job states from the source's progress, the
// schedule of incremental jobs, and what a restart does with the journal.
#include "net/sync_jobs.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <future>
#include <map>
#include <thread>

namespace mailrail::net {
namespace {

// A source whose progress the test sets; records the calls.
class ScriptedSource final : public MailboxSyncSource {
 public:
  bool HasMailbox(std::string_view user_id) const override { return users.contains(std::string(user_id)); }
  bool StartBackfill(std::string_view user_id, unsigned months, bool resume) override {
    calls.push_back(std::string(resume ? "resume " : "backfill ") + std::string(user_id) + " " + std::to_string(months));
    return HasMailbox(user_id);
  }
  bool SyncNow(std::string_view user_id) override {
    calls.push_back("sync " + std::string(user_id));
    return HasMailbox(user_id);
  }
  MailboxSyncProgress Progress(std::string_view user_id, std::uint64_t) override {
    return progress[std::string(user_id)];
  }

  std::map<std::string, bool> users;
  std::map<std::string, MailboxSyncProgress> progress;
  std::vector<std::string> calls;
};

// Runs the manager on a real event loop thread; every call goes through the loop.
class SyncJobsHarness {
 public:
  template <typename F>
  auto OnLoop(F f) {
    std::promise<decltype(f())> done;
    loop_->Post([&] { done.set_value(f()); });
    return done.get_future().get();
  }
  SyncJobsHarness(const std::string& journal, ScriptedSource* source, std::chrono::seconds interval)
      : loop_(EventLoop::Create({}).value()) {
    auto store = storage::SyncJobStore::Open(journal, 100);
    EXPECT_TRUE(store.has_value()) << (store ? "" : store.error().message);
    store_.emplace(std::move(store).value());
    SyncJobsConfig config;
    config.incremental_interval = interval;
    config.progress_interval = std::chrono::milliseconds(10);
    manager_ = std::make_unique<SyncJobManager>(
        loop_.get(), &*store_, std::vector<MailboxSyncSource*>{source}, [] { return std::uint64_t{0}; }, config,
        [](std::string_view, const auto&) {});
    thread_ = std::thread([this] { loop_->Run(); });
    OnLoop([this] {
      manager_->Start();
      return 0;
    });
  }
  ~SyncJobsHarness() {
    OnLoop([this] {
      manager_.reset();
      loop_->Stop();
      return 0;
    });
    thread_.join();
  }
  ControlReply Status(const std::string& user) {
    return OnLoop([&] { return manager_->Status(user); });
  }
  // Waits (bounded) until the user's status body contains `text`.
  bool WaitStatus(const std::string& user, const std::string& text) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < deadline) {
      if (Status(user).json.find(text) != std::string::npos) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));  // polling interval of a bounded wait
    }
    return false;
  }
  SyncJobManager& manager() { return *manager_; }

 private:
  std::unique_ptr<EventLoop> loop_;
  std::optional<storage::SyncJobStore> store_;
  std::unique_ptr<SyncJobManager> manager_;
  std::thread thread_;
};

std::string TempJournal(const char* name) {
  const std::string dir = ::testing::TempDir() + "/sync_jobs_" + std::to_string(::getpid()) + "_" + name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir + "/sync_jobs.journal";
}

TEST(SyncJobManagerTest, JobFollowsTheSourceAndIncrementalJobsFollowACompletedBackfill) {
  ScriptedSource source;
  source.users["u1"] = true;
  SyncJobsHarness h(TempJournal("follow"), &source, std::chrono::seconds(1));
  EXPECT_EQ(h.OnLoop([&] { return h.manager().StartBackfill("nobody", 6); }).status, 404);
  EXPECT_EQ(h.OnLoop([&] { return h.manager().StartBackfill("u1", 3); }).status, 200);
  EXPECT_TRUE(h.WaitStatus("u1", "\"status\":\"pending\""));
  EXPECT_EQ(h.OnLoop([&] { return h.manager().StartBackfill("u1", 3); }).status, 409);
  h.OnLoop([&] {
    source.progress["u1"] = {.started = true, .found = 10, .durable = 4, .settled = 2, .failed = 1, .done = false};
    return 0;
  });
  EXPECT_TRUE(h.WaitStatus("u1", "\"status\":\"processing\",\"progress\":30.0,\"total_emails\":10,"
                                 "\"processed_emails\":4,\"parsed_transactions\":2,\"failed_emails\":1"));
  h.OnLoop([&] {
    source.progress["u1"] = {.started = true, .found = 10, .durable = 9, .settled = 9, .failed = 1, .done = true};
    return 0;
  });
  EXPECT_TRUE(h.WaitStatus("u1", "\"status\":\"completed\",\"progress\":100.0"));
  // A second later (the interval), an incremental job asks the source to sync.
  EXPECT_TRUE(h.WaitStatus("u1", "\"kind\":\"incremental\""));
  const auto calls = h.OnLoop([&] { return source.calls; });
  ASSERT_GE(calls.size(), 2u);
  EXPECT_EQ(calls[0], "backfill u1 3");
  EXPECT_EQ(calls[1], "sync u1");
}

TEST(SyncJobManagerTest, ARestartResumesActiveJobsAndFailsThoseWithoutAMailbox) {
  const std::string journal = TempJournal("restart");
  ScriptedSource source;
  source.users["u1"] = true;
  source.users["u2"] = true;
  {
    SyncJobsHarness h(journal, &source, std::chrono::seconds(3600));
    EXPECT_EQ(h.OnLoop([&] { return h.manager().StartBackfill("u1", 6); }).status, 200);
    EXPECT_EQ(h.OnLoop([&] { return h.manager().StartBackfill("u2", 2); }).status, 200);
  }
  ScriptedSource after;
  after.users["u1"] = true;  // u2's mailbox left the config
  SyncJobsHarness h(journal, &after, std::chrono::seconds(3600));
  EXPECT_EQ(h.OnLoop([&] { return after.calls; }), std::vector<std::string>{"resume u1 6"});
  EXPECT_TRUE(h.WaitStatus("u1", "\"status\":\"pending\""));
  EXPECT_TRUE(h.WaitStatus("u2", "\"status\":\"failed\""));
  EXPECT_NE(h.Status("u2").json.find("no longer configured"), std::string::npos);
}

}  // namespace
}  // namespace mailrail::net
