#include "stages/date_time.h"

#include <array>

#include "stages/text_codec.h"

namespace mailrail::stages {

std::int64_t DaysFromCivil(std::int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<std::int64_t>(doe) - 719468;
}

namespace {

bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsAlpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

unsigned DaysInMonth(std::int64_t y, unsigned m) {
  static constexpr std::array<unsigned, 12> kDays = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0)) return 29;
  return kDays[m - 1];
}

int MonthIndex(std::string_view word) {
  static constexpr std::array<std::string_view, 12> kMonths = {"jan", "feb", "mar", "apr", "may", "jun",
                                                                "jul", "aug", "sep", "oct", "nov", "dec"};
  if (word.size() < 3) return 0;
  for (int i = 0; i < 12; ++i) {
    if (StartsWithLower(word, kMonths[static_cast<std::size_t>(i)])) return i + 1;
  }
  return 0;
}

// Offset in minutes east of UTC for an alphabetic zone; false when unknown.
bool ZoneMinutes(std::string_view word, int& minutes) {
  struct Zone {
    std::string_view name;
    int minutes;
  };
  static constexpr Zone kZones[] = {{"ut", 0},      {"utc", 0},     {"gmt", 0},     {"z", 0},
                                    {"est", -300},  {"edt", -240},  {"cst", -360},  {"cdt", -300},
                                    {"mst", -420},  {"mdt", -360},  {"pst", -480},  {"pdt", -420},
                                    {"cet", 60},    {"cest", 120},  {"met", 60},    {"mest", 120},
                                    {"eet", 120},   {"eest", 180},  {"bst", 60},    {"ist", 330},
                                    {"jst", 540},   {"hkt", 480},   {"wet", 0},     {"west", 60}};
  for (const auto& z : kZones) {
    if (EqualsLower(word, z.name)) {
      minutes = z.minutes;
      return true;
    }
  }
  // Military single letters: RFC 5322 4.3 says treat them as -0000 (unknown), i.e. UTC.
  if (word.size() == 1 && IsAlpha(word[0])) {
    minutes = 0;
    return true;
  }
  return false;
}

bool IsDayName(std::string_view word) {
  static constexpr std::array<std::string_view, 7> kDays = {"mon", "tue", "wed", "thu", "fri", "sat", "sun"};
  if (word.size() < 3) return false;
  for (auto d : kDays) {
    if (StartsWithLower(word, d)) return true;
  }
  return false;
}

std::optional<std::int64_t> ToMs(std::int64_t year, unsigned month, unsigned day, unsigned hour, unsigned minute,
                                 unsigned second, int zone_minutes, unsigned millis = 0) {
  if (month < 1 || month > 12 || year < 1 || year > 9999) return std::nullopt;
  if (day < 1 || day > DaysInMonth(year, month)) return std::nullopt;
  if (hour > 23 || minute > 59 || second > 60) return std::nullopt;
  if (second == 60) second = 59;  // leap second
  const std::int64_t days = DaysFromCivil(year, month, day);
  const std::int64_t seconds = days * 86400 + hour * 3600 + minute * 60 + second - zone_minutes * 60;
  return seconds * 1000 + millis;
}

// Reads up to `max` digits at s[i]; returns the count read.
std::size_t ReadNumber(std::string_view s, std::size_t& i, std::size_t max, unsigned& value) {
  std::size_t n = 0;
  value = 0;
  while (i < s.size() && IsDigit(s[i]) && n < max) {
    value = value * 10 + static_cast<unsigned>(s[i] - '0');
    ++i;
    ++n;
  }
  return n;
}

}  // namespace

std::optional<std::int64_t> ParseIso8601Ms(std::string_view s) {
  s = Trim(s);
  std::size_t i = 0;
  unsigned year, month, day, hour = 0, minute = 0, second = 0, millis = 0;
  if (ReadNumber(s, i, 4, year) != 4 || i >= s.size() || s[i++] != '-') return std::nullopt;
  if (ReadNumber(s, i, 2, month) != 2 || i >= s.size() || s[i++] != '-') return std::nullopt;
  if (ReadNumber(s, i, 2, day) != 2) return std::nullopt;
  int zone = 0;
  if (i < s.size() && (s[i] == 'T' || s[i] == 't' || s[i] == ' ')) {
    ++i;
    if (ReadNumber(s, i, 2, hour) != 2 || i >= s.size() || s[i++] != ':') return std::nullopt;
    if (ReadNumber(s, i, 2, minute) != 2) return std::nullopt;
    if (i < s.size() && s[i] == ':') {
      ++i;
      if (ReadNumber(s, i, 2, second) != 2) return std::nullopt;
    }
    if (i < s.size() && (s[i] == '.' || s[i] == ',')) {
      ++i;
      unsigned frac = 0;
      const std::size_t digits = ReadNumber(s, i, 3, frac);
      if (digits == 0) return std::nullopt;
      for (std::size_t d = digits; d < 3; ++d) frac *= 10;
      millis = frac;
      while (i < s.size() && IsDigit(s[i])) ++i;  // finer than milliseconds: truncated
    }
    if (i < s.size() && (s[i] == 'Z' || s[i] == 'z')) {
      ++i;
    } else if (i < s.size() && (s[i] == '+' || s[i] == '-')) {
      const int sign = s[i++] == '-' ? -1 : 1;
      unsigned zh, zm = 0;
      if (ReadNumber(s, i, 2, zh) != 2) return std::nullopt;
      if (i < s.size() && s[i] == ':') ++i;
      ReadNumber(s, i, 2, zm);
      if (zh > 23 || zm > 59) return std::nullopt;
      zone = sign * static_cast<int>(zh * 60 + zm);
    }
  }
  if (i != s.size()) return std::nullopt;
  return ToMs(year, month, day, hour, minute, second, zone, millis);
}

