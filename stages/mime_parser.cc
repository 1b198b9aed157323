#include "stages/mime_parser.h"

#include <cstring>

#include "stages/date_time.h"
#include "stages/parse_defects.h"
#include "stages/record_builder.h"

namespace mailrail::stages {
namespace {

const char* FindByte(const char* p, const char* end, char c) {
  return static_cast<const char*>(std::memchr(p, c, static_cast<std::size_t>(end - p)));
}

bool IsFieldNameChar(char c) { return c > 32 && c < 127 && c != ':'; }
// Later fields may carry 8-bit bytes in their names (seen in the wild); the first must be ASCII so
// that binary garbage is not taken for a header.
bool IsLenientFieldNameChar(char c) { return (c > 32 && c < 127 && c != ':') || static_cast<unsigned char>(c) >= 128; }

constexpr std::size_t kMaxBoundary = 998;

// True when the line at p starts with "Name:" (a header field).
bool LooksLikeField(const char* p, const char* end) {
  const char* q = p;
  while (q < end && IsFieldNameChar(*q)) ++q;
  return q > p && q < end && *q == ':';
}  // RFC 2046 allows 70; real mail exceeds it

bool IsTokenChar(char c) {
  return c > 32 && c < 127 && c != '(' && c != ')' && c != '<' && c != '>' && c != '@' && c != ',' && c != ';' &&
         c != ':' && c != '\\' && c != '"' && c != '/' && c != '[' && c != ']' && c != '?' && c != '=';
}

// Skips whitespace (including folding line breaks) and comments from `i`.
std::size_t SkipCfws(std::string_view s, std::size_t i) {
  while (i < s.size()) {
    if (IsSpace(s[i])) {
      ++i;
    } else if (s[i] == '(') {
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
    } else {
      break;
    }
  }
  return std::min(i, s.size());
}

enum class Cte { kIdentity, kBase64, kQuotedPrintable, kUnknown };

Cte ClassifyCte(std::string_view value) {
  value = Trim(value);
  if (value.empty() || EqualsLower(value, "7bit") || EqualsLower(value, "8bit") || EqualsLower(value, "binary")) {
    return Cte::kIdentity;
  }
  if (EqualsLower(value, "base64")) return Cte::kBase64;
  if (EqualsLower(value, "quoted-printable")) return Cte::kQuotedPrintable;
  // Common misspellings and obsolete labels that still mean "no transformation".
  if (EqualsLower(value, "7-bit") || EqualsLower(value, "8-bit") || EqualsLower(value, "none") ||
      EqualsLower(value, "text") || EqualsLower(value, "plain")) {
    return Cte::kIdentity;
  }
  return Cte::kUnknown;
}

// Charset labels equal ignoring ASCII case and an RFC 2231 "*language" suffix.
bool SameCharset(std::string_view a, std::string_view b) {
  a = a.substr(0, a.find('*'));
  b = b.substr(0, b.find('*'));
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x + 32);
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y + 32);
    if (x != y) return false;
  }
  return true;
}

std::size_t FindMsgIdEnd(std::string_view s, std::size_t lt) {
  const std::size_t gt = s.find('>', lt + 1);
  return gt;
}

}  // namespace

struct MimeParser::Token {
  enum Kind : std::uint8_t { kAtom, kQuoted, kComment, kAngle };
  Kind kind;
  std::string_view text;  // atom text, quoted content (escapes intact), comment content, angle content
};

void MimeParser::AddDefect(std::string_view defect) {
  for (auto d : record_->defects) {
    if (d.data() == defect.data()) return;
  }
  record_->defects.push_back(defect);
}

std::string_view MimeParser::Unfold(std::string_view value) {
  const char* p = value.data();
  const char* const end = p + value.size();
  const char* nl = FindByte(p, end, '\n');
  if (nl == nullptr) return value;
  char* out = msg_->arena.Allocate(value.size());
  std::size_t n = 0;
  while (true) {
    const char* run_end = nl != nullptr ? nl : end;
    if (run_end > p && run_end[-1] == '\r' && nl != nullptr) --run_end;
    std::memcpy(out + n, p, static_cast<std::size_t>(run_end - p));
    n += static_cast<std::size_t>(run_end - p);
    if (nl == nullptr) break;
    p = nl + 1;
    nl = FindByte(p, end, '\n');
  }
  return {out, n};
}

std::string_view MimeParser::ToUtf8(std::string_view charset, std::string_view bytes, bool bytes_are_stable) {
  if (CharsetConverter::IsUtf8Compatible(charset) ? IsValidUtf8(bytes)
                                                   : (CharsetConverter::IsAsciiCompatible(charset) && IsAscii(bytes))) {
    return bytes_are_stable ? bytes : msg_->arena.Copy(bytes);
  }
  text_.Clear();
  const ConvertStatus status = converter_.AppendUtf8(charset, bytes, text_);
  if (status.unknown_charset) AddDefect(defect::kUnknownCharset);
  if (status.invalid_data) AddDefect(defect::kInvalidCharsetData);
  return msg_->arena.Copy(text_.view());
}

