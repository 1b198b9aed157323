#include "net/checkpoint_file.h"

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

namespace mailrail::net {
namespace {

std::string Read(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

class CheckpointFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("mailrail-checkpoint-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
    path_ = (dir_ / "source.checkpoint").string();
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::filesystem::path dir_;
  std::string path_;
};

TEST_F(CheckpointFileTest, WriteNowReplacesTheFileAndLeavesNoTemporary) {
  Counter writes;
  CheckpointFile file(path_, "test.checkpoint", &writes, [](const base::Error&) { FAIL(); });
  ASSERT_TRUE(file.WriteNow("one\n"));
  ASSERT_TRUE(file.WriteNow("two\n"));
  EXPECT_EQ(Read(path_), "two\n");
  EXPECT_FALSE(std::filesystem::exists(path_ + ".tmp"));
  EXPECT_EQ(writes.value(), 2u);
}

TEST_F(CheckpointFileTest, SubmittedTextIsWrittenByTheThreadAndNeverOverwritesANewerOne) {
  Counter writes;
  CheckpointFile file(path_, "test.checkpoint", &writes, [](const base::Error&) { FAIL(); });
  file.Submit("submitted\n");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (Read(path_) != "submitted\n" && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));  // bounded poll for the writer thread
  }
  EXPECT_EQ(Read(path_), "submitted\n");
  // A text submitted before WriteNow, whichever gets to the file first, never wins over it.
  file.Submit("older\n");
  ASSERT_TRUE(file.WriteNow("newest\n"));
  EXPECT_EQ(Read(path_), "newest\n");
}

TEST_F(CheckpointFileTest, AFailedWriteIsAnErrorNamingThePath) {
  Counter writes;
  const std::string missing = (dir_ / "no-such-dir" / "x.checkpoint").string();
  CheckpointFile file(missing, "test.checkpoint", &writes, [](const base::Error&) {});
  auto status = file.WriteNow("x\n");
  ASSERT_FALSE(status);
  EXPECT_EQ(status.error().code, "test.checkpoint");
  EXPECT_NE(status.error().message.find(missing + ".tmp"), std::string::npos);
  EXPECT_EQ(writes.value(), 0u);
}

}  // namespace
}  // namespace mailrail::net
