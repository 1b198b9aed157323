#pragma once
// Result<T>: a value or an Error, for failures caused by untrusted input or the environment
// (bytes from the network, a dump, the disk, a config file). Bugs use MR_CHECK instead.
// The surface follows std::expected (has_value, value, error, operator->) because g++ 12 lacks
// std::expected in C++20 mode.
// Threading: a plain value type; no sharing.

#include <string>
#include <utility>
#include <variant>

#include "engine/base/check.h"

namespace mailrail::base {

// Error: a short machine-readable code (stable, used in counters and logs) and a human message.
struct Error {
  std::string code;
  std::string message;
};

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : state_(std::in_place_index<0>, std::move(value)) {}  // NOLINT: implicit
  Result(Error error) : state_(std::in_place_index<1>, std::move(error)) {}  // NOLINT: implicit

  bool has_value() const { return state_.index() == 0; }
  explicit operator bool() const { return has_value(); }

  T& value() & {
    MR_CHECK(has_value()) << "Result::value() on error " << std::get<1>(state_).code;
    return std::get<0>(state_);
  }
  const T& value() const& {
    MR_CHECK(has_value()) << "Result::value() on error " << std::get<1>(state_).code;
    return std::get<0>(state_);
  }
  T&& value() && {
    MR_CHECK(has_value()) << "Result::value() on error " << std::get<1>(state_).code;
    return std::get<0>(std::move(state_));
  }
  const Error& error() const {
    MR_CHECK(!has_value()) << "Result::error() on a value";
    return std::get<1>(state_);
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Error> state_;
};

// Status: Result without a value.
struct Ok {};
using Status = Result<Ok>;
inline Status OkStatus() { return Ok{}; }

inline Error MakeError(std::string code, std::string message) {
  return Error{std::move(code), std::move(message)};
}

}  // namespace mailrail::base