std::string_view MimeParser::DecodeText(std::string_view text) {
  text = Trim(text);
  const bool has_word = text.find("=?") != std::string_view::npos;
  const bool folded = std::memchr(text.data(), '\n', text.size()) != nullptr;
  if (!has_word) {
    if (IsAscii(text)) return folded ? Unfold(text) : text;
    if (IsValidUtf8(text)) return folded ? Unfold(text) : text;  // RFC 6532 raw UTF-8
    AddDefect(defect::kNonAsciiHeader);
    scratch_.Clear();
    const ConvertStatus status = converter_.AppendUtf8("windows-1252", Unfold(text), scratch_);
    (void)status;
    return msg_->arena.Copy(scratch_.view());
  }
  scratch_.Clear();
  words_.Clear();
  std::string_view pending_charset;  // charset of the bytes in words_
  auto flush_words = [&] {
    if (words_.size() == 0) return;
    const ConvertStatus status = converter_.AppendUtf8(pending_charset, words_.view(), scratch_);
    if (status.unknown_charset) AddDefect(defect::kUnknownCharset);
    if (status.invalid_data) AddDefect(defect::kInvalidCharsetData);
    words_.Clear();
  };
  auto append_plain = [&](std::string_view s) {
    for (char c : s) {
      if (c == '\r' || c == '\n') continue;
      scratch_.Push(c);
    }
  };
  std::size_t i = 0;
  bool last_was_word = false;
  while (i < text.size()) {
    const std::size_t start = text.find("=?", i);
    const std::string_view between = text.substr(i, start == std::string_view::npos ? text.npos : start - i);
    const bool only_space = Trim(between).empty();
    if (!(last_was_word && only_space && start != std::string_view::npos)) {
      if (!between.empty()) {
        flush_words();
        append_plain(between);
      }
    }
    if (start == std::string_view::npos) break;
    // =?charset?E?text?=
    const std::size_t q1 = text.find('?', start + 2);
    bool ok = q1 != std::string_view::npos && q1 + 2 < text.size() && text[q1 + 2] == '?';
    std::size_t end = std::string_view::npos;
    char enc = 0;
    if (ok) {
      enc = text[q1 + 1];
      end = text.find("?=", q1 + 3);
      ok = end != std::string_view::npos && (enc == 'B' || enc == 'b' || enc == 'Q' || enc == 'q');
    }
    const std::string_view charset = ok ? text.substr(start + 2, q1 - start - 2) : std::string_view{};
    if (ok && (charset.empty() || charset.size() > 40 ||
               charset.find_first_of(" \t\r\n") != std::string_view::npos)) {
      ok = false;
    }
    if (!ok) {
      AddDefect(defect::kBadEncodedWord);
      flush_words();
      append_plain("=?");
      i = start + 2;
      last_was_word = false;
      continue;
    }
    if (words_.size() > 0 && !SameCharset(charset, pending_charset)) flush_words();
    pending_charset = charset;
    const std::string_view payload = text.substr(q1 + 3, end - q1 - 3);
    DecodeStatus status;
    if (enc == 'B' || enc == 'b') {
      status = DecodeBase64(payload, words_);
    } else {
      status = DecodeQuotedPrintable(payload, words_, /*header_mode=*/true);
    }
    if (status.invalid || status.truncated) AddDefect(defect::kBadEncodedWord);
    i = end + 2;
    last_was_word = true;
  }
  flush_words();
  std::string_view result = scratch_.view();
  if (!IsValidUtf8(result)) {
    AddDefect(defect::kNonAsciiHeader);
    text_.Clear();
    AppendRepairedUtf8(result, text_);
    result = text_.view();
  }
  return msg_->arena.Copy(result);
}

void MimeParser::ParseParams(std::string_view s, ParamList& out) {
  out.size = 0;
  std::size_t i = 0;
  while (i < s.size()) {
    i = SkipCfws(s, i);
    if (i >= s.size()) break;
    if (s[i] == ';') {
      ++i;
      continue;
    }
    // attribute
    const std::size_t name_begin = i;
    while (i < s.size() && s[i] != '=' && s[i] != ';' && !IsSpace(s[i])) ++i;
    const std::string_view name = s.substr(name_begin, i - name_begin);
    i = SkipCfws(s, i);
    if (i >= s.size() || s[i] != '=') {
      AddDefect(defect::kMalformedParameter);
      while (i < s.size() && s[i] != ';') ++i;
      continue;
    }
    ++i;
    i = SkipCfws(s, i);
    Param p;
    p.name = name;
    if (i < s.size() && s[i] == '"') {
      const std::size_t begin = i + 1;
      std::size_t j = begin;
      while (j < s.size() && s[j] != '"') j += s[j] == '\\' ? 2 : 1;
      if (j >= s.size()) {
        AddDefect(defect::kMalformedParameter);
        j = s.size();
      }
      p.value = s.substr(begin, j - begin);
      p.quoted = true;
      i = j + 1;
    } else {
      const std::size_t begin = i;
      // Lenient: unquoted values run to ';' (spaces inside are kept, trailing ones trimmed).
      while (i < s.size() && s[i] != ';') ++i;
      p.value = Trim(s.substr(begin, i - begin));
    }
    if (name.empty()) {
      AddDefect(defect::kMalformedParameter);
      continue;
    }
    if (out.size < ParamList::kMax) out.items[out.size++] = p;
  }
}

std::string_view MimeParser::Unquote(std::string_view quoted) {
  const bool escapes = std::memchr(quoted.data(), '\\', quoted.size()) != nullptr;
  const bool folded = std::memchr(quoted.data(), '\n', quoted.size()) != nullptr;
  if (!escapes && !folded) return quoted;
  char* out = msg_->arena.Allocate(quoted.size());
  std::size_t n = 0;
  for (std::size_t i = 0; i < quoted.size(); ++i) {
    char c = quoted[i];
    if (c == '\r' || c == '\n') continue;
    if (c == '\\' && i + 1 < quoted.size()) c = quoted[++i];
    out[n++] = c;
  }
  return {out, n};
}

