#pragma once
// Byte counts that come from callers (catalog sizes, working memory, budgets) are checked against one
// plausibility bound before any tier adds them up. Below the bound, a sum of a few of them cannot wrap a
// 64-bit counter, so the tiers' arithmetic needs no checks of its own; at or above it a request is refused
// with `invalid_argument` and changes nothing.

#include "messages/ids.hpp"

#include <initializer_list>
#include <limits>

namespace mcache {

/// 4 EiB: more than any machine has, and small enough that sums of several such sizes stay below 2^64.
constexpr bytes_t max_plausible_bytes = bytes_t{1} << 62;

/// a + b, or `max` of bytes_t when that would wrap.
constexpr bytes_t saturating_add(bytes_t a, bytes_t b) {
  return a > std::numeric_limits<bytes_t>::max() - b ? std::numeric_limits<bytes_t>::max() : a + b;
}

/// Whether the sum of `parts` stays within `max_plausible_bytes` (computed without wrapping).
inline bool plausible_sum(std::initializer_list<bytes_t> parts) {
  bytes_t sum = 0;
  for (auto p : parts)
    sum = saturating_add(sum, p);
  return sum <= max_plausible_bytes;
}

} // namespace mcache
