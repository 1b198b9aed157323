#include "stages/text_codec.h"

#include <openssl/evp.h>

#include <algorithm>
#include <cstring>

#include "engine/base/check.h"

namespace mailrail::stages {

void ScratchBuffer::Grow(std::size_t at_least) {
  std::size_t cap = std::max<std::size_t>(capacity_ * 2, 4096);
  while (cap < at_least) cap *= 2;
  auto fresh = std::make_unique_for_overwrite<char[]>(cap);
  if (size_ > 0) std::memcpy(fresh.get(), data_.get(), size_);
  data_ = std::move(fresh);
  capacity_ = cap;
}

namespace {

constexpr std::uint8_t kB64Skip = 64;     // whitespace
constexpr std::uint8_t kB64Pad = 65;      // '='
constexpr std::uint8_t kB64Invalid = 66;  // anything else

constexpr std::array<std::uint8_t, 256> MakeBase64Table() {
  std::array<std::uint8_t, 256> t{};
  for (auto& v : t) v = kB64Invalid;
  const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  for (int i = 0; i < 64; ++i) t[static_cast<unsigned char>(alphabet[i])] = static_cast<std::uint8_t>(i);
  // URL-safe alphabet, seen in the wild.
  t['-'] = 62;
  t['_'] = 63;
  t[' '] = t['\t'] = t['\r'] = t['\n'] = t['\f'] = t['\v'] = kB64Skip;
  t['='] = kB64Pad;
  return t;
}
constexpr auto kBase64 = MakeBase64Table();

constexpr std::array<std::int8_t, 256> MakeHexTable() {
  std::array<std::int8_t, 256> t{};
  for (auto& v : t) v = -1;
  for (int i = 0; i < 10; ++i) t['0' + i] = static_cast<std::int8_t>(i);
  for (int i = 0; i < 6; ++i) {
    t['A' + i] = static_cast<std::int8_t>(10 + i);
    t['a' + i] = static_cast<std::int8_t>(10 + i);
  }
  return t;
}
constexpr auto kHex = MakeHexTable();

}  // namespace

DecodeStatus DecodeBase64(std::string_view in, ScratchBuffer& out) {
  DecodeStatus status;
  auto* dst = reinterpret_cast<std::uint8_t*>(out.Extend(Base64MaxDecoded(in.size())));
  std::uint8_t* const begin = dst;
  const auto* p = reinterpret_cast<const std::uint8_t*>(in.data());
  const auto* const end = p + in.size();
  std::uint32_t acc = 0;
  int bits = 0;  // number of sextets in acc (0..3)
  bool padded = false;
  while (p < end) {
    // Fast path: four alphabet characters at a sextet boundary.
    if (bits == 0) {
      while (end - p >= 4) {
        const std::uint32_t a = kBase64[p[0]], b = kBase64[p[1]], c = kBase64[p[2]], d = kBase64[p[3]];
        if ((a | b | c | d) >= 64) break;
        const std::uint32_t v = (a << 18) | (b << 12) | (c << 6) | d;
        dst[0] = static_cast<std::uint8_t>(v >> 16);
        dst[1] = static_cast<std::uint8_t>(v >> 8);
        dst[2] = static_cast<std::uint8_t>(v);
        dst += 3;
        p += 4;
      }
      if (p >= end) break;
    }
    const std::uint8_t v = kBase64[*p++];
    if (v < 64) {
      acc = (acc << 6) | v;
      if (++bits == 4) {
        dst[0] = static_cast<std::uint8_t>(acc >> 16);
        dst[1] = static_cast<std::uint8_t>(acc >> 8);
        dst[2] = static_cast<std::uint8_t>(acc);
        dst += 3;
        acc = 0;
        bits = 0;
      }
    } else if (v == kB64Skip) {
      continue;
    } else if (v == kB64Pad) {
      padded = true;
      // Padding ends the data; anything but more padding and whitespace afterwards is invalid.
      while (p < end && (kBase64[*p] == kB64Pad || kBase64[*p] == kB64Skip)) ++p;
      if (p < end) status.invalid = true;
      break;
    } else {
      status.invalid = true;
    }
  }
  // A dangling 1-3 characters without '=' padding: the message was cut (or the encoder omitted
  // padding). Whole bytes in the tail are kept; 6 bits cannot form one.
  if (bits != 0 && !padded) status.truncated = true;
  if (bits == 2) {
    *dst++ = static_cast<std::uint8_t>(acc >> 4);
  } else if (bits == 3) {
    *dst++ = static_cast<std::uint8_t>(acc >> 10);
    *dst++ = static_cast<std::uint8_t>(acc >> 2);
  }
  out.Commit(static_cast<std::size_t>(dst - begin));
  return status;
}

DecodeStatus DecodeQuotedPrintable(std::string_view in, ScratchBuffer& out, bool header_mode) {
  DecodeStatus status;
  char* dst = out.Extend(in.size());
  char* const begin = dst;
  const char* p = in.data();
  const char* const end = p + in.size();
  while (p < end) {
    const void* eq = std::memchr(p, '=', static_cast<std::size_t>(end - p));
    const char* stop = eq != nullptr ? static_cast<const char*>(eq) : end;
    const std::size_t run = static_cast<std::size_t>(stop - p);
    std::memcpy(dst, p, run);
    if (header_mode) {
      for (std::size_t i = 0; i < run; ++i) {
        if (dst[i] == '_') dst[i] = ' ';
      }
    }
    dst += run;
    p = stop;
    if (p >= end) break;
    ++p;  // '='
    if (end - p >= 2 && kHex[static_cast<unsigned char>(p[0])] >= 0 &&
        kHex[static_cast<unsigned char>(p[1])] >= 0) {
      *dst++ = static_cast<char>(kHex[static_cast<unsigned char>(p[0])] * 16 +
                                 kHex[static_cast<unsigned char>(p[1])]);
      p += 2;
      continue;
    }
    // Soft line break: '=' then optional trailing whitespace then (CR)LF.
    const char* q = p;
    while (q < end && IsWsp(*q)) ++q;
    if (q < end && *q == '\n') {
      p = q + 1;
      continue;
    }
    if (q + 1 < end && q[0] == '\r' && q[1] == '\n') {
      p = q + 2;
      continue;
    }
    if (q == end) {
      p = end;  // '=' at the very end: a soft break without a line end
      continue;
    }
    if (end - p < 2) status.truncated = true; else status.invalid = true;
    *dst++ = '=';
  }
  out.Commit(static_cast<std::size_t>(dst - begin));
  return status;
}

bool IsAscii(std::string_view s) {
  const char* p = s.data();
  std::size_t n = s.size();
  while (n >= 8) {
    std::uint64_t w;
    std::memcpy(&w, p, 8);
    if (w & 0x8080808080808080ull) return false;
    p += 8;
    n -= 8;
  }
  while (n-- > 0) {
    if (static_cast<unsigned char>(*p++) >= 0x80) return false;
  }
  return true;
}

namespace {

// Length of the valid UTF-8 sequence starting at p (1..4), or 0 when invalid/truncated.
std::size_t Utf8SequenceLength(const unsigned char* p, const unsigned char* end) {
  const unsigned char c = p[0];
  if (c < 0x80) return 1;
  auto cont = [&](std::ptrdiff_t i) { return p + i < end && (p[i] & 0xC0) == 0x80; };
  if (c >= 0xC2 && c <= 0xDF) return cont(1) ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    if (!cont(1) || !cont(2)) return 0;
    if (c == 0xE0 && p[1] < 0xA0) return 0;  // overlong
    if (c == 0xED && p[1] >= 0xA0) return 0;  // surrogate
    return 3;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (!cont(1) || !cont(2) || !cont(3)) return 0;
    if (c == 0xF0 && p[1] < 0x90) return 0;
    if (c == 0xF4 && p[1] >= 0x90) return 0;
    return 4;
  }
  return 0;
}

}  // namespace