std::string_view MimeParser::GetParam(const ParamList& params, std::string_view name, bool decode_words) {
  // RFC 2231: name*=charset'lang'value, or sections name*0[*], name*1[*], ...
  const Param* sections[ParamList::kMax] = {};
  std::size_t section_count = 0;
  const Param* plain = nullptr;
  const Param* extended = nullptr;
  for (std::size_t k = 0; k < params.size; ++k) {
    const Param& p = params.items[k];
    if (!StartsWithLower(p.name, name)) continue;
    const std::string_view rest = p.name.substr(name.size());
    if (rest.empty()) {
      if (plain == nullptr) plain = &p;
    } else if (rest == "*") {
      extended = &p;
    } else if (rest[0] == '*' && rest.size() >= 2 && rest[1] >= '0' && rest[1] <= '9') {
      unsigned index = 0;
      std::size_t j = 1;
      while (j < rest.size() && rest[j] >= '0' && rest[j] <= '9' && index < 1000) index = index * 10 + (rest[j++] - '0');
      if (j < rest.size() && !(rest[j] == '*' && j + 1 == rest.size())) continue;
      if (index < ParamList::kMax) {
        if (sections[index] == nullptr) ++section_count;
        sections[index] = &p;
      }
    }
  }
  if (extended == nullptr && section_count == 0) {
    if (plain == nullptr) return {};
    std::string_view v = plain->quoted ? Unquote(plain->value) : plain->value;
    // Encoded words are not allowed in parameters, but mailers put them in file names; a
    // boundary or charset is taken literally.
    if (decode_words && (v.find("=?") != std::string_view::npos || !IsAscii(v))) v = DecodeText(v);
    return v;
  }
  // Collect the raw bytes, percent-decoding extended sections.
  std::string_view charset;
  words_.Clear();
  auto append_section = [&](const Param& p, bool is_extended, bool first) {
    std::string_view v = p.value;
    if (p.quoted) v = Unquote(v);
    if (is_extended && first) {
      const std::size_t q1 = v.find('\'');
      const std::size_t q2 = q1 == std::string_view::npos ? q1 : v.find('\'', q1 + 1);
      if (q2 != std::string_view::npos) {
        charset = v.substr(0, q1);
        v = v.substr(q2 + 1);
      } else {
        AddDefect(defect::kMalformedParameter);
      }
    }
    if (!is_extended) {
      words_.Append(v);
      return;
    }
    for (std::size_t i = 0; i < v.size(); ++i) {
      if (v[i] == '%' && i + 2 < v.size()) {
        auto hex = [](char c) -> int {
          if (c >= '0' && c <= '9') return c - '0';
          if (c >= 'a' && c <= 'f') return c - 'a' + 10;
          if (c >= 'A' && c <= 'F') return c - 'A' + 10;
          return -1;
        };
        const int h = hex(v[i + 1]), l = hex(v[i + 2]);
        if (h >= 0 && l >= 0) {
          words_.Push(static_cast<char>(h * 16 + l));
          i += 2;
          continue;
        }
        AddDefect(defect::kMalformedParameter);
      }
      words_.Push(v[i]);
    }
  };
  if (extended != nullptr) {
    append_section(*extended, true, true);
  } else {
    for (std::size_t k = 0; k < ParamList::kMax && section_count > 0; ++k) {
      if (sections[k] == nullptr) {
        AddDefect(defect::kMalformedParameter);  // a gap in the section numbers
        break;
      }
      --section_count;
      const bool is_extended = sections[k]->name.back() == '*';
      append_section(*sections[k], is_extended, k == 0);
    }
  }
  scratch_.Clear();
  const ConvertStatus status = converter_.AppendUtf8(charset, words_.view(), scratch_);
  if (status.unknown_charset) AddDefect(defect::kUnknownCharset);
  if (status.invalid_data) AddDefect(defect::kInvalidCharsetData);
  return msg_->arena.Copy(scratch_.view());
}

std::string_view MimeParser::MediaType(const ContentType& ct) {
  // "type/subtype", lower-case; a view into the raw header when it already is.
  std::string_view media;
  if (ct.type.data() + ct.type.size() + 1 == ct.subtype.data() && ct.type.data()[ct.type.size()] == '/') {
    media = std::string_view(ct.type.data(), ct.type.size() + 1 + ct.subtype.size());
  } else {
    char* out = msg_->arena.Allocate(ct.type.size() + 1 + ct.subtype.size());
    std::memcpy(out, ct.type.data(), ct.type.size());
    out[ct.type.size()] = '/';
    std::memcpy(out + ct.type.size() + 1, ct.subtype.data(), ct.subtype.size());
    media = std::string_view(out, ct.type.size() + 1 + ct.subtype.size());
  }
  return LowerCase(media, msg_->arena);
}

void MimeParser::ParseContentType(std::string_view value, bool digest_child, ContentType& out) {
  out.type = digest_child ? "message" : "text";
  out.subtype = digest_child ? "rfc822" : "plain";
  out.params.size = 0;
  if (value.empty()) return;
  std::size_t i = SkipCfws(value, 0);
  const std::size_t type_begin = i;
  while (i < value.size() && IsTokenChar(value[i])) ++i;
  const std::string_view type = value.substr(type_begin, i - type_begin);
  i = SkipCfws(value, i);
  if (type.empty() || i >= value.size() || value[i] != '/') {
    AddDefect(defect::kMalformedContentType);
    // Keep the parameters (a charset may still be there) under the default type.
    const std::size_t semi = value.find(';');
    if (semi != std::string_view::npos) ParseParams(value.substr(semi + 1), out.params);
    return;
  }
  i = SkipCfws(value, i + 1);
  const std::size_t sub_begin = i;
  while (i < value.size() && IsTokenChar(value[i])) ++i;
  const std::string_view subtype = value.substr(sub_begin, i - sub_begin);
  if (subtype.empty()) {
    AddDefect(defect::kMalformedContentType);
    return;
  }
  out.type = type;
  out.subtype = subtype;
  i = SkipCfws(value, i);
  // Parameters normally follow a ';'. When it is missing ("multipart/mixed boundary=x"), read them
  // anyway: a lost boundary would cost the whole MIME tree.
  if (i < value.size() && value[i] != ';') AddDefect(defect::kMalformedContentType);
  if (i < value.size()) ParseParams(value.substr(i), out.params);
}

