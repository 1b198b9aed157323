#pragma once
// Invariants every parsed Record must hold, whatever the input; the fuzz targets and the fuzz
// regression tests abort (fuzzer) or fail (test) when one breaks.
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "stages/message.h"
#include "stages/parse_defects.h"
#include "stages/record_builder.h"
#include "stages/text_codec.h"

namespace mailrail::fuzz {

// Returns the name of the first broken invariant, or "" when all hold.
inline std::string_view BrokenInvariant(const stages::Message& msg) {
  using stages::IsValidUtf8;
  const stages::Record& r = msg.record;
  if (msg.parse_failed) {
    if (stages::parse_failure::ReasonIndex(msg.parse_error) >= stages::parse_failure::kAll.size()) return "unknown_failure_reason";
    return "";
  }
  if (!IsValidUtf8(r.subject)) return "subject_not_utf8";
  if (!IsValidUtf8(r.body_text)) return "body_text_not_utf8";
  if (!IsValidUtf8(r.body_preview)) return "preview_not_utf8";
  std::size_t chars = 0;
  for (unsigned char c : r.body_preview) chars += (c & 0xC0) != 0x80;
  if (chars > 256) return "preview_too_long";
  if (r.from && !IsValidUtf8(r.from->name)) return "from_name_not_utf8";
  for (const auto& a : r.to) {
    if (!IsValidUtf8(a.name)) return "to_name_not_utf8";
  }
  stages::ScratchBuffer decoded_again;
  for (const auto& a : r.attachments) {
    if (!IsValidUtf8(a.filename)) return "filename_not_utf8";
    // The attachment store decodes Attachment::encoded again and files the bytes under sha256.
    if (a.has_sha256) {
      stages::DecodeAttachment(a, decoded_again);
      if (decoded_again.size() != a.size || stages::Sha256(decoded_again.view()) != a.sha256) {
        return "attachment_decodes_differently_again";
      }
    }
  }
  for (auto d : r.defects) {
    if (stages::defect::DefectIndex(d) >= stages::defect::kAll.size()) return "unknown_defect";
  }
  return "";
}

inline void CheckRecord(const stages::Message& msg) {
  const std::string_view broken = BrokenInvariant(msg);
  if (!broken.empty()) {
    std::fprintf(stderr, "record invariant broken: %.*s\n", static_cast<int>(broken.size()), broken.data());
    std::abort();
  }
}

}  // namespace mailrail::fuzz
