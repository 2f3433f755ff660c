#pragma once
// The typed interfaces: the list of signatures is the protocol.

#include "messages/atoms.hpp"
#include "messages/inspect.hpp"
#include "messages/messages.hpp"

#include <caf/actor_addr.hpp>
#include <caf/replies_to.hpp>
#include <caf/timespan.hpp>
#include <caf/typed_actor.hpp>

namespace mcache {

struct job_submission;  // runtime/scheduler.cpp: a job's plan, its callables and its shared status

/// What a device tier holds now: each resident model with its device bytes (for the scheduler's order).
struct residency_report {
  device_index device = 0;
  std::vector<std::pair<model_id, bytes_t>> models;
};

/// The one RAM-cache actor: owns the host tier.
using ram_cache_actor = caf::typed_actor<
  // Lease `model`, loading it if needed; waits up to the timespan for room (0: do not wait), then fails
  // with budget_exhausted. A load, once started, is waited for. The model stays in RAM until released.
  caf::replies_to<acquire_atom, model_id, caf::timespan>::with<ram_lease>,
  // The same, tagged by the sender, so that it can withdraw it (a session's wait check).
  caf::replies_to<acquire_atom, model_id, caf::timespan, std::uint64_t>::with<ram_lease>,
  // Lease several models together, or none (see ram_tier::acquire_all): never holds some while waiting
  // for room for the others. Leases come in the order asked. An empty list, or one naming a model twice,
  // fails with invalid_argument.
  caf::replies_to<acquire_atom, std::vector<model_id>, caf::timespan>::with<std::vector<ram_lease>>,
  // The same, tagged by the sender (the scheduler tags a job's acquire with its id).
  caf::replies_to<acquire_atom, std::vector<model_id>, caf::timespan, std::uint64_t>::with<std::vector<ram_lease>>,
  // The sender no longer wants its acquire of this tag: if it still waits for room it is answered
  // `cancelled` and leaves the queue (see ram_tier::withdraw); else nothing happens.
  caf::reacts_to<withdraw_atom, std::uint64_t>,
  // Note [Remove and replace]: this generation of a model left the catalog; its copy goes once unheld.
  caf::reacts_to<retire_atom, model_id>,
  // End a lease held by the sender.
  caf::replies_to<release_atom, lease_id>::with<void>,
  // A device actor borrows a lease of its own on the model of the owner's lease, for the length of a pin.
  caf::replies_to<share_atom, lease_id, caf::actor_addr>::with<ram_lease>,
  // A device actor returns a lease it borrowed (its pin, or the pin request, ended). One-way: it cannot
  // fail for a lease the device holds, and an answer would only cost the device a message per release.
  caf::reacts_to<give_back_atom, lease_id>,
  // Drop unleased models from RAM: the named one (empty: any, by policy) until at least the bytes are
  // freed (0: everything unleased). Replies with the bytes freed.
  caf::replies_to<trim_atom, model_id, bytes_t>::with<bytes_t>,
  caf::replies_to<stats_atom>::with<ram_stats>,
  // The runtime stops: every request not answered yet fails with shutting_down, and so does every later
  // acquire. Releases still work (a lease released after shutdown is simply ended).
  caf::replies_to<shutdown_atom>::with<void>,
  // Verify the tier's invariants; the error names the first broken one.
  caf::replies_to<check_atom>::with<void>,
  caf::reacts_to<checked_atom, checked_model>,
  caf::reacts_to<loaded_atom, loaded_model>,
  caf::reacts_to<tick_atom>,
  // Note [Copy back instead of a kept RAM copy], from device actors: the sender (device index) holds the
  // model whole (true) or no longer (false); may the sender copy its only copy back (true: room reserved)?
  caf::reacts_to<whole_atom, model_id, device_index, bool>,
  // Note [Eviction with known next uses] (the scheduler): lease these models together if room can be made
  // at once without evicting a model with a known next use; never waits (budget_exhausted otherwise).
  caf::replies_to<prefetch_atom, std::vector<model_id>>::with<std::vector<ram_lease>>,
  // The models the scheduler will use next, soonest first: eviction takes the others first.
  caf::reacts_to<hint_atom, std::vector<model_id>>,
  // Every model in RAM with its state, bytes and leases, for operators.
  caf::replies_to<status_atom>::with<tier_report>,
  // The models resident in RAM now (not loading), for the scheduler's order.
  caf::replies_to<residency_atom>::with<std::vector<model_id>>,
  caf::replies_to<return_atom, model_id, device_index>::with<bool>,
  caf::reacts_to<expire_atom, request_id>>;

/// One device actor per device (and one for CPU pins): owns that device's tier.
using device_actor = caf::typed_actor<
  // Pin the model of a lease held by the sender on this device with this much working memory (bytes),
  // waiting up to the timespan for room (0: do not wait); a copy, once started, is waited for.
  caf::replies_to<pin_atom, lease_id, bytes_t, caf::timespan>::with<device_pin>,
  // As above, for a pin of a scheduler stage: it takes the room the stage's earlier pin reserved for it,
  // and reserves room for the stage's later pins (Note [A stage's pins leave room for the ones after],
  // actors/scheduler_actor.cpp).
  caf::replies_to<pin_atom, lease_id, bytes_t, caf::timespan, stage_pins>::with<device_pin>,
  // The sender no longer wants its pin of this lease: if it still waits for room it is answered
  // `cancelled` and leaves the queue (see device_tier::withdraw); else nothing happens.
  caf::reacts_to<withdraw_atom, lease_id>,
  // Note [Remove and replace]: this generation of a model left the catalog; its copy goes once unpinned.
  caf::reacts_to<retire_atom, model_id>,
  // End a pin held by the sender.
  caf::replies_to<release_atom, pin_id>::with<void>,
  // Drop unpinned models: the named one (empty: any, by policy) until at least the bytes are freed
  // (0: everything unpinned). Replies with the bytes freed.
  caf::replies_to<offload_atom, model_id, bytes_t>::with<bytes_t>,
  caf::replies_to<stats_atom>::with<device_stats>,
  // What placement sees of this device for a model: free bytes and how much of the model is here.
  caf::replies_to<place_atom, model_id>::with<placement_view>,
  // As for the RAM-cache actor: every pin request not answered yet fails with shutting_down, and so does
  // every later pin; releases still work.
  caf::replies_to<shutdown_atom>::with<void>,
  caf::replies_to<check_atom>::with<void>,
  caf::reacts_to<copied_atom, copied_model>,
  caf::reacts_to<freed_atom, std::uint64_t>,
  caf::reacts_to<tick_atom>,
  // Note [Copy back instead of a kept RAM copy], from the RAM-cache actor: its copy of the model is gone
  // (this device's is the only one); copy the model back to RAM (answered with `loaded`, from_device).
  caf::reacts_to<hand_over_atom, model_id>,
  // As pin with no working memory and no wait, evicting no model with a known next use and leaving room
  // for the sooner uses named (models with their bytes, and the most working memory one needs): a
  // prefetch. The caller releases the pin at once and the copy stays as cache.
  caf::replies_to<prefetch_atom, lease_id, std::vector<std::pair<model_id, bytes_t>>, bytes_t>::with<device_pin>,
  caf::reacts_to<hint_atom, std::vector<model_id>>,
  // Every model on this device with its state, bytes and pins, for operators.
  caf::replies_to<status_atom>::with<tier_report>,
  // The models resident on this device now, with their device bytes.
  caf::replies_to<residency_atom>::with<residency_report>,
  caf::reacts_to<fetch_atom, model_id>,
  caf::reacts_to<expire_atom, request_id>>;

/// The scheduler actor (runtime/scheduler.hpp): owns the job queue and runs jobs over the devices.
using scheduler_actor = caf::typed_actor<
  caf::reacts_to<submit_atom, std::shared_ptr<job_submission>>,
  caf::reacts_to<cancel_atom, std::uint64_t>,
  // A worker ran stage `stage` of job `job`: the error text, or empty; whether the work was told to stop.
  caf::reacts_to<stage_done_atom, std::uint64_t, std::uint64_t, std::string, bool>,
  caf::reacts_to<expire_atom, std::uint64_t>,
  // Every job ends (queued ones cancelled, running ones when their step ends); answered (true) when all have.
  caf::replies_to<shutdown_atom>::with<bool>>;

} // namespace mcache

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(std::shared_ptr<mcache::job_submission>)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(mcache::residency_report)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(mcache::tier_report)
