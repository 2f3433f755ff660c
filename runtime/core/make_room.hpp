#pragma once
// Note [Making room]: both tiers free space the same way, as a ladder that stops at the first rung that
// works:
//   enough is free already
//   || evict unheld entries in policy order until enough is free
//   || fail, evicting nothing (the caller then queues the request until its deadline, or fails it).
// The middle rung first checks that the candidates together are enough, so a request that cannot be served
// never evicts anything "for nothing". Held entries (leased or pinned) are not candidates, so they are
// never touched. Partial (per-tensor) trimming will slot in as a rung after eviction.

#include "messages/ids.hpp"
#include "runtime/core/eviction_policy.hpp"

namespace mcache {

/// `bytes_of(model)` weighs a candidate; `evict(model)` removes it (and must take it out of the policy).
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
    free_bytes += bytes_of(v);
    evict(v);
  }
  return true;
}

/// Drops candidates in policy order until at least `bytes` are freed (0: all of them). Returns the bytes
/// freed. Used by explicit offloads (device) and trims (RAM).
template <class BytesOf, class Evict>
bytes_t drop_candidates(bytes_t bytes, const eviction_policy& policy, BytesOf bytes_of, Evict evict) {
  bytes_t freed = 0;
  for (const auto& v : policy.victims()) {
    if (bytes != 0 && freed >= bytes)
      break;
    freed += bytes_of(v);
    evict(v);
  }
  return freed;
}

} // namespace mcache
