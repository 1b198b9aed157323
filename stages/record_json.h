#pragma once
// Serialization of a parsed message as one JSON object: the JSONL line of the file sink and one
// item of a forwarded batch. The layout is the stable contract of ../shared/BRIEF.md ("The
// record"); additions are fine, renames break downstreams.
//
// Output is always valid JSON and valid UTF-8: strings are escaped, and byte sequences that are
// not UTF-8 (a damaged header that escaped decoding) become U+FFFD rather than invalid output.
// Threading: pure functions; the output string is the caller's (reuse it to avoid allocation).

#include <cstdint>
#include <string>
#include <string_view>

#include "stages/message.h"

namespace mailrail::stages {

// Appends the record of `msg` as one JSON object (no trailing newline) to `out`.
void AppendRecordJson(const Message& msg, std::string& out);

// Appends `text` as a JSON string literal (quotes included), escaping as needed.
void AppendJsonString(std::string_view text, std::string& out);

// Appends Unix milliseconds as an RFC 3339 UTC timestamp with milliseconds: 2026-11-23T10:15:02.113Z.
void AppendRfc3339(std::int64_t unix_ms, std::string& out);

std::string_view ToString(FilterAction action);
std::string_view ToString(SourceKind kind);

}  // namespace mailrail::stages
