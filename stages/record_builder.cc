#include "stages/record_builder.h"

namespace mailrail::stages {
namespace {

bool HasUpper(std::string_view s) {
  for (char c : s) {
    if (c >= 'A' && c <= 'Z') return true;
  }
  return false;
}

}  // namespace

std::string_view LowerCase(std::string_view text, engine::Arena& arena) {
  if (!HasUpper(text)) return text;
  char* out = arena.Allocate(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    out[i] = c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : c;
  }
  return {out, text.size()};
}

std::string_view LowerCaseDomain(std::string_view address, engine::Arena& arena) {
  const std::size_t at = address.rfind('@');
  if (at == std::string_view::npos || !HasUpper(address.substr(at + 1))) return address;
  char* out = arena.Allocate(address.size());
  for (std::size_t i = 0; i < address.size(); ++i) {
    const char c = address[i];
    out[i] = i > at && c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : c;
  }
  return {out, address.size()};
}

void SetBody(Record& record, engine::Arena& arena, ScratchBuffer& scratch, bool has_plain, std::string_view plain,
             bool has_html, std::string_view html) {
  if (has_plain) {
    record.body_text = plain;
  } else if (has_html) {
    scratch.Clear();
    AppendHtmlText(html, scratch);
    record.body_text = arena.Copy(scratch.view());
  } else {
    return;
  }
  scratch.Clear();
  AppendPreview(record.body_text, kPreviewChars, scratch);
  record.body_preview = arena.Copy(scratch.view());
}

void AddAttachment(Record& record, std::string_view filename, std::string_view content_type,
                   std::string_view decoded, std::string_view encoded, TransferEncoding encoding) {
  Attachment& a = record.attachments.emplace_back();
  a.filename = filename;
  a.content_type = content_type;
  a.size = decoded.size();
  a.sha256 = Sha256(decoded);
  a.has_sha256 = true;
  a.encoded = encoded;
  a.encoding = encoding;
}

void DecodeAttachment(const Attachment& attachment, ScratchBuffer& out) {
  out.Clear();
  switch (attachment.encoding) {
    case TransferEncoding::kIdentity: out.Append(attachment.encoded); break;
    case TransferEncoding::kBase64: DecodeBase64(attachment.encoded, out); break;
    case TransferEncoding::kQuotedPrintable: DecodeQuotedPrintable(attachment.encoded, out); break;
  }
}

}  // namespace mailrail::stages
