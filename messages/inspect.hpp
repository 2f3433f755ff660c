#pragma once
// CAF inspectors for the serializable message types (stats snapshots).

#include "messages/stats.hpp"

#include <caf/meta/type_name.hpp>

namespace mcache {

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, ram_stats& x) {
  return f(caf::meta::type_name("mcache_ram_stats"), x.budget_bytes, x.used_bytes, x.peak_used_bytes,
           x.leased_bytes, x.loading_bytes, x.models_resident, x.leases_active, x.hits, x.loads,
           x.reloads, x.shared_loads, x.load_failures, x.loads_stopped, x.bytes_loaded, x.load_ns, x.evictions, x.evicted_bytes,
           x.idle_drops, x.retired_drops, x.trims, x.trimmed_bytes, x.waits, x.waiting_now, x.timeouts, x.hand_overs, x.device_fetches, x.copy_backs, x.copy_backs_refused,
           x.bytes_from_devices, x.skeleton_bytes, x.pinned_budget_bytes, x.pinned_bytes,
           x.pinned_peak_bytes, x.pageable_fallbacks, x.pageable_fallback_bytes, x.host_cached_bytes,
           x.host_overflow_bytes, x.host_overflows);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, device_stats& x) {
  return f(caf::meta::type_name("mcache_device_stats"), x.device, x.budget_bytes, x.reserve_bytes,
           x.used_bytes, x.peak_used_bytes, x.resident_bytes, x.pinned_bytes, x.working_bytes,
           x.models_resident, x.pins_active, x.hits, x.loads, x.shared_loads, x.copy_failures,
           x.partial_loads, x.top_ups, x.oom_retries, x.bytes_copied_in, x.copy_ns, x.last_copy_bytes,
           x.last_copy_ns, x.streamed_bytes, x.evictions, x.partial_evictions, x.evicted_bytes, x.allocator_cached_bytes,
           x.allocator_overflow_bytes, x.allocator_overflows, x.idle_drops, x.retired_drops, x.offloads, x.offloaded_bytes,
           x.waits, x.waiting_now, x.timeouts);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, placement_view& x) {
  return f(caf::meta::type_name("mcache_placement_view"), x.device, x.free_bytes, x.model_resident_bytes,
           x.usable_bytes, x.partial_loading, x.staging_slots);
}

} // namespace mcache
