#include "stages/inflater.h"

#include "engine/base/check.h"

namespace mailrail::stages {

Inflater::Inflater() : out_(256 * 1024, '\0') {
  MR_CHECK(inflateInit2(&stream_, 15 + 32) == Z_OK) << "inflateInit2 failed";  // 32: gzip or zlib header
}

Inflater::~Inflater() { inflateEnd(&stream_); }

void Inflater::Reset() {
  inflateReset(&stream_);
  at_member_end_ = false;
}

base::Status Inflater::Inflate(std::span<const char> input, const std::function<void(std::string_view)>& sink) {
  stream_.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(input.data()));
  stream_.avail_in = static_cast<uInt>(input.size());
  do {
    stream_.next_out = reinterpret_cast<Bytef*>(out_.data());
    stream_.avail_out = static_cast<uInt>(out_.size());
    const int rc = inflate(&stream_, Z_NO_FLUSH);
    const std::size_t produced = out_.size() - stream_.avail_out;
    if (produced > 0) sink(std::string_view(out_.data(), produced));
    at_member_end_ = rc == Z_STREAM_END;
    if (rc == Z_STREAM_END) {
      if (stream_.avail_in > 0) inflateReset(&stream_);  // next gzip member
      continue;
    }
    if (rc == Z_BUF_ERROR && produced == 0) break;
    if (rc != Z_OK) {
      return base::MakeError("gzip.corrupt", std::string("gzip data is corrupt: ") + (stream_.msg ? stream_.msg : "inflate error"));
    }
  } while (stream_.avail_in > 0 || stream_.avail_out == 0);
  return base::OkStatus();
}

}  // namespace mailrail::stages