bool IsValidUtf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const auto* end = p + s.size();
  while (p < end) {
    if (end - p >= 8) {
      std::uint64_t w;
      std::memcpy(&w, p, 8);
      if ((w & 0x8080808080808080ull) == 0) {
        p += 8;
        continue;
      }
    }
    const std::size_t n = Utf8SequenceLength(p, end);
    if (n == 0) return false;
    p += n;
  }
  return true;
}

void AppendRepairedUtf8(std::string_view in, ScratchBuffer& out) {
  const auto* p = reinterpret_cast<const unsigned char*>(in.data());
  const auto* end = p + in.size();
  // Worst case: every byte becomes the 3-byte replacement character.
  char* dst = out.Extend(in.size() * 3);
  char* const begin = dst;
  while (p < end) {
    if (end - p >= 8) {
      std::uint64_t w;
      std::memcpy(&w, p, 8);
      if ((w & 0x8080808080808080ull) == 0) {
        std::memcpy(dst, p, 8);
        dst += 8;
        p += 8;
        continue;
      }
    }
    const std::size_t n = Utf8SequenceLength(p, end);
    if (n == 0) {
      *dst++ = '\xEF';
      *dst++ = '\xBF';
      *dst++ = '\xBD';
      ++p;
    } else {
      std::memcpy(dst, p, n);
      dst += n;
      p += n;
    }
  }
  out.Commit(static_cast<std::size_t>(dst - begin));
}

