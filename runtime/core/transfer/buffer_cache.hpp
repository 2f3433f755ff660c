#pragma once
// Note [Reuse, do not re-fault]: memory that a simulated device or a load takes again and again is
// reused, not freshly allocated: a fresh allocation of gigabytes is a fresh page fault per page (and, on
// huge pages, the kernel zeroing 2 MiB per fault), and the sample once spent most of its time in the
// kernel doing exactly that. A GPU's memory comes from a caching allocator and pinned host memory must be
// reused anyway; this cache gives simulated devices, staging and host load buffers the same discipline.
//
// It is a block-splitting allocator over a few large slabs, as GPU caching allocators are:
//  - A slab is fresh memory from a `slab_source` (pageable on transparent huge pages, or pinned). The
//    slabs held never exceed the limit (the budget of the tier the buffers serve), so what is cached is
//    memory the budget allows anyway, and the process stays within its budgets.
//  - A request takes the best-fitting free range of any slab, split off its front (512-byte aligned); a
//    freed range merges with its free neighbours. So any size reuses memory that was touched before, and
//    a page is faulted once per slab, not once per buffer.
//  - A new slab is as large as the limit allows (at most `max_slab_bytes`), at least the request. Where
//    that would pass the limit, slabs with nothing in use are let go first (not pinned ones: see
//    `release_idle_slabs`). Where it still would, `take`
//    hands out a buffer of its own, uncached and freed when it goes (`overflows`), and `try_take` none.
//  - An overflow is mostly fragmentation: the tier's budget says the request fits (the buffers in use
//    plus it are within the limit), but no free range is large enough. Measured in the default sample:
//    1 to 4 a run, 98 to 393 MB, which put its peak resident memory up to 32 % over its budgets. So
//    before it takes memory of its own, `take` gives back to the kernel the pages of free ranges, the
//    largest first, as many bytes as it is about to take (MADV_DONTNEED, pageable slabs only, opted in
//    by `discard_free_pages_on_overflow`): what is resident stays within the limit, and those pages are
//    faulted in again, zeroed, when next used (nothing reads a buffer before writing it).
//  - A request that passes the limit together with the buffers in use is different: its tier has
//    already let go of some of them (it evicted a model), but they are on their way back. The RAM tier
//    frees an evicted copy on a loader thread, and a load on the other loader thread may ask for its
//    buffer first. Measured in the default sample: a 328 MB load buffer asked for while 1545 MB of a
//    1597 MB limit were still out, in about 1 run of 8; it overflowed and put the run's peak resident
//    memory at 3.2 GB against 2.9 GB. So such a request waits for buffers to come back, up to
//    `return_wait` (they came back within 0.1 to 3.4 ms here), before it overflows. A wait that saw
//    nothing come back is not repeated until something does. Pinned memory does not wait: its budget
//    is a share of the RAM budget, which buffers fill in steady state, so passing it is no sign of
//    buffers on their way back (a load then takes pageable memory, as before).
//  - Pinned slabs are powers of two: LibTorch's pinned allocator rounds every block up to one, so that is
//    what pinning costs. Carving buffers out of them is what keeps a pinned budget byte-exact: a 600 MiB
//    load buffer pinned on its own costs a 1 GiB block, and five 96 KiB buffers pinned one by one need
//    640 KiB where carved from one slab they fit in 512 KiB. (The default sample on the H200, pinning
//    each buffer on its own, fell back to pageable memory with a pinned budget as large as its RAM's.)
// A buffer keeps its slab alive (the cache may go first). What the slabs hold beyond the buffers in use
// is reported (`cached_bytes`): reserved, though pageable slab pages not yet touched cost no memory.

#include "messages/ids.hpp"

#include <ATen/core/Tensor.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <tuple>
#include <vector>

namespace mcache {

/// Fresh memory for a slab: a byte tensor of exactly `bytes`. May throw (a pinned source on a LibTorch
/// that cannot pin); the cache then holds nothing more and the exception reaches the caller.
using slab_source = std::function<at::Tensor(bytes_t bytes)>;

/// Pageable memory; large slabs on transparent huge pages where the kernel allows them (one fault per
/// 2 MiB; where memory is fragmented the kernel may compact it first, which pays since slabs are reused).
at::Tensor pageable_slab(bytes_t bytes);

struct buffer_cache_options {
  bytes_t limit_bytes = 0;           // slabs held never exceed it; 0: nothing is cached
  slab_source source = pageable_slab;
  bool power_of_two_slabs = false;   // pinned memory: LibTorch's pinned allocator rounds blocks up to one
  bytes_t max_slab_bytes = bytes_t{1} << 30;
  /// Whether idle slabs may be let go to make room for a new one. Not for pinned memory: LibTorch's
  /// pinned allocator keeps a freed block pinned for reuse, so a slab let go and another of a different
  /// size would together be pinned beyond the budget.
  bool release_idle_slabs = true;
  /// Whether an overflow first gives back pages of the slabs' free ranges. Only for pageable memory:
  /// pinned memory must stay resident (for memory pinned with cudaHostRegister, MADV_DONTNEED would
  /// give the CPU fresh pages while the GPU still uses the old ones).
  bool discard_free_pages_on_overflow = false;
  /// How long a request waits for buffers on their way back before it overflows (or `try_take` gives up),
  /// when the slabs' buffers in use plus it pass the limit: see Note [Reuse, do not re-fault]. 0: never
  /// waits. Only where the tier's budget is the limit, so that passing it means buffers are on their way
  /// back: not for pinned memory, whose budget is a share of RAM that buffers fill in steady state.
  std::chrono::milliseconds return_wait{0};
};

/// The runtime's caches wait this long for buffers on their way back (`return_wait`).
inline constexpr std::chrono::milliseconds runtime_return_wait{100};

class buffer_cache : public std::enable_shared_from_this<buffer_cache> {
public:
  static constexpr bytes_t alignment = 512;

