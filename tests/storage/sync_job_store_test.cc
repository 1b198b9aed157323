#include "storage/sync_job_store.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "tests/storage/wal_test_util.h"

namespace mailrail::storage {
namespace {

using testing::ScratchDir;

SyncJob Job(std::string id, std::string user, SyncJobStatus status, std::uint64_t total = 10) {
  SyncJob job;
  job.job_id = std::move(id);
  job.user_id = std::move(user);
  job.status = status;
  job.months = 6;
  job.total = total;
  job.processed = total / 2;
  job.parsed = total / 3;
  job.failed = 1;
  job.created_ms = 1'700'000'000'000;
  job.updated_ms = job.created_ms + 5;
  return job;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(SyncJobStoreTest, SavedStatesSurviveReopenAndTheLastStateOfAJobWins) {
  ScratchDir dir;
  const std::string path = dir.path() + "/sync_jobs.journal";
  {
    auto store = SyncJobStore::Open(path, 100);
    ASSERT_TRUE(store.has_value()) << store.error().message;
    ASSERT_TRUE(store->Save(Job("j1", "alice", SyncJobStatus::kPending)).has_value());
    SyncJob done = Job("j1", "alice", SyncJobStatus::kCompleted, 40);
    done.completed_ms = done.updated_ms;
    done.error = "tab\there";  // sanitised, never breaks the line
    const SyncJob batch[] = {done, Job("j2", "alice", SyncJobStatus::kProcessing), Job("j3", "bob", SyncJobStatus::kPending)};
    ASSERT_TRUE(store->SaveAll(batch).has_value());
  }
  auto store = SyncJobStore::Open(path, 100);
  ASSERT_TRUE(store.has_value()) << store.error().message;
  EXPECT_EQ(store->torn_tail_bytes(), 0u);
  const auto history = store->History("alice", 10);
  ASSERT_EQ(history.size(), 2u);
  EXPECT_EQ(history[0]->job_id, "j2");  // newest first
  EXPECT_EQ(history[1]->job_id, "j1");
  EXPECT_EQ(history[1]->status, SyncJobStatus::kCompleted);
  EXPECT_EQ(history[1]->total, 40u);
  EXPECT_EQ(history[1]->processed, 20u);
  EXPECT_EQ(history[1]->parsed, 13u);
  EXPECT_EQ(history[1]->error, "tab here");
  EXPECT_EQ(store->History("alice", 1).size(), 1u);
  ASSERT_NE(store->Latest("bob"), nullptr);
  EXPECT_EQ(store->Latest("bob")->job_id, "j3");
  EXPECT_EQ(store->Latest("carol"), nullptr);
}

TEST(SyncJobStoreTest, ATornLastLineIsCutAndReported) {
  ScratchDir dir;
  const std::string path = dir.path() + "/sync_jobs.journal";
  {
    auto store = SyncJobStore::Open(path, 100);
    ASSERT_TRUE(store.has_value());
    ASSERT_TRUE(store->Save(Job("j1", "alice", SyncJobStatus::kProcessing)).has_value());
  }
  const std::string partial = EncodeSyncJobLine(Job("j1", "alice", SyncJobStatus::kCompleted)).substr(0, 30);
  std::ofstream(path, std::ios::app) << partial;
  auto store = SyncJobStore::Open(path, 100);
  ASSERT_TRUE(store.has_value()) << store.error().message;
  EXPECT_EQ(store->torn_tail_bytes(), partial.size());
  EXPECT_EQ(store->Latest("alice")->status, SyncJobStatus::kProcessing);
  EXPECT_EQ(ReadFile(path), EncodeSyncJobLine(Job("j1", "alice", SyncJobStatus::kProcessing)));
}

TEST(SyncJobStoreTest, ADamagedLineBeforeTheEndIsAnErrorNamingFileAndLine) {
  ScratchDir dir;
  const std::string path = dir.path() + "/sync_jobs.journal";
  std::string first = EncodeSyncJobLine(Job("j1", "alice", SyncJobStatus::kProcessing));
  first[first.find("alice")] = 'A';  // checksum no longer matches
  std::ofstream(path) << first << EncodeSyncJobLine(Job("j2", "bob", SyncJobStatus::kPending));
  auto store = SyncJobStore::Open(path, 100);
  ASSERT_FALSE(store.has_value());
  EXPECT_EQ(store.error().code, "sync_jobs.damaged");
  EXPECT_NE(store.error().message.find(path + ":1:"), std::string::npos) << store.error().message;
}

TEST(SyncJobStoreTest, CompactionKeepsOneLinePerJobAndTheHistoryLimit) {
  ScratchDir dir;
  const std::string path = dir.path() + "/sync_jobs.journal";
  {
    auto store = SyncJobStore::Open(path, 3);
    ASSERT_TRUE(store.has_value());
    for (int round = 0; round < 1100; ++round) {
      SyncJob job = Job("j" + std::to_string(round % 5), "alice", SyncJobStatus::kCompleted, round);
      job.created_ms += round % 5;
      ASSERT_TRUE(store->Save(job).has_value());
    }
    EXPECT_LT(store->journal_lines(), 1100u);  // compacted at least once
  }
  auto store = SyncJobStore::Open(path, 3);
  ASSERT_TRUE(store.has_value()) << store.error().message;
  const auto history = store->History("alice", 10);
  EXPECT_EQ(history.size(), 3u);  // the history limit, whatever the journal held
}

}  // namespace
}  // namespace mailrail::storage
