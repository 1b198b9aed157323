#pragma once
// Date parsing for the parse stage: RFC 5322 date-time including the obsolete forms (two- and
// three-digit years, alphabetic and military zones, missing seconds, comments, asctime order) and
// ISO 8601 / RFC 3339 (Graph's receivedDateTime). Results are Unix milliseconds in UTC.
// Threading: pure functions.

#include <cstdint>
#include <optional>
#include <string_view>

namespace mailrail::stages {

// Days since 1970-01-01 of a proleptic Gregorian date (month 1..12).
std::int64_t DaysFromCivil(std::int64_t year, unsigned month, unsigned day);

std::optional<std::int64_t> ParseRfc5322DateMs(std::string_view value);
std::optional<std::int64_t> ParseIso8601Ms(std::string_view value);

}  // namespace mailrail::stages
