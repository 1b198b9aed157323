#include "storage/wal_reader.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

namespace mailrail::storage {

base::Result<SegmentReader> SegmentReader::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return base::MakeError("wal.open", "open " + path + ": " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return base::MakeError("wal.stat", "fstat " + path + ": " + std::strerror(err));
  }
  SegmentReader reader;
  reader.path_ = path;
  reader.size_ = static_cast<std::uint64_t>(st.st_size);
  if (reader.size_ > 0) {
    void* map = ::mmap(nullptr, reader.size_, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
    if (map == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      return base::MakeError("wal.mmap", "mmap " + path + ": " + std::strerror(err));
    }
    ::madvise(map, reader.size_, MADV_SEQUENTIAL);
    reader.data_ = static_cast<const std::byte*>(map);
  }
  ::close(fd);
  reader.first_lsn_ = CheckSegmentHeader(std::span(reader.data_, reader.size_));
  reader.next_lsn_ = reader.first_lsn_;
  reader.offset_ = kSegmentHeaderBytes;
  return reader;
}

SegmentReader::SegmentReader(SegmentReader&& other) noexcept { *this = std::move(other); }

SegmentReader& SegmentReader::operator=(SegmentReader&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) ::munmap(const_cast<std::byte*>(data_), size_);
    path_ = std::move(other.path_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    offset_ = other.offset_;
    first_lsn_ = other.first_lsn_;
    next_lsn_ = other.next_lsn_;
    records_ = other.records_;
    finished_ = other.finished_;
    end_ = other.end_;
  }
  return *this;
}

SegmentReader::~SegmentReader() {
  if (data_ != nullptr) ::munmap(const_cast<std::byte*>(data_), size_);
}

void SegmentReader::Finish(std::uint64_t offset, bool clean, RecordCheck reason) {
  finished_ = true;
  end_.offset = offset;
  end_.reason = reason;
  if (clean) return;
  // Last non-zero byte after the stop point, scanning back from the end in 8-byte words.
  std::uint64_t last = size_;
  while (last > offset && last >= 8 && LoadLe<std::uint64_t>(data_ + last - 8) == 0) last -= 8;
  while (last > offset && data_[last - 1] == std::byte{0}) --last;
  if (last <= offset) {
    end_.clean = reason != RecordCheck::kBadChecksum && reason != RecordCheck::kValid;
    if (end_.clean) return;
  }
  end_.clean = false;
  end_.bytes_after = AlignRecord(last - offset);
  for (std::uint64_t p = offset; p + 4 <= last; p += kRecordAlign) {
    if (LoadLe<std::uint32_t>(data_ + p) != kRecordMagic) continue;
    ++end_.headers_after;
    RecordHeader h;
    if (CheckRecord(std::span(data_ + p, size_ - p), &h) == RecordCheck::kValid && h.type != RecordType::kPadding) {
      ++end_.valid_after;
    }
  }
}

bool SegmentReader::Next(RecordView* out) {
  if (finished_) return false;
  if (!header_valid()) {
    Finish(0, false, RecordCheck::kBadMagic);
    end_.clean = false;  // a segment without a valid header is never clean
    return false;
  }
  if (offset_ >= size_) {
    Finish(offset_, true, RecordCheck::kValid);
    return false;
  }
  RecordHeader h;
  const RecordCheck check = CheckRecord(std::span(data_ + offset_, size_ - offset_), &h);
  if (check != RecordCheck::kValid) {
    Finish(offset_, false, check);
    return false;
  }
  if (h.type == RecordType::kPadding) {
    Finish(offset_, true, RecordCheck::kValid);
    return false;
  }
  if (h.lsn != next_lsn_) {
    end_.lsn_mismatch = true;
    Finish(offset_, false, RecordCheck::kValid);
    return false;
  }
  out->header = h;
  out->payload = std::span(data_ + offset_ + kRecordHeaderBytes, h.length);
  out->offset = offset_;
  offset_ += RecordFootprint(h.length);
  ++next_lsn_;
  ++records_;
  return true;
}

