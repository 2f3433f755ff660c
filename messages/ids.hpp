#pragma once
// Identifiers shared by the protocol and the CAF-free core.

#include <cstdint>
#include <string>

namespace mcache {

using bytes_t = std::uint64_t;    // a size in bytes
using model_id = std::string;     // the catalog key of a model, e.g. "sdxl/text_encoder"
using lease_id = std::uint64_t;   // one acquire's claim on a model's RAM copy; 0 is never issued
using pin_id = std::uint64_t;     // one pin's claim on a model's device copy; 0 is never issued
using holder_id = std::uint64_t;  // who holds a lease or pin (the CAF actor id of the session)
using request_id = std::uint64_t; // a request waiting inside a tier (for its deadline and its reply)

/// Index of a device in the runtime: 0..N-1 are accelerators (simulated or CUDA); `cpu_device` pins in RAM.
using device_index = std::int32_t;
constexpr device_index cpu_device = -1;

} // namespace mcache
