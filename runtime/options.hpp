#pragma once
// The one options struct a runtime is built from. Every field gives its unit and default.

#include "messages/ids.hpp"
#include "runtime/core/policies/eviction_policy.hpp"
#include "runtime/core/policies/placement_policy.hpp"

#include <chrono>
#include <cstddef>
#include <string>
#include <vector>

namespace mcache {

enum class device_kind {
  simulated,    // a VRAM budget over host tensors: copies really move bytes, on any machine
  cuda,         // a CUDA GPU through LibTorch (needs a LibTorch built with CUDA)
  accelerator,  // a LibTorch PrivateUse1 device (the fake accelerator of the tests, or a vendor's)
};

struct device_options {
  device_kind kind = device_kind::simulated;
  bytes_t budget_bytes = 0;   // device memory the runtime may use, bytes; must be > 0 for simulated and
                              // accelerator devices; 0 on cuda = the GPU's free memory at start (NVML)
  bytes_t reserve_bytes = 0;  // of the budget, kept free for work outside pins (kernels, framework), bytes
  double simulated_bandwidth_bytes_per_s = 0;  // emulated copy speed, bytes/s; 0 = memcpy speed
  bool partial_loading = true;  // a model that does not fit whole loads what fits and streams the rest
  size_t staging_slots = 2;     // staging buffers per streaming pin, >= 2
  int index = -1;               // cuda / accelerator: LibTorch's device index; -1 = position in `devices`
};

/// One cuda device_options per GPU LibTorch sees, each like `each` (budget 0: derived from free memory).
/// None, with one log line saying why, when LibTorch sees no GPU (for example a LibTorch without CUDA).
std::vector<device_options> all_gpus(device_options each = {});

enum class scheduler_policy {
  sharing,   // one shared queue: lowest round-trip latency on few cores (default)
  stealing,  // CAF's work stealing: more throughput with many cores and many busy actors
};

struct runtime_options {
  bytes_t ram_budget_bytes = 0;  // RAM for model host copies, bytes; 0 = ram_fraction of available RAM
  double ram_fraction = 0.5;     // share of MemAvailable taken when ram_budget_bytes is 0, in (0, 1]
  std::vector<device_options> devices;  // devices 0..N-1
  bytes_t cpu_working_budget_bytes = 0;  // working memory CPU pins may reserve, bytes; 0 = RAM budget
  bytes_t pinned_budget_bytes = 0;  // of the RAM budget, how much loads may read into pinned (page-locked)
                                    // buffers for fast copies to GPUs, bytes; 0 = none (Note [Pinned host
                                    // memory]); must not exceed the RAM budget
  bool keep_ram_copy = true;     // false: a model a GPU holds whole may leave RAM; it comes back from the GPU
                                 // (not the disk), and the GPU copies it back when it drops it, if RAM has
                                 // free room (Note [Copy back instead of a kept RAM copy]). For machines
                                 // whose RAM is tighter than their VRAM.
  std::chrono::nanoseconds keep_alive{0};  // Note [Keep-alive]: a model nobody holds for this long is dropped
                                           // from RAM and every device; 0 = kept until room is needed. A
                                           // model's own `model_descriptor::keep_alive` overrides it.
  size_t loader_threads = 2;     // threads running model loads (disk, decode), >= 1
  size_t scheduler_threads = 0;  // CAF scheduler threads; 0 = hardware threads (at least 2)
  scheduler_policy scheduler = scheduler_policy::sharing;
  std::chrono::nanoseconds default_wait = std::chrono::seconds(30);  // how long a session's acquire or pin
                                                                     // waits for room by default
  std::string trace_path;  // Note [Timeline]: where the runtime writes its timeline (Chrome trace JSON) at
                           // shutdown; empty = no timeline is recorded
  policy_factory eviction = make_lru_policy;  // eviction policy of every tier; null = LRU
  placement_factory placement = make_resident_then_free_placement;  // where session::pin_anywhere pins;
                                                                    // null = this default
#ifdef NDEBUG
  bool check_invariants = false;  // check every tier's invariants after every step (abort if broken)
#else
  bool check_invariants = true;
#endif
};

/// Bytes of MemAvailable in /proc/meminfo, or 0 when unknown.
bytes_t available_ram_bytes();

} // namespace mcache
