#include "stages/dump_splitter.h"

#include <charconv>
#include <cstring>
#include <ctime>

namespace mailrail::stages {
namespace {

bool StartsWith(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && s.compare(0, prefix.size(), prefix) == 0;
}

// Position of `needle` in `s` at or after `from`, or npos. glibc's memmem makes one pass with a
// skip table; string_view::find calls memchr once per occurrence of the needle's first byte, which
// is every line for "\nFrom " and every HTML tag for ">From " (a profile of a replay had 10% of
// its samples there).
std::size_t Find(std::string_view s, std::string_view needle, std::size_t from) {
  if (from > s.size()) return std::string_view::npos;
  const void* at = memmem(s.data() + from, s.size() - from, needle.data(), needle.size());
  return at == nullptr ? std::string_view::npos : static_cast<std::size_t>(static_cast<const char*>(at) - s.data());
}

// Case-insensitive search for a header named `name` in the header block `headers` (which ends at
// the blank line). Returns its unfolded-enough value (first line only).
std::optional<std::string_view> FindHeader(std::string_view headers, std::string_view name) {
  std::size_t line = 0;
  while (line < headers.size()) {
    std::size_t end = headers.find('\n', line);
    if (end == std::string_view::npos) end = headers.size();
    std::string_view text = headers.substr(line, end - line);
    if (text.size() > name.size() && text[name.size()] == ':' && strncasecmp(text.data(), name.data(), name.size()) == 0) {
      std::string_view value = text.substr(name.size() + 1);
      while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
      while (!value.empty() && (value.back() == '\r' || value.back() == ' ')) value.remove_suffix(1);
      return value;
    }
    line = end + 1;
  }
  return std::nullopt;
}

}  // namespace

std::optional<std::int64_t> ParseMboxFromLineTime(std::string_view line) {
  // "From <sender> <Www Mmm dd hh:mm:ss yyyy>[ more]"
  if (!StartsWith(line, "From ")) return std::nullopt;
  std::string_view rest = line.substr(5);
  const std::size_t sender_end = rest.find(' ');
  if (sender_end == std::string_view::npos) return std::nullopt;
  rest = rest.substr(sender_end + 1);
  while (!rest.empty() && rest.front() == ' ') rest.remove_prefix(1);
  std::string text(rest.substr(0, 64));
  std::tm tm{};
  const char* end = strptime(text.c_str(), "%a %b %d %H:%M:%S %Y", &tm);
  if (end == nullptr) return std::nullopt;
  return static_cast<std::int64_t>(timegm(&tm)) * 1000;
}

std::optional<std::int64_t> FindGraphReceivedTime(std::string_view json) {
  constexpr std::string_view kKey = "\"receivedDateTime\"";
  std::size_t at = json.find(kKey);
  if (at == std::string_view::npos) return std::nullopt;
  at = json.find('"', at + kKey.size());
  if (at == std::string_view::npos) return std::nullopt;
  std::string text(json.substr(at + 1, 32));
  std::tm tm{};
  const char* end = strptime(text.c_str(), "%Y-%m-%dT%H:%M:%S", &tm);
  if (end == nullptr) return std::nullopt;
  return static_cast<std::int64_t>(timegm(&tm)) * 1000;
}

void DumpSplitter::Reset(SplitFormat format, std::uint64_t base_offset) {
  format_ = format;
  buffer_.clear();
  consumed_ = 0;
  scan_from_ = 0;
  gt_before_from_ = false;
  base_offset_ = base_offset;
  finished_ = false;
  whole_emitted_ = false;
}

void DumpSplitter::Feed(std::span<const char> data) {
  Compact();
  buffer_.append(data.data(), data.size());
}

void DumpSplitter::Finish() { finished_ = true; }

void DumpSplitter::Compact() {
  if (consumed_ == 0) return;
  if (consumed_ < buffer_.size() / 2 && consumed_ < (1 << 20)) return;
  buffer_.erase(0, consumed_);
  base_offset_ += consumed_;
  scan_from_ -= std::min(scan_from_, consumed_);
  consumed_ = 0;
}

bool DumpSplitter::Next(SplitMessage& out) {
  switch (format_) {
    case SplitFormat::kMboxrd:
    case SplitFormat::kMboxo:
      return NextMbox(out);
    case SplitFormat::kGraphJsonl:
      return NextLine(out);
    case SplitFormat::kSingle:
      return NextWhole(out);
  }
  return false;
}

bool DumpSplitter::NextWhole(SplitMessage& out) {
  if (!finished_ || whole_emitted_) return false;
  whole_emitted_ = true;
  out = SplitMessage{};
  out.bytes = std::string_view(buffer_).substr(consumed_);
  out.position = base_offset_ + consumed_;
  consumed_ = buffer_.size();
  return true;
}

bool DumpSplitter::NextLine(SplitMessage& out) {
  std::string_view view(buffer_);
  while (consumed_ < view.size()) {
    std::size_t end = view.find('\n', std::max(consumed_, scan_from_));
    if (end == std::string_view::npos) {
      if (!finished_) {
        scan_from_ = view.size();
        return false;
      }
      end = view.size();
    }
    std::string_view line = view.substr(consumed_, end - consumed_);
    const std::uint64_t position = base_offset_ + consumed_;
    consumed_ = std::min(end + 1, view.size());
    scan_from_ = consumed_;
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t')) line.remove_suffix(1);
    std::size_t first = line.find_first_not_of(" \t");
    if (first == std::string_view::npos) continue;  // blank line
    out = SplitMessage{};
    out.bytes = line.substr(first);
    out.position = position + first;
    out.timestamp_ms = FindGraphReceivedTime(out.bytes);
    return true;
  }
  return false;
}

bool DumpSplitter::NextMbox(SplitMessage& out) {
  std::string_view view(buffer_);
  // Skip blank lines between messages.
  while (consumed_ < view.size() && (view[consumed_] == '\n' || view[consumed_] == '\r')) ++consumed_;
  if (consumed_ >= view.size()) return false;

  const std::size_t start = consumed_;
  std::size_t content = start;
  std::optional<std::int64_t> timestamp;
  if (StartsWith(view.substr(start), "From ")) {
    const std::size_t line_end = view.find('\n', start);
    if (line_end == std::string_view::npos) {
      if (!finished_) return false;
      consumed_ = view.size();  // a lone separator line at the end of the file: no message
      return false;
    }
    timestamp = ParseMboxFromLineTime(view.substr(start, line_end - start));
    content = line_end + 1;
  }
  // Leading bytes that are not a "From " line are still a message (never dropped): the parser
  // decides what they are.

  std::size_t end = std::string_view::npos;  // end of the message's bytes
  std::size_t next = std::string_view::npos; // start of the next separator

  // Content-Length (mboxcl/mboxcl2), trusted when it lands on a separator or the end of file.
  // The CRLF blank line only matters before the LF one (a match starting there ends at most 3
  // bytes after it), so it is not searched for through the rest of the buffer.
  const std::size_t header_end_lf = Find(view, "\n\n", content);
  const std::size_t crlf_limit =
      header_end_lf == std::string_view::npos ? view.size() : std::min(view.size(), header_end_lf + 3);
  const std::size_t header_end_crlf = Find(view.substr(0, crlf_limit), "\r\n\r\n", content);
  const std::size_t header_end = std::min(header_end_lf, header_end_crlf);
  if (header_end != std::string_view::npos) {
    const std::size_t body = header_end + (header_end == header_end_lf ? 2 : 4);
    if (auto cl = FindHeader(view.substr(content, header_end - content), "Content-Length")) {
      std::uint64_t length = 0;
      auto [p, ec] = std::from_chars(cl->data(), cl->data() + cl->size(), length);
      if (ec == std::errc() && p == cl->data() + cl->size()) {
        const std::uint64_t body_end = body + length;
        if (body_end <= view.size()) {
          std::size_t after = static_cast<std::size_t>(body_end);
          while (after < view.size() && (view[after] == '\n' || view[after] == '\r')) ++after;
          if (after == view.size() && !finished_) return false;  // need what follows the body
          if (after == view.size()) {
            end = static_cast<std::size_t>(body_end);
            next = view.size();
          } else if (view.size() - after < 5 && !finished_) {
            return false;
          } else if (StartsWith(view.substr(after), "From ")) {
            end = static_cast<std::size_t>(body_end);
            next = after;
          }
        } else if (!finished_) {
          return false;  // wait for the rest of the body before deciding
        }
      }
    }
  }

  bool quoted = true;  // a body cut by Content-Length was not searched: AppendUnescaped decides
  if (end == std::string_view::npos) {
    // One pass over "From " finds the separator ("\nFrom ") and notes a '>' before any other
    // occurrence (possible >From quoting), so that a message without one is copied as is instead
    // of being searched a second time by AppendUnescaped.
    std::size_t sep = std::string_view::npos;
    for (std::size_t q = Find(view, "From ", std::max(content, scan_from_)); q != std::string_view::npos;
         q = Find(view, "From ", q + 5)) {
      if (q == 0) continue;
      if (view[q - 1] == '\n') {
        sep = q - 1;
        break;
      }
      gt_before_from_ = gt_before_from_ || view[q - 1] == '>';
    }
    if (sep == std::string_view::npos) {
      if (!finished_) {
        // Resume where a "From " cut by the end of the buffer, and the byte before it, are seen again.
        scan_from_ = view.size() > 5 ? std::max(content, view.size() - 5) : content;
        return false;
      }
      end = view.size();
      next = view.size();
    } else {
      end = sep + 1;
      next = sep + 1;
    }
    quoted = gt_before_from_;
    // Drop the one blank line the mbox writer put before the separator.
    if (end > content && view[end - 1] == '\n') {
      std::size_t e = end - 1;
      if (e > content && view[e - 1] == '\r') --e;
      if (e > content && view[e - 1] == '\n') end = e;
    }
  }

  out = SplitMessage{};
  out.bytes = view.substr(content, end - content);
  out.position = base_offset_ + start;
  out.timestamp_ms = timestamp;
  out.mbox_quoted = quoted;
  gt_before_from_ = false;
  consumed_ = next;
  scan_from_ = next;
  return true;
}

void DumpSplitter::AppendUnescaped(std::string_view bytes, SplitFormat format, std::string& out) {
  std::size_t copied = 0;
  for (std::size_t q = Find(bytes, ">From ", 0); q != std::string_view::npos; q = Find(bytes, ">From ", q + 6)) {
    std::size_t run = q;  // first '>' of the run that ends just before "From "
    while (run > 0 && bytes[run - 1] == '>') --run;
    if (run > 0 && bytes[run - 1] != '\n') continue;  // not at a line start
    const std::size_t quotes = q + 1 - run;
    if (format == SplitFormat::kMboxo && quotes != 1) continue;
    out.append(bytes.data() + copied, run - copied);
    copied = run + 1;  // drop one '>'
  }
  out.append(bytes.data() + copied, bytes.size() - copied);
}

}  // namespace mailrail::stages
