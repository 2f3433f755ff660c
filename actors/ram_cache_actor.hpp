#pragma once
// The RAM-cache actor: a thin shell over `ram_tier`. Its handlers decode a message, call the tier, and
// turn the tier's effects into replies, loads on the loader pool, and deadline timers.

#include "messages/interfaces.hpp"
#include "runtime/core/models/catalog.hpp"
#include "runtime/core/models/host_memory.hpp"
#include "runtime/core/timeline.hpp"
#include "runtime/core/transfer/executor.hpp"
#include "runtime/core/tiers/ram_tier.hpp"

#include <caf/actor_system.hpp>

#include <memory>

namespace mcache {

struct ram_cache_config {
  ram_tier_options tier;                    // the budget
  std::shared_ptr<const catalog> models;    // where acquire looks models up (never loads on lookup)
  std::shared_ptr<executor> loaders;        // where loads run
  std::shared_ptr<host_memory> memory;      // the buffers loads read into (pinned up to a budget); may be null
  policy_factory policy = make_lru_policy;  // the eviction policy of the tier
  bool check_invariants_each_step = false;  // abort on the first broken invariant (tests, debug builds)
  std::shared_ptr<timeline> trace;          // Note [Timeline]: loads and evictions; may be null
};

/// Spawns the RAM-cache actor. The config must be valid (see ram_tier::validate).
ram_cache_actor spawn_ram_cache(caf::actor_system& sys, ram_cache_config config);

} // namespace mcache
