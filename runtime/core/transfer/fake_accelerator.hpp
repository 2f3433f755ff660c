#pragma once
// Note [Fake accelerator]: a device registered on LibTorch's PrivateUse1 type that behaves like a GPU where
// it matters to the runtime, so that every asynchronous path of the device-generic backend
// (torch_backend.hpp) runs in every CI run, on any machine:
//   - streams are worker threads: work enqueued on a stream (a copy, a fake kernel) really runs later, in
//     order, on that stream's thread; `non_blocking = false` copies wait for their stream;
//   - events complete when their stream reaches them; `block` makes a stream wait for an event;
//   - memory comes from its own allocator with a capacity per device, and allocations past it (or
//     injected failures) throw c10::OutOfMemoryError, as CUDA's caching allocator does;
//   - a freed block is reused only after the streams it was recorded on (`recordDataPtrOnStream`) have
//     passed the point of the record, as CUDA's caching allocator does;
//   - copies and kernels can be slowed down (bytes per second, a fixed delay), so that a missing wait
//     shows up as wrong data instead of passing by luck.
// Its memory is host memory, so tests can read it on the CPU once the stream has finished.

#include <ATen/core/Tensor.h>
#include <c10/core/Stream.h>

#include <cstdint>
#include <functional>
#include <string>

namespace mcache::fake_accelerator {

struct options {
  int devices = 2;                          // PrivateUse1 devices 0..devices-1
  uint64_t capacity_bytes = 1ull << 30;     // memory of each device
  double copy_bytes_per_s = 0;              // copy speed; 0 = memcpy speed
};

/// Registers the fake on PrivateUse1 (once per process; later calls change the options of the devices).
void install(const options& o = {});
/// Whether install() ran.
bool installed();

c10::Device device(int index);

/// Enqueues `work` on `stream` as a fake kernel: it runs on the stream's thread after everything enqueued
/// before it, and after `delay_us` microseconds of simulated compute.
void launch(const c10::Stream& stream, std::function<void()> work, uint64_t delay_us = 0);

/// Test hook: the next `count` allocations on `device` fail with c10::OutOfMemoryError.
void fail_next_allocations(int device, int count);
/// Bytes allocated on `device` now, and its capacity.
uint64_t allocated_bytes(int device);
uint64_t capacity_bytes(int device);

} // namespace mcache::fake_accelerator
