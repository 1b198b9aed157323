#pragma once
// DedupKeyer: computes a message's dedup key, the 128-bit XXH3 fingerprint the dedup set stores.
//
// Which key:
//   1. the normalized Message-ID (RFC 5322 and Graph `internetMessageId` alike, so the two copies
//      of one message meet): surrounding whitespace and one pair of angle brackets removed, the
//      part after the last '@' lower-cased (domains are case-insensitive, local parts are not);
//   2. for Graph messages without one, the Graph `id`;
//   3. otherwise, or when the Message-ID is known-bad, a content fingerprint of the canonical From
//      address (lower-cased), the Date (Unix ms), the Subject (trimmed) and an XXH3 hash of the
//      body text.
//   Each kind is hashed with its own prefix, so a Message-ID never collides with a Graph id.
// Known-bad Message-IDs: empty ones, and ids seen on messages that differ in From/Date/Subject.
//   Detection is cheap and bounded: a direct-mapped cache of recent ids (id hash -> header hash)
//   notices when one id arrives with different headers; such a message is keyed by content, and
//   an id that did so `bad_id_threshold` times joins a bounded bad-id list so that every later
//   message carrying it is keyed by content too. The cache and list are not persisted: after a
//   restart an id has to prove bad again (a re-fed message keyed differently is at worst
//   forwarded twice, which at-least-once delivery allows).
// Threading: one owner thread (the dedup stage). Allocation: only when the bad-id list grows.

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "engine/base/counters.h"
#include "engine/stats.h"
#include "stages/message.h"
#include "stages/record.h"

namespace mailrail::stages {

struct DedupKeyConfig {
  std::uint32_t bad_id_threshold = 2;  // distinct header sets sharing one id before it is bad
  std::size_t recent_ids = 1 << 16;    // direct-mapped cache slots (power of two), 24 B each
  std::size_t max_bad_ids = 1 << 16;   // bound on the bad-id list
};

enum class DedupKeyKind : std::uint8_t { kMessageId, kGraphId, kContent };

struct DedupKey {
  Fingerprint fingerprint;
  DedupKeyKind kind = DedupKeyKind::kMessageId;
};

// DedupKeyCounts: keys computed, by kind, reported as dedup_keys_computed{kind}. Threading: one
// writer (the thread that keys messages, BumpSingleWriter), readers use relaxed loads.
struct DedupKeyCounts {
  std::array<std::atomic<std::uint64_t>, 3> by_kind{};  // indexed by DedupKeyKind

  void Count(DedupKeyKind kind) { base::BumpSingleWriter(by_kind[static_cast<std::size_t>(kind)]); }
  void Report(engine::Snapshot& snapshot) const;
};

// Normalizes a Message-ID into `out` (cleared first); returns false when nothing is left.
bool NormalizeMessageId(std::string_view id, std::string& out);

class DedupKeyer {
 public:
  explicit DedupKeyer(DedupKeyConfig config = {});

  DedupKey KeyOf(const Message& message);
  // The content fingerprint alone (From, Date, Subject, body hash).
  Fingerprint ContentKey(const Record& record);

  std::size_t bad_ids() const { return bad_ids_.size(); }
  std::uint64_t shared_id_hits() const { return shared_id_hits_; }

 private:
  struct RecentId {
    std::uint64_t id_hash = 0;
    std::uint64_t header_hash = 0;
    std::uint32_t distinct = 0;
  };
  std::uint64_t HeaderHash(const Record& record);
  bool IsBad(std::uint64_t id_hash) const;
  void MarkBad(std::uint64_t id_hash);

  DedupKeyConfig config_;
  std::vector<RecentId> recent_;
  std::vector<std::uint64_t> bad_ids_;  // sorted
  std::string scratch_;
  std::string id_scratch_;
  std::uint64_t shared_id_hits_ = 0;
};

}  // namespace mailrail::stages
