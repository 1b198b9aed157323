#pragma once
// Builds Messages by hand for filter tests; every view points into the message's own arena.
#include <deque>
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

#include "stages/message.h"

namespace mailrail::stages::testing {

class MessageFactory {
 public:
  Message& Make(std::string_view subject, std::string_view body = "",
                std::initializer_list<std::pair<std::string_view, std::string_view>> headers = {}) {
    Message& m = messages_.emplace_back();
    m.lsn = messages_.size();
    m.record.subject = m.arena.Copy(subject);
    m.record.body_text = m.arena.Copy(body);
    for (const auto& [name, value] : headers) m.record.headers.push_back({m.arena.Copy(name), m.arena.Copy(value)});
    return m;
  }
  static void SetFrom(Message& m, std::string_view address) { m.record.from = Address{"", m.arena.Copy(address)}; }
  static void AddAttachment(Message& m, std::string_view filename, std::string_view type, std::uint64_t size = 100) {
    Attachment a;
    a.filename = m.arena.Copy(filename);
    a.content_type = m.arena.Copy(type);
    a.size = size;
    m.record.attachments.push_back(a);
  }
  std::deque<Message>& messages() { return messages_; }

 private:
  std::deque<Message> messages_;
};

}  // namespace mailrail::stages::testing
