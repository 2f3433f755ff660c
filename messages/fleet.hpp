#pragma once
// The fleet's protocol (Note [The fleet], runtime/fleet/router.hpp): the node actor's typed interface,
// which is what a node publishes on its port, and the serializable types of runtime/core/fleet.

#include "runtime/core/fleet/fleet_types.hpp"

#include <caf/actor_system_config.hpp>
#include <caf/allowed_unsafe_message_type.hpp>
#include <caf/atom.hpp>
#include <caf/meta/type_name.hpp>
#include <caf/replies_to.hpp>
#include <caf/typed_actor.hpp>

#include <memory>

namespace mcache::fleet {

using run_atom = caf::atom_constant<caf::atom("run")>;          // run a job (a router to a node)
using watch_atom = caf::atom_constant<caf::atom("watch")>;      // send me your summaries (a router to a node)
using summary_atom = caf::atom_constant<caf::atom("summary")>;  // a node's residency summary

/// Events from inside the node process (a job ended, a new summary): a type no peer can send, since it
/// cannot be serialized, so the network cannot forge them.
struct node_event;

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, job_request& x) {
  return f(caf::meta::type_name("mcache_job_request"), x.key, x.pipeline, x.models, x.params, x.priority,
           x.deadline_ms);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, job_result& x) {
  return f(caf::meta::type_name("mcache_job_result"), x.key, x.node, x.output, x.queued_ns, x.run_ns, x.attempt,
           x.ended_at);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, resident_model& x) {
  return f(caf::meta::type_name("mcache_resident_model"), x.model, x.tier, x.bytes, x.model_bytes);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, tier_room& x) {
  return f(caf::meta::type_name("mcache_tier_room"), x.tier, x.budget_bytes, x.free_bytes);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, node_summary& x) {
  return f(caf::meta::type_name("mcache_node_summary"), x.node, x.incarnation, x.sequence, x.pipelines, x.resident, x.tiers,
           x.queued, x.jobs_served, x.jobs_failed, x.bytes_to_devices, x.bytes_from_disk);
}

} // namespace mcache::fleet

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(std::shared_ptr<mcache::fleet::node_event>)

namespace mcache::fleet {

/// What a node publishes. Every request from the network is checked (`check_request`) before it touches
/// anything; a refused one changes nothing on the node.
using node_actor = caf::typed_actor<
  // Run a job; answered when it ends: its result, or the typed error it failed with (unknown_pipeline,
  // unknown_model, invalid_argument, model_too_large, budget_exhausted, deadline_exceeded, work_failed,
  // shutting_down, ...). A key the node has seen is not run again (Note [Exactly once]).
  caf::replies_to<run_atom, job_request>::with<job_result>,
  // The sender gets this summary now, then a `(summary_atom, node_summary)` message on every change (at
  // most one per summary interval), until it goes down.
  caf::replies_to<watch_atom>::with<node_summary>,
  // The summary now.
  caf::replies_to<summary_atom>::with<node_summary>,
  // Internal (see node_event).
  caf::reacts_to<std::shared_ptr<node_event>>>;
// (A peer can still stop the actor with an exit message of reason `kill`, which CAF 0.17 always honours;
// other exit messages are ignored. The node then stops serving: `node::serving()` turns false, and
// mcache-node exits so that its supervisor starts it again. Only an authenticated peer can connect.)

/// Registers the fleet's message types and the runtime's error category on a networked actor system's
/// config. Both ends must call it: a type missing on either side makes `remote_actor` fail with
/// unexpected_actor_messaging_interface.
void register_fleet_types(caf::actor_system_config& cfg);

} // namespace mcache::fleet
