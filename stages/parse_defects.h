#pragma once
// The one list of parse defect names and parse failure reasons. Both are stable snake_case strings:
// they appear in records (`defects`), in stats counters and in logs, so renaming one is a breaking
// change for downstreams. A Defect in a Record is a view of one of these constants (never a copy),
// so a stage can count defects by index with DefectIndex() without comparing strings.
// Threading: constants only.

#include <array>
#include <cstddef>
#include <string_view>

namespace mailrail::stages::defect {

// Damaged but parseable input (best effort; the record carries the name).
inline constexpr std::string_view kMissingHeaderBodySeparator = "missing_header_body_separator";
inline constexpr std::string_view kMalformedHeaderLine = "malformed_header_line";
inline constexpr std::string_view kTooManyHeaders = "too_many_headers";
inline constexpr std::string_view kDuplicateSingletonHeader = "duplicate_singleton_header";
inline constexpr std::string_view kNonAsciiHeader = "non_ascii_header";
inline constexpr std::string_view kBadEncodedWord = "bad_encoded_word";
inline constexpr std::string_view kUnknownCharset = "unknown_charset";
inline constexpr std::string_view kInvalidCharsetData = "invalid_charset_data";
inline constexpr std::string_view kMalformedAddress = "malformed_address";
inline constexpr std::string_view kMissingFrom = "missing_from";
inline constexpr std::string_view kMissingDate = "missing_date";
inline constexpr std::string_view kUnparseableDate = "unparseable_date";
inline constexpr std::string_view kMissingMessageId = "missing_message_id";
inline constexpr std::string_view kInvalidMessageId = "invalid_message_id";
inline constexpr std::string_view kMalformedContentType = "malformed_content_type";
inline constexpr std::string_view kMissingBoundary = "missing_boundary";
inline constexpr std::string_view kBoundaryNotFound = "boundary_not_found";
inline constexpr std::string_view kMissingClosingBoundary = "missing_closing_boundary";
inline constexpr std::string_view kNestingTooDeep = "nesting_too_deep";
inline constexpr std::string_view kTooManyParts = "too_many_parts";
inline constexpr std::string_view kUnknownTransferEncoding = "unknown_transfer_encoding";
inline constexpr std::string_view kBadBase64 = "bad_base64";
inline constexpr std::string_view kTruncatedBase64 = "truncated_base64";
inline constexpr std::string_view kBadQuotedPrintable = "bad_quoted_printable";
inline constexpr std::string_view kMalformedParameter = "malformed_parameter";
inline constexpr std::string_view kEightBitIn7Bit = "eight_bit_in_7bit";
inline constexpr std::string_view kMalformedJsonField = "malformed_json_field";

inline constexpr std::array kAll = {
    kMissingHeaderBodySeparator, kMalformedHeaderLine, kTooManyHeaders, kDuplicateSingletonHeader,
    kNonAsciiHeader, kBadEncodedWord, kUnknownCharset, kInvalidCharsetData, kMalformedAddress,
    kMissingFrom, kMissingDate, kUnparseableDate, kMissingMessageId, kInvalidMessageId,
    kMalformedContentType, kMissingBoundary, kBoundaryNotFound, kMissingClosingBoundary,
    kNestingTooDeep, kTooManyParts, kUnknownTransferEncoding, kBadBase64, kTruncatedBase64,
    kBadQuotedPrintable, kMalformedParameter, kEightBitIn7Bit, kMalformedJsonField,
};

// Index of `d` in kAll when `d` is one of the constants (pointer identity), else kAll.size().
inline std::size_t DefectIndex(std::string_view d) {
  for (std::size_t i = 0; i < kAll.size(); ++i) {
    if (kAll[i].data() == d.data()) return i;
  }
  for (std::size_t i = 0; i < kAll.size(); ++i) {
    if (kAll[i] == d) return i;
  }
  return kAll.size();
}

}  // namespace mailrail::stages::defect

namespace mailrail::stages::parse_failure {

// Input that cannot be parsed at all (Message::parse_failed; the message goes to quarantine).
inline constexpr std::string_view kEmpty = "empty_message";
inline constexpr std::string_view kNoHeaders = "no_headers";
inline constexpr std::string_view kTooLarge = "too_large";
inline constexpr std::string_view kInvalidJson = "invalid_json";
inline constexpr std::string_view kNotAJsonObject = "not_a_json_object";
inline constexpr std::string_view kGraphNotificationWithoutPoller = "graph_notification_without_poller";

inline constexpr std::array kAll = {kEmpty, kNoHeaders, kTooLarge, kInvalidJson, kNotAJsonObject,
                                    kGraphNotificationWithoutPoller};

inline std::size_t ReasonIndex(std::string_view r) {
  for (std::size_t i = 0; i < kAll.size(); ++i) {
    if (kAll[i] == r) return i;
  }
  return kAll.size();
}

}  // namespace mailrail::stages::parse_failure