std::optional<std::int64_t> ParseRfc5322DateMs(std::string_view s) {
  s = Trim(s);
  if (s.size() >= 10 && IsDigit(s[0]) && IsDigit(s[1]) && IsDigit(s[2]) && IsDigit(s[3]) && s[4] == '-') {
    return ParseIso8601Ms(s);
  }
  int month = 0;
  std::int64_t year = -1;
  int day = -1;
  int hour = -1, minute = -1, second = 0;
  int zone = 0;
  bool have_zone = false;
  std::size_t i = 0;
  int tokens = 0;
  while (i < s.size()) {
    if (++tokens > 32) return std::nullopt;
    const char c = s[i];
    if (IsSpace(c) || c == ',' || c == '.') {
      ++i;
      continue;
    }
    if (c == '(') {  // comment, possibly nested
      int depth = 0;
      while (i < s.size()) {
        if (s[i] == '\\') {
          i += 2;
          continue;
        }
        if (s[i] == '(') ++depth;
        if (s[i] == ')' && --depth == 0) {
          ++i;
          break;
        }
        ++i;
      }
      continue;
    }
    if (IsAlpha(c)) {
      std::size_t j = i;
      while (j < s.size() && IsAlpha(s[j])) ++j;
      const std::string_view word = s.substr(i, j - i);
      i = j;
      int z;
      if (month == 0 && MonthIndex(word) != 0 && word.size() <= 9) {
        month = MonthIndex(word);
      } else if (IsDayName(word)) {
      } else if (!have_zone && hour >= 0 && ZoneMinutes(word, z)) {
        zone = z;
        have_zone = true;
      } else if (EqualsLower(word, "am") || EqualsLower(word, "pm")) {
        if (hour >= 0 && hour <= 12) {
          if (EqualsLower(word, "pm") && hour < 12) hour += 12;
          if (EqualsLower(word, "am") && hour == 12) hour = 0;
        }
      }
      continue;
    }
    if ((c == '+' || c == '-') && i + 1 < s.size() && IsDigit(s[i + 1])) {
      const int sign = c == '-' ? -1 : 1;
      ++i;
      unsigned v;
      const std::size_t n = ReadNumber(s, i, 4, v);
      if (have_zone && hour < 0) return std::nullopt;
      if (n == 4) {
        if (v / 100 > 23 || v % 100 > 59) return std::nullopt;
        zone = sign * static_cast<int>(v / 100 * 60 + v % 100);
      } else if (n <= 2) {
        unsigned zm = 0;
        if (i < s.size() && s[i] == ':') {
          ++i;
          ReadNumber(s, i, 2, zm);
        }
        if (v > 23 || zm > 59) return std::nullopt;
        zone = sign * static_cast<int>(v * 60 + zm);
      } else {
        return std::nullopt;
      }
      have_zone = true;
      continue;
    }
    if (IsDigit(c)) {
      unsigned v;
      const std::size_t n = ReadNumber(s, i, 9, v);
      if (i < s.size() && s[i] == ':' && hour < 0) {  // time of day
        if (n > 2) return std::nullopt;
        hour = static_cast<int>(v);
        ++i;
        unsigned m;
        if (ReadNumber(s, i, 2, m) == 0) return std::nullopt;
        minute = static_cast<int>(m);
        if (i < s.size() && s[i] == ':') {
          ++i;
          unsigned sec;
          if (ReadNumber(s, i, 2, sec) == 0) return std::nullopt;
          second = static_cast<int>(sec);
        }
        continue;
      }
      if (n >= 3 || (day >= 0 && year < 0) || v > 31) {
        if (year >= 0) return std::nullopt;
        year = v;
        if (n <= 2) year += year < 50 ? 2000 : 1900;
        else if (n == 3) year += 1900;
      } else if (day < 0) {
        day = static_cast<int>(v);
      } else {
        return std::nullopt;
      }
      continue;
    }
    return std::nullopt;  // any other character: not a date we understand
  }
  if (month == 0 || day < 0 || year < 0) return std::nullopt;
  if (hour < 0) {
    hour = 0;
    minute = 0;
  }
  return ToMs(year, static_cast<unsigned>(month), static_cast<unsigned>(day), static_cast<unsigned>(hour),
              static_cast<unsigned>(minute), static_cast<unsigned>(second), zone);
}

}  // namespace mailrail::stages
