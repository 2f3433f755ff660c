#pragma once
// Snapshots of a tier's counters, copied out by a `stats` message. Plain structs, units in the names.
// Their CAF inspectors live in `messages/inspect.hpp`.

#include "messages/ids.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace mcache {

/// The host (RAM) tier.
struct ram_stats {
  bytes_t budget_bytes = 0;       // the byte-exact RAM budget
  bytes_t used_bytes = 0;         // resident + loading entries
  bytes_t peak_used_bytes = 0;    // highest used_bytes seen
  bytes_t leased_bytes = 0;       // bytes of entries with at least one lease
  bytes_t loading_bytes = 0;      // bytes reserved for loads in flight
  std::uint64_t models_resident = 0;
  std::uint64_t leases_active = 0;
  std::uint64_t hits = 0;            // acquires served from RAM without a load
  std::uint64_t loads = 0;           // loads started
  std::uint64_t reloads = 0;         // of those, loads of a model that had been loaded and evicted before
  std::uint64_t shared_loads = 0;    // acquires that joined a load already in flight
  std::uint64_t load_failures = 0;
  std::uint64_t loads_stopped = 0;   // loads stopped because their every waiter withdrew (Note [An
                                     // abandoned load stops]); their bytes were freed
  bytes_t bytes_loaded = 0;          // bytes brought into RAM by successful loads
  std::uint64_t load_ns = 0;         // wall time of successful loads, summed
  std::uint64_t evictions = 0;
  bytes_t evicted_bytes = 0;
  std::uint64_t idle_drops = 0;      // models dropped after their keep-alive (Note [Keep-alive])
  std::uint64_t retired_drops = 0;   // removed or replaced models dropped once unheld (Note [Remove and replace])
  std::uint64_t trims = 0;           // models dropped by an explicit trim
  bytes_t trimmed_bytes = 0;
  std::uint64_t waits = 0;           // requests that had to queue for room
  std::uint64_t waiting_now = 0;     // requests queued for room right now
  std::uint64_t timeouts = 0;        // requests that failed at their deadline
  // Note [Copy back instead of a kept RAM copy] (keep_ram_copy = false)
  std::uint64_t hand_overs = 0;         // evictions that left a model's only copy on a device
  std::uint64_t device_fetches = 0;     // acquires served by copying a model back from a device, not disk
  std::uint64_t copy_backs = 0;         // device evictions copied back into RAM
  std::uint64_t copy_backs_refused = 0; // device evictions dropped for lack of free RAM (reread from disk)
  bytes_t bytes_from_devices = 0;       // bytes brought into RAM from devices (fetches and copy backs)
  bytes_t skeleton_bytes = 0;           // non-tensor payloads of models a device holds the only copy of: kept
                                        // in RAM beyond the budget, to put the model back together
  // Note [Pinned host memory]: buffers loads read into, pinned up to a budget within the RAM budget.
  bytes_t pinned_budget_bytes = 0;
  bytes_t pinned_bytes = 0;             // pinned now (slabs buffers are carved from), at most the budget
  bytes_t pinned_peak_bytes = 0;
  std::uint64_t pageable_fallbacks = 0; // buffers that wanted pinning and got pageable memory
  bytes_t pageable_fallback_bytes = 0;
  bytes_t host_cached_bytes = 0;        // host slab bytes (pinned and pageable) no buffer uses: kept for reuse
  bytes_t host_overflow_bytes = 0;      // host buffers in use outside the slabs: held beyond the RAM budget
  std::uint64_t host_overflows = 0;     // host buffers no slab could hold (Note [Reuse, do not re-fault])
};

