// bench_attachments: write throughput of the attachment store against plain synchronous loops
// writing the same objects in the same run, and the cost of decoding an attachment a second time.
//   BM_AttachmentStore_DiskIoUring     storage::DiskObjectStore (32 objects in flight): statx, then
//                                      one linked io_uring chain per object (mkdir, open, write,
//                                      fsync, close, rename, directory fsync)
//   BM_PlainLoop_WriteFsync            per object: open, write(), fsync(), close (no temp name, no
//                                      rename, no directory fsync: less durable, the simple baseline)
//   BM_PlainLoop_SameDurability        per object, synchronously, what the store does: statx,
//                                      mkdir, open temp, write, fsync, close, rename, fsync dir
//   BM_Parse_MessageWithAttachment     MimeParser on a message with one base64 attachment (it
//                                      decodes and hashes the attachment)
//   BM_DecodeAttachmentAgain           DecodeAttachment of that attachment: the attachment stage's
//                                      extra work, since the parser keeps no decoded copy
// Every iteration writes fresh objects into a fresh directory, so nothing is deduplicated.
//
//   build/bench/bench_attachments                                  # data under build/bench/attachment-bench-data
//   MAILRAIL_BENCH_DIR=/mnt/disk/x build/bench/bench_attachments   # elsewhere (never a tmpfs)
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "stages/message.h"
#include "stages/mime_parser.h"
#include "stages/record_builder.h"
#include "storage/disk_object_store.h"

namespace {

using mailrail::storage::DigestHex;
using mailrail::storage::ObjectDigest;

constexpr int kObjectsPerIteration = 32;

std::string BenchDir() {
  if (const char* env = std::getenv("MAILRAIL_BENCH_DIR")) return env;
  return std::filesystem::read_symlink("/proc/self/exe").parent_path().string() + "/attachment-bench-data";
}

struct Objects {
  std::vector<std::string> bytes;
  std::vector<ObjectDigest> digests;
};

// Distinct objects for one iteration (the seed makes every iteration's objects new).
Objects MakeObjects(std::size_t size, std::uint64_t seed) {
  Objects o;
  for (int i = 0; i < kObjectsPerIteration; ++i) {
    std::string s(size, '\0');
    std::uint64_t x = seed * 1000003 + static_cast<std::uint64_t>(i) + 1;
    for (std::size_t k = 0; k < size; k += 8) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      std::memcpy(s.data() + k, &x, std::min<std::size_t>(8, size - k));
    }
    o.digests.push_back(mailrail::stages::Sha256(s));
    o.bytes.push_back(std::move(s));
  }
  return o;
}

std::string FreshDir(const char* name, std::uint64_t iteration) {
  const std::string dir = BenchDir() + "/" + name + "-" + std::to_string(iteration);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

// Times `write_all(objects, dir)` over fresh objects in a fresh directory per iteration.
template <typename WriteAll>
void TimeWrites(benchmark::State& state, const char* name, WriteAll write_all) {
  const auto size = static_cast<std::size_t>(state.range(0));
  std::uint64_t iteration = 0;
  for (auto _ : state) {
    state.PauseTiming();
    const Objects objects = MakeObjects(size, ++iteration);
    const std::string dir = FreshDir(name, iteration);
    state.ResumeTiming();
    write_all(objects, dir);
    state.PauseTiming();
    std::filesystem::remove_all(dir);
    state.ResumeTiming();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * kObjectsPerIteration * size));
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * kObjectsPerIteration));
}

void BM_AttachmentStore_DiskIoUring(benchmark::State& state) {
  TimeWrites(state, "store", [&](const Objects& objects, const std::string& dir) {
    state.PauseTiming();  // ring set-up and the start-up walk are not per-object work
    auto store = mailrail::storage::DiskObjectStore::Open({dir, 0, 32}).value();
    std::vector<mailrail::storage::ObjectWriteResult> results;
    state.ResumeTiming();
    for (int i = 0; i < kObjectsPerIteration; ++i) {
      if (!store->TrySubmit({static_cast<std::uint64_t>(i), objects.digests[i], objects.bytes[i]})) std::abort();
    }
    while (true) {
      store->Poll(results);
      if (results.size() == kObjectsPerIteration) break;
      store->WaitForCompletion();  // sleep in the kernel: a spin would take a core from io-wq
    }
    state.PauseTiming();
    for (const auto& r : results) {
      if (r.outcome != mailrail::storage::ObjectWriteOutcome::kStored) state.SkipWithError(r.error.c_str());
    }
    store.reset();
    state.ResumeTiming();
  });
}

