// Note [Pinned host memory] (host_memory.hpp).

#include "runtime/core/models/host_memory.hpp"

#include "runtime/core/format.hpp"

#include <ATen/ATen.h>

#include <cstdio>
#include <string>

namespace mcache {

namespace {
thread_local std::shared_ptr<host_memory> current;
}

at::Tensor pinned_slab(bytes_t bytes) {
  return at::empty({static_cast<int64_t>(bytes)}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
}

host_memory::host_memory(bytes_t pinned_budget_bytes, bytes_t pageable_cache_bytes, slab_source pinned_source)
  : budget_(pinned_budget_bytes),
    // LibTorch's pinned allocator rounds each block up to a power of two: slabs are powers of two.
    pinned_cache_(std::make_shared<buffer_cache>(buffer_cache_options{
      pinned_budget_bytes, std::move(pinned_source), /*power_of_two_slabs=*/true, bytes_t{1} << 30,
      /*release_idle_slabs=*/false, /*discard_free_pages_on_overflow=*/false})),
    // An evicted copy is freed on a loader thread: a load may wait for it (Note [Reuse, do not re-fault]).
    pageable_cache_(std::make_shared<buffer_cache>(buffer_cache::pageable(pageable_cache_bytes, runtime_return_wait))) {}

host_memory::scope::scope(std::shared_ptr<host_memory> memory) : previous_(std::move(current)) {
  current = std::move(memory);
}
host_memory::scope::~scope() { current = std::move(previous_); }

at::Tensor host_memory::buffer(bytes_t bytes) {
  if (current)
    return current->allocate(bytes);
  return at::empty({static_cast<int64_t>(bytes)}, at::kByte);
}

at::Tensor host_memory::pageable(bytes_t bytes, bool fallback) {
  if (fallback) {
    ++fallbacks_;
    fallback_bytes_ += bytes;
    if (!logged_.exchange(true))
      std::fprintf(stderr, "mcache: host buffers fall back to pageable memory (%s); copies from them to a GPU run "
                           "at a fraction of the link's speed. Counted in ram_stats::pageable_fallbacks.\n",
                   cannot_pin_ ? "this LibTorch cannot pin memory"
                               : ("no pinned slab holds it within the pinned budget of " + format_bytes(budget_)).c_str());
  }
  return bytes == 0 ? at::empty({0}, at::kByte) : pageable_cache_->take(bytes);
}

at::Tensor host_memory::allocate(bytes_t bytes) {
  if (budget_ == 0 || bytes == 0)
    return pageable(bytes, false);
  if (cannot_pin_)
    return pageable(bytes, true);
  at::Tensor pinned;
  try {
    pinned = pinned_cache_->try_take(bytes);
  } catch (const std::exception&) {
    cannot_pin_ = true;  // a CPU-only LibTorch (or a failing driver): not retried
    return pageable(bytes, true);
  }
  if (!pinned.defined())
    return pageable(bytes, true);  // no slab holds it within the budget
  ++buffers_;
  auto now = pinned_cache_->slab_bytes();
  auto peak = peak_.load();
  while (now > peak && !peak_.compare_exchange_weak(peak, now)) {
  }
  return pinned;
}

host_memory_stats host_memory::stats() const {
  host_memory_stats s;
  s.pinned_budget_bytes = budget_;
  s.pinned_bytes = pinned_cache_->slab_bytes();
  s.pinned_peak_bytes = peak_.load();
  s.pinned_in_use_bytes = pinned_cache_->live_bytes();
  s.pinned_buffers = buffers_.load();
  s.pageable_fallbacks = fallbacks_.load();
  s.pageable_fallback_bytes = fallback_bytes_.load();
  s.cached_bytes = pinned_cache_->cached_bytes() + pageable_cache_->cached_bytes();
  s.overflow_bytes = pinned_cache_->overflow_bytes() + pageable_cache_->overflow_bytes();
  s.overflows = pinned_cache_->overflows() + pageable_cache_->overflows();
  return s;
}

} // namespace mcache