  explicit buffer_cache(buffer_cache_options options);
  /// Pageable slabs within `limit_bytes`, which an overflow gives back pages of.
  explicit buffer_cache(bytes_t limit_bytes) : buffer_cache(pageable(limit_bytes)) {}
  static buffer_cache_options pageable(bytes_t limit_bytes, std::chrono::milliseconds return_wait = {}) {
    buffer_cache_options o;
    o.limit_bytes = limit_bytes;
    o.discard_free_pages_on_overflow = true;
    o.return_wait = return_wait;
    return o;
  }

  /// A byte buffer of `bytes` from a slab, or, where no slab can hold it within the limit, one of its own
  /// (uncached: freed when it goes). It comes back to the cache when the last tensor viewing it goes.
  at::Tensor take(bytes_t bytes);
  /// As `take`, but an undefined tensor where no slab can hold it within the limit.
  at::Tensor try_take(bytes_t bytes);

  /// Slab bytes not in use: memory kept for reuse beyond what the buffers in use take.
  bytes_t cached_bytes() const;
  /// Bytes of the buffers handed out and not yet back, as asked (overflows included).
  bytes_t live_bytes() const;
  /// Bytes in slabs: what the cache holds, at most the limit.
  bytes_t slab_bytes() const;
  bytes_t limit_bytes() const { return options_.limit_bytes; }
  uint64_t reuses() const { return reuses_; }          // buffers carved from slabs that were already there
  uint64_t allocations() const { return allocations_; } // fresh memory: slabs and overflows
  uint64_t overflows() const { return overflows_; }
  /// Bytes of overflow buffers in use now: memory held beyond the slabs, so beyond the limit.
  bytes_t overflow_bytes() const;
  uint64_t return_waits() const { return return_waits_; }  // requests that waited for buffers to come back
  uint64_t discarded_bytes() const { return discarded_bytes_; }  // pages of free ranges advised away
  size_t slab_count() const;

  /// Checks the bookkeeping (free ranges cover exactly what no buffer uses, merged, indexed); throws
  /// std::logic_error naming what is wrong. For tests and debug builds.
  void check() const;

private:
  struct slab {
    uint64_t id = 0;
    at::Tensor memory;
    bytes_t size = 0;
    bytes_t used = 0;                     // aligned bytes of the buffers carved from it
    std::map<bytes_t, bytes_t> free;      // offset -> size, merged
  };
  /// Free ranges of all slabs, best fit first: (size, slab id, offset).
  using range_key = std::tuple<bytes_t, uint64_t, bytes_t>;

  /// Carves a buffer from the best-fitting free range, if one is large enough.
  at::Tensor carve_best_fit_locked(bytes_t aligned, bytes_t bytes);
  at::Tensor carve_locked(slab& s, bytes_t offset, bytes_t range, bytes_t aligned, bytes_t bytes);
  void discard_free_pages(bytes_t wanted);
  void give_back(uint64_t slab_id, bytes_t offset, bytes_t aligned, bytes_t bytes);
  /// The size of a new slab for a request of `aligned` bytes with `room` left under the limit; 0: none fits.
  bytes_t new_slab_size(bytes_t aligned, bytes_t room) const;
  /// Lets slabs with nothing in use go, largest first, until `wanted` fits under the limit. Returns their
  /// memory, to be freed outside the lock.
  std::vector<at::Tensor> release_idle_locked(bytes_t wanted);
  void add_free_locked(slab& s, bytes_t offset, bytes_t size);
  void remove_free_locked(slab& s, std::map<bytes_t, bytes_t>::iterator range);

  buffer_cache_options options_;
  mutable std::mutex mutex_;
  std::condition_variable returned_;  // a buffer came back to a slab (see return_wait)
  bool nothing_returned_ = false;     // the last wait timed out, and no buffer came back since
  std::map<uint64_t, std::shared_ptr<slab>> slabs_;
  std::set<range_key> free_by_size_;
  uint64_t next_slab_id_ = 1;
  bytes_t held_ = 0;      // slab bytes, including slabs being allocated outside the lock
  bytes_t live_ = 0;      // bytes asked of buffers in use
  bytes_t carved_ = 0;    // aligned bytes of buffers in use from slabs
  bytes_t overflowing_ = 0;  // bytes of overflow buffers in use
  std::atomic<uint64_t> reuses_{0}, allocations_{0}, overflows_{0}, discarded_bytes_{0}, return_waits_{0};
};

} // namespace mcache
