#pragma once
// Record: the normalized result of parsing one message (RFC 5322/MIME or Graph JSON), the unit the
// dedup, filter and forward stages work on. Its serialized form is the JSONL line / batch item of
// ../shared/BRIEF.md ("The record"); field names there are a stable contract.
//
// Ownership and lifetime: every string_view points either into the message's raw bytes
// (Message::raw) or into its arena (Message::arena); both live in the same pooled Message, so a
// Record is valid exactly as long as the Message that holds it, and dies at Message::Reset().
// Vectors are cleared, not freed, on reset, so a reused Message allocates nothing in steady state.
// Threading: owned by whichever stage holds the Message.

#include <array>
#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

namespace mailrail::stages {

struct Address {
  std::string_view name;     // display name, decoded to UTF-8 ("" when absent)
  std::string_view address;  // local@domain with the domain lower-cased
};

// How Attachment::encoded must be decoded to give the attachment's bytes.
enum class TransferEncoding : std::uint8_t { kIdentity, kBase64, kQuotedPrintable };

struct Attachment {
  std::string_view filename;      // decoded to UTF-8; "" when the part has none
  std::string_view content_type;  // "type/subtype", lower-case
  std::uint64_t size = 0;         // decoded bytes
  std::array<std::uint8_t, 32> sha256{};
  bool has_sha256 = false;        // false when the bytes were not in the input (Graph without contentBytes)
  // The bytes as they appear in the input (a view into Message::raw or its arena), decoded again
  // by the attachment store: the parser hashes while decoding into a reused scratch buffer and
  // keeps no decoded copy. Empty when has_sha256 is false.
  std::string_view encoded;
  TransferEncoding encoding = TransferEncoding::kIdentity;
  // Set by the attachment stage when a store is configured (both empty otherwise): the store's
  // reference ("sha256:<hex>", "s3://bucket/key"; in the arena), or why the bytes were not
  // stored ("too_large", "budget_full", "store_error", "bytes_not_in_input"; a static string).
  std::string_view stored;
  std::string_view not_stored;
};

// One MIME entity of the message tree, in pre-order (root first). Containers (multipart/*) and
// message/rfc822 entities are listed too; the root of an attached message follows its
// message/rfc822 entity with depth + 1.
struct MimePart {
  std::string_view content_type;  // "type/subtype", lower-case (defaults applied: text/plain)
  std::uint32_t depth = 0;        // 0 = the message itself
  std::uint64_t decoded_size = 0; // transfer-decoded bytes of a leaf; 0 for containers
};

// A header field as it appears in the message: name and unfolded-or-raw value, both views.
struct HeaderField {
  std::string_view name;
  std::string_view value;
};

// A named parse defect (damaged but parseable input), like Python's email defects.
// Names are stable strings (counted by reason in stats): "missing_boundary", "bad_base64", ...
using Defect = std::string_view;

// 128-bit fingerprint used by dedup (XXH3-128 of the normalized key).
struct Fingerprint {
  std::uint64_t low = 0;
  std::uint64_t high = 0;
  friend bool operator==(const Fingerprint&, const Fingerprint&) = default;
};

enum class FilterAction : std::uint8_t { kAccept, kLabel, kQuarantine, kDrop };

struct Record {
  std::optional<std::string_view> message_id;  // without angle brackets
  std::optional<std::int64_t> date_unix_ms;    // Date header (or Graph sentDateTime) in UTC
  std::optional<Address> from;
  std::vector<Address> to;
  std::vector<Address> cc;
  std::vector<Address> reply_to;
  std::string_view subject;  // decoded to UTF-8, "" when absent
  std::optional<std::string_view> in_reply_to;
  std::vector<std::string_view> references;
  std::vector<Attachment> attachments;
  bool has_attachments = false;  // MIME: attachments non-empty; Graph: `hasAttachments`
  std::string_view body_preview;  // at most 256 Unicode characters
  std::vector<Defect> defects;

  // Not serialized; for dedup and filter.
  std::vector<HeaderField> headers;  // top-level header fields in order (Graph: none)
  std::string_view body_text;        // decoded first text/plain part, or text/html stripped of tags
  std::optional<std::string_view> graph_id;  // Graph `id`, dedup fallback
  std::vector<MimePart> parts;               // MIME tree in pre-order (Graph: none)

  // Set by dedup and filter.
  Fingerprint dedup_key;
  std::vector<std::string_view> labels;
  std::vector<std::string_view> rules;  // ids of the rules that fired
  double spam_score = 0.0;
  FilterAction action = FilterAction::kAccept;

  void Clear() {
    message_id.reset();
    date_unix_ms.reset();
    from.reset();
    to.clear();
    cc.clear();
    reply_to.clear();
    subject = {};
    in_reply_to.reset();
    references.clear();
    attachments.clear();
    has_attachments = false;
    body_preview = {};
    defects.clear();
    headers.clear();
    body_text = {};
    graph_id.reset();
    parts.clear();
    dedup_key = {};
    labels.clear();
    rules.clear();
    spam_score = 0.0;
    action = FilterAction::kAccept;
  }
};

}  // namespace mailrail::stages