void WriteFile(int fd, const std::string& bytes) {
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n <= 0) std::abort();
    done += static_cast<std::size_t>(n);
  }
}

void BM_PlainLoop_WriteFsync(benchmark::State& state) {
  TimeWrites(state, "plain", [](const Objects& objects, const std::string& dir) {
    for (int i = 0; i < kObjectsPerIteration; ++i) {
      const std::string path = dir + "/" + DigestHex(objects.digests[i]);
      const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      if (fd < 0) std::abort();
      WriteFile(fd, objects.bytes[i]);
      ::fsync(fd);
      ::close(fd);
    }
  });
}

void BM_PlainLoop_SameDurability(benchmark::State& state) {
  TimeWrites(state, "same", [](const Objects& objects, const std::string& dir) {
    for (int i = 0; i < kObjectsPerIteration; ++i) {
      const std::string hex = DigestHex(objects.digests[i]);
      const std::string parent = dir + "/" + hex.substr(0, 2);
      const std::string leaf = parent + "/" + hex.substr(2, 2);
      const std::string final_path = leaf + "/" + hex;
      const std::string temp = final_path + ".tmp";
      struct stat st;
      if (::stat(final_path.c_str(), &st) == 0) continue;
      ::mkdir(parent.c_str(), 0755);
      ::mkdir(leaf.c_str(), 0755);
      const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      if (fd < 0) std::abort();
      WriteFile(fd, objects.bytes[i]);
      ::fsync(fd);
      ::close(fd);
      ::rename(temp.c_str(), final_path.c_str());
      const int dfd = ::open(leaf.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      ::fsync(dfd);
      ::close(dfd);
    }
  });
}

std::string MessageWithAttachment(std::size_t size) {
  const Objects o = MakeObjects(size, 7);
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string b64;
  const std::string& in = o.bytes[0];
  for (std::size_t i = 0; i + 2 < in.size(); i += 3) {
    const std::uint32_t n = static_cast<std::uint8_t>(in[i]) << 16 | static_cast<std::uint8_t>(in[i + 1]) << 8 |
                            static_cast<std::uint8_t>(in[i + 2]);
    b64 += kAlphabet[n >> 18 & 63];
    b64 += kAlphabet[n >> 12 & 63];
    b64 += kAlphabet[n >> 6 & 63];
    b64 += kAlphabet[n & 63];
    if (b64.size() % 78 == 76) b64 += "\r\n";
  }
  return "From: a@x.example\r\nSubject: scan\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
         "--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b\r\nContent-Type: application/pdf\r\n"
         "Content-Disposition: attachment; filename=scan.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
         b64 + "\r\n--b--\r\n";
}

void BM_Parse_MessageWithAttachment(benchmark::State& state) {
  mailrail::stages::Message msg;
  const std::string raw = MessageWithAttachment(static_cast<std::size_t>(state.range(0)));
  mailrail::stages::MimeParser parser;
  for (auto _ : state) {
    msg.Reset();
    msg.raw = raw;
    parser.Parse(msg);
    benchmark::DoNotOptimize(msg.record.attachments.data());
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * raw.size()));
}

void BM_DecodeAttachmentAgain(benchmark::State& state) {
  mailrail::stages::Message msg;
  msg.raw = MessageWithAttachment(static_cast<std::size_t>(state.range(0)));
  mailrail::stages::MimeParser parser;
  parser.Parse(msg);
  if (msg.record.attachments.size() != 1) std::abort();
  mailrail::stages::ScratchBuffer out;
  for (auto _ : state) {
    mailrail::stages::DecodeAttachment(msg.record.attachments[0], out);
    benchmark::DoNotOptimize(out.data());
  }
  // Same unit as the parse benchmark (bytes of the whole message), so the rates compare directly.
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * msg.raw.size()));
}

BENCHMARK(BM_AttachmentStore_DiskIoUring)->Arg(64 << 10)->Arg(1 << 20)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_PlainLoop_WriteFsync)->Arg(64 << 10)->Arg(1 << 20)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_PlainLoop_SameDurability)->Arg(64 << 10)->Arg(1 << 20)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Parse_MessageWithAttachment)->Arg(1 << 20);
BENCHMARK(BM_DecodeAttachmentAgain)->Arg(1 << 20);

}  // namespace

BENCHMARK_MAIN();
