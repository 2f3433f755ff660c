#pragma once
// Message payloads. Grants carry tensors by shared pointer, so they are local-only messages: across
// processes the protocol would carry ids and sizes, never weights.

#include "messages/errc.hpp"
#include "messages/grants.hpp"
#include "messages/ids.hpp"
#include "messages/stats.hpp"

#include <caf/allowed_unsafe_message_type.hpp>

#include <memory>
#include <string>
#include <vector>

namespace mcache {

// `ram_lease` (the reply to acquire and share) and `device_pin` (the reply to pin) are in grants.hpp.

/// What a pin of a scheduler stage tells its device of the stage's other pins there (Note [A stage's pins
/// leave room for the ones after], actors/scheduler_actor.cpp).
struct stage_pins {
  std::vector<ram_lease> later;   // the leases of the models pinned next, in order: the device reads their
                                  // tensors' sizes (the sender keeps holding them)
  pin_id earlier = 0;             // the stage's pin here just before this one (0: none), whose room
                                  // reserved for the pins after it this one takes
};

/// Internal: a loader thread reports a finished load to the RAM-cache actor.
struct loaded_model {
  model_id model;
  std::shared_ptr<const host_model> payload;  // null on failure
  std::string error;                          // the loader's text on failure
  errc code = errc::load_failed;              // the failure's code
  uint64_t load_ns = 0;
  bool from_device = false;                   // a copy back from a device (tensors only)
  device_index device = 0;                    // from_device: which device
  bool stopped = false;                       // the loader stopped: nobody waited (Note [An abandoned load stops])
};

/// Internal: a loader thread reports the precheck of a model about to be loaded.
struct checked_model {
  uint64_t check = 0;   // which pending acquire
  bool ok = true;
  errc code = errc::load_failed;
  std::string error;
};

/// Internal: a copy thread reports a finished copy to a device actor.
struct copied_model {
  model_id model;
  std::shared_ptr<const device_model> copy;  // null on failure
  std::string error;
  errc code = errc::copy_failed;
  uint64_t copy_ns = 0;
};

} // namespace mcache

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(mcache::ram_lease)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(std::vector<mcache::ram_lease>)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(mcache::device_pin)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(mcache::stage_pins)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(mcache::loaded_model)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(mcache::copied_model)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(mcache::checked_model)
