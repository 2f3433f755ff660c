#pragma once
// Note [Making room]: both tiers free space the same way, as a ladder that stops at the first rung that
// works:
//   enough is free already
//   || free unheld entries in policy order until enough is free (the RAM tier evicts whole models; a
//      device tier trims tensor by tensor from the end of a model's execution order, so it frees exactly
//      what is needed and keeps the rest of the victim resident)
//   || fail, freeing nothing (the caller then queues the request until its deadline, or fails it; a
//      device tier first tries partial residency, see device_tier.hpp).
// The middle rung first checks that the candidates together are enough (each tier keeps their total as a
// running sum), so a request that cannot be served never evicts anything "for nothing", and it visits only
// as many candidates as it needs: the cost of an admission does not grow with the number of cached models.
// Held entries (leased or pinned) are not candidates, so they are never touched. Entries the request itself
// uses (`excluded`) are skipped without being taken out of the policy, so a refused request leaves the
// eviction order exactly as it was.

#include "messages/ids.hpp"
#include "runtime/core/policies/eviction_policy.hpp"

#include <limits>
#include <vector>

namespace mcache {

/// `evictable` is the total of `bytes_of` over the candidates that are not `excluded`. `bytes_of(model)` is
/// what freeing a candidate entirely would give. `evict(model, wanted)` frees at least
/// min(wanted, bytes_of(model)) of it and returns the bytes freed.
template <class BytesOf, class Evict, class Excluded>
bool make_room(bytes_t need, bytes_t free_bytes, bytes_t evictable, const eviction_policy& policy,
               BytesOf bytes_of, Evict evict, Excluded excluded) {
  if (free_bytes >= need)
    return true;
  if (free_bytes + evictable < need)
    return false;
  std::vector<model_id> victims;
  bytes_t found = 0;
  policy.visit_victims([&](const model_id& m) {
    if (excluded(m))
      return true;
    victims.push_back(m);
    found += bytes_of(m);
    return free_bytes + found < need;
  });
  if (free_bytes + found < need)
    return false;  // `excluded` hid more than the running sum knew of: still evict nothing for nothing
  for (const auto& v : victims) {
    if (free_bytes >= need)
      break;
    free_bytes += evict(v, need - free_bytes);
  }
  return free_bytes >= need;
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
