#pragma once
// GraphJsonParser: one Microsoft Graph `message` resource (JSON object) -> Record, with simdjson
// On-Demand. Reads internetMessageId, id, from, sender (fallback for from), toRecipients,
// ccRecipients, replyTo, subject, sentDateTime (-> date; receivedDateTime when absent),
// hasAttachments, body {contentType, content} and attachments[] {name, contentType, size,
// contentBytes}. Other fields are skipped.
//
// Zero copy: JSON strings without escapes are views into Message::raw; escaped ones are unescaped
//   into Message::arena. contentBytes is base64-decoded straight from the raw buffer into scratch,
//   hashed and dropped. simdjson needs SIMDJSON_PADDING readable bytes after the document: Parse
//   reserves them in Message::raw's capacity (a pooled message keeps that capacity, so this
//   allocates only the first time a slot sees a larger message).
// Errors: invalid JSON or a non-object document -> msg.parse_failed; a field of the wrong type ->
//   defect "malformed_json_field", the rest is still read.
// Threading: one parser per parse thread.

#include <cstddef>
#include <string_view>
#include <vector>

#include <simdjson.h>

#include "stages/message.h"
#include "stages/text_codec.h"

namespace mailrail::stages {

class GraphJsonParser {
 public:
  GraphJsonParser() = default;
  GraphJsonParser(const GraphJsonParser&) = delete;
  GraphJsonParser& operator=(const GraphJsonParser&) = delete;

  void Parse(Message& msg, std::size_t max_bytes);

 private:
  // Reads a JSON string value; false (and a defect) when it is not a string.
  bool ReadString(simdjson::ondemand::value value, std::string_view& out);
  bool ReadRecipient(simdjson::ondemand::value value, Address& out);
  void ReadRecipients(simdjson::ondemand::value value, std::vector<Address>& out);
  void ReadBody(simdjson::ondemand::value value);
  void ReadAttachments(simdjson::ondemand::value value);
  void AddDefect(std::string_view defect);
  void OnError(simdjson::error_code error);

  simdjson::ondemand::parser parser_;
  ScratchBuffer decoded_;
  ScratchBuffer scratch_;
  Message* msg_ = nullptr;
  std::string_view body_content_;
  bool body_is_html_ = false;
  bool has_body_ = false;
  bool json_error_ = false;  // the document is broken (not just a field of the wrong type)
};

}  // namespace mailrail::stages
