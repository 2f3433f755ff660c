#pragma once
// Note [Reuse, do not re-fault]: memory that a simulated device or a load takes again and again is
// reused, not freshly allocated: a fresh allocation of gigabytes is a fresh page fault per 4 KiB page,
// and the sample spent most of its time in the kernel doing exactly that. A GPU's memory comes from a
// caching allocator and pinned host memory must be reused anyway; this cache gives the simulated device
// and pageable load buffers the same discipline, as a caching allocator with a limit: the buffers in use
// plus those kept for reuse never exceed the limit (the budget of the tier the buffers serve), so what
// is cached is memory the budget allows anyway, and the process's memory stays within its budgets. A
// fresh allocation first frees cached buffers (largest first) to stay within the limit. It hands out the
// best fit that is at most a quarter larger than asked. What is cached is reported in the stats. It does
// not split blocks, so a request of a size that nothing cached fits still faults in a fresh buffer: in the
// default sample 59% of CPU time (perf) is the kernel zeroing such fresh huge pages.

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
  /// Keeps freed buffers while the buffers in use plus those kept stay within `limit_bytes`. `huge_pages`:
  /// place large buffers on transparent huge pages (one fault per 2 MiB; but where memory is fragmented
  /// the kernel may compact it first, so it pays where buffers are reused many times, as device copies are).
  explicit buffer_cache(bytes_t limit_bytes, bool huge_pages = false);

  /// A byte buffer of `bytes`, reused when one of that size is cached; it comes back to the cache when
  /// the last tensor viewing it goes.
  at::Tensor take(bytes_t bytes);

  bytes_t cached_bytes() const;
  /// Bytes of the buffers handed out and not yet back.
  bytes_t live_bytes() const;
  uint64_t reuses() const { return reuses_; }
  uint64_t allocations() const { return allocations_; }

private:
  void put_back(at::Tensor raw);
  /// Frees cached buffers, largest first, until live + cached fit the limit. Returns them, to be freed
  /// outside the lock.
  std::vector<at::Tensor> shrink_locked();

  bytes_t limit_;
  bool huge_pages_;
  mutable std::mutex mutex_;
  std::map<bytes_t, std::vector<at::Tensor>> free_;  // by exact size
  bytes_t cached_ = 0;
  bytes_t live_ = 0;
  std::atomic<uint64_t> reuses_{0}, allocations_{0};
};

} // namespace mcache
