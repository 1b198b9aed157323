#pragma once
// MimeParser: RFC 5322 / MIME (RFC 2045-2049, 2047, 2231) message -> Record.
// MessageParser: the parse stage's entry point; dispatches on Message::kind to MimeParser or
// GraphJsonParser.
//
// Output: fills Message::record. Views point into Message::raw when the bytes can be used as they
//   are (plain header values, unencoded UTF-8 bodies, simple addresses) and into Message::arena
//   otherwise (unfolded or decoded text, charset conversions). They die with the Message.
// Damaged input is parsed best-effort and named in record.defects (stages/parse_defects.h);
//   input that cannot be parsed at all sets msg.parse_failed and msg.parse_error.
// Bounds: nesting depth, part count and header count are limited (ParseLimits); every loop is
//   linear in the input, so no input crashes, hangs or reads outside Message::raw.
// Memory: the parser keeps scratch buffers and an iconv cache across messages; in steady state a
//   parse allocates nothing except arena blocks beyond the message's first one.
// Threading: one parser per parse thread; not shareable. Parse() never blocks.

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "stages/charset_converter.h"
#include "stages/graph_json.h"
#include "stages/message.h"
#include "stages/text_codec.h"

namespace mailrail::stages {

// ParseLimits: bounds that keep hostile input linear; exceeding one is a defect, not an error
// (max_message_bytes: parse_failed "too_large").
struct ParseLimits {
  std::size_t max_message_bytes = 256u << 20;
  std::size_t max_depth = 32;       // nested multiparts / message/rfc822
  std::size_t max_parts = 1000;     // MIME entities per message
  std::size_t max_headers = 1000;   // header fields per entity
};

class MimeParser {
 public:
  explicit MimeParser(ParseLimits limits = {}) : limits_(limits) {}
  MimeParser(const MimeParser&) = delete;
  MimeParser& operator=(const MimeParser&) = delete;

  void Parse(Message& msg);

 private:
  struct Param {
    std::string_view name;
    std::string_view value;  // raw: still quoted when `quoted`
    bool quoted = false;
  };
  struct ParamList {
    static constexpr std::size_t kMax = 32;
    Param items[kMax];
    std::size_t size = 0;
  };
  struct Entity {
    std::string_view content_type;
    std::string_view transfer_encoding;
    std::string_view disposition;
    bool has_content_type = false;
    bool has_disposition = false;
  };
  struct ContentType {
    std::string_view type;
    std::string_view subtype;
    ParamList params;
  };
  struct Token;

  // Parses the header block at the start of `data`; returns the offset of the body.
  std::size_t ParseHeaders(std::string_view data, bool top, Entity& entity, std::size_t& field_count);
  void OnTopLevelField(std::string_view name, std::string_view value, bool folded);
  void ParseBody(const Entity& entity, std::string_view body, std::size_t depth, bool digest_child,
                 bool in_attached_message);
  void ParseEntity(std::string_view data, std::size_t depth, bool digest_child, bool in_attached_message);
  void ParseMultipart(const ContentType& ct, std::string_view body, std::size_t depth, bool in_attached_message,
                      std::size_t part_index);
  void ParseLeaf(const Entity& entity, const ContentType& ct, std::string_view body, bool in_attached_message,
                 std::size_t part_index);
  std::string_view MediaType(const ContentType& ct);
  void ParseContentType(std::string_view value, bool digest_child, ContentType& out);
  void ParseParams(std::string_view rest, ParamList& out);
  // Value of parameter `name` (lower-case), joining RFC 2231 sections and decoding charsets.
  // `decode_words`: also decode RFC 2047 words in a plain value (file names).
  std::string_view GetParam(const ParamList& params, std::string_view name, bool decode_words);
  std::string_view Unquote(std::string_view quoted);
  std::string_view Unfold(std::string_view value);
  // RFC 2047 decoding of unstructured text (or a phrase) to UTF-8; a view when nothing changes.
  std::string_view DecodeText(std::string_view text);
  void ParseAddressList(std::string_view value, std::vector<Address>& out);
  void FinishMailbox(const Token* tokens, std::size_t count, std::vector<Address>& out);
  std::string_view DecodeTransfer(std::string_view cte, std::string_view body, bool& decoded_in_scratch);
  std::string_view ToUtf8(std::string_view charset, std::string_view bytes, bool bytes_are_stable);
  void AddDefect(std::string_view defect);

  ParseLimits limits_;
  CharsetConverter converter_;
  ScratchBuffer decoded_;   // transfer-decoded part bodies
  ScratchBuffer text_;      // charset conversion output
  ScratchBuffer words_;     // RFC 2047 raw decoded bytes
  ScratchBuffer scratch_;   // misc (names, unfolding, previews)
  std::vector<Address> from_scratch_;

  Message* msg_ = nullptr;
  Record* record_ = nullptr;
  std::size_t parts_ = 0;
  bool seen_from_ = false, seen_subject_ = false, seen_date_ = false, seen_message_id_ = false;
  bool has_plain_ = false, has_html_ = false;
  std::string_view plain_, html_;
};

class MessageParser {
 public:
  explicit MessageParser(ParseLimits limits = {}) : mime_(limits), limits_(limits) {}
  void Parse(Message& msg);

 private:
  MimeParser mime_;
  GraphJsonParser graph_;
  ParseLimits limits_;
};

}  // namespace mailrail::stages
