#pragma once
// Arena: bump allocator for per-message scratch (decoded header words, decoded text, address
// lists). Memory is handed out from blocks that never move, so views into earlier allocations stay
// valid while later ones are made. Reset() forgets every allocation and keeps the first block, so
// a pooled message reuses its arena without calling the allocator in steady state.
// Threading: owned by one stage at a time, like the message that carries it.
// Lifetime: every pointer or view it returned dies at Reset() or destruction.

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <memory>
#include <string_view>
#include <vector>

namespace mailrail::engine {

class Arena {
 public:
  explicit Arena(std::size_t block_bytes = 16 * 1024) : block_bytes_(block_bytes) {}
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  Arena(Arena&&) = default;
  Arena& operator=(Arena&&) = default;

  char* Allocate(std::size_t bytes) {
    if (bytes > remaining_) NewBlock(bytes);
    char* out = cursor_;
    cursor_ += bytes;
    remaining_ -= bytes;
    return out;
  }

  std::string_view Copy(std::string_view text) {
    if (text.empty()) return {};
    char* out = Allocate(text.size());
    std::memcpy(out, text.data(), text.size());
    return {out, text.size()};
  }

  // Forgets every allocation; keeps the first block (and its capacity) for reuse.
  void Reset() {
    if (blocks_.size() > 1) blocks_.resize(1);
    if (!blocks_.empty()) {
      cursor_ = blocks_[0].data.get();
      remaining_ = blocks_[0].size;
    } else {
      cursor_ = nullptr;
      remaining_ = 0;
    }
  }

  std::size_t bytes_reserved() const {
    std::size_t total = 0;
    for (const auto& b : blocks_) total += b.size;
    return total;
  }

 private:
  struct Block {
    std::unique_ptr<char[]> data;
    std::size_t size;
  };
  void NewBlock(std::size_t at_least) {
    const std::size_t size = std::max(block_bytes_, at_least);
    blocks_.push_back(Block{std::make_unique_for_overwrite<char[]>(size), size});
    cursor_ = blocks_.back().data.get();
    remaining_ = size;
  }

  std::size_t block_bytes_;
  std::vector<Block> blocks_;
  char* cursor_ = nullptr;
  std::size_t remaining_ = 0;
};

}  // namespace mailrail::engine
