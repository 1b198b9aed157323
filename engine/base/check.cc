#include "engine/base/check.h"

#include <cstdio>
#include <cstdlib>

namespace mailrail::base {

CheckFailure::CheckFailure(const char* condition, const char* file, int line) {
  message_ << file << ":" << line << ": check failed: " << condition << ": ";
}

CheckFailure::~CheckFailure() {
  const std::string text = message_.str();
  std::fprintf(stderr, "mailrail: %s\n", text.c_str());
  std::fflush(stderr);
  std::abort();
}

}  // namespace mailrail::base
