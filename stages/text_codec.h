#pragma once
// Byte-level codecs shared by the MIME and Graph JSON parsers: base64 and quoted-printable
// decoding, UTF-8 validation and repair, HTML tag stripping, body previews and SHA-256.
// Every function is pure (no global state) and bounded by its input; none reads past the
// string_view it is given. Threading: callable from any thread.

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string_view>

namespace mailrail::stages {

// ScratchBuffer: a growable byte buffer whose capacity is kept across uses, for decoded bytes
// that are hashed or converted and then dropped (no allocation in steady state).
// Threading: owned by one parser.
class ScratchBuffer {
 public:
  // Makes room for `extra` more bytes after size() and returns where they go.
  char* Extend(std::size_t extra) {
    if (size_ + extra > capacity_) Grow(size_ + extra);
    return data_.get() + size_;
  }
  void Commit(std::size_t bytes) { size_ += bytes; }
  void Append(std::string_view s) {
    if (s.empty()) return;
    std::memcpy(Extend(s.size()), s.data(), s.size());
    size_ += s.size();
  }
  void Push(char c) {
    *Extend(1) = c;
    ++size_;
  }
  void Clear() { size_ = 0; }
  void Resize(std::size_t n) { size_ = n; }  // n <= size() + last Extend
  std::size_t size() const { return size_; }
  char* data() { return data_.get(); }
  std::string_view view() const { return {data_.get(), size_}; }

 private:
  void Grow(std::size_t at_least);
  std::unique_ptr<char[]> data_;
  std::size_t size_ = 0;
  std::size_t capacity_ = 0;
};

// DecodeStatus: what a lenient decoder skipped or could not finish (the caller maps it to defects).
struct DecodeStatus {
  bool invalid = false;    // characters outside the encoding's alphabet (skipped)
  bool truncated = false;  // input ended inside a unit (partial quantum / escape)
};

// Lenient base64: skips whitespace and (reporting `invalid`) other non-alphabet bytes, stops at
// padding, reports `truncated` for a dangling partial quantum. Appends to `out`.
DecodeStatus DecodeBase64(std::string_view in, ScratchBuffer& out);
inline std::size_t Base64MaxDecoded(std::size_t n) { return n / 4 * 3 + 3; }

// Quoted-printable (RFC 2045 6.7): =XX escapes, soft line breaks (=CRLF or =LF); a malformed
// escape is kept literally and reported as `invalid`. Appends to `out`.
// `header_mode` also maps '_' to space (RFC 2047 Q encoding).
DecodeStatus DecodeQuotedPrintable(std::string_view in, ScratchBuffer& out, bool header_mode = false);

bool IsAscii(std::string_view s);
bool IsValidUtf8(std::string_view s);
// Appends `in` to `out`, replacing every invalid UTF-8 sequence with U+FFFD.
void AppendRepairedUtf8(std::string_view in, ScratchBuffer& out);
// Appends ISO-8859-1 bytes as UTF-8.
void AppendLatin1AsUtf8(std::string_view in, ScratchBuffer& out);

// Appends the text content of HTML: tags, comments, <script> and <style> elements removed,
// <br>, <p>, <div>, <tr>, <li> turned into line breaks, common entities decoded.
void AppendHtmlText(std::string_view html, ScratchBuffer& out);

// At most `max_chars` Unicode characters of UTF-8 `text` with every whitespace run collapsed to a
// single space and leading/trailing whitespace removed. Appends to `out`.
void AppendPreview(std::string_view text, std::size_t max_chars, ScratchBuffer& out);

using Sha256Digest = std::array<std::uint8_t, 32>;
Sha256Digest Sha256(std::string_view bytes);

// ASCII case-insensitive equality; `lower` must already be lower-case.
inline bool EqualsLower(std::string_view s, std::string_view lower) {
  if (s.size() != lower.size()) return false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
    if (c != lower[i]) return false;
  }
  return true;
}
inline bool StartsWithLower(std::string_view s, std::string_view lower) {
  return s.size() >= lower.size() && EqualsLower(s.substr(0, lower.size()), lower);
}
inline bool IsWsp(char c) { return c == ' ' || c == '\t'; }
inline bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }
inline std::string_view Trim(std::string_view s) {
  while (!s.empty() && IsSpace(s.front())) s.remove_prefix(1);
  while (!s.empty() && IsSpace(s.back())) s.remove_suffix(1);
  return s;
}

}  // namespace mailrail::stages