std::size_t MimeParser::ParseHeaders(std::string_view data, bool top, Entity& entity, std::size_t& field_count) {
  const char* const base = data.data();
  const char* const end = base + data.size();
  const char* p = base;
  field_count = 0;
  while (p < end) {
    const char* nl = FindByte(p, end, '\n');
    const char* line_end = nl != nullptr ? nl : end;
    const char* content_end = line_end > p && line_end[-1] == '\r' ? line_end - 1 : line_end;
    if (content_end == p) {  // empty line: end of the header block
      return static_cast<std::size_t>((nl != nullptr ? nl + 1 : end) - base);
    }
    if (IsWsp(*p)) {
      // A continuation line with no field before it.
      AddDefect(defect::kMalformedHeaderLine);
      p = nl != nullptr ? nl + 1 : end;
      continue;
    }
    const char* colon = p;
    if (field_count == 0) {
      while (colon < content_end && IsFieldNameChar(*colon)) ++colon;
    } else {
      while (colon < content_end && IsLenientFieldNameChar(*colon)) ++colon;
    }
    const char* name_end = colon;
    while (colon < content_end && IsWsp(*colon)) ++colon;  // obs-optional: "Subject :"
    if (colon >= content_end || *colon != ':' || name_end == p) {
      if (field_count == 0 && content_end - p >= 5 && std::memcmp(p, "From ", 5) == 0) {
        // mbox "From " separator line left in the message (or in an attached message)
        p = nl != nullptr ? nl + 1 : end;
        continue;
      }
      // A stray line inside the header block is skipped when a header field follows it (as GMime
      // and mime4j do); otherwise the body started without the blank line.
      const char* following = nl != nullptr ? nl + 1 : end;
      if (field_count > 0 && LooksLikeField(following, end)) {
        AddDefect(defect::kMalformedHeaderLine);
        p = following;
        continue;
      }
      AddDefect(defect::kMissingHeaderBodySeparator);
      return static_cast<std::size_t>(p - base);
    }
    // The value runs through continuation lines (those starting with SP or HT).
    const char* value_end = content_end;
    const char* next = nl != nullptr ? nl + 1 : end;
    const char* separator_end = nullptr;  // set when a whitespace-only line ends the block
    while (next < end && IsWsp(*next)) {
      const char* nl2 = FindByte(next, end, '\n');
      const char* le = nl2 != nullptr ? nl2 : end;
      const char* after = nl2 != nullptr ? nl2 + 1 : end;
      const char* q = next;
      while (q < le && IsSpace(*q)) ++q;
      if (q == le && (after >= end || !IsWsp(*after))) {
        // A whitespace-only line not followed by another continuation: a blank line with
        // trailing spaces, i.e. the header/body separator (as GMime and most MUAs read it).
        separator_end = after;
        break;
      }
      value_end = le > next && le[-1] == '\r' ? le - 1 : le;
      next = after;
    }
    const bool folded = next != (nl != nullptr ? nl + 1 : end);
    const std::string_view name(p, static_cast<std::size_t>(name_end - p));
    std::string_view value(colon + 1, static_cast<std::size_t>(value_end - colon - 1));
    while (!value.empty() && IsSpace(value.front())) value.remove_prefix(1);
    while (!value.empty() && IsSpace(value.back())) value.remove_suffix(1);
    p = next;
    if (++field_count > limits_.max_headers) {
      AddDefect(defect::kTooManyHeaders);
      if (separator_end != nullptr) return static_cast<std::size_t>(separator_end - base);
      continue;
    }
    if (name.size() >= 8 && (name[0] == 'c' || name[0] == 'C') && StartsWithLower(name, "content-")) {
      const std::string_view rest = name.substr(8);
      if (EqualsLower(rest, "type")) {
        if (!entity.has_content_type) entity.content_type = value;
        entity.has_content_type = true;
      } else if (EqualsLower(rest, "transfer-encoding")) {
        entity.transfer_encoding = value;
      } else if (EqualsLower(rest, "disposition")) {
        entity.disposition = value;
        entity.has_disposition = true;
      }
    }
    if (top) OnTopLevelField(name, value, folded);
    if (separator_end != nullptr) return static_cast<std::size_t>(separator_end - base);
  }
  return data.size();
}

