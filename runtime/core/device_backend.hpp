#pragma once
// How a device tier puts bytes on its device. The actors never know which backend they drive, so a CUDA
// backend slots in without touching them.

#include "messages/ids.hpp"
#include "runtime/core/host_model.hpp"

#include <memory>
#include <string>

namespace mcache {

class device_backend {
public:
  virtual ~device_backend() = default;
  /// "simulated device 0", "host (CPU pins)", ...
  virtual std::string describe() const = 0;
  /// What a device copy of `model` costs this device's budget, in bytes.
  virtual bytes_t footprint(const host_model& model) const = 0;
  /// Makes a device copy of `model`. Blocking: runs on a copy thread, never on an actor's thread. Throws
  /// on failure (the text is kept in a `copy_failed` error).
  virtual std::shared_ptr<const device_model> copy_in(const host_model& model) = 0;
};

struct simulated_device_options {
  /// Emulated host-to-device bandwidth in bytes per second; 0 copies as fast as memcpy allows.
  double bandwidth_bytes_per_s = 0;
};

/// A simulated accelerator: a deep copy into fresh host tensors, so the bytes really move and the budget
/// is over real memory.
std::unique_ptr<device_backend> make_simulated_backend(device_index device, simulated_device_options options);

/// The CPU as a pin target: a pin on the CPU means "use it from RAM". Its device copy aliases the host
/// tensors and costs nothing (the RAM tier already counts them); only working memory is budgeted.
std::unique_ptr<device_backend> make_host_backend();

} // namespace mcache
