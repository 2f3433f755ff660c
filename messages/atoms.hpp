#pragma once
// Atoms: verbs of the protocol (at most 10 characters each in CAF 0.17).

#include <caf/atom.hpp>

namespace mcache {

using acquire_atom = caf::atom_constant<caf::atom("acquire")>;  // ask for a lease on a model
using release_atom = caf::atom_constant<caf::atom("release")>;  // end a lease or a pin
using share_atom = caf::atom_constant<caf::atom("share")>;      // a device borrows a lease for a pin
using give_back_atom = caf::atom_constant<caf::atom("give_back")>;  // a device returns a borrowed lease
using pin_atom = caf::atom_constant<caf::atom("pin")>;          // lock a leased model on a device
using offload_atom = caf::atom_constant<caf::atom("offload")>;  // free device memory of unpinned models
using trim_atom = caf::atom_constant<caf::atom("trim")>;        // free RAM of unleased models
using place_atom = caf::atom_constant<caf::atom("place")>;      // what placement sees of a device
using stats_atom = caf::atom_constant<caf::atom("stats")>;      // copy out a stats snapshot
using check_atom = caf::atom_constant<caf::atom("check")>;      // verify a tier's invariants
using checked_atom = caf::atom_constant<caf::atom("checked")>;  // internal: a load's precheck finished
using loaded_atom = caf::atom_constant<caf::atom("loaded")>;    // internal: a load finished
using copied_atom = caf::atom_constant<caf::atom("copied")>;    // internal: a device copy finished
using freed_atom = caf::atom_constant<caf::atom("freed")>;      // internal: a device's frees up to a ticket ran
using shutdown_atom = caf::atom_constant<caf::atom("shutdown")>;  // answer every waiter, accept no more work
// Note [Copy back instead of a kept RAM copy] (keep_ram_copy = false):
using whole_atom = caf::atom_constant<caf::atom("whole")>;      // a device holds (or no longer holds) a model whole
using hand_over_atom = caf::atom_constant<caf::atom("hand_over")>;  // RAM dropped its copy: the device's is the only one
using fetch_atom = caf::atom_constant<caf::atom("fetch")>;      // RAM asks a device to copy a model back
using return_atom = caf::atom_constant<caf::atom("return")>;    // a device asks RAM for room to copy back its only copy
// The scheduler (runtime/scheduler.hpp):
using submit_atom = caf::atom_constant<caf::atom("submit")>;        // queue a job
using cancel_atom = caf::atom_constant<caf::atom("cancel")>;        // stop a job
using withdraw_atom = caf::atom_constant<caf::atom("withdraw")>;    // a queued request is no longer wanted
using retire_atom = caf::atom_constant<caf::atom("retire")>;        // a model generation left the catalog
using stage_done_atom = caf::atom_constant<caf::atom("stage_done")>;  // internal: a worker ran a stage's work
using prefetch_atom = caf::atom_constant<caf::atom("prefetch")>;  // bring models closer, evicting nothing needed soon
using hint_atom = caf::atom_constant<caf::atom("hint")>;          // the models needed next, soonest first
using status_atom = caf::atom_constant<caf::atom("status")>;      // every model a tier holds, with holders
using residency_atom = caf::atom_constant<caf::atom("residency")>;  // which models a tier holds now
using tick_atom = caf::atom_constant<caf::atom("tick")>;          // internal: time to drop what outlived its keep-alive
using expire_atom = caf::atom_constant<caf::atom("expire")>;    // internal: a request's deadline passed

} // namespace mcache
