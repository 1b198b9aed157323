#pragma once
#include <cstddef>

namespace mailrail::base {

// x86-64 cache line. g++ 12 warns on std::hardware_destructive_interference_size, so the value is
// spelled out; adjacent-line prefetch makes 128 the safer distance for the hottest pairs, which
// is why SpscRing separates its indices by kFalseSharingDistance.
inline constexpr std::size_t kCacheLineSize = 64;
inline constexpr std::size_t kFalseSharingDistance = 128;

}  // namespace mailrail::base