base::Result<std::vector<std::pair<std::uint64_t, std::string>>> ListSegments(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return base::MakeError("wal.opendir", "opendir " + dir + ": " + std::strerror(errno));
  std::vector<std::pair<std::uint64_t, std::string>> segments;
  while (const dirent* entry = ::readdir(d)) {
    const std::uint64_t lsn = ParseSegmentFileName(entry->d_name);
    if (lsn != 0) segments.emplace_back(lsn, entry->d_name);
  }
  ::closedir(d);
  std::sort(segments.begin(), segments.end());
  return segments;
}

base::Result<WalReader> WalReader::Open(const std::string& dir, Options options) {
  auto listed = ListSegments(dir);
  if (!listed) return listed.error();
  WalReader reader;
  reader.dir_ = dir;
  reader.options_ = options;
  auto& all = listed.value();
  std::erase_if(all, [&](const auto& s) { return s.first >= options.end_lsn; });
  // Start at the last segment that can hold after_lsn + 1.
  std::size_t start = 0;
  for (std::size_t i = 0; i < all.size(); ++i) {
    if (all[i].first <= options.after_lsn + 1) start = i;
  }
  reader.segments_.assign(all.begin() + static_cast<std::ptrdiff_t>(start), all.end());
  reader.report_.segments = reader.segments_.size();
  return reader;
}

bool WalReader::OpenNextSegment() {
  while (next_segment_ < segments_.size()) {
    const std::string& name = segments_[next_segment_].second;
    ++next_segment_;
    auto opened = SegmentReader::Open(dir_ + "/" + name);
    if (!opened) {
      report_.damage.push_back({name, 0, opened.error().code, 0, expected_lsn_, 0});
      expected_lsn_ = 0;
      continue;
    }
    current_ = std::make_unique<SegmentReader>(std::move(opened.value()));
    if (!current_->header_valid()) {
      report_.damage.push_back({name, 0, "bad_header", current_->file_bytes(), expected_lsn_, 0});
      current_.reset();
      expected_lsn_ = 0;
      continue;
    }
    const std::uint64_t first = current_->first_lsn();
    // Fill in where an earlier damage's lost range ends, or report a gap between segments.
    if (!report_.damage.empty() && report_.damage.back().lost_last_lsn == 0 &&
        report_.damage.back().lost_first_lsn != 0) {
      report_.damage.back().lost_last_lsn = first - 1;
    } else if (expected_lsn_ != 0 && first != expected_lsn_) {
      report_.damage.push_back({name, 0, "lsn_gap", 0, expected_lsn_, first - 1});
    }
    expected_lsn_ = first;
    return true;
  }
  return false;
}

void WalReader::CloseSegment(bool newest) {
  const SegmentEnd& end = current_->end();
  const std::string name = current_->path().substr(dir_.size() + 1);
  if (!end.clean) {
    if (newest) {
      report_.tail_segment = name;
      report_.tail_offset = end.offset;
      report_.tail_bytes_cut = end.bytes_after;
      report_.tail_records_cut = end.headers_after;
      report_.tail_valid_records_after = end.valid_after;
    } else {
      const std::string what = end.lsn_mismatch ? "lsn_mismatch" : std::string(RecordCheckName(end.reason));
      report_.damage.push_back({name, end.offset, what, end.bytes_after, current_->last_lsn() + 1, 0});
    }
  }
  expected_lsn_ = end.clean ? current_->last_lsn() + 1 : 0;
  current_.reset();
}

bool WalReader::Next(RecordView* out) {
  for (;;) {
    if (current_ == nullptr && !OpenNextSegment()) return false;
    if (!current_->Next(out)) {
      CloseSegment(next_segment_ == segments_.size());
      continue;
    }
    if (out->header.lsn >= options_.end_lsn) {
      current_.reset();
      next_segment_ = segments_.size();
      return false;
    }
    ++report_.records;
    report_.bytes += RecordFootprint(out->header.length);
    if (report_.first_lsn == 0) report_.first_lsn = out->header.lsn;
    report_.last_lsn = out->header.lsn;
    if (out->header.lsn <= options_.after_lsn || out->header.type != RecordType::kMessage) continue;
    return true;
  }
}

}  // namespace mailrail::storage
