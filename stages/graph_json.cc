#include "stages/graph_json.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "stages/date_time.h"
#include "stages/parse_defects.h"
#include "stages/record_builder.h"

namespace mailrail::stages {

namespace ondemand = simdjson::ondemand;

void GraphJsonParser::AddDefect(std::string_view defect) {
  for (auto d : msg_->record.defects) {
    if (d.data() == defect.data()) return;
  }
  msg_->record.defects.push_back(defect);
}

void GraphJsonParser::OnError(simdjson::error_code error) {
  // A value of the wrong type is a defect; anything else means the document itself is broken.
  if (error == simdjson::INCORRECT_TYPE || error == simdjson::NUMBER_ERROR) {
    AddDefect(defect::kMalformedJsonField);
  } else {
    json_error_ = true;
  }
}

bool GraphJsonParser::ReadString(ondemand::value value, std::string_view& out) {
  ondemand::raw_json_string raw;
  if (const auto error = value.get_raw_json_string().get(raw); error != simdjson::SUCCESS) {
    OnError(error);
    return false;
  }
  // raw.raw() points just past the opening quote, inside Message::raw.
  const char* begin = raw.raw();
  const char* const end = msg_->raw.data() + msg_->raw.size();
  const char* p = begin;
  bool escaped = false;
  while (true) {
    const void* q = std::memchr(p, '"', static_cast<std::size_t>(end - p));
    if (q == nullptr) {  // cannot happen for a document simdjson accepted
      AddDefect(defect::kMalformedJsonField);
      return false;
    }
    const char* quote = static_cast<const char*>(q);
    std::size_t backslashes = 0;
    while (quote - backslashes > begin && quote[-1 - static_cast<std::ptrdiff_t>(backslashes)] == '\\') {
      ++backslashes;
    }
    if (std::memchr(p, '\\', static_cast<std::size_t>(quote - p)) != nullptr) escaped = true;
    if (backslashes % 2 == 0) {
      if (!escaped) {
        out = std::string_view(begin, static_cast<std::size_t>(quote - begin));
        return true;
      }
      // Unescape straight into the arena (simdjson may write up to SIMDJSON_PADDING bytes past
      // the text; that slack stays unused in the arena).
      const std::size_t len = static_cast<std::size_t>(quote - begin);
      auto* dst = reinterpret_cast<std::uint8_t*>(msg_->arena.Allocate(len + simdjson::SIMDJSON_PADDING));
      std::string_view text;
      if (const auto error = parser_.unescape(raw, dst).get(text); error != simdjson::SUCCESS) {
        OnError(error);
        return false;
      }
      out = text;
      return true;
    }
    p = quote + 1;
  }
}

bool GraphJsonParser::ReadRecipient(ondemand::value value, Address& out) {
  ondemand::object recipient;
  if (const auto error = value.get_object().get(recipient); error != simdjson::SUCCESS) {
    OnError(error);
    return false;
  }
  bool found = false;
  for (auto field_result : recipient) {
    ondemand::field field;
    if (std::move(field_result).get(field) != simdjson::SUCCESS) {
      json_error_ = true;
      return false;
    }
    const ondemand::raw_json_string key = field.key();
    if (key != "emailAddress") continue;
    ondemand::object email;
    if (const auto error = field.value().get_object().get(email); error != simdjson::SUCCESS) {
      OnError(error);
      return false;
    }
    for (auto inner_result : email) {
      ondemand::field inner;
      if (std::move(inner_result).get(inner) != simdjson::SUCCESS) {
        json_error_ = true;
        return false;
      }
      const ondemand::raw_json_string inner_key = inner.key();
      if (inner_key == "name") {
        ReadString(inner.value(), out.name);
      } else if (inner_key == "address") {
        std::string_view address;
        if (ReadString(inner.value(), address)) {
          out.address = LowerCaseDomain(address, msg_->arena);
          found = true;
        }
      }
    }
  }
  return found;
}

void GraphJsonParser::ReadRecipients(ondemand::value value, std::vector<Address>& out) {
  ondemand::array array;
  if (const auto error = value.get_array().get(array); error != simdjson::SUCCESS) {
    OnError(error);
    return;
  }
  for (auto element : array) {
    ondemand::value v;
    if (std::move(element).get(v) != simdjson::SUCCESS) {
      json_error_ = true;
      return;
    }
    Address a;
    if (ReadRecipient(v, a)) out.push_back(a);
  }
}

void GraphJsonParser::ReadBody(ondemand::value value) {
  ondemand::object body;
  if (const auto error = value.get_object().get(body); error != simdjson::SUCCESS) {
    OnError(error);
    return;
  }
  for (auto field_result : body) {
    ondemand::field field;
    if (std::move(field_result).get(field) != simdjson::SUCCESS) {
      json_error_ = true;
      return;
    }
    const ondemand::raw_json_string key = field.key();
    if (key == "contentType") {
      std::string_view type;
      if (ReadString(field.value(), type)) body_is_html_ = EqualsLower(type, "html");
    } else if (key == "content") {
      has_body_ = ReadString(field.value(), body_content_);
    }
  }
}

void GraphJsonParser::ReadAttachments(ondemand::value value) {
  ondemand::array array;
  if (const auto error = value.get_array().get(array); error != simdjson::SUCCESS) {
    OnError(error);
    return;
  }
  Record& record = msg_->record;
  for (auto element : array) {
    ondemand::object object;
    if (const auto error = std::move(element).get_object().get(object); error != simdjson::SUCCESS) {
      OnError(error);
      continue;
    }
    std::string_view name, content_type, content_bytes;
    bool has_bytes = false;
    std::uint64_t size = 0;
    for (auto field_result : object) {
      ondemand::field field;
      if (std::move(field_result).get(field) != simdjson::SUCCESS) {
        json_error_ = true;
        return;
      }
      const ondemand::raw_json_string key = field.key();
      if (key == "name") {
        ReadString(field.value(), name);
      } else if (key == "contentType") {
        ReadString(field.value(), content_type);
      } else if (key == "size") {
        if (const auto error = field.value().get_uint64().get(size); error != simdjson::SUCCESS) OnError(error);
      } else if (key == "contentBytes") {
        has_bytes = ReadString(field.value(), content_bytes);
      }
    }
    content_type = LowerCase(Trim(content_type.substr(0, content_type.find(';'))), msg_->arena);
    if (has_bytes) {
      decoded_.Clear();
      const DecodeStatus status = DecodeBase64(content_bytes, decoded_);
      if (status.invalid) AddDefect(defect::kBadBase64);
      if (status.truncated) AddDefect(defect::kTruncatedBase64);
      AddAttachment(record, name, content_type, decoded_.view(), content_bytes, TransferEncoding::kBase64);
    } else {
      Attachment& a = record.attachments.emplace_back();
      a.filename = name;
      a.content_type = content_type;
      a.size = size;
    }
  }
}

void GraphJsonParser::Parse(Message& msg, std::size_t max_bytes) {
  msg_ = &msg;
  json_error_ = false;
  body_content_ = {};
  body_is_html_ = false;
  has_body_ = false;
  Record& record = msg.record;
  if (msg.raw.empty()) {
    msg.parse_failed = true;
    msg.parse_error = parse_failure::kEmpty;
    return;
  }
  if (msg.raw.size() > max_bytes) {
    msg.parse_failed = true;
    msg.parse_error = parse_failure::kTooLarge;
    return;
  }
  if (msg.raw.capacity() < msg.raw.size() + simdjson::SIMDJSON_PADDING) {
    msg.raw.reserve(msg.raw.size() + simdjson::SIMDJSON_PADDING);
  }
  const simdjson::padded_string_view input(msg.raw.data(), msg.raw.size(), msg.raw.capacity());
  ondemand::document doc;
  ondemand::object object;
  if (parser_.iterate(input).get(doc) != simdjson::SUCCESS) {
    msg.parse_failed = true;
    msg.parse_error = parse_failure::kInvalidJson;
    return;
  }
  if (doc.get_object().get(object) != simdjson::SUCCESS) {
    msg.parse_failed = true;
    msg.parse_error = parse_failure::kNotAJsonObject;
    return;
  }
  std::optional<Address> sender;
  std::optional<std::int64_t> received;
  bool saw_sent = false;
  bool ok = true;
  for (auto field_result : object) {
    if (json_error_) break;
    ondemand::field field;
    if (std::move(field_result).get(field) != simdjson::SUCCESS) {
      ok = false;
      break;
    }
    const ondemand::raw_json_string key = field.key();
    ondemand::value value = field.value();
    if (key == "internetMessageId") {
      std::string_view id;
      if (ReadString(value, id)) {
        id = Trim(id);
        if (!id.empty() && id.front() == '<') id.remove_prefix(1);
        if (!id.empty() && id.back() == '>') id.remove_suffix(1);
        if (!id.empty()) record.message_id = id;
      }
    } else if (key == "id") {
      std::string_view id;
      if (ReadString(value, id)) record.graph_id = id;
    } else if (key == "subject") {
      ondemand::json_type type;
      if (value.type().get(type) == simdjson::SUCCESS && type == ondemand::json_type::null) continue;
      ReadString(value, record.subject);
    } else if (key == "from") {
      Address a;
      if (ReadRecipient(value, a)) record.from = a;
    } else if (key == "sender") {
      Address a;
      if (ReadRecipient(value, a)) sender = a;
    } else if (key == "toRecipients") {
      ReadRecipients(value, record.to);
    } else if (key == "ccRecipients") {
      ReadRecipients(value, record.cc);
    } else if (key == "replyTo") {
      ReadRecipients(value, record.reply_to);
    } else if (key == "sentDateTime" || key == "receivedDateTime") {
      const bool is_sent = key == "sentDateTime";
      std::string_view text;
      if (!ReadString(value, text)) continue;
      const auto ms = ParseIso8601Ms(text);
      if (!ms) AddDefect(defect::kUnparseableDate);
      if (is_sent) {
        saw_sent = true;
        record.date_unix_ms = ms;
      } else {
        received = ms;
      }
    } else if (key == "hasAttachments") {
      bool has = false;
      if (const auto error = value.get_bool().get(has); error != simdjson::SUCCESS) OnError(error);
      record.has_attachments = record.has_attachments || has;
    } else if (key == "body") {
      ReadBody(value);
    } else if (key == "attachments") {
      ReadAttachments(value);
    }
  }
  if (!ok || json_error_) {
    // Truncated or malformed JSON after a valid prefix: nothing read can be trusted.
    record.Clear();
    msg.parse_failed = true;
    msg.parse_error = parse_failure::kInvalidJson;
    return;
  }
  if (!record.from && sender) record.from = sender;
  if (!saw_sent && received) record.date_unix_ms = received;
  if (!record.attachments.empty()) record.has_attachments = true;
  if (!record.message_id) AddDefect(defect::kMissingMessageId);
  SetBody(record, msg.arena, scratch_, has_body_ && !body_is_html_, body_content_, has_body_ && body_is_html_,
          body_content_);
}

}  // namespace mailrail::stages