void AppendLatin1AsUtf8(std::string_view in, ScratchBuffer& out) {
  if (IsAscii(in)) {
    out.Append(in);
    return;
  }
  char* dst = out.Extend(in.size() * 2);
  char* const begin = dst;
  for (unsigned char c : in) {
    if (c < 0x80) {
      *dst++ = static_cast<char>(c);
    } else {
      *dst++ = static_cast<char>(0xC0 | (c >> 6));
      *dst++ = static_cast<char>(0x80 | (c & 0x3F));
    }
  }
  out.Commit(static_cast<std::size_t>(dst - begin));
}

namespace {

void AppendCodePoint(std::uint32_t cp, ScratchBuffer& out) {
  if (cp == 0 || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) cp = 0xFFFD;
  if (cp < 0x80) {
    out.Push(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.Push(static_cast<char>(0xC0 | (cp >> 6)));
    out.Push(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.Push(static_cast<char>(0xE0 | (cp >> 12)));
    out.Push(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.Push(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.Push(static_cast<char>(0xF0 | (cp >> 18)));
    out.Push(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.Push(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.Push(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// Decodes the entity starting at html[i] == '&'; returns the bytes consumed (0: not an entity).
std::size_t AppendEntity(std::string_view html, std::size_t i, ScratchBuffer& out) {
  // Look only a few bytes ahead: a document full of '&' without ';' must stay linear.
  const std::size_t rel = html.substr(i + 1, 12).find(';');
  if (rel == std::string_view::npos) return 0;
  const std::size_t semi = i + 1 + rel;
  const std::string_view name = html.substr(i + 1, semi - i - 1);
  if (name.size() >= 2 && name[0] == '#') {
    std::uint32_t cp = 0;
    const bool hex = name[1] == 'x' || name[1] == 'X';
    for (std::size_t k = hex ? 2 : 1; k < name.size(); ++k) {
      const int d = kHex[static_cast<unsigned char>(name[k])];
      if (d < 0 || (!hex && d > 9)) return 0;
      cp = cp * (hex ? 16 : 10) + static_cast<std::uint32_t>(d);
      if (cp > 0x10FFFF) return 0;
    }
    AppendCodePoint(cp, out);
    return semi - i + 1;
  }
  struct Named {
    std::string_view name;
    std::uint32_t cp;
  };
  static constexpr Named kNamed[] = {{"amp", '&'},    {"lt", '<'},      {"gt", '>'},     {"quot", '"'},
                                     {"apos", '\''},  {"nbsp", 0xA0},   {"copy", 0xA9},  {"reg", 0xAE},
                                     {"euro", 0x20AC}, {"ndash", 0x2013}, {"mdash", 0x2014}, {"hellip", 0x2026}};
  for (const auto& n : kNamed) {
    if (name == n.name) {
      AppendCodePoint(n.cp, out);
      return semi - i + 1;
    }
  }
  return 0;
}

// Case-insensitive search for `lower` (lower-case ASCII, starting with '<') in `s` from `from`.
std::size_t FindLower(std::string_view s, std::string_view lower, std::size_t from) {
  while (from < s.size()) {
    const std::size_t lt = s.find('<', from);
    if (lt == std::string_view::npos) return std::string_view::npos;
    if (StartsWithLower(s.substr(lt), lower)) return lt;
    from = lt + 1;
  }
  return std::string_view::npos;
}

enum class Tag { kOther, kBreak, kScript, kStyle };

// Classifies the tag whose name starts at html[i] (after '<' or '</').
Tag ClassifyTag(std::string_view html, std::size_t i) {
  char name[8];
  std::size_t n = 0;
  while (i < html.size() && n < sizeof(name)) {
    char c = html[i];
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))) break;
    name[n++] = c;
    ++i;
  }
  const std::string_view tag(name, n);
  switch (n) {
    case 1:
      return tag == "p" ? Tag::kBreak : Tag::kOther;
    case 2:
      return tag == "br" || tag == "tr" || tag == "li" || tag == "h1" || tag == "h2" || tag == "h3" ? Tag::kBreak
                                                                                                    : Tag::kOther;
    case 3:
      return tag == "div" ? Tag::kBreak : Tag::kOther;
    case 5:
      return tag == "style" ? Tag::kStyle : Tag::kOther;
    case 6:
      return tag == "script" ? Tag::kScript : Tag::kOther;
    default:
      return Tag::kOther;
  }
}

}  // namespace

void AppendHtmlText(std::string_view html, ScratchBuffer& out) {
  std::size_t i = 0;
  const std::size_t n = html.size();
  while (i < n) {
    const char c = html[i];
    if (c == '&') {
      const std::size_t used = AppendEntity(html, i, out);
      if (used > 0) {
        i += used;
        continue;
      }
      out.Push('&');
      ++i;
      continue;
    }
    if (c != '<') {
      const void* lt = std::memchr(html.data() + i, '<', n - i);
      std::size_t j = lt == nullptr ? n : static_cast<std::size_t>(static_cast<const char*>(lt) - html.data());
      const void* amp = std::memchr(html.data() + i, '&', j - i);
      if (amp != nullptr) j = static_cast<std::size_t>(static_cast<const char*>(amp) - html.data());
      out.Append(html.substr(i, j - i));
      i = j;
      continue;
    }
    // A tag, comment or declaration.
    if (html.substr(i, 4) == "<!--") {
      const std::size_t close = html.find("-->", i + 4);
      i = close == std::string_view::npos ? n : close + 3;
      continue;
    }
    std::size_t name_begin = i + 1;
    const bool closing = name_begin < n && html[name_begin] == '/';
    if (closing) ++name_begin;
    const Tag tag = ClassifyTag(html, name_begin);
    if (tag == Tag::kBreak) out.Push('\n');
    const void* gt = i + 1 < n ? std::memchr(html.data() + i + 1, '>', n - i - 1) : nullptr;
    i = gt == nullptr ? n : static_cast<std::size_t>(static_cast<const char*>(gt) - html.data()) + 1;
    if (!closing && (tag == Tag::kScript || tag == Tag::kStyle)) {
      const std::size_t close = FindLower(html, tag == Tag::kScript ? "</script" : "</style", i);
      if (close == std::string_view::npos) {
        i = n;
      } else {
        const std::size_t end_gt = html.find('>', close);
        i = end_gt == std::string_view::npos ? n : end_gt + 1;
      }
    }
  }
}

void AppendPreview(std::string_view text, std::size_t max_chars, ScratchBuffer& out) {
  std::size_t chars = 0;
  bool pending_space = false;
  std::size_t i = 0;
  const std::size_t n = text.size();
  while (i < n && chars < max_chars) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v') {
      pending_space = true;
      ++i;
      continue;
    }
    // U+00A0 (no-break space) counts as whitespace too.
    if (c == 0xC2 && i + 1 < n && static_cast<unsigned char>(text[i + 1]) == 0xA0) {
      pending_space = true;
      i += 2;
      continue;
    }
    if (pending_space && out.size() > 0 && chars > 0) {
      out.Push(' ');
      ++chars;
      if (chars >= max_chars) break;
    }
    pending_space = false;
    if (c < 0x80) {
      // A run of printable ASCII: copy it in one go.
      std::size_t j = i + 1;
      const std::size_t limit = std::min(n, i + (max_chars - chars));
      // Eight bytes at a time while none is <= ' ' or >= 0x80 (SWAR "has byte less than").
      while (limit - j >= 8) {
        std::uint64_t w;
        std::memcpy(&w, text.data() + j, 8);
        const std::uint64_t below = (w - 0x2121212121212121ull) & ~w & 0x8080808080808080ull;
        if ((below | (w & 0x8080808080808080ull)) != 0) break;
        j += 8;
      }
      while (j < limit) {
        const unsigned char d = static_cast<unsigned char>(text[j]);
        if (d >= 0x80 || d <= ' ') break;
        ++j;
      }
      out.Append(text.substr(i, j - i));
      chars += j - i;
      i = j;
      continue;
    }
    std::size_t len = 1;
    if (c >= 0xF0) len = 4; else if (c >= 0xE0) len = 3; else if (c >= 0xC0) len = 2;
    len = std::min(len, n - i);
    out.Append(text.substr(i, len));
    ++chars;
    i += len;
  }
}

namespace {

// One digest context per thread, reused: EVP_MD_CTX_new and the algorithm fetch happen once.
struct Sha256Context {
  Sha256Context() : ctx(EVP_MD_CTX_new()), md(EVP_MD_fetch(nullptr, "SHA256", nullptr)) {
    MR_CHECK(ctx != nullptr && md != nullptr) << "OpenSSL SHA-256 unavailable";
  }
  ~Sha256Context() {
    EVP_MD_free(md);
    EVP_MD_CTX_free(ctx);
  }
  EVP_MD_CTX* ctx;
  EVP_MD* md;
};

}  // namespace

Sha256Digest Sha256(std::string_view bytes) {
  thread_local Sha256Context context;
  Sha256Digest digest{};
  unsigned int len = 0;
  const bool ok = EVP_DigestInit_ex(context.ctx, context.md, nullptr) == 1 &&
                  EVP_DigestUpdate(context.ctx, bytes.data(), bytes.size()) == 1 &&
                  EVP_DigestFinal_ex(context.ctx, digest.data(), &len) == 1;
  MR_CHECK(ok && len == digest.size()) << "SHA-256 failed";
  return digest;
}

}  // namespace mailrail::stages