/// One device tier (a GPU, a simulated GPU, or the CPU pin tier).
struct device_stats {
  device_index device = 0;
  bytes_t budget_bytes = 0;       // total device budget
  bytes_t reserve_bytes = 0;      // kept free for the framework's own working memory
  bytes_t used_bytes = 0;         // resident + copying models + per-pin working memory
  bytes_t peak_used_bytes = 0;
  bytes_t resident_bytes = 0;     // bytes of models resident or being copied in
  bytes_t pinned_bytes = 0;       // bytes of models with at least one pin
  bytes_t working_bytes = 0;      // working memory reserved by pins and admitted pin requests, with the
                                  // room a stage's pin reserves for its later pins
  std::uint64_t models_resident = 0;
  std::uint64_t pins_active = 0;
  std::uint64_t hits = 0;            // pins served without a copy
  std::uint64_t loads = 0;           // copies to the device started
  std::uint64_t shared_loads = 0;    // pins that joined a copy in flight
  std::uint64_t copy_failures = 0;
  std::uint64_t partial_loads = 0;   // copies that left a model only partly resident (the rest streams)
  std::uint64_t top_ups = 0;         // copies that added tensors to a partly resident model
  std::uint64_t oom_retries = 0;     // copies retried after the device ran out of memory
  bytes_t bytes_copied_in = 0;       // host-to-device bytes of finished copies
  std::uint64_t copy_ns = 0;         // wall time of finished copies, summed
  bytes_t last_copy_bytes = 0;       // the last finished copy: bytes and wall time (its GB/s)
  std::uint64_t last_copy_ns = 0;
  bytes_t streamed_bytes = 0;        // bytes streamed to the device through staging buffers
  std::uint64_t evictions = 0;       // models dropped whole to make room
  std::uint64_t partial_evictions = 0;  // models evicted in part, tensor by tensor, to make room (the
                                        // rest stays resident); "trim" means an explicit RAM drop only
  bytes_t evicted_bytes = 0;         // bytes freed by evictions, whole and partial
  std::uint64_t idle_drops = 0;      // models dropped after their keep-alive (Note [Keep-alive])
  std::uint64_t retired_drops = 0;   // removed or replaced models dropped once unheld (Note [Remove and replace])
  std::uint64_t offloads = 0;        // models dropped by an explicit offload
  bytes_t offloaded_bytes = 0;
  std::uint64_t waits = 0;
  std::uint64_t waiting_now = 0;
  std::uint64_t timeouts = 0;
  bytes_t allocator_cached_bytes = 0;  // freed device memory the backend keeps for reuse, beyond used_bytes
  bytes_t allocator_overflow_bytes = 0;  // a simulated device's buffers in use outside its slabs (beyond budget)
  std::uint64_t allocator_overflows = 0; // of those, in all
};

/// What placement sees of one device for one model (the answer to a `place` query).
struct placement_view {
  device_index device = 0;
  bytes_t free_bytes = 0;            // usable bytes not in use now (room could also be made by evicting)
  bytes_t model_resident_bytes = 0;  // bytes of the model already on this device
  bytes_t usable_bytes = 0;          // the most it can ever give: its budget less its reserve
  bool partial_loading = true;       // whether it loads what fits of a model and streams the rest
  std::uint64_t staging_slots = 2;   // staging buffers a partial pin reserves
};

/// Who holds a claim on a model, and for how long (the `status` message; names come from the runtime).
struct holder_report {
  std::uint64_t holder = 0;   // the holder's actor id
  std::uint64_t held_ns = 0;  // since the claim was granted
};

/// One model in one tier, for operators (`status`).
struct model_report {
  model_id model;
  std::string state;        // RAM: "resident" or "loading"; device: "resident", "partial" or "copying"
  bytes_t bytes = 0;        // what it costs this tier now (a device: its resident or arriving bytes)
  bytes_t model_bytes = 0;  // the whole model
  std::vector<holder_report> holders;  // leases (RAM) or pins (device)
};

/// What a tier holds, model by model, and how many requests wait for room, all taken in one step of its
/// actor: `used_bytes` is the sum of the models' `bytes` plus `working_bytes`.
struct tier_report {
  std::vector<model_report> models;
  std::uint64_t waiting = 0;
  bytes_t used_bytes = 0;
  bytes_t working_bytes = 0;  // a device's working memory and staging held by its pins (RAM: 0)
};

} // namespace mcache
