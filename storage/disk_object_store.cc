#include "storage/disk_object_store.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include <fmt/core.h>

#include "engine/base/counters.h"

namespace mailrail::storage {
namespace {

// Steps of an operation, in the low byte of a CQE's user data (the op index is above it).
enum Step : std::uint8_t {
  kMkdirParent, kMkdirLeaf, kOpenTemp, kWrite, kFsync, kClose, kRename, kOpenLeaf, kFsyncLeaf, kCloseLeaf,
  kStatFinal,
  kOpenRoot, kFsyncRoot, kCloseRoot, kOpenParent, kFsyncParent, kCloseParent,
};
constexpr std::uint64_t kIgnoredCompletion = ~std::uint64_t{0};  // clean-up unlink of a temp file

constexpr char kHexDigits[] = "0123456789abcdef";

}  // namespace

std::string DigestHex(const ObjectDigest& digest) {
  std::string out(64, '0');
  for (std::size_t i = 0; i < digest.size(); ++i) {
    out[2 * i] = kHexDigits[digest[i] >> 4];
    out[2 * i + 1] = kHexDigits[digest[i] & 15];
  }
  return out;
}

base::Result<std::unique_ptr<DiskObjectStore>> DiskObjectStore::Open(DiskObjectStoreConfig config) {
  namespace fs = std::filesystem;
  if (config.max_in_flight == 0) return base::MakeError("attachments.config", "max_in_flight must be at least 1");
  std::unique_ptr<DiskObjectStore> store(new DiskObjectStore(std::move(config)));
  const fs::path root(store->config_.root);
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec) return base::MakeError("attachments.open", "cannot create " + root.string() + ": " + ec.message());
  // Measure what is stored and remove what a killed process left half-written.
  std::uint64_t used = 0;
  for (auto it = fs::recursive_directory_iterator(root, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    const fs::path& path = it->path();
    if (it.depth() == 1 && it->is_directory()) {
      const std::string parent = path.parent_path().filename().string();
      const std::string leaf = path.filename().string();
      if (parent.size() == 2 && leaf.size() == 2) {
        store->known_leaf_dirs_.set(std::stoul(parent + leaf, nullptr, 16) & 0xFFFF);
      }
    }
    if (!it->is_regular_file()) continue;
    if (path.filename().string().find(".tmp.") != std::string::npos) {
      fs::remove(path, ec);
      ++store->removed_temporaries_;
      continue;
    }
    used += it->file_size();
  }
  if (ec) return base::MakeError("attachments.open", "cannot scan " + root.string() + ": " + ec.message());
  store->counters_.used_bytes.store(used, std::memory_order_relaxed);

  const std::size_t n = store->config_.max_in_flight;
  store->ring_ = std::make_unique<io_uring>();
  unsigned entries = 64;
  while (entries < n * 17 && entries < 4096) entries *= 2;
  if (const int rc = io_uring_queue_init(entries, store->ring_.get(), 0); rc < 0) {
    return base::MakeError("io_uring.init", std::string("io_uring_queue_init: ") + std::strerror(-rc));
  }
  store->ring_ready_ = true;
  if (const int rc = io_uring_register_files_sparse(store->ring_.get(), static_cast<unsigned>(n)); rc < 0) {
    return base::MakeError("io_uring.files", std::string("io_uring_register_files_sparse: ") + std::strerror(-rc));
  }
  store->ops_.resize(n);
  for (std::size_t i = n; i > 0; --i) store->free_ops_.push_back(i - 1);
  return store;
}

DiskObjectStore::~DiskObjectStore() {
  if (!ring_ready_) return;
  // Let every submitted operation finish: the kernel may still read the caller's buffers.
  io_uring_submit(ring_.get());
  std::size_t outstanding = 0;
  for (const Operation& op : ops_) outstanding += op.busy ? op.pending : 0;
  while (outstanding > 0) {
    io_uring_cqe* cqe = nullptr;
    if (io_uring_wait_cqe(ring_.get(), &cqe) < 0) break;
    if (io_uring_cqe_get_data64(cqe) != kIgnoredCompletion) --outstanding;
    io_uring_cqe_seen(ring_.get(), cqe);
  }
  io_uring_queue_exit(ring_.get());
}

void DiskObjectStore::WaitForCompletion() {
  if (in_flight_tokens_ == 0 || !ready_.empty()) return;
  io_uring_submit_and_wait(ring_.get(), 1);
}

std::string DiskObjectStore::PathOf(const ObjectDigest& sha256) const {
  const std::string hex = DigestHex(sha256);
  return fmt::format("{}/{}/{}/{}", config_.root, hex.substr(0, 2), hex.substr(2, 2), hex);
}

std::string DiskObjectStore::Reference(const ObjectDigest& sha256) const { return "sha256:" + DigestHex(sha256); }

io_uring_sqe* DiskObjectStore::NextSqe() {
  io_uring_sqe* sqe = io_uring_get_sqe(ring_.get());
  if (sqe == nullptr) {
    io_uring_submit(ring_.get());
    sqe = io_uring_get_sqe(ring_.get());
  }
  MR_CHECK(sqe != nullptr) << "attachment store: io_uring submission queue full after submit";
  return sqe;
}

void DiskObjectStore::Prepare(io_uring_sqe* sqe, std::size_t op, std::uint8_t step, unsigned flags) {
  io_uring_sqe_set_data64(sqe, static_cast<std::uint64_t>(op) << 8 | step);
  io_uring_sqe_set_flags(sqe, flags);
  ++ops_[op].pending;
}

bool DiskObjectStore::TrySubmit(const ObjectWrite& write) {
  const std::string hex = DigestHex(write.sha256);
  if (auto it = op_by_hex_.find(hex); it != op_by_hex_.end()) {
    ops_[it->second].tokens.push_back(write.token);
    ++in_flight_tokens_;
    base::BumpSingleWriter(counters_.joined_in_flight);
    return true;
  }
  if (free_ops_.empty()) return false;
  const std::size_t index = free_ops_.back();
  free_ops_.pop_back();
  Operation& op = ops_[index];
  op.busy = true;
  op.sha256 = write.sha256;
  op.bytes = write.bytes;
  op.tokens.assign(1, write.token);
  op.parent_path = fmt::format("{}/{}", config_.root, hex.substr(0, 2));
  op.leaf_path = fmt::format("{}/{}", op.parent_path, hex.substr(2, 2));
  op.final_path = fmt::format("{}/{}", op.leaf_path, hex);
  op.temp_path = fmt::format("{}.tmp.{}.{}", op.final_path, ::getpid(), index);
  op.pending = 0;
  op.created_directory = false;
  op.reserved = false;
  op.error.clear();
  op_by_hex_.emplace(hex, index);
  ++in_flight_tokens_;
  StartStat(index);
  return true;
}

void DiskObjectStore::StartStat(std::size_t index) {
  Operation& op = ops_[index];
  op.phase = Phase::kStat;
  io_uring_sqe* sqe = NextSqe();
  io_uring_prep_statx(sqe, AT_FDCWD, op.final_path.c_str(), 0, STATX_TYPE | STATX_SIZE, &op.stat);
  Prepare(sqe, index, kStatFinal, 0);
}

void DiskObjectStore::StartWrite(std::size_t index) {
  Operation& op = ops_[index];
  op.phase = Phase::kWrite;
  const unsigned slot = static_cast<unsigned>(index);
  if (!known_leaf_dirs_.test(DirectoryIndex(op.sha256))) {
    // Hard links: EEXIST (the usual case) must not cancel the rest of the chain.
    io_uring_sqe* sqe = NextSqe();
    io_uring_prep_mkdirat(sqe, AT_FDCWD, op.parent_path.c_str(), 0755);
    Prepare(sqe, index, kMkdirParent, IOSQE_IO_HARDLINK);
    sqe = NextSqe();
    io_uring_prep_mkdirat(sqe, AT_FDCWD, op.leaf_path.c_str(), 0755);
    Prepare(sqe, index, kMkdirLeaf, IOSQE_IO_HARDLINK);
  }
  // Direct descriptors live only in the ring's file table (never inherited): O_CLOEXEC is
  // meaningless there and the kernel rejects it.
  io_uring_sqe* sqe = NextSqe();
  io_uring_prep_openat_direct(sqe, AT_FDCWD, op.temp_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644, slot);
  Prepare(sqe, index, kOpenTemp, IOSQE_IO_LINK);
  sqe = NextSqe();
  io_uring_prep_write(sqe, static_cast<int>(slot), op.bytes.data(), static_cast<unsigned>(op.bytes.size()), 0);
  Prepare(sqe, index, kWrite, IOSQE_IO_LINK | IOSQE_FIXED_FILE);
  sqe = NextSqe();
  io_uring_prep_fsync(sqe, static_cast<int>(slot), 0);
  Prepare(sqe, index, kFsync, IOSQE_IO_LINK | IOSQE_FIXED_FILE);
  sqe = NextSqe();
  io_uring_prep_close_direct(sqe, slot);
  Prepare(sqe, index, kClose, IOSQE_IO_LINK);
  sqe = NextSqe();
  io_uring_prep_renameat(sqe, AT_FDCWD, op.temp_path.c_str(), AT_FDCWD, op.final_path.c_str(), 0);
  Prepare(sqe, index, kRename, IOSQE_IO_LINK);
  sqe = NextSqe();
  io_uring_prep_openat_direct(sqe, AT_FDCWD, op.leaf_path.c_str(), O_RDONLY | O_DIRECTORY, 0, slot);
  Prepare(sqe, index, kOpenLeaf, IOSQE_IO_LINK);
  sqe = NextSqe();
  io_uring_prep_fsync(sqe, static_cast<int>(slot), 0);
  Prepare(sqe, index, kFsyncLeaf, IOSQE_IO_LINK | IOSQE_FIXED_FILE);
  sqe = NextSqe();
  io_uring_prep_close_direct(sqe, slot);
  Prepare(sqe, index, kCloseLeaf, 0);
}

void DiskObjectStore::StartParentSync(std::size_t index) {
  Operation& op = ops_[index];
  op.phase = Phase::kSyncParents;
  const unsigned slot = static_cast<unsigned>(index);
  const std::string* dirs[2] = {&config_.root, &op.parent_path};
  const std::uint8_t steps[2][3] = {{kOpenRoot, kFsyncRoot, kCloseRoot}, {kOpenParent, kFsyncParent, kCloseParent}};
  for (int d = 0; d < 2; ++d) {
    io_uring_sqe* sqe = NextSqe();
    io_uring_prep_openat_direct(sqe, AT_FDCWD, dirs[d]->c_str(), O_RDONLY | O_DIRECTORY, 0, slot);
    Prepare(sqe, index, steps[d][0], IOSQE_IO_LINK);
    sqe = NextSqe();
    io_uring_prep_fsync(sqe, static_cast<int>(slot), 0);
    Prepare(sqe, index, steps[d][1], IOSQE_IO_LINK | IOSQE_FIXED_FILE);
    sqe = NextSqe();
    io_uring_prep_close_direct(sqe, slot);
    Prepare(sqe, index, steps[d][2], d == 0 ? IOSQE_IO_LINK : 0);
  }
}

void DiskObjectStore::Poll(std::vector<ObjectWriteResult>& out) {
  if (io_uring_sq_ready(ring_.get()) > 0) io_uring_submit(ring_.get());
  io_uring_cqe* cqes[64];
  while (true) {
    const unsigned n = io_uring_peek_batch_cqe(ring_.get(), cqes, 64);
    if (n == 0) break;
    for (unsigned i = 0; i < n; ++i) {
      const std::uint64_t data = io_uring_cqe_get_data64(cqes[i]);
      if (data == kIgnoredCompletion) continue;
      OnCompletion(static_cast<std::size_t>(data >> 8), static_cast<std::uint8_t>(data & 0xFF), cqes[i]->res);
    }
    io_uring_cq_advance(ring_.get(), n);
    // Completions may have queued the next phase of some operations.
    if (io_uring_sq_ready(ring_.get()) > 0) io_uring_submit(ring_.get());
  }
  in_flight_tokens_ -= ready_.size();
  for (ObjectWriteResult& r : ready_) out.push_back(std::move(r));
  ready_.clear();
}

void DiskObjectStore::OnCompletion(std::size_t index, std::uint8_t step, int res) {
  Operation& op = ops_[index];
  MR_CHECK(op.busy && op.pending > 0) << "attachment store: completion for idle operation " << index;
  --op.pending;
  auto fail = [&](const char* what, int error) {
    // The first failure explains the rest of the chain (cancelled links report -ECANCELED).
    if (op.error.empty()) op.error = fmt::format("{} {}: {}", what, op.final_path, std::strerror(error));
  };
  switch (step) {
    case kStatFinal:
      if (res == 0 && S_ISREG(op.stat.stx_mode) && op.stat.stx_size == op.bytes.size()) {
        op.error = "present";
      } else if (res < 0 && res != -ENOENT) {
        fail("statx", -res);
      }
      break;
    case kMkdirParent:
    case kMkdirLeaf:
      if (res == 0) op.created_directory = true;
      if (res < 0 && res != -EEXIST) fail("mkdir", -res);
      break;
    case kWrite:
      if (res >= 0 && static_cast<std::size_t>(res) != op.bytes.size()) {
        fail("short write", ENOSPC);
      } else if (res < 0) {
        fail("write", -res);
      }
      break;
    default:
      if (res < 0 && res != -ECANCELED) fail("io", -res);
      if (res == -ECANCELED && op.error.empty()) op.error = "cancelled";
      break;
  }
  if (op.pending == 0) OnPhaseDone(index);
}

void DiskObjectStore::OnPhaseDone(std::size_t index) {
  Operation& op = ops_[index];
  switch (op.phase) {
    case Phase::kStat: {
      if (op.error == "present") {
        Finish(index, ObjectWriteOutcome::kAlreadyPresent);
        return;
      }
      if (!op.error.empty()) {
        Finish(index, ObjectWriteOutcome::kFailed);
        return;
      }
      const std::uint64_t used = counters_.used_bytes.load(std::memory_order_relaxed);
      if (config_.budget_bytes > 0 && used + reserved_bytes_ + op.bytes.size() > config_.budget_bytes) {
        Finish(index, ObjectWriteOutcome::kBudgetFull);
        return;
      }
      reserved_bytes_ += op.bytes.size();
      op.reserved = true;
      StartWrite(index);
      return;
    }
    case Phase::kWrite:
      if (!op.error.empty()) {
        io_uring_sqe* sqe = NextSqe();
        io_uring_prep_unlinkat(sqe, AT_FDCWD, op.temp_path.c_str(), 0);
        io_uring_sqe_set_data64(sqe, kIgnoredCompletion);
        Finish(index, ObjectWriteOutcome::kFailed);
        return;
      }
      known_leaf_dirs_.set(DirectoryIndex(op.sha256));
      if (op.created_directory) {
        StartParentSync(index);
        return;
      }
      Finish(index, ObjectWriteOutcome::kStored);
      return;
    case Phase::kSyncParents:
      Finish(index, op.error.empty() ? ObjectWriteOutcome::kStored : ObjectWriteOutcome::kFailed);
      return;
  }
}

void DiskObjectStore::Finish(std::size_t index, ObjectWriteOutcome outcome) {
  Operation& op = ops_[index];
  if (op.reserved) reserved_bytes_ -= op.bytes.size();
  switch (outcome) {
    case ObjectWriteOutcome::kStored:
      base::BumpSingleWriter(counters_.stored);
      base::BumpSingleWriter(counters_.stored_bytes, op.bytes.size());
      base::BumpSingleWriter(counters_.used_bytes, op.bytes.size());
      break;
    case ObjectWriteOutcome::kAlreadyPresent: base::BumpSingleWriter(counters_.already_present); break;
    case ObjectWriteOutcome::kBudgetFull: base::BumpSingleWriter(counters_.budget_refused); break;
    case ObjectWriteOutcome::kFailed: base::BumpSingleWriter(counters_.failed); break;
  }
  for (std::uint64_t token : op.tokens) {
    ready_.push_back(ObjectWriteResult{token, outcome, outcome == ObjectWriteOutcome::kFailed ? op.error : ""});
  }
  op_by_hex_.erase(DigestHex(op.sha256));
  op.busy = false;
  op.tokens.clear();
  op.bytes = {};
  free_ops_.push_back(index);
}

void DiskObjectStore::Report(engine::Snapshot& s) const {
  auto v = [](const std::atomic<std::uint64_t>& n) { return static_cast<double>(n.load(std::memory_order_relaxed)); };
  const engine::Labels disk{{"store", "disk"}};
  s.Counter("attachment_objects_stored", v(counters_.stored), disk, "attachment objects written by the store");
  s.Counter("attachment_stored_bytes", v(counters_.stored_bytes), disk);
  s.Counter("attachment_objects_deduplicated", v(counters_.already_present), {{"store", "disk"}, {"found", "on_disk"}},
            "attachment objects not written because they were already stored");
  s.Counter("attachment_objects_deduplicated", v(counters_.joined_in_flight), {{"store", "disk"}, {"found", "in_flight"}});
  s.Counter("attachment_objects_refused", v(counters_.budget_refused), {{"store", "disk"}, {"reason", "budget_full"}},
            "attachment objects the store did not write");
  s.Counter("attachment_objects_refused", v(counters_.failed), {{"store", "disk"}, {"reason", "write_error"}});
  s.Gauge("attachment_store_used_bytes", v(counters_.used_bytes), disk, "bytes under <data_dir>/attachments");
  s.Gauge("attachment_store_budget_bytes", static_cast<double>(config_.budget_bytes), disk, "0: unlimited");
}

}  // namespace mailrail::storage
