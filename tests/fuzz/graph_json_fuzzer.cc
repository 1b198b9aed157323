// libFuzzer target: MessageParser on arbitrary bytes as a Microsoft Graph message JSON object.
#include <cstddef>
#include <cstdint>

#include "stages/mime_parser.h"
#include "tests/fuzz/record_invariants.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static mailrail::stages::MessageParser parser;
  static mailrail::stages::Message msg;
  msg.Reset();
  msg.raw.assign(reinterpret_cast<const char*>(data), size);
  msg.kind = mailrail::stages::InputKind::kGraphJson;
  parser.Parse(msg);
  mailrail::fuzz::CheckRecord(msg);
  return 0;
}
