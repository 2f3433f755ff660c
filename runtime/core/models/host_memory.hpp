#pragma once
// Note [Pinned host memory]: host copies that will go to a GPU are read straight into page-locked
// ("pinned") buffers, so that the copy engine moves them at the link's speed (55 GB/s on the H200's PCIe
// Gen5 x16, against 8 GB/s from pageable memory). Pinning costs about 0.5 s per GiB and pinned memory is
// taken from the OS for good, so it has a budget of its own (`pinned_budget_bytes`, within the RAM
// budget). Buffers are carved out of a few pinned slabs (Note [Reuse, do not re-fault]): the cost is paid
// once per slab, not per load, and the budget counts what is really pinned, byte for byte, where pinning
// each buffer on its own would round it up to a power of two. When no slab can hold a buffer within the
// budget, or this LibTorch cannot pin (a CPU-only build), the buffer is pageable instead: counted in the
// stats, and logged once.
//
// The loaders run on loader threads; the RAM-cache actor makes its host_memory current on the loader
// thread while a load runs (`host_memory::scope`), and loaders take their buffers from
// `host_memory::buffer(bytes)`, which falls back to plain memory when none is current (tests, tools).

#include "messages/ids.hpp"
#include "runtime/core/transfer/buffer_cache.hpp"

#include <ATen/core/Tensor.h>

#include <atomic>
#include <cstdint>
#include <memory>

namespace mcache {

struct host_memory_stats {
  bytes_t pinned_budget_bytes = 0;
  bytes_t pinned_bytes = 0;        // pinned now: the slabs buffers are carved from, at most the budget
  bytes_t pinned_peak_bytes = 0;
  bytes_t pinned_in_use_bytes = 0; // of which buffers in use take
  uint64_t pinned_buffers = 0;     // pinned buffers handed out, in all
  uint64_t pageable_fallbacks = 0; // buffers that wanted pinning and got pageable memory
  bytes_t pageable_fallback_bytes = 0;
  bytes_t cached_bytes = 0;        // slab bytes (pinned and pageable) not in use: kept for reuse
  bytes_t overflow_bytes = 0;      // buffers in use that no slab held (beyond the limits)
  uint64_t overflows = 0;
};

/// Pinned memory from LibTorch's pinned allocator; throws where this LibTorch cannot pin.
at::Tensor pinned_slab(bytes_t bytes);

class host_memory : public std::enable_shared_from_this<host_memory> {
public:
  /// `pinned_budget_bytes` 0: never pin (every buffer is pageable and nothing is counted as a fallback).
  /// Pageable buffers come from slabs too, within `pageable_cache_bytes` (the RAM budget). `pinned_source`
  /// is where pinned slabs come from (tests give one that counts).
  explicit host_memory(bytes_t pinned_budget_bytes, bytes_t pageable_cache_bytes = 0,
                       slab_source pinned_source = pinned_slab);

  /// A byte buffer of `bytes`: pinned while the budget allows and LibTorch can pin, else pageable.
  at::Tensor allocate(bytes_t bytes);
  host_memory_stats stats() const;

  /// Makes `memory` current on this thread for the scope's lifetime.
  class scope {
  public:
    explicit scope(std::shared_ptr<host_memory> memory);
    ~scope();
    scope(const scope&) = delete;
    scope& operator=(const scope&) = delete;

  private:
    std::shared_ptr<host_memory> previous_;
  };
  /// A buffer from the current host_memory, or plain pageable memory when none is current.
  static at::Tensor buffer(bytes_t bytes);

private:
  at::Tensor pageable(bytes_t bytes, bool fallback);

  bytes_t budget_;
  std::shared_ptr<buffer_cache> pinned_cache_;
  std::shared_ptr<buffer_cache> pageable_cache_;
  std::atomic<bytes_t> peak_{0};
  std::atomic<uint64_t> buffers_{0};
  std::atomic<uint64_t> fallbacks_{0};
  std::atomic<bytes_t> fallback_bytes_{0};
  std::atomic<bool> cannot_pin_{false};
  std::atomic<bool> logged_{false};
};

} // namespace mcache
