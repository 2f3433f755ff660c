#pragma once
// How a device tier puts bytes on its device. The actors never know which backend they drive, so a CUDA
// backend slots in without touching them.

#include "messages/ids.hpp"
#include "runtime/core/models/host_model.hpp"

#include <functional>
#include <future>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace mcache {

/// Thrown by a backend when the device's allocator fails (the tier then runs its OOM ladder).
class device_oom_error : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

class device_backend {
public:
  virtual ~device_backend() = default;
  /// "simulated device 0", "host (CPU pins)", ...
  virtual std::string describe() const = 0;
  /// What a device copy of `tensor` costs this device's budget, in bytes.
  virtual bytes_t footprint(const at::Tensor& tensor) const = 0;
  /// Copies the tensors `indices` of `model` to the device; the result lists them in that order. Blocking:
  /// runs on a copy thread, never on an actor's thread. Throws device_oom_error when the device's
  /// allocator fails, anything else on other failures (the text is kept).
  virtual std::shared_ptr<const device_model> copy_in(const host_model& model,
                                                      const std::vector<size_t>& indices) = 0;
  /// A device buffer of `bytes` bytes for streaming.
  virtual at::Tensor allocate_staging(bytes_t bytes) = 0;
  /// Starts copying `host` into `staging` (a buffer from allocate_staging, at least as large) and returns
  /// the device tensor (dtype and shape of `host`, living in `staging`) once the copy is complete.
  virtual std::shared_future<at::Tensor> copy_async(const at::Tensor& host, const at::Tensor& staging) = 0;
};

struct simulated_device_options {
  /// Emulated host-to-device bandwidth in bytes per second; 0 copies as fast as memcpy allows.
  double bandwidth_bytes_per_s = 0;
  /// Test hook: called with the bytes of each copy; returning true makes that copy fail as a device
  /// out-of-memory. Null: never.
  std::function<bool(bytes_t)> inject_oom;
};

/// A simulated accelerator: a deep copy into fresh host tensors, so the bytes really move and the budget
/// is over real memory.
std::unique_ptr<device_backend> make_simulated_backend(device_index device, simulated_device_options options);

/// The CPU as a pin target: a pin on the CPU means "use it from RAM". Its device copy aliases the host
/// tensors and costs nothing (the RAM tier already counts them); only working memory is budgeted.
std::unique_ptr<device_backend> make_host_backend();

} // namespace mcache
