// libFuzzer target: MessageParser on arbitrary bytes as an RFC 5322/MIME message.
// Besides ASan/UBSan findings it checks the record's invariants: decoded text is valid UTF-8 and
// the preview holds at most 256 characters.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "stages/mime_parser.h"
#include "tests/fuzz/record_invariants.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static mailrail::stages::MessageParser parser;
  static mailrail::stages::Message msg;
  msg.Reset();
  msg.raw.assign(reinterpret_cast<const char*>(data), size);
  msg.kind = mailrail::stages::InputKind::kRfc822;
  parser.Parse(msg);
  mailrail::fuzz::CheckRecord(msg);
  return 0;
}
