#pragma once
// Helpers both parsers (MIME and Graph JSON) use to fill a Record the same way: address
// normalization, the body_text / body_preview rule and attachment hashing.
// Threading: functions; the arena and scratch passed in belong to the calling parser's message.

#include <cstddef>
#include <string_view>

#include "engine/arena.h"
#include "stages/record.h"
#include "stages/text_codec.h"

namespace mailrail::stages {

inline constexpr std::size_t kPreviewChars = 256;

// `address` with the domain (after the last '@') lower-cased; a view of the input when it already
// is, else a copy in `arena`.
std::string_view LowerCaseDomain(std::string_view address, engine::Arena& arena);

// Lower-cased copy of `text` in `arena`, or `text` itself when it has no upper-case ASCII.
std::string_view LowerCase(std::string_view text, engine::Arena& arena);

// Sets record.body_text and record.body_preview. `plain` (UTF-8) wins when `has_plain`; else
// `html` (UTF-8) is stripped of tags. Views in `plain`/`html` must outlive the record (raw or arena).
void SetBody(Record& record, engine::Arena& arena, ScratchBuffer& scratch, bool has_plain, std::string_view plain,
             bool has_html, std::string_view html);

// Appends an attachment with the size and SHA-256 of `decoded`, which is `encoded` (a view that
// lives as long as the record) decoded with `encoding`.
void AddAttachment(Record& record, std::string_view filename, std::string_view content_type,
                   std::string_view decoded, std::string_view encoded, TransferEncoding encoding);

// Decodes an attachment's bytes again from Attachment::encoded into `out` (cleared first), with
// the same lenient decoders the parser used, so the result hashes to Attachment::sha256.
void DecodeAttachment(const Attachment& attachment, ScratchBuffer& out);

}  // namespace mailrail::stages
