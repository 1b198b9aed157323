#include "stages/record_json.h"

#include <array>
#include <cstring>
#include <ctime>

#include <fmt/format.h>

namespace mailrail::stages {
namespace {

constexpr char kHex[] = "0123456789abcdef";

// Length of the valid UTF-8 sequence starting at s[i], or 0 when it is not valid UTF-8.
std::size_t Utf8SequenceLength(std::string_view s, std::size_t i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  auto cont = [&](std::size_t k) {
    return i + k < s.size() && (static_cast<unsigned char>(s[i + k]) & 0xC0) == 0x80;
  };
  if (b0 >= 0xC2 && b0 <= 0xDF) return cont(1) ? 2 : 0;
  if (b0 >= 0xE0 && b0 <= 0xEF) {
    if (!cont(1) || !cont(2)) return 0;
    const auto b1 = static_cast<unsigned char>(s[i + 1]);
    if (b0 == 0xE0 && b1 < 0xA0) return 0;  // overlong
    if (b0 == 0xED && b1 >= 0xA0) return 0;  // surrogate
    return 3;
  }
  if (b0 >= 0xF0 && b0 <= 0xF4) {
    if (!cont(1) || !cont(2) || !cont(3)) return 0;
    const auto b1 = static_cast<unsigned char>(s[i + 1]);
    if (b0 == 0xF0 && b1 < 0x90) return 0;  // overlong
    if (b0 == 0xF4 && b1 >= 0x90) return 0;  // above U+10FFFF
    return 4;
  }
  return 0;
}

void AppendAddress(const Address& a, std::string& out) {
  out += "{\"name\":";
  AppendJsonString(a.name, out);
  out += ",\"address\":";
  AppendJsonString(a.address, out);
  out += '}';
}

void AppendAddressList(std::string_view key, const std::vector<Address>& list, std::string& out) {
  out += ",\"";
  out += key;
  out += "\":[";
  for (std::size_t i = 0; i < list.size(); ++i) {
    if (i > 0) out += ',';
    AppendAddress(list[i], out);
  }
  out += ']';
}

void AppendStringList(std::string_view key, const std::vector<std::string_view>& list, std::string& out) {
  out += ",\"";
  out += key;
  out += "\":[";
  for (std::size_t i = 0; i < list.size(); ++i) {
    if (i > 0) out += ',';
    AppendJsonString(list[i], out);
  }
  out += ']';
}

void AppendOptionalString(std::string_view key, const std::optional<std::string_view>& value, std::string& out) {
  out += ",\"";
  out += key;
  out += "\":";
  if (value) {
    AppendJsonString(*value, out);
  } else {
    out += "null";
  }
}

void AppendHexBytes(const std::uint8_t* bytes, std::size_t n, std::string& out) {
  for (std::size_t i = 0; i < n; ++i) {
    out += kHex[bytes[i] >> 4];
    out += kHex[bytes[i] & 15];
  }
}

}  // namespace

void AppendJsonString(std::string_view text, std::string& out) {
  out += '"';
  std::size_t run_start = 0;
  auto flush = [&](std::size_t end) {
    if (end > run_start) out.append(text.data() + run_start, end - run_start);
  };
  for (std::size_t i = 0; i < text.size();) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
      ++i;
      continue;
    }
    if (c >= 0x80) {
      const std::size_t len = Utf8SequenceLength(text, i);
      if (len > 0) {
        i += len;
        continue;
      }
      flush(i);
      out += "\xEF\xBF\xBD";  // U+FFFD for a byte that is not UTF-8
      run_start = ++i;
      continue;
    }
    flush(i);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        out += "\\u00";
        out += kHex[c >> 4];
        out += kHex[c & 15];
    }
    run_start = ++i;
  }
  flush(text.size());
  out += '"';
}