void MimeParser::OnTopLevelField(std::string_view name, std::string_view value, bool folded) {
  Record& r = *record_;
  r.headers.push_back(HeaderField{name, folded ? Unfold(value) : value});
  switch (name.size()) {
    case 2:
      if (EqualsLower(name, "to")) ParseAddressList(value, r.to);
      else if (EqualsLower(name, "cc")) ParseAddressList(value, r.cc);
      break;
    case 4:
      if (EqualsLower(name, "from")) {
        if (seen_from_) {
          AddDefect(defect::kDuplicateSingletonHeader);
          break;
        }
        seen_from_ = true;
        from_scratch_.clear();
        ParseAddressList(value, from_scratch_);
        if (!from_scratch_.empty()) r.from = from_scratch_.front();
        else AddDefect(defect::kMalformedAddress);
      } else if (EqualsLower(name, "date")) {
        if (seen_date_) {
          AddDefect(defect::kDuplicateSingletonHeader);
          break;
        }
        seen_date_ = true;
        r.date_unix_ms = ParseRfc5322DateMs(value);
        if (!r.date_unix_ms) AddDefect(defect::kUnparseableDate);
      }
      break;
    case 7:
      if (EqualsLower(name, "subject")) {
        if (seen_subject_) {
          AddDefect(defect::kDuplicateSingletonHeader);
          break;
        }
        seen_subject_ = true;
        r.subject = DecodeText(value);
      }
      break;
    case 8:
      if (EqualsLower(name, "reply-to")) ParseAddressList(value, r.reply_to);
      break;
    case 10:
      if (EqualsLower(name, "message-id")) {
        if (seen_message_id_) {
          AddDefect(defect::kDuplicateSingletonHeader);
          break;
        }
        seen_message_id_ = true;
        const std::size_t lt = value.find('<');
        const std::size_t gt = lt == std::string_view::npos ? lt : FindMsgIdEnd(value, lt);
        std::string_view id;
        if (gt != std::string_view::npos) {
          id = Trim(value.substr(lt + 1, gt - lt - 1));
        } else {
          id = Trim(lt == std::string_view::npos ? value : value.substr(lt + 1));
          const std::size_t ws = id.find_first_of(" \t\r\n");
          if (ws != std::string_view::npos) id = id.substr(0, ws);
          if (!id.empty()) AddDefect(defect::kInvalidMessageId);
        }
        if (id.find_first_of(" \t\r\n") != std::string_view::npos) {
          char* out = msg_->arena.Allocate(id.size());
          std::size_t n = 0;
          for (char c : id) {
            if (!IsSpace(c)) out[n++] = c;
          }
          id = {out, n};
        }
        if (!id.empty()) r.message_id = id;
      } else if (EqualsLower(name, "references")) {
        std::size_t i = 0;
        while (true) {
          const std::size_t lt = value.find('<', i);
          if (lt == std::string_view::npos) break;
          const std::size_t gt = value.find('>', lt + 1);
          if (gt == std::string_view::npos) break;
          const std::string_view id = Trim(value.substr(lt + 1, gt - lt - 1));
          if (!id.empty() && id.find_first_of(" \t\r\n") == std::string_view::npos) r.references.push_back(id);
          i = gt + 1;
        }
      }
      break;
    case 11:
      if (EqualsLower(name, "in-reply-to") && !r.in_reply_to) {
        const std::size_t lt = value.find('<');
        const std::size_t gt = lt == std::string_view::npos ? lt : value.find('>', lt + 1);
        if (gt != std::string_view::npos) {
          const std::string_view id = Trim(value.substr(lt + 1, gt - lt - 1));
          if (!id.empty()) r.in_reply_to = id;
        } else if (!Trim(value).empty() && Trim(value).find_first_of(" \t\r\n") == std::string_view::npos) {
          r.in_reply_to = Trim(value);
        }
      }
      break;
    default:
      break;
  }
}

void MimeParser::ParseAddressList(std::string_view v, std::vector<Address>& out) {
  constexpr std::size_t kMaxTokens = 64;
  Token tokens[kMaxTokens];
  std::size_t count = 0;
  bool in_group = false;
  bool overflow = false;
  auto push = [&](Token::Kind kind, std::string_view text) {
    if (count < kMaxTokens) tokens[count++] = Token{kind, text};
    else overflow = true;
  };
  auto finish = [&] {
    FinishMailbox(tokens, count, out);
    count = 0;
  };
  std::size_t i = 0;
  const std::size_t n = v.size();
  while (i < n) {
    const char c = v[i];
    if (IsSpace(c)) {
      ++i;
    } else if (c == '"') {
      std::size_t j = i + 1;
      while (j < n && v[j] != '"') j += v[j] == '\\' ? 2 : 1;
      if (j >= n) {
        AddDefect(defect::kMalformedAddress);
        j = n;
      }
      push(Token::kQuoted, v.substr(i + 1, j - i - 1));
      i = j + 1;
    } else if (c == '(') {
      const std::size_t j = SkipCfws(v, i);
      std::size_t inner_end = j;
      if (inner_end > i + 1 && v[inner_end - 1] == ')') --inner_end;
      push(Token::kComment, v.substr(i + 1, inner_end - i - 1));
      i = j;
    } else if (c == '<') {
      std::size_t j = i + 1;
      while (j < n && v[j] != '>') {
        if (v[j] == '"') {
          ++j;
          while (j < n && v[j] != '"') j += v[j] == '\\' ? 2 : 1;
        }
        ++j;
      }
      if (j >= n) {
        AddDefect(defect::kMalformedAddress);
        j = n;
      }
      push(Token::kAngle, v.substr(i + 1, j - i - 1));
      i = j + 1;
    } else if (c == ',') {
      finish();
      ++i;
    } else if (c == ':' && !in_group) {
      // "display-name:" starts a group; its name is not an address.
      count = 0;
      in_group = true;
      ++i;
    } else if (c == ';') {
      finish();
      in_group = false;
      ++i;
    } else if (c == '>' || c == ')' || c == ':') {
      AddDefect(defect::kMalformedAddress);
      ++i;
    } else {
      std::size_t j = i;
      while (j < n && !IsSpace(v[j]) && v[j] != '"' && v[j] != '(' && v[j] != '<' && v[j] != ',' && v[j] != ';' &&
             v[j] != '>' && v[j] != ')' && !(v[j] == ':' && !in_group)) {
        ++j;
      }
      push(Token::kAtom, v.substr(i, j - i));
      i = j;
    }
  }
  finish();
  if (overflow) AddDefect(defect::kMalformedAddress);
}

