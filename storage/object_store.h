#pragma once
// ObjectStore: where the attachment stage (stages/attachment_stage.h) puts decoded attachment
// bytes, addressed by their SHA-256. Two implementations: storage::DiskObjectStore (files under
// <data_dir>/attachments, io_uring) and net::S3ObjectStore (an S3-compatible bucket).
//
// Protocol: TrySubmit hands over one object; the store answers later, through Poll, with exactly
//   one ObjectWriteResult carrying the same token. Content addressing makes every write
//   idempotent: an object that already exists is not written again (kAlreadyPresent), and a
//   second submission of an object still in flight joins the first one.
// Durability: kStored and kAlreadyPresent mean the object is durable (disk: file and directory
//   fsync'ed; S3: the service answered 200 to the PUT / CompleteMultipartUpload or to a HEAD), so
//   a record that names it may be made durable downstream.
// Ownership: the bytes a submission points to belong to the caller and must stay valid and
//   unchanged until Poll reported its token.
// Threading: every method on one thread (the attachment stage's). A store may complete
//   operations on a thread of its own; it then notifies the waiter given to set_completion_waiter
//   after publishing results. Blocking: never (TrySubmit returns false when the store is full).

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "engine/stats.h"
#include "engine/waiter.h"

namespace mailrail::storage {

using ObjectDigest = std::array<std::uint8_t, 32>;

// Lower-case hex of a digest (64 characters).
std::string DigestHex(const ObjectDigest& digest);

struct ObjectWrite {
  std::uint64_t token = 0;  // chosen by the caller, returned in the result
  ObjectDigest sha256{};    // of `bytes`; names the object
  std::string_view bytes;   // owned by the caller until the result is polled
};

enum class ObjectWriteOutcome : std::uint8_t {
  kStored,          // written now and durable
  kAlreadyPresent,  // existed already (an earlier message, an earlier run): not written again
  kBudgetFull,      // refused: the store's byte budget would be exceeded
  kFailed,          // I/O or service error after the store's retries; `error` says which
};

struct ObjectWriteResult {
  std::uint64_t token = 0;
  ObjectWriteOutcome outcome = ObjectWriteOutcome::kFailed;
  std::string error;  // kFailed: a short reason for the log (never a secret)
};

class ObjectStore {
 public:
  virtual ~ObjectStore() = default;
  // The reference a record carries for a stored object ("sha256:<hex>", "s3://bucket/key").
  virtual std::string Reference(const ObjectDigest& sha256) const = 0;
  // False when the store holds as many operations as it may; try again after Poll.
  virtual bool TrySubmit(const ObjectWrite& write) = 0;
  // Appends finished operations to `out`; never blocks.
  virtual void Poll(std::vector<ObjectWriteResult>& out) = 0;
  // Operations submitted and not yet polled.
  virtual std::size_t in_flight() const = 0;
  // Stores that complete on another thread notify `waiter` after publishing results. Once a call
  // returns, the store no longer touches the waiter set before (null: notify nobody), so the
  // caller may then let the waiter's thread end and free it.
  virtual void set_completion_waiter(engine::Waiter* /*waiter*/) {}
  // True when results only arrive by polling (the caller must poll again soon while in_flight).
  virtual bool needs_polling() const = 0;
  virtual void Report(engine::Snapshot& snapshot) const = 0;
};

}  // namespace mailrail::storage
