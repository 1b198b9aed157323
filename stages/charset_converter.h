#pragma once
// CharsetConverter: converts text in a MIME charset to UTF-8. UTF-8, US-ASCII and ISO-8859-1 are
// handled inline; every other charset goes through iconv, with one iconv_t per charset opened on
// first use and kept (up to kMaxCached charsets) for the life of the converter.
// Threading: one converter per parse thread (iconv_t carries state); not shareable.
// Errors: never fails. An unknown charset is treated as UTF-8 if the bytes are valid UTF-8, else
//   as ISO-8859-1; bytes invalid in their charset become U+FFFD. The status says which happened.

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "stages/text_codec.h"

namespace mailrail::stages {

// ConvertStatus: what a conversion had to guess or replace (mapped to defects by the caller).
struct ConvertStatus {
  bool unknown_charset = false;
  bool invalid_data = false;
};

class CharsetConverter {
 public:
  static constexpr std::size_t kMaxCached = 64;

  CharsetConverter() = default;
  CharsetConverter(const CharsetConverter&) = delete;
  CharsetConverter& operator=(const CharsetConverter&) = delete;
  ~CharsetConverter();

  // Appends `in`, encoded in `charset` (a MIME charset label, any case; "" means US-ASCII), to
  // `out` as UTF-8.
  ConvertStatus AppendUtf8(std::string_view charset, std::string_view in, ScratchBuffer& out);

  // True when text in `charset` that is valid UTF-8 can be used as is (UTF-8 and ASCII labels).
  static bool IsUtf8Compatible(std::string_view charset);
  // True when pure-ASCII text in `charset` is the same text in UTF-8 (false for UTF-16/32, UTF-7
  // and other encodings where ASCII bytes mean something else).
  static bool IsAsciiCompatible(std::string_view charset);

 private:
  // Returns the cached iconv_t (as void*) for the normalized charset, or nullptr if unknown.
  void* Lookup(std::string_view normalized);

  struct Entry {
    std::string charset;
    void* cd;  // iconv_t; nullptr when iconv_open failed (remembered, too)
  };
  std::vector<Entry> cache_;
  char name_[64];
};

}  // namespace mailrail::stages