void MimeParser::FinishMailbox(const Token* tokens, std::size_t count,
                               std::vector<Address>& out) {
  constexpr std::size_t kMaxRuns = 16;
  if (count == 0) return;
  engine::Arena& arena = msg_->arena;
  std::size_t angle = count;
  for (std::size_t k = 0; k < count; ++k) {
    if (tokens[k].kind == Token::kAngle) {
      angle = k;
      break;
    }
  }
  Address address;
  // Builds the display name from the atom/quoted tokens in [begin, end).
  auto phrase = [&](std::size_t begin, std::size_t end) -> std::string_view {
    std::size_t first = end, last = end, words = 0;
    bool simple = true;
    for (std::size_t k = begin; k < end; ++k) {
      if (tokens[k].kind != Token::kAtom && tokens[k].kind != Token::kQuoted) continue;
      if (first == end) first = k;
      last = k;
      ++words;
      if (tokens[k].kind == Token::kQuoted) simple = false;
    }
    if (words == 0) return {};
    if (words == 1 && tokens[first].kind == Token::kQuoted) {
      return DecodeText(Unquote(tokens[first].text));
    }
    if (simple) {
      // Contiguous atoms separated by single spaces: the source slice is the name.
      const char* b = tokens[first].text.data();
      const char* e = tokens[last].text.data() + tokens[last].text.size();
      const std::string_view slice(b, static_cast<std::size_t>(e - b));
      bool single_spaces = true;
      for (std::size_t k = 0; k + 1 < slice.size(); ++k) {
        if ((IsSpace(slice[k]) && IsSpace(slice[k + 1])) || slice[k] == '\t' || slice[k] == '\r' ||
            slice[k] == '\n' || slice[k] == '(' || slice[k] == '"') {
          single_spaces = false;
          break;
        }
      }
      if (single_spaces) return DecodeText(slice);
    }
    // General case: join words with single spaces, unquoting quoted strings. Sized by the words
    // themselves (not the whole field), so a long list of names stays linear in memory.
    std::size_t needed = 0;
    for (std::size_t k = first; k <= last; ++k) needed += tokens[k].text.size() + 1;
    char* buffer = arena.Allocate(needed);
    std::size_t len = 0;
    for (std::size_t k = first; k <= last; ++k) {
      if (tokens[k].kind != Token::kAtom && tokens[k].kind != Token::kQuoted) continue;
      if (len > 0) buffer[len++] = ' ';
      const std::string_view t = tokens[k].kind == Token::kQuoted ? Unquote(tokens[k].text) : tokens[k].text;
      for (char c : t) {
        if (c != '\r' && c != '\n') buffer[len++] = c;
      }
    }
    return DecodeText(std::string_view(buffer, len));
  };
  std::string_view addr;
  if (angle < count) {
    addr = tokens[angle].text;
    // Obsolete route "@a,@b:local@domain".
    const std::string_view trimmed = Trim(addr);
    if (!trimmed.empty() && trimmed.front() == '@') {
      const std::size_t colon = trimmed.find(':');
      addr = colon == std::string_view::npos ? std::string_view{} : trimmed.substr(colon + 1);
    }
    addr = Trim(addr);
    if (addr.find_first_of(" \t\r\n(") != std::string_view::npos) {
      char* buffer = arena.Allocate(addr.size());
      std::size_t len = 0;
      for (std::size_t k = 0; k < addr.size(); ++k) {
        if (addr[k] == '(') {
          k = SkipCfws(addr, k) - 1;
          continue;
        }
        if (!IsSpace(addr[k])) buffer[len++] = addr[k];
      }
      addr = {buffer, len};
    }
    address.name = phrase(0, angle);
  } else {
    // addr-spec without angle brackets, possibly followed by "(Display Name)".
    std::size_t first = count, last = count;
    std::string_view comment;
    for (std::size_t k = 0; k < count; ++k) {
      if (tokens[k].kind == Token::kComment) {
        if (comment.empty()) comment = tokens[k].text;
        continue;
      }
      if (first == count) first = k;
      last = k;
    }
    if (first == count) return;  // only comments
    if (first == last && tokens[first].kind == Token::kAtom) {
      addr = tokens[first].text;
    } else {
      // Obsolete "local . part @ domain" with spaces, or a quoted local part: tokens join into one
      // addr-spec where one ends or the next starts with '.' or '@'. Separate runs are either
      // several addresses missing their commas, or display-name words before a bare address.
      struct Run {
        std::size_t begin, end;  // token range
        bool has_at;
      };
      Run runs[kMaxRuns];
      std::size_t run_count = 0;
      for (std::size_t k = first; k <= last; ++k) {
        if (tokens[k].kind == Token::kComment) continue;
        const std::string_view t = tokens[k].text;
        bool joins = false;
        if (run_count > 0) {
          const std::string_view prev = tokens[runs[run_count - 1].end - 1].text;
          joins = (!prev.empty() && (prev.back() == '.' || prev.back() == '@')) ||
                  (!t.empty() && (t.front() == '.' || t.front() == '@'));
        }
        if (joins) {
          runs[run_count - 1].end = k + 1;
        } else if (run_count < kMaxRuns) {
          runs[run_count++] = Run{k, k + 1, false};
        } else {
          runs[run_count - 1].end = k + 1;
        }
        if (t.find('@') != std::string_view::npos) runs[run_count - 1].has_at = true;
      }
      auto build = [&](const Run& run) -> std::string_view {
        if (run.end - run.begin == 1 && tokens[run.begin].kind == Token::kAtom) return tokens[run.begin].text;
        std::size_t needed = 0;
        for (std::size_t k = run.begin; k < run.end; ++k) needed += tokens[k].text.size() + 2;
        char* buffer = arena.Allocate(needed);
        std::size_t len = 0;
        for (std::size_t k = run.begin; k < run.end; ++k) {
          if (tokens[k].kind == Token::kComment) continue;
          if (tokens[k].kind == Token::kQuoted) buffer[len++] = '"';
          for (char c : tokens[k].text) buffer[len++] = c;
          if (tokens[k].kind == Token::kQuoted) buffer[len++] = '"';
        }
        return {buffer, len};
      };
      std::size_t with_at = 0;
      for (std::size_t r = 0; r < run_count; ++r) with_at += runs[r].has_at;
      if (run_count > 1 && with_at >= 1) {
        AddDefect(defect::kMalformedAddress);
        std::size_t name_runs = 0;
        while (name_runs < run_count && !runs[name_runs].has_at) ++name_runs;
        for (std::size_t r = name_runs; r < run_count; ++r) {
          if (!runs[r].has_at) continue;
          Address extra;
          if (r == name_runs && name_runs > 0) extra.name = phrase(runs[0].begin, runs[name_runs - 1].end);
          extra.address = LowerCaseDomain(build(runs[r]), arena);
          out.push_back(extra);
        }
        return;
      }
      Run all{first, last + 1, with_at > 0};
      addr = build(all);
    }
    if (!comment.empty()) address.name = DecodeText(Trim(comment));
  }
  if (addr.empty() && address.name.empty()) return;
  if (addr.find('@') == std::string_view::npos) AddDefect(defect::kMalformedAddress);
  address.address = LowerCaseDomain(addr, arena);
  out.push_back(address);
}

