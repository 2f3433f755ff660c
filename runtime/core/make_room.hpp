#pragma once
// Note [Making room]: both tiers free space the same way, as a ladder that stops at the first rung that
// works:
//   enough is free already
//   || free unheld entries in policy order until enough is free (the RAM tier evicts whole models; a
//      device tier trims tensor by tensor from the end of a model's execution order, so it frees exactly
//      what is needed and keeps the rest of the victim resident)
//   || fail, freeing nothing (the caller then queues the request until its deadline, or fails it; a
//      device tier first tries partial residency, see device_tier.hpp).
// The middle rung first checks that the candidates together are enough, so a request that cannot be served
// never evicts anything "for nothing". Held entries (leased or pinned) are not candidates, so they are
// never touched.

#include "messages/ids.hpp"
#include "runtime/core/eviction_policy.hpp"

#include <limits>

namespace mcache {

/// `bytes_of(model)` is what freeing a candidate entirely would give. `evict(model, wanted)` frees at least
/// min(wanted, bytes_of(model)) of it and returns the bytes freed; a candidate it empties leaves the policy.
template <class BytesOf, class Evict>
bool make_room(bytes_t need, bytes_t free_bytes, const eviction_policy& policy, BytesOf bytes_of,
               Evict evict) {
  if (free_bytes >= need)
    return true;
  auto victims = policy.victims();
  bytes_t evictable = 0;
  for (const auto& v : victims)
    evictable += bytes_of(v);
  if (free_bytes + evictable < need)
    return false;
  for (const auto& v : victims) {
    if (free_bytes >= need)
      break;
    free_bytes += evict(v, need - free_bytes);
  }
  return true;
}

/// Frees candidates in policy order until at least `bytes` are freed (0: all of them). Returns the bytes
/// freed. Used by explicit offloads (device) and trims (RAM).
template <class Evict>
bytes_t drop_candidates(bytes_t bytes, const eviction_policy& policy, Evict evict) {
  bytes_t freed = 0;
  for (const auto& v : policy.victims()) {
    if (bytes != 0 && freed >= bytes)
      break;
    freed += evict(v, bytes == 0 ? std::numeric_limits<bytes_t>::max() : bytes - freed);
  }
  return freed;
}

} // namespace mcache
