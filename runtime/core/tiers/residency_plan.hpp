#pragma once
// The per-tensor plan of a pin, as a pure function: which tensors a device copies, and how much staging the
// pin reserves for the ones that stream. device_tier decides with it; tests/residency_plan_test.cpp checks it
// on its own.
//
// With room for the whole model (beside the pin's working memory) every missing tensor is copied. Without,
// and with partial loading on: the required tensors, then as many others as fit in execution order beside a
// staging ring of `staging_slots` buffers of the largest tensor that will stream. Required tensors never
// stream, so they never size the ring.

#include "messages/ids.hpp"

#include <optional>
#include <vector>

namespace mcache {

/// Where one tensor of a model is on a device.
enum class tensor_residency {
  absent,    // not on the device: copied by a plan, or streamed through staging
  copying,   // its bytes are reserved and a copy is in flight
  resident,  // on the device
};

struct tensor_slot {
  bytes_t bytes = 0;     // device bytes of the tensor
  bool required = false; // must be resident while pinned (norms, embeddings)
  tensor_residency state = tensor_residency::absent;
};

struct residency_plan {
  std::vector<size_t> copy;  // tensors to copy, in execution order
  bytes_t copy_bytes = 0;
  bytes_t staging_bytes = 0;
  bytes_t need() const { return copy_bytes + staging_bytes; }
};

/// Tensors of `bytes` each, none on the device yet; `required[k]`, where given, marks tensor k required.
std::vector<tensor_slot> absent_tensors(const std::vector<bytes_t>& bytes, const std::vector<bool>& required);

/// Staging for a pin: `slots` x the largest tensor that will stream: neither resident, nor being copied,
/// nor required, nor in `also_resident`.
bytes_t staging_for(const std::vector<tensor_slot>& tensors, const std::vector<size_t>& also_resident, size_t slots);

/// The least a pin of a model made of `tensors` could ever need on a device beside its working memory: the
/// whole model, or with partial loading its required tensors and a staging ring of `slots` buffers of the
/// largest other tensor, when that is less; of the tensors absent only (all of them for a model the device
/// has none of). A device whose usable bytes are under this plus the working memory can never hold the
/// pin; the device tier refuses it at once, the scheduler at submit.
bytes_t least_pin_bytes(const std::vector<tensor_slot>& tensors, bool partial_loading, size_t slots);

/// The plan for `room` bytes that can be had beside `working` bytes of working memory; nothing if even the
/// smallest plan does not fit.
std::optional<residency_plan> plan_residency(const std::vector<tensor_slot>& tensors, bytes_t working, bytes_t room,
                                             bool partial_loading, size_t slots);

// Note [A pin may trim its own model]: a model resident on a device (whole or in part) and pinned by
// nobody is an eviction candidate, but not for a pin of itself: the room a pin can have is the free bytes
// and the other candidates'. When a pin of it finds no plan in this room (its working memory, or the
// staging ring and required tensors a partly resident model needs, do not fit), the model's own unused
// tensors are the only bytes left to give it, and nothing else will ever change: a pin that waited would
// wait on nothing (a cold device admits the same pin at once, loading the model in part). This is also
// why a pin of what is left of a model after any eviction never needs more room than the least a pin of
// it could need were it absent (Note [A stage's pins leave room for the ones after]). So such a pin gives up the model's own tensors, from the end of execution order (the ones used
// last) and never the required ones, as few as make its working memory, the staging ring the dropped
// ones then need and the required tensors it lacks (an eviction may have dropped them; they are copied)
// fit; the other candidates' bytes are taken first. Only with partial loading, and never
// for an only copy (keep_ram_copy = false), which is not trimmed in part.

/// What a pin of a resident, unpinned model gives up of the model itself (Note [A pin may trim its own
/// model]).
struct own_trim {
  std::vector<size_t> drop;  // its tensors to drop, last in execution order first
  bytes_t freed = 0;
  residency_plan plan;       // then: its absent required tensors copied, and the staging ring
};

/// The fewest of the model's own resident, non-required tensors, from its end, to drop so that `working`,
/// its absent required tensors and the staging ring fit in `room` plus what they free; nothing if
/// dropping all of them is not enough.
std::optional<own_trim> plan_own_trim(const std::vector<tensor_slot>& tensors, bytes_t working, bytes_t room,
                                      size_t slots);

} // namespace mcache
