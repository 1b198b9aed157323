#pragma once
// MR_CHECK: aborts the process when an invariant of mailrail itself is broken (a bug, never bad
// input). The streamed message names the invariant and the values involved:
//   MR_CHECK(head - tail <= capacity_) << "ring overfilled: head=" << head;
// The stream is evaluated only when the check fails.

#include <sstream>

namespace mailrail::base {

// CheckFailure: collects the message of a failed MR_CHECK and aborts in its destructor.
// Threading: local to the failing thread.
class CheckFailure {
 public:
  CheckFailure(const char* condition, const char* file, int line);
  [[noreturn]] ~CheckFailure();
  template <typename T>
  CheckFailure& operator<<(const T& value) {
    message_ << value;
    return *this;
  }

 private:
  std::ostringstream message_;
};

// Lets `cond ? (void)0 : Voidify() & CheckFailure(...) << ...` compile as a statement.
struct Voidify {
  void operator&(const CheckFailure&) {}
};

}  // namespace mailrail::base

#define MR_CHECK(condition)                                     \
  (__builtin_expect(static_cast<bool>(condition), 1))           \
      ? (void)0                                                 \
      : ::mailrail::base::Voidify() &                           \
            ::mailrail::base::CheckFailure(#condition, __FILE__, __LINE__)
