#include "stages/charset_converter.h"

#include <iconv.h>

#include <cerrno>

namespace mailrail::stages {
namespace {

const iconv_t kInvalidCd = reinterpret_cast<iconv_t>(-1);

// Lower-cases, strips quotes and an RFC 2231 "*language" suffix; returns "" when too long.
std::string_view Normalize(std::string_view charset, char (&buffer)[64]) {
  charset = Trim(charset);
  if (charset.size() >= 2 && charset.front() == '"' && charset.back() == '"') {
    charset = Trim(charset.substr(1, charset.size() - 2));
  }
  const std::size_t star = charset.find('*');
  if (star != std::string_view::npos) charset = charset.substr(0, star);
  if (charset.size() >= sizeof(buffer)) return {};
  for (std::size_t i = 0; i < charset.size(); ++i) {
    char c = charset[i];
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
    buffer[i] = c;
  }
  return {buffer, charset.size()};
}

bool IsUtf8Label(std::string_view n) {
  return n.empty() || n == "utf-8" || n == "utf8" || n == "us-ascii" || n == "ascii" || n == "us_ascii" ||
         n == "ansi_x3.4-1968" || n == "7bit" || n == "8bit" || n == "x-unknown" || n == "unknown" ||
         n == "default";
}

bool IsLatin1Label(std::string_view n) {
  return n == "iso-8859-1" || n == "iso8859-1" || n == "latin1" || n == "iso_8859-1" || n == "l1";
}

// Charset labels seen in mail that glibc iconv does not know under that name.
std::string_view IconvName(std::string_view n) {
  if (n == "ks_c_5601-1987" || n == "ks_c_5601" || n == "euc-kr") return "CP949";
  if (n == "gb2312" || n == "gbk" || n == "x-gbk") return "GB18030";
  if (n == "iso-8859-8-i") return "ISO-8859-8";
  if (n == "unicode-1-1-utf-7") return "UTF-7";
  if (n == "x-mac-roman" || n == "macintosh") return "MACINTOSH";
  if (n == "cp-850") return "CP850";
  return n;
}

}  // namespace

CharsetConverter::~CharsetConverter() {
  for (auto& e : cache_) {
    if (e.cd != nullptr) iconv_close(static_cast<iconv_t>(e.cd));
  }
}

bool CharsetConverter::IsUtf8Compatible(std::string_view charset) {
  char buffer[64];
  return IsUtf8Label(Normalize(charset, buffer));
}

bool CharsetConverter::IsAsciiCompatible(std::string_view charset) {
  char buffer[64];
  const std::string_view n = Normalize(charset, buffer);
  return !(n.find("utf-16") != std::string_view::npos || n.find("utf-32") != std::string_view::npos ||
           n.find("utf-7") != std::string_view::npos || n.find("ucs") != std::string_view::npos ||
           n.find("unicode") != std::string_view::npos || n.find("2022") != std::string_view::npos ||
           n.find("hz-gb") != std::string_view::npos);
}

void* CharsetConverter::Lookup(std::string_view normalized) {
  for (const auto& e : cache_) {
    if (e.charset == normalized) return e.cd;
  }
  std::string name(IconvName(normalized));
  iconv_t cd = iconv_open("UTF-8", name.c_str());
  void* handle = cd == kInvalidCd ? nullptr : static_cast<void*>(cd);
  if (cache_.size() >= kMaxCached) {
    // Hostile input can name unbounded charsets; evict the oldest.
    if (cache_.front().cd != nullptr) iconv_close(static_cast<iconv_t>(cache_.front().cd));
    cache_.erase(cache_.begin());
  }
  cache_.push_back(Entry{std::string(normalized), handle});
  return handle;
}

ConvertStatus CharsetConverter::AppendUtf8(std::string_view charset, std::string_view in, ScratchBuffer& out) {
  ConvertStatus status;
  const std::string_view n = Normalize(charset, name_);
  if (IsUtf8Label(n)) {
    if (IsValidUtf8(in)) {
      out.Append(in);
    } else {
      status.invalid_data = true;
      AppendRepairedUtf8(in, out);
    }
    return status;
  }
  if (IsLatin1Label(n) || (IsAscii(in) && IsAsciiCompatible(charset))) {
    AppendLatin1AsUtf8(in, out);
    return status;
  }
  void* handle = n.empty() ? nullptr : Lookup(n);
  if (handle == nullptr) {
    status.unknown_charset = true;
    if (IsValidUtf8(in)) out.Append(in); else AppendLatin1AsUtf8(in, out);
    return status;
  }
  auto cd = static_cast<iconv_t>(handle);
  iconv(cd, nullptr, nullptr, nullptr, nullptr);  // reset shift state
  char* src = const_cast<char*>(in.data());
  std::size_t src_left = in.size();
  while (src_left > 0) {
    const std::size_t room = src_left * 4 + 16;
    char* dst = out.Extend(room);
    char* dst_start = dst;
    std::size_t dst_left = room;
    const std::size_t rc = iconv(cd, &src, &src_left, &dst, &dst_left);
    out.Commit(static_cast<std::size_t>(dst - dst_start));
    if (rc != static_cast<std::size_t>(-1)) break;
    if (errno == E2BIG) continue;
    // EILSEQ (invalid byte) or EINVAL (truncated sequence): replace one byte and go on.
    status.invalid_data = true;
    out.Append("\xEF\xBF\xBD");
    ++src;
    --src_left;
    iconv(cd, nullptr, nullptr, nullptr, nullptr);
  }
  // Flush any pending shift sequence (stateful encodings such as ISO-2022-JP).
  char* dst = out.Extend(16);
  char* dst_start = dst;
  std::size_t dst_left = 16;
  iconv(cd, nullptr, nullptr, &dst, &dst_left);
  out.Commit(static_cast<std::size_t>(dst - dst_start));
  return status;
}

}  // namespace mailrail::stages
