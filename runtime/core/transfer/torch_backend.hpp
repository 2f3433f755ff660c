#pragma once
// Note [One device-generic backend]: the backend of real devices is written against LibTorch's
// device-generic API only (c10::Device, c10::Stream from the device's pool, c10::StreamGuard, c10::Event,
// recordDataPtrOnStream, copy_(src, non_blocking)), so one source compiles against Debian's CPU LibTorch
// and runs CUDA where the LibTorch in use has it, with no #ifdef; and in every CI run it drives the fake
// accelerator on PrivateUse1 (fake_accelerator.hpp).
//
//   - Each device has its own copy stream; copies are non-blocking from the host copy (pinned memory makes
//     them truly asynchronous on CUDA) and complete when the copy thread has synchronized that stream:
//     never an actor thread. A device copy is only reported once complete, so any stream may read it.
//   - Device tensors come from LibTorch's allocator (CUDA's caching allocator on a GPU), shared with the
//     rest of the process.
//   - `mark_in_use` (called when a pin is released) records the pin's tensors on the streams that were
//     current whenever the pin handed them out, and on the releasing thread's, so the allocator does not
//     reuse their memory before the kernels enqueued on them have run (also when the handle is released
//     on another thread than the one that used it).
//   - Streaming fills run on a second stream of their own, so a fill waiting for a consumer never holds
//     back a model copy.
//   - An allocation failure (c10::OutOfMemoryError) becomes device_oom_error, and the tier's OOM ladder
//     takes it from there.

#include "runtime/core/transfer/device_backend.hpp"

#include <c10/core/Device.h>

#include <memory>
#include <optional>

namespace mcache {

/// A backend for `device` (cuda:N, or privateuseone:N for the fake accelerator). Throws
/// std::invalid_argument when LibTorch has no such device.
std::unique_ptr<device_backend> make_torch_backend(c10::Device device);

/// How many devices of `type` LibTorch sees (0 when this LibTorch was built without it).
int torch_device_count(c10::DeviceType type);

/// Free memory of CUDA device `index` as the driver reports it (NVML, loaded at run time, so that it works
/// with a LibTorch built without CUDA); nothing when NVML or the device is not there.
std::optional<bytes_t> cuda_free_memory(int index);

} // namespace mcache
