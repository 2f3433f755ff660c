#pragma once
// How a device tier puts bytes on its device. The actors never know which backend they drive, so a CUDA
// backend slots in without touching them.

#include "messages/ids.hpp"
#include "runtime/core/models/host_model.hpp"

#include <functional>
#include <future>
#include <c10/core/Stream.h>

#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace mcache {

/// Thrown by a backend when the device's allocator fails (the tier then runs its OOM ladder).
class device_oom_error : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

/// Note [Streaming on a real stream]: one staging slot of a streaming pin. On a GPU nothing here blocks the
/// CPU: a fill runs on the device's copy stream after that stream has waited for the consumer's last use
/// of the slot; `take` makes the consumer's current stream wait for the fill; `give_back` records, on the
/// consumer's current stream, the point after which the slot may be refilled. Backends without streams
/// (the simulated device, CPU pins) wait on the CPU instead.
class stream_slot {
public:
  virtual ~stream_slot() = default;
  /// Starts copying `host` into the slot (once the consumer has given it back); returns at once.
  virtual void fill(const at::Tensor& host) = 0;
  /// The filled tensor (dtype and shape of the host tensor), safe to use on the caller's current stream.
  virtual at::Tensor take() = 0;
  /// The caller's current stream is done with the taken tensor once the work enqueued so far has run.
  virtual void give_back() = 0;
};

class device_backend {
public:
  virtual ~device_backend() = default;
  /// "simulated device 0", "host (CPU pins)", ...
  virtual std::string describe() const = 0;
  /// What a device copy of a tensor of `tensor_bytes` bytes costs this device's budget, in bytes: known
  /// before the copy, from a host tensor or from a model's description in the catalog.
  virtual bytes_t footprint(bytes_t tensor_bytes) const = 0;
  /// Copies the tensors `indices` of `model` to the device; the result lists them in that order. Blocking:
  /// runs on a copy thread, never on an actor's thread. Throws device_oom_error when the device's
  /// allocator fails, anything else on other failures (the text is kept).
  virtual std::shared_ptr<const device_model> copy_in(const host_model& model,
                                                      const std::vector<size_t>& indices) = 0;
  /// Copies a device copy back to host memory (Note [Copy back instead of a kept RAM copy]): every defined
  /// tensor, in order, into buffers from the current `host_memory` (pinned where it allows). Blocking: on a
  /// copy thread. The result carries tensors only.
  virtual std::shared_ptr<host_model> copy_out(const device_model& copy);
  /// A staging slot of `bytes` device bytes for streaming (see stream_slot). Throws device_oom_error when
  /// the device's allocator fails.
  virtual std::unique_ptr<stream_slot> make_stream_slot(bytes_t bytes) = 0;
  /// The stream current on the calling thread for this device, where the backend has streams. A pin handle
  /// notes it each time its tensors are handed out, so that their release is ordered after that work.
  virtual std::optional<c10::Stream> current_stream() const { return std::nullopt; }
  /// The LibTorch device its copies live on: cuda:N or privateuseone:N, and the CPU for the simulated
  /// device and CPU pins (their copies are host tensors).
  virtual c10::Device torch_device() const { return c10::Device(c10::DeviceType::CPU); }
  /// Bytes the backend holds for reuse beyond what the tier counts (freed blocks kept by an allocator).
  virtual bytes_t cached_bytes() const { return 0; }
  /// Where the backend has a budgeted cache of its own (the simulated device): bytes of buffers in use that
  /// no slab held, and how many such buffers there were.
  virtual bytes_t overflow_bytes() const { return 0; }
  virtual uint64_t overflows() const { return 0; }
  /// The caller is done with `view` (its pin ends) once the work enqueued so far on `used_on` and on the
  /// calling thread's current stream has run: keep the memory from being reused before then. Nothing to
  /// do without streams.
  virtual void mark_in_use(const device_model& view, const std::vector<c10::Stream>& used_on) {
    (void)view;
    (void)used_on;
  }
};

/// A tensor of `host`'s dtype and shape over the start of `buffer` (a byte buffer on any device, at least
/// as large), which it keeps alive: how a copy lands in a reused buffer or a staging slot.
at::Tensor view_in(const at::Tensor& buffer, const at::Tensor& host);

/// Host tensors with the dtypes and shapes of `copy`'s defined tensors, in buffers from the current
/// `host_memory`, filled by `copy_` (`non_blocking` where the caller synchronizes its stream after).
std::shared_ptr<host_model> copy_to_host(const device_model& copy, bool non_blocking);

struct simulated_device_options {
  /// Emulated host-to-device bandwidth in bytes per second; 0 copies as fast as memcpy allows.
  double bandwidth_bytes_per_s = 0;
  /// Note [Reuse, do not re-fault]: device copies and staging in use plus those kept for reuse stay within
  /// this many bytes (the device's budget; 0: nothing is kept).
  bytes_t cache_bytes = 0;
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
