#pragma once
// Corpus access for conformance tests, differential tests, fuzz seeding and bench_parse.
// The public email corpus lives outside the project (MAILRAIL_CORPUS_DIR, default ../shared/corpus)
// and is never copied into it. CorpusDir() resolves the path: the MAILRAIL_CORPUS_DIR environment
// variable wins over the compile-time default from the CMake cache.
// Threading: plain functions; no shared state.

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

namespace mailrail::testing {

inline std::filesystem::path CorpusDir() {
  if (const char* env = std::getenv("MAILRAIL_CORPUS_DIR"); env != nullptr && *env != '\0') return env;
#ifdef MAILRAIL_CORPUS_DIR
  return MAILRAIL_CORPUS_DIR;
#else
  return "../shared/corpus";
#endif
}

inline std::string ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// True when `bytes` starts like an RFC 5322 message: an optional mbox "From " line, then a
// header field ("Name: value").
inline bool LooksLikeMessage(std::string_view bytes) {
  if (bytes.substr(0, 5) == "From ") {
    const std::size_t nl = bytes.find('\n');
    if (nl == std::string_view::npos) return false;
    bytes.remove_prefix(nl + 1);
  }
  std::size_t i = 0;
  while (i < bytes.size() && i < 80 && bytes[i] > 32 && bytes[i] < 127 && bytes[i] != ':') ++i;
  return i > 0 && i < bytes.size() && bytes[i] == ':';
}

// Every single-message file of the corpus (RFC 5322 / MIME), sorted by path. Skips expected-output
// files, licences, mbox files (several messages each) and anything that does not start like a
// message.
inline std::vector<std::filesystem::path> CorpusMessageFiles(const std::filesystem::path& root) {
  std::vector<std::filesystem::path> out;
  std::error_code ec;
  if (!std::filesystem::is_directory(root, ec)) return out;
  for (auto it = std::filesystem::recursive_directory_iterator(root, ec);
       it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (ec) break;
    if (!it->is_regular_file()) continue;
    const std::string name = it->path().filename().string();
    const std::string ext = it->path().extension().string();
    if (ext == ".json" || ext == ".xml" || ext == ".out" || ext == ".bin" || ext == ".golden" || ext == ".md" ||
        ext == ".gitattributes" || name.find("mbox") != std::string::npos ||
        name.find("_decoded_") != std::string::npos || name.rfind("LICENSE", 0) == 0 ||
        name.rfind("NOTICE", 0) == 0 || name.rfind("COPYING", 0) == 0 || name.rfind("README", 0) == 0) {
      continue;
    }
    std::ifstream in(it->path(), std::ios::binary);
    char head[512];
    in.read(head, sizeof(head));
    if (!LooksLikeMessage(std::string_view(head, static_cast<std::size_t>(in.gcount())))) continue;
    out.push_back(it->path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// The Graph message JSON samples of the corpus (msgraph-docs/**/*.json holding one message).
inline std::vector<std::filesystem::path> CorpusGraphFiles(const std::filesystem::path& root) {
  std::vector<std::filesystem::path> out;
  std::error_code ec;
  const auto dir = root / "msgraph-docs";
  if (!std::filesystem::is_directory(dir, ec)) return out;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
       it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (ec) break;
    if (it->is_regular_file() && it->path().extension() == ".json") out.push_back(it->path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace mailrail::testing
