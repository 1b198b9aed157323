#pragma once
// DiskObjectStore: the local ObjectStore (storage/object_store.h). Each object is a file
// <root>/ab/cd/<sha256 hex>, where ab and cd are the first two bytes of the digest in hex.
//
// Write path, all io_uring, no blocking syscall on the caller's thread:
//   1. statx(<final>): present -> kAlreadyPresent (nothing written, budget untouched);
//      absent -> budget check (kBudgetFull when used + reserved + size > budget).
//   2. one linked chain: mkdirat ab, mkdirat ab/cd (hard links: EEXIST does not break the chain;
//      skipped once the directory is known), openat <final>.tmp.<pid>.<slot> into a fixed-file
//      slot, write, fsync, close, renameat to <final>, then open, fsync and close ab/cd.
//   3. only when a mkdirat created a directory: fsync the parents too (root, ab).
//   The file is fsync'ed before the rename, so <final> never names partial content, and the
//   directory after it, so the name itself survives a power cut before the result is reported.
// Crash: a killed process leaves at most *.tmp.* files; Open removes them. Re-storing an object
//   (the WAL re-feed after a restart) finds it present: idempotent by content address.
// Budget: the bytes of the objects under root, measured by Open (a walk of the tree) and
//   maintained as objects are added; 0 means unlimited. Objects are never deleted by mailrail.
// In flight: at most max_in_flight objects (each holds one fixed-file slot and at most 17 SQEs);
//   TrySubmit returns false beyond that. A digest already in flight joins that operation.
// Threading: one thread (see ObjectStore); Report from any thread (relaxed loads).

#include <liburing.h>
#include <sys/stat.h>

#include <atomic>
#include <bitset>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/base/result.h"
#include "storage/object_store.h"

namespace mailrail::storage {

// Where and how much the disk store may write; plain values, copied into the store at Open.
struct DiskObjectStoreConfig {
  std::string root;                // <data_dir>/attachments
  std::uint64_t budget_bytes = 0;  // 0: unlimited
  std::size_t max_in_flight = 32;  // objects
};

// Counters: single writer (the store's thread), relaxed loads elsewhere.
struct ObjectStoreCounters {
  std::atomic<std::uint64_t> stored{0};
  std::atomic<std::uint64_t> stored_bytes{0};
  std::atomic<std::uint64_t> already_present{0};  // deduplicated: not written again
  std::atomic<std::uint64_t> joined_in_flight{0}; // deduplicated against an object still being written
  std::atomic<std::uint64_t> budget_refused{0};
  std::atomic<std::uint64_t> failed{0};
  std::atomic<std::uint64_t> used_bytes{0};       // bytes under the store's root
};

class DiskObjectStore final : public ObjectStore {
 public:
  // Creates root, removes leftover temporary files and measures the bytes already stored.
  static base::Result<std::unique_ptr<DiskObjectStore>> Open(DiskObjectStoreConfig config);
  ~DiskObjectStore() override;
  DiskObjectStore(const DiskObjectStore&) = delete;
  DiskObjectStore& operator=(const DiskObjectStore&) = delete;

  std::string Reference(const ObjectDigest& sha256) const override;
  bool TrySubmit(const ObjectWrite& write) override;
  void Poll(std::vector<ObjectWriteResult>& out) override;
  std::size_t in_flight() const override { return in_flight_tokens_; }
  bool needs_polling() const override { return true; }
  void Report(engine::Snapshot& snapshot) const override;

  // Blocks until some operation completes (returns at once when none is in flight). For callers
  // with nothing else to do (tools, benchmarks); the attachment stage never calls it.
  void WaitForCompletion();
  // <root>/ab/cd/<hex>
  std::string PathOf(const ObjectDigest& sha256) const;
  const ObjectStoreCounters& counters() const { return counters_; }
  std::size_t removed_temporaries() const { return removed_temporaries_; }

 private:
  enum class Phase : std::uint8_t { kStat, kWrite, kSyncParents };
  struct Operation {
    bool busy = false;
    Phase phase = Phase::kStat;
    ObjectDigest sha256{};
    std::string_view bytes;
    std::vector<std::uint64_t> tokens;
    std::string final_path, temp_path, parent_path, leaf_path;
    struct statx stat{};
    unsigned pending = 0;  // CQEs still expected for the current phase
    bool created_directory = false;
    bool reserved = false;
    std::string error;
  };

  explicit DiskObjectStore(DiskObjectStoreConfig config) : config_(std::move(config)) {}
  io_uring_sqe* NextSqe();
  void Prepare(io_uring_sqe* sqe, std::size_t op, std::uint8_t step, unsigned flags);
  void StartStat(std::size_t op);
  void StartWrite(std::size_t op);
  void StartParentSync(std::size_t op);
  void OnCompletion(std::size_t op, std::uint8_t step, int res);
  void OnPhaseDone(std::size_t op);
  void Finish(std::size_t op, ObjectWriteOutcome outcome);
  static std::uint16_t DirectoryIndex(const ObjectDigest& d) { return static_cast<std::uint16_t>(d[0] << 8 | d[1]); }

  DiskObjectStoreConfig config_;
  std::unique_ptr<io_uring> ring_;
  bool ring_ready_ = false;
  std::vector<Operation> ops_;
  std::vector<std::size_t> free_ops_;
  std::unordered_map<std::string, std::size_t> op_by_hex_;
  std::bitset<65536> known_leaf_dirs_;  // ab/cd directories known to exist
  std::vector<ObjectWriteResult> ready_;
  std::size_t in_flight_tokens_ = 0;
  std::uint64_t reserved_bytes_ = 0;
  std::size_t removed_temporaries_ = 0;
  ObjectStoreCounters counters_;
};

}  // namespace mailrail::storage
