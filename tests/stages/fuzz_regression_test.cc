// Replays every input under tests/data/fuzz/{mime,graph}: fuzz seeds and every crash or invariant
// failure the fuzzers (tests/fuzz/run-fuzzers) ever found, so a fixed bug stays fixed. Run under
// -DMAILRAIL_ASAN=ON to get the same checks the fuzzers apply.
#include <gtest/gtest.h>

#include <filesystem>

#include "stages/mime_parser.h"
#include "tests/fuzz/record_invariants.h"
#include "tests/support/corpus.h"

namespace mailrail::stages {
namespace {

void ReplayDirectory(const std::filesystem::path& dir, InputKind kind) {
  ASSERT_TRUE(std::filesystem::is_directory(dir)) << dir;
  MessageParser parser;
  Message msg;
  std::size_t count = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    msg.Reset();
    msg.raw = testing::ReadFile(entry.path());
    msg.kind = kind;
    parser.Parse(msg);
    EXPECT_EQ(fuzz::BrokenInvariant(msg), "") << entry.path();
    ++count;
  }
  EXPECT_GT(count, 0u);
}

TEST(FuzzRegressionTest, MimeInputs) {
  ReplayDirectory(std::filesystem::path(MAILRAIL_SOURCE_DIR) / "tests/data/fuzz/mime", InputKind::kRfc822);
}

TEST(FuzzRegressionTest, GraphInputs) {
  ReplayDirectory(std::filesystem::path(MAILRAIL_SOURCE_DIR) / "tests/data/fuzz/graph", InputKind::kGraphJson);
}

}  // namespace
}  // namespace mailrail::stages
