#include "storage/disk_object_store.h"

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "stages/text_codec.h"
#include "tests/storage/wal_test_util.h"

namespace mailrail::storage {
namespace {

using testing::Body;
using testing::ScratchDir;

ObjectWrite Write(std::uint64_t token, const std::string& bytes) {
  return ObjectWrite{token, stages::Sha256(bytes), bytes};
}

// Polls until `count` results arrived or 10 s passed (the store completes on io_uring).
std::vector<ObjectWriteResult> WaitFor(DiskObjectStore& store, std::size_t count) {
  std::vector<ObjectWriteResult> results;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (results.size() < count && std::chrono::steady_clock::now() < deadline) store.Poll(results);
  return results;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::unique_ptr<DiskObjectStore> OpenStore(const std::string& root, std::uint64_t budget = 0, std::size_t in_flight = 4) {
  auto store = DiskObjectStore::Open({root, budget, in_flight});
  EXPECT_TRUE(store.has_value()) << store.error().message;
  return std::move(store).value();
}

TEST(DiskObjectStoreTest, WritesEachObjectUnderItsDigestPath) {
  ScratchDir dir;
  auto store = OpenStore(dir.path() + "/attachments");
  const std::string a = Body(1, 5000), b = Body(2, 70000), empty;
  ASSERT_TRUE(store->TrySubmit(Write(1, a)));
  ASSERT_TRUE(store->TrySubmit(Write(2, b)));
  ASSERT_TRUE(store->TrySubmit(Write(3, empty)));
  const auto results = WaitFor(*store, 3);
  ASSERT_EQ(results.size(), 3u);
  for (const auto& r : results) EXPECT_EQ(r.outcome, ObjectWriteOutcome::kStored) << r.error;
  const std::string hex = DigestHex(stages::Sha256(a));
  const std::string path = dir.path() + "/attachments/" + hex.substr(0, 2) + "/" + hex.substr(2, 2) + "/" + hex;
  EXPECT_EQ(store->PathOf(stages::Sha256(a)), path);
  EXPECT_EQ(ReadFile(path), a);
  EXPECT_EQ(ReadFile(store->PathOf(stages::Sha256(b))), b);
  EXPECT_TRUE(std::filesystem::exists(store->PathOf(stages::Sha256(empty))));
  EXPECT_EQ(store->Reference(stages::Sha256(a)), "sha256:" + hex);
  EXPECT_EQ(store->counters().stored.load(), 3u);
  EXPECT_EQ(store->counters().used_bytes.load(), a.size() + b.size());
  EXPECT_EQ(store->in_flight(), 0u);
}

TEST(DiskObjectStoreTest, AnObjectIsWrittenOnceWhetherStoredBeforeOrStillInFlight) {
  ScratchDir dir;
  auto store = OpenStore(dir.path());
  const std::string a = Body(3, 100000);
  ASSERT_TRUE(store->TrySubmit(Write(1, a)));
  ASSERT_TRUE(store->TrySubmit(Write(2, a)));  // joins the first
  auto results = WaitFor(*store, 2);
  ASSERT_EQ(results.size(), 2u);
  EXPECT_EQ(results[0].outcome, ObjectWriteOutcome::kStored);
  EXPECT_EQ(results[1].outcome, ObjectWriteOutcome::kStored);
  EXPECT_EQ(results[0].token + results[1].token, 3u);
  EXPECT_EQ(store->counters().joined_in_flight.load(), 1u);
  ASSERT_TRUE(store->TrySubmit(Write(3, a)));  // found on disk
  results = WaitFor(*store, 1);
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].outcome, ObjectWriteOutcome::kAlreadyPresent);
  EXPECT_EQ(store->counters().stored.load(), 1u);
  EXPECT_EQ(store->counters().already_present.load(), 1u);
  EXPECT_EQ(store->counters().used_bytes.load(), a.size());
}

TEST(DiskObjectStoreTest, BudgetRefusesNewObjectsButNotPresentOnes) {
  ScratchDir dir;
  auto store = OpenStore(dir.path(), /*budget=*/1000);
  const std::string a = Body(4, 600), b = Body(5, 600);
  ASSERT_TRUE(store->TrySubmit(Write(1, a)));
  ASSERT_EQ(WaitFor(*store, 1).at(0).outcome, ObjectWriteOutcome::kStored);
  ASSERT_TRUE(store->TrySubmit(Write(2, b)));
  ASSERT_TRUE(store->TrySubmit(Write(3, a)));
  auto results = WaitFor(*store, 2);
  ASSERT_EQ(results.size(), 2u);
  for (const auto& r : results) {
    EXPECT_EQ(r.outcome, r.token == 2 ? ObjectWriteOutcome::kBudgetFull : ObjectWriteOutcome::kAlreadyPresent);
  }
  EXPECT_FALSE(std::filesystem::exists(store->PathOf(stages::Sha256(b))));
  EXPECT_EQ(store->counters().budget_refused.load(), 1u);
  engine::Snapshot snapshot;
  store->Report(snapshot);
  bool reported = false;
  for (const auto& s : snapshot.samples()) {
    if (s.name == "attachment_objects_refused" && s.labels.back().second == "budget_full") reported = s.value == 1;
  }
  EXPECT_TRUE(reported);
}

TEST(DiskObjectStoreTest, ReopeningRemovesUnfinishedFilesMeasuresUsageAndRewritesIdempotently) {
  ScratchDir dir;
  const std::string a = Body(6, 3000), b = Body(7, 4000);
  std::string temp_path;
  {
    auto store = OpenStore(dir.path());
    ASSERT_TRUE(store->TrySubmit(Write(1, a)));
    ASSERT_EQ(WaitFor(*store, 1).size(), 1u);
    temp_path = store->PathOf(stages::Sha256(b)) + ".tmp.4242.0";  // what a SIGKILL mid-write leaves
  }
  std::filesystem::create_directories(std::filesystem::path(temp_path).parent_path());
  std::ofstream(temp_path) << "half";
  auto store = OpenStore(dir.path());
  EXPECT_EQ(store->removed_temporaries(), 1u);
  EXPECT_FALSE(std::filesystem::exists(temp_path));
  EXPECT_EQ(store->counters().used_bytes.load(), a.size());
  // The WAL re-feed after a crash stores the same messages again.
  ASSERT_TRUE(store->TrySubmit(Write(1, a)));
  ASSERT_TRUE(store->TrySubmit(Write(2, b)));
  const auto results = WaitFor(*store, 2);
  ASSERT_EQ(results.size(), 2u);
  for (const auto& r : results) {
    EXPECT_EQ(r.outcome, r.token == 1 ? ObjectWriteOutcome::kAlreadyPresent : ObjectWriteOutcome::kStored);
  }
  EXPECT_EQ(ReadFile(store->PathOf(stages::Sha256(b))), b);
  EXPECT_EQ(store->counters().used_bytes.load(), a.size() + b.size());
}

TEST(DiskObjectStoreTest, AnIoErrorFailsTheObjectWithAReasonAndLeavesNoTemporaryFile) {
  ScratchDir dir;
  auto store = OpenStore(dir.path());
  const std::string a = Body(8, 2000);
  const std::string hex = DigestHex(stages::Sha256(a));
  std::ofstream(dir.path() + "/" + hex.substr(0, 2)) << "a file where the directory should be";
  ASSERT_TRUE(store->TrySubmit(Write(1, a)));
  const auto results = WaitFor(*store, 1);
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].outcome, ObjectWriteOutcome::kFailed);
  EXPECT_NE(results[0].error.find(hex), std::string::npos) << results[0].error;
  EXPECT_EQ(store->counters().failed.load(), 1u);
  EXPECT_EQ(store->counters().used_bytes.load(), 0u);
  // The budget reservation is released: a different object still fits.
  ASSERT_TRUE(store->TrySubmit(Write(2, Body(9, 10))));
  EXPECT_EQ(WaitFor(*store, 1).size(), 1u);
}

TEST(DiskObjectStoreTest, RefusesSubmissionsBeyondItsInFlightLimit) {
  ScratchDir dir;
  auto store = OpenStore(dir.path(), 0, /*in_flight=*/2);
  const std::string a = Body(10, 100), b = Body(11, 100), c = Body(12, 100);
  ASSERT_TRUE(store->TrySubmit(Write(1, a)));
  ASSERT_TRUE(store->TrySubmit(Write(2, b)));
  EXPECT_FALSE(store->TrySubmit(Write(3, c)));
  EXPECT_EQ(WaitFor(*store, 2).size(), 2u);
  EXPECT_TRUE(store->TrySubmit(Write(3, c)));
  EXPECT_EQ(WaitFor(*store, 1).size(), 1u);
}

}  // namespace
}  // namespace mailrail::storage
