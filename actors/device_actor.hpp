#pragma once
// A device actor: a thin shell over `device_tier` and a `device_backend`. It borrows a RAM lease for every
// pin from the RAM-cache actor, runs copies on the copy pool, and hands leases back when pins end.

#include "messages/interfaces.hpp"
#include "runtime/core/models/catalog.hpp"
#include "runtime/core/models/host_memory.hpp"
#include "runtime/core/timeline.hpp"
#include "runtime/core/transfer/device_backend.hpp"
#include "runtime/core/tiers/device_tier.hpp"
#include "runtime/core/transfer/executor.hpp"

#include <caf/actor_system.hpp>

#include <memory>

namespace mcache {

struct device_actor_config {
  device_tier_options tier;                  // budget and reserve
  std::shared_ptr<device_backend> backend;   // how bytes get onto the device
  std::shared_ptr<executor> copiers;         // where copies run
  ram_cache_actor ram;                       // where pins borrow their RAM leases
  std::shared_ptr<const catalog> models;     // for each model's required tensors (may be null)
  policy_factory policy = make_lru_policy;
  bool check_invariants_each_step = false;
  // Note [Copy back instead of a kept RAM copy]: report whole copies to the RAM-cache actor, and copy
  // the only copy of a model back to RAM (into `memory`'s buffers) before dropping it.
  bool report_whole_copies = false;
  std::shared_ptr<host_memory> memory;  // may be null: plain pageable buffers
  std::shared_ptr<timeline> trace;      // Note [Timeline]: copies and copy backs; may be null
};

device_actor spawn_device(caf::actor_system& sys, device_actor_config config);

} // namespace mcache