std::string_view MimeParser::DecodeTransfer(std::string_view cte, std::string_view body, bool& decoded_in_scratch) {
  decoded_in_scratch = false;
  switch (ClassifyCte(cte)) {
    case Cte::kIdentity:
      return body;
    case Cte::kUnknown:
      AddDefect(defect::kUnknownTransferEncoding);
      return body;
    case Cte::kBase64: {
      decoded_.Clear();
      const DecodeStatus status = DecodeBase64(body, decoded_);
      if (status.invalid) AddDefect(defect::kBadBase64);
      if (status.truncated) AddDefect(defect::kTruncatedBase64);
      decoded_in_scratch = true;
      return decoded_.view();
    }
    case Cte::kQuotedPrintable: {
      decoded_.Clear();
      const DecodeStatus status = DecodeQuotedPrintable(body, decoded_);
      if (status.invalid || status.truncated) AddDefect(defect::kBadQuotedPrintable);
      decoded_in_scratch = true;
      return decoded_.view();
    }
  }
  return body;
}

void MimeParser::ParseEntity(std::string_view data, std::size_t depth, bool digest_child, bool in_attached_message) {
  Entity entity;
  std::size_t fields = 0;
  const std::size_t body_at = ParseHeaders(data, /*top=*/false, entity, fields);
  ParseBody(entity, data.substr(body_at), depth, digest_child, in_attached_message);
}

void MimeParser::ParseBody(const Entity& entity, std::string_view body, std::size_t depth, bool digest_child,
                           bool in_attached_message) {
  if (++parts_ > limits_.max_parts) {
    AddDefect(defect::kTooManyParts);
    return;
  }
  ContentType ct;
  ParseContentType(entity.content_type, digest_child, ct);
  const std::size_t part_index = record_->parts.size();
  record_->parts.push_back(MimePart{MediaType(ct), static_cast<std::uint32_t>(depth), 0});
  if (EqualsLower(ct.type, "multipart")) {
    if (depth >= limits_.max_depth) {
      AddDefect(defect::kNestingTooDeep);
      return;
    }
    ParseMultipart(ct, body, depth, in_attached_message, part_index);
    return;
  }
  if (EqualsLower(ct.type, "message") && (EqualsLower(ct.subtype, "rfc822") || EqualsLower(ct.subtype, "global"))) {
    if (depth >= limits_.max_depth) {
      AddDefect(defect::kNestingTooDeep);
      return;
    }
    bool in_scratch = false;
    std::string_view inner = DecodeTransfer(entity.transfer_encoding, body, in_scratch);
    if (in_scratch) inner = msg_->arena.Copy(inner);
    record_->parts[part_index].decoded_size = inner.size();  // nested views must outlive the scratch
    // The message part itself is an attachment when it has a filename or a non-inline disposition.
    std::string_view filename;
    bool attachment = false;
    if (entity.has_disposition) {
      ParamList params;
      const std::size_t semi = entity.disposition.find(';');
      if (semi != std::string_view::npos) ParseParams(entity.disposition.substr(semi + 1), params);
      filename = GetParam(params, "filename", true);
      const std::string_view kind = Trim(entity.disposition.substr(0, semi));
      attachment = !kind.empty() && !EqualsLower(kind, "inline");
    }
    if (filename.empty()) filename = GetParam(ct.params, "name", true);
    if (attachment || !filename.empty()) {
      AddAttachment(*record_, filename, record_->parts[part_index].content_type, inner);
    }
    ParseEntity(inner, depth + 1, false, /*in_attached_message=*/true);
    return;
  }
  ParseLeaf(entity, ct, body, in_attached_message, part_index);
}

