#pragma once
// Inflater: streaming gzip (and zlib) decompression of a file fed in pieces, for replaying
// compressed dumps. Concatenated gzip members (as `cat a.gz b.gz` makes) are decoded in turn.
// Threading: one thread. Ownership: output views are valid until the next call to Inflate.

#include <zlib.h>

#include <functional>
#include <span>
#include <string>
#include <string_view>

#include "engine/base/result.h"

namespace mailrail::stages {

class Inflater {
 public:
  Inflater();
  ~Inflater();
  Inflater(const Inflater&) = delete;
  Inflater& operator=(const Inflater&) = delete;

  void Reset();
  // Decompresses `input`, calling `sink` with each run of output bytes.
  base::Status Inflate(std::span<const char> input, const std::function<void(std::string_view)>& sink);
  // True when the input so far ended exactly at the end of a gzip member.
  bool at_member_end() const { return at_member_end_; }

 private:
  z_stream stream_{};
  std::string out_;
  bool at_member_end_ = false;
};

// True when `head` starts with the gzip magic bytes.
inline bool LooksGzipped(std::string_view head) {
  return head.size() >= 2 && static_cast<unsigned char>(head[0]) == 0x1f && static_cast<unsigned char>(head[1]) == 0x8b;
}

}  // namespace mailrail::stages