void AppendRfc3339(std::int64_t unix_ms, std::string& out) {
  std::int64_t seconds = unix_ms / 1000;
  std::int64_t millis = unix_ms % 1000;
  if (millis < 0) {
    millis += 1000;
    seconds -= 1;
  }
  const std::time_t t = static_cast<std::time_t>(seconds);
  std::tm tm{};
  gmtime_r(&t, &tm);
  fmt::format_to(std::back_inserter(out), "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, millis);
}

std::string_view ToString(FilterAction action) {
  switch (action) {
    case FilterAction::kAccept: return "accept";
    case FilterAction::kLabel: return "label";
    case FilterAction::kQuarantine: return "quarantine";
    case FilterAction::kDrop: return "drop";
  }
  return "accept";
}

std::string_view ToString(SourceKind kind) {
  switch (kind) {
    case SourceKind::kReplay: return "replay";
    case SourceKind::kWebhook: return "webhook";
    case SourceKind::kImap: return "imap";
    case SourceKind::kGraph: return "graph";
  }
  return "replay";
}

void AppendRecordJson(const Message& msg, std::string& out) {
  const Record& r = msg.record;
  fmt::format_to(std::back_inserter(out), "{{\"lsn\":{}", msg.lsn);
  AppendOptionalString("message_id", r.message_id, out);
  out += ",\"dedup_key\":\"";
  std::array<std::uint8_t, 16> key{};
  for (int i = 0; i < 8; ++i) {
    key[i] = static_cast<std::uint8_t>(r.dedup_key.high >> (56 - 8 * i));
    key[8 + i] = static_cast<std::uint8_t>(r.dedup_key.low >> (56 - 8 * i));
  }
  AppendHexBytes(key.data(), key.size(), out);
  out += "\",\"source\":{\"kind\":\"";
  out += ToString(msg.source.kind);
  out += "\",\"id\":";
  AppendJsonString(msg.source.id, out);
  out += ",\"position\":";
  AppendJsonString(msg.source.position, out);
  out += "},\"received_at\":\"";
  AppendRfc3339(msg.received_at_ms, out);
  out += "\",\"date\":";
  if (r.date_unix_ms) {
    out += '"';
    AppendRfc3339(*r.date_unix_ms, out);
    out += '"';
  } else {
    out += "null";
  }
  out += ",\"from\":";
  if (r.from) {
    AppendAddress(*r.from, out);
  } else {
    out += "null";
  }
  AppendAddressList("to", r.to, out);
  AppendAddressList("cc", r.cc, out);
  AppendAddressList("reply_to", r.reply_to, out);
  out += ",\"subject\":";
  AppendJsonString(r.subject, out);
  AppendOptionalString("in_reply_to", r.in_reply_to, out);
  AppendStringList("references", r.references, out);
  fmt::format_to(std::back_inserter(out), ",\"size\":{},\"has_attachments\":{},\"attachments\":[", msg.raw.size(),
                 r.has_attachments || !r.attachments.empty() ? "true" : "false");
  for (std::size_t i = 0; i < r.attachments.size(); ++i) {
    const Attachment& a = r.attachments[i];
    if (i > 0) out += ',';
    out += "{\"filename\":";
    AppendJsonString(a.filename, out);
    out += ",\"content_type\":";
    AppendJsonString(a.content_type, out);
    fmt::format_to(std::back_inserter(out), ",\"size\":{},\"sha256\":", a.size);
    if (a.has_sha256) {
      out += '"';
      AppendHexBytes(a.sha256.data(), a.sha256.size(), out);
      out += '"';
    } else {
      out += "null";  // Graph metadata without contentBytes: the bytes were never seen
    }
    if (!a.stored.empty()) {
      out += ",\"stored\":";
      AppendJsonString(a.stored, out);
    } else if (!a.not_stored.empty()) {
      out += ",\"not_stored\":";
      AppendJsonString(a.not_stored, out);
    }
    out += '}';
  }
  out += "],\"body_preview\":";
  AppendJsonString(r.body_preview, out);
  AppendStringList("labels", r.labels, out);
  fmt::format_to(std::back_inserter(out), ",\"spam_score\":{}", r.spam_score);
  out += ",\"action\":\"";
  out += ToString(r.action);
  out += '"';
  AppendStringList("rules", r.rules, out);
  AppendStringList("defects", r.defects, out);
  out += '}';
}

}  // namespace mailrail::stages