void MimeParser::ParseMultipart(const ContentType& ct, std::string_view body, std::size_t depth,
                                bool in_attached_message, std::size_t part_index) {
  const std::string_view boundary = GetParam(ct.params, "boundary", false);
  Entity as_text;
  if (boundary.empty() || boundary.size() > kMaxBoundary) {
    AddDefect(defect::kMissingBoundary);
    ParseLeaf(as_text, ContentType{"text", "plain", {}}, body, in_attached_message, part_index);
    return;
  }
  const bool digest = EqualsLower(ct.subtype, "digest");
  // Delimiter lines: "--" boundary at the start of a line, then optional "--", then only
  // whitespace up to the line end.
  const char* const base = body.data();
  const std::size_t n = body.size();
  std::size_t search = 0;
  std::size_t part_begin = std::string_view::npos;  // start of the current part's content
  bool found_any = false;
  bool closed = false;
  char delimiter[2 + kMaxBoundary];
  delimiter[0] = delimiter[1] = '-';
  std::memcpy(delimiter + 2, boundary.data(), boundary.size());
  const std::size_t delimiter_size = 2 + boundary.size();
  while (search + delimiter_size <= n) {
    const void* hit = memmem(base + search, n - search, delimiter, delimiter_size);
    if (hit == nullptr) break;
    const std::size_t at = static_cast<std::size_t>(static_cast<const char*>(hit) - base);
    search = at + 1;
    if (at > 0 && base[at - 1] != '\n') continue;
    std::size_t after = at + 2 + boundary.size();
    const bool is_close = n - after >= 2 && base[after] == '-' && base[after + 1] == '-';
    if (is_close) after += 2;
    // "--boundaryX..." is a longer boundary, not this one; anything after whitespace is ignored
    // (RFC 2046 5.1.1: the boundary need only appear in its entirety at the start of the line).
    if (after < n && !IsSpace(base[after])) continue;
    std::size_t k = after;
    // The line break before the delimiter belongs to the delimiter.
    if (part_begin != std::string_view::npos) {
      std::size_t part_end = at;
      if (part_end > part_begin && base[part_end - 1] == '\n') --part_end;
      if (part_end > part_begin && base[part_end - 1] == '\r') --part_end;
      ParseEntity(body.substr(part_begin, part_end - part_begin), depth + 1, digest, in_attached_message);
      if (parts_ > limits_.max_parts) return;
    }
    found_any = true;
    const char* nl = FindByte(base + k, base + n, '\n');
    part_begin = nl != nullptr ? static_cast<std::size_t>(nl - base) + 1 : n;
    search = part_begin;
    if (is_close) {
      closed = true;
      break;  // the rest is the epilogue
    }
  }
  if (!found_any) {
    AddDefect(defect::kBoundaryNotFound);
    ParseLeaf(as_text, ContentType{"text", "plain", {}}, body, in_attached_message, part_index);
    return;
  }
  if (!closed) {
    AddDefect(defect::kMissingClosingBoundary);
    if (part_begin < n) {
      ParseEntity(body.substr(part_begin), depth + 1, digest, in_attached_message);
    }
  }
}

void MimeParser::ParseLeaf(const Entity& entity, const ContentType& ct, std::string_view body,
                           bool in_attached_message, std::size_t part_index) {
  std::string_view filename;
  bool non_inline = false;
  if (entity.has_disposition) {
    const std::size_t semi = entity.disposition.find(';');
    const std::string_view kind = Trim(entity.disposition.substr(0, semi));
    non_inline = !kind.empty() && !EqualsLower(kind, "inline");
    if (semi != std::string_view::npos) {
      ParamList params;
      ParseParams(entity.disposition.substr(semi + 1), params);
      filename = GetParam(params, "filename", true);
    }
  }
  if (filename.empty()) filename = GetParam(ct.params, "name", true);
  const bool attachment = non_inline || !filename.empty();
  const bool is_text = EqualsLower(ct.type, "text");
  const bool plain = is_text && EqualsLower(ct.subtype, "plain");
  const bool html = is_text && EqualsLower(ct.subtype, "html");
  const bool body_candidate = !attachment && !in_attached_message && ((plain && !has_plain_) || (html && !has_html_));

  bool in_scratch = false;
  const std::string_view decoded = DecodeTransfer(entity.transfer_encoding, body, in_scratch);
  record_->parts[part_index].decoded_size = decoded.size();
  if (attachment) AddAttachment(*record_, filename, record_->parts[part_index].content_type, decoded);
  if (!body_candidate) return;
  const std::string_view charset = GetParam(ct.params, "charset", false);
  if (!in_scratch && ClassifyCte(entity.transfer_encoding) == Cte::kIdentity &&
      EqualsLower(Trim(entity.transfer_encoding), "7bit") && !IsAscii(decoded)) {
    AddDefect(defect::kEightBitIn7Bit);
  }
  const std::string_view text = ToUtf8(charset, decoded, /*bytes_are_stable=*/!in_scratch);
  if (plain) {
    has_plain_ = true;
    plain_ = text;
  } else {
    has_html_ = true;
    html_ = text;
  }
}

void MimeParser::Parse(Message& msg) {
  msg_ = &msg;
  record_ = &msg.record;
  parts_ = 0;
  seen_from_ = seen_subject_ = seen_date_ = seen_message_id_ = false;
  has_plain_ = has_html_ = false;
  plain_ = html_ = {};
  const std::string_view raw = msg.raw;
  if (raw.empty()) {
    msg.parse_failed = true;
    msg.parse_error = parse_failure::kEmpty;
    return;
  }
  if (raw.size() > limits_.max_message_bytes) {
    msg.parse_failed = true;
    msg.parse_error = parse_failure::kTooLarge;
    return;
  }
  Entity entity;
  std::size_t fields = 0;
  const std::size_t body_at = ParseHeaders(raw, /*top=*/true, entity, fields);
  if (fields == 0) {
    record_->Clear();
    msg.parse_failed = true;
    msg.parse_error = parse_failure::kNoHeaders;
    return;
  }
  if (!record_->from) {
    if (!seen_from_) AddDefect(defect::kMissingFrom);
  }
  if (!seen_date_) AddDefect(defect::kMissingDate);
  if (!record_->message_id && !seen_message_id_) AddDefect(defect::kMissingMessageId);
  ParseBody(entity, raw.substr(body_at), 0, false, false);
  record_->has_attachments = !record_->attachments.empty();
  SetBody(*record_, msg.arena, scratch_, has_plain_, plain_, has_html_, html_);
}

void MessageParser::Parse(Message& msg) {
  if (msg.kind == InputKind::kGraphNotification) {
    // A fetch request, not a message, for a mailbox no Graph source polls (notifications for
    // configured mailboxes never become Messages: net::GraphSource takes them on the webhook):
    // quarantined (counted, kept on disk, re-drivable) rather than dropped.
    msg.record.Clear();
    msg.parse_failed = true;
    msg.parse_error = parse_failure::kGraphNotificationWithoutPoller;
  } else if (msg.kind == InputKind::kGraphJson) {
    graph_.Parse(msg, limits_.max_message_bytes);
  } else {
    mime_.Parse(msg);
  }
}

}  // namespace mailrail::stages
