#pragma once
// Note [Reuse, do not re-fault]: memory that a simulated device or a load takes again and again is
// reused, not freshly allocated: a fresh allocation of gigabytes is a fresh page fault per 4 KiB page,
// and the sample spent most of its time in the kernel doing exactly that. A GPU's memory comes from a
// caching allocator and pinned host memory must be reused anyway; this cache gives the simulated device
// and pageable load buffers the same discipline. It keeps freed buffers by size, up to a bound (what it
// holds beyond the budgets is reported in the stats), and hands out the best fit that is at most a quarter
// larger than asked.

#include "messages/ids.hpp"

#include <ATen/core/Tensor.h>

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

namespace mcache {

class buffer_cache : public std::enable_shared_from_this<buffer_cache> {
public:
  /// Keeps at most `max_cached_bytes` of freed buffers. `huge_pages`: place large buffers on transparent
  /// huge pages (one fault per 2 MiB; but where memory is fragmented the kernel may compact it first, so it
  /// pays where buffers are reused many times, as device copies are).
  explicit buffer_cache(bytes_t max_cached_bytes, bool huge_pages = false);

  /// A byte buffer of `bytes`, reused when one of that size is cached; it comes back to the cache when
  /// the last tensor viewing it goes.
  at::Tensor take(bytes_t bytes);

  bytes_t cached_bytes() const;
  uint64_t reuses() const { return reuses_; }
  uint64_t allocations() const { return allocations_; }

private:
  void put_back(at::Tensor raw);

  bytes_t max_;
  bool huge_pages_;
  mutable std::mutex mutex_;
  std::map<bytes_t, std::vector<at::Tensor>> free_;  // by exact size
  bytes_t cached_ = 0;
  std::atomic<uint64_t> reuses_{0}, allocations_{0};
};

} // namespace mcache
