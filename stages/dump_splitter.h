#pragma once
// DumpSplitter: turns the bytes of one dump file, fed in pieces of any size, into messages.
//
// Formats:
//   mbox (mboxrd, mboxo, and the Content-Length variants mboxcl/mboxcl2): a message starts after
//     each line beginning "From "; its bytes end before the next such line, minus the one blank
//     line the writer added. A valid Content-Length header (the body length up to a "From " line
//     or the end of the file) is trusted, so unescaped "From " lines inside mboxcl2 bodies do not
//     split a message. `>From ` quoting is undone by AppendUnescaped: mboxrd removes one '>'
//     from any run of '>' before "From ", mboxo only from a single one.
//   single: the whole file is one message (.eml files, Maildir entries).
//   graph-jsonl: one Microsoft Graph message object per line; blank lines are skipped.
// Positions are byte offsets in the (decompressed) file of the start of each message (its
// "From " line for mbox), so a replay can resume by skipping or seeking to them.
//
// Threading: one thread. Ownership: SplitMessage::bytes is a view into the splitter's buffer,
//   valid until the next call to Feed, Next or Finish.

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace mailrail::stages {

enum class SplitFormat { kMboxrd, kMboxo, kSingle, kGraphJsonl };

struct SplitMessage {
  std::string_view bytes;
  std::uint64_t position = 0;
  std::optional<std::int64_t> timestamp_ms;  // from the mbox "From " line or Graph receivedDateTime
  bool mbox_quoted = false;                  // bytes may contain >From quoting to undo
};

class DumpSplitter {
 public:
  // Starts a new file; `base_offset` is the offset of the first byte that will be fed.
  void Reset(SplitFormat format, std::uint64_t base_offset);
  void Feed(std::span<const char> data);
  // No more bytes for this file: whatever remains becomes the last message.
  void Finish();
  // The next complete message, if any.
  bool Next(SplitMessage& out);

  // Appends `bytes` to `out`, undoing mbox >From quoting for `format` (mboxrd or mboxo).
  static void AppendUnescaped(std::string_view bytes, SplitFormat format, std::string& out);

 private:
  bool NextMbox(SplitMessage& out);
  bool NextLine(SplitMessage& out);
  bool NextWhole(SplitMessage& out);
  void Compact();

  SplitFormat format_ = SplitFormat::kSingle;
  std::string buffer_;
  std::size_t consumed_ = 0;        // bytes of buffer_ already handed out
  std::size_t scan_from_ = 0;       // where the search for the next separator resumes
  bool gt_before_from_ = false;     // the search so far saw ">From " in the current message
  std::uint64_t base_offset_ = 0;   // file offset of buffer_[0]
  bool finished_ = false;
  bool whole_emitted_ = false;
};

// Parses the asctime-style date of an mbox "From " line ("From a@b Sat Jan  3 01:05:34 1996").
std::optional<std::int64_t> ParseMboxFromLineTime(std::string_view from_line);
// Finds "receivedDateTime":"2016-10-19T10:37:00Z" in a Graph JSON line without parsing it all.
std::optional<std::int64_t> FindGraphReceivedTime(std::string_view json_line);

}  // namespace mailrail::stages
