#pragma once
// What the tiers grant: a lease on a model's RAM copy and a pin of it on a device. Both tiers issue them
// and both actors send them, so they live here, below the tiers: messages/ never includes a tier.
// They carry tensors by shared pointer, so they are local-only messages: across processes the protocol
// would carry ids and sizes, never weights.

#include "messages/ids.hpp"
#include "runtime/core/models/host_model.hpp"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>

namespace mcache {

class device_backend;

/// What an acquire (or a share) grants.
struct ram_lease {
  lease_id lease = 0;
  model_id model;
  bytes_t bytes = 0;
  std::shared_ptr<const host_model> payload;  // alive at least as long as the lease
};

/// A granted pin: the model is on the device (wholly or partly) and locked until the pin is released.
struct device_pin {
  pin_id pin = 0;
  model_id model;
  device_index device = 0;
  bytes_t resident_bytes = 0;  // device bytes of the model's resident tensors
  bytes_t model_bytes = 0;     // device bytes of the whole model
  bytes_t working_bytes = 0;   // working memory reserved for this pin, staging included
  bytes_t staging_bytes = 0;   // of which: staging buffers for streamed tensors
  std::shared_ptr<const device_model> view;  // tensor i: its device copy, or undefined when it streams
  std::shared_ptr<const host_model> host;    // the host copy (streaming source, opaque payload)
  std::shared_ptr<device_backend> backend;   // set by the device actor, for streaming
  std::shared_ptr<std::atomic<uint64_t>> streamed_bytes;  // set by the device actor: counts streamed bytes
  size_t staging_slots = 2;
  bool partial() const { return resident_bytes < model_bytes; }
};

} // namespace mcache
