#pragma once
// Note [Keep-alive]: a model that nobody holds is an eviction candidate, kept until room is needed. With a
// keep-alive (per model, else the tier's default; zero: none) a candidate unused for that long is dropped
// by the tier's `drop_idle`, which the owning actor calls from a timer (actors/idle_ticks.hpp). A held
// model is never a candidate, so it is never dropped; its idle time starts when its last lease (or pin)
// ends. Both tiers use what is here; the clock is injectable, so tests drive it by hand.

#include "messages/ids.hpp"
#include "runtime/core/policies/eviction_policy.hpp"

#include <chrono>
#include <functional>
#include <vector>

namespace mcache {

using tier_clock = std::function<std::chrono::steady_clock::time_point()>;

/// The tier's clock, or the steady clock when none was injected.
inline std::chrono::steady_clock::time_point now_of(const tier_clock& clock) {
  return clock ? clock() : std::chrono::steady_clock::now();
}

/// The candidates, in policy order, unused for at least their keep-alive at `now`.
template <class KeepAliveOf, class IdleSinceOf>
std::vector<model_id> idle_candidates(const eviction_policy& policy, std::chrono::steady_clock::time_point now,
                                      KeepAliveOf keep_alive_of, IdleSinceOf idle_since_of) {
  std::vector<model_id> idle;
  policy.visit_victims([&](const model_id& m) {
    auto keep = keep_alive_of(m);
    if (keep > std::chrono::nanoseconds::zero() && now - idle_since_of(m) >= keep)
      idle.push_back(m);
    return true;
  });
  return idle;
}

} // namespace mcache
