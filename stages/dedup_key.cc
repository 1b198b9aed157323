#include "stages/dedup_key.h"

#include <xxhash.h>

#include <algorithm>
#include <bit>
#include <cstring>

#include "engine/base/check.h"

namespace mailrail::stages {
namespace {

std::string_view Trim(std::string_view s) {
  constexpr std::string_view kSpace = " \t\r\n";
  const std::size_t begin = s.find_first_not_of(kSpace);
  if (begin == std::string_view::npos) return {};
  return s.substr(begin, s.find_last_not_of(kSpace) - begin + 1);
}

char Lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c; }

Fingerprint Hash128(std::string_view bytes) {
  const XXH128_hash_t h = XXH3_128bits(bytes.data(), bytes.size());
  return Fingerprint{h.low64, h.high64};
}

void AppendU64(std::string& out, std::uint64_t v) {
  char bytes[8];
  std::memcpy(bytes, &v, 8);
  out.append(bytes, 8);
}

}  // namespace

bool NormalizeMessageId(std::string_view id, std::string& out) {
  out.clear();
  id = Trim(id);
  if (id.size() >= 2 && id.front() == '<' && id.back() == '>') id = Trim(id.substr(1, id.size() - 2));
  if (id.empty()) return false;
  out.assign(id);
  const std::size_t at = out.rfind('@');
  if (at != std::string::npos) {
    for (std::size_t i = at + 1; i < out.size(); ++i) out[i] = Lower(out[i]);
  }
  return true;
}

DedupKeyer::DedupKeyer(DedupKeyConfig config) : config_(config) {
  MR_CHECK(std::has_single_bit(config_.recent_ids)) << "recent_ids must be a power of two";
  recent_.resize(config_.recent_ids);
}

std::uint64_t DedupKeyer::HeaderHash(const Record& record) {
  scratch_.clear();
  if (record.from) {
    for (char c : record.from->address) scratch_.push_back(Lower(c));
  }
  scratch_.push_back('\0');
  AppendU64(scratch_, record.date_unix_ms ? static_cast<std::uint64_t>(*record.date_unix_ms) : ~0ULL);
  scratch_.append(Trim(record.subject));
  return XXH3_64bits(scratch_.data(), scratch_.size());
}

Fingerprint DedupKeyer::ContentKey(const Record& record) {
  const std::uint64_t headers = HeaderHash(record);
  const std::uint64_t body = XXH3_64bits(record.body_text.data(), record.body_text.size());
  scratch_.assign("c:");
  AppendU64(scratch_, headers);
  AppendU64(scratch_, body);
  return Hash128(scratch_);
}

bool DedupKeyer::IsBad(std::uint64_t id_hash) const {
  return !bad_ids_.empty() && std::binary_search(bad_ids_.begin(), bad_ids_.end(), id_hash);
}

void DedupKeyer::MarkBad(std::uint64_t id_hash) {
  if (bad_ids_.size() >= config_.max_bad_ids || IsBad(id_hash)) return;
  bad_ids_.insert(std::lower_bound(bad_ids_.begin(), bad_ids_.end(), id_hash), id_hash);
}

DedupKey DedupKeyer::KeyOf(const Message& message) {
  const Record& record = message.record;
  if (record.message_id && NormalizeMessageId(*record.message_id, id_scratch_)) {
    id_scratch_.insert(0, "m:");
    const Fingerprint fp = Hash128(id_scratch_);
    const std::uint64_t id_hash = fp.low ^ fp.high;
    if (!IsBad(id_hash)) {
      const std::uint64_t header_hash = HeaderHash(record);
      RecentId& slot = recent_[id_hash & (recent_.size() - 1)];
      if (slot.id_hash != id_hash || slot.header_hash == header_hash) {
        if (slot.id_hash != id_hash) slot = RecentId{id_hash, header_hash, 0};
        return DedupKey{fp, DedupKeyKind::kMessageId};
      }
      // Same id, different message: this one is keyed by content; repeat offenders go bad.
      ++shared_id_hits_;
      if (++slot.distinct + 1 >= config_.bad_id_threshold) MarkBad(id_hash);
    }
  }
  if (message.kind == InputKind::kGraphJson && record.graph_id && !Trim(*record.graph_id).empty()) {
    scratch_.assign("g:");
    scratch_.append(Trim(*record.graph_id));
    return DedupKey{Hash128(scratch_), DedupKeyKind::kGraphId};
  }
  return DedupKey{ContentKey(record), DedupKeyKind::kContent};
}

void DedupKeyCounts::Report(engine::Snapshot& s) const {
  static constexpr const char* kKinds[] = {"message_id", "graph_id", "content"};
  for (std::size_t k = 0; k < by_kind.size(); ++k) {
    s.Counter("dedup_keys_computed", static_cast<double>(by_kind[k].load(std::memory_order_relaxed)),
              {{"kind", kKinds[k]}}, k == 0 ? "dedup keys by what they were computed from" : "");
  }
}

}  // namespace mailrail::stages
