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

host_memory::host_memory(bytes_t pinned_budget_bytes, bytes_t pageable_cache_bytes)
  : budget_(pinned_budget_bytes),
    pageable_cache_(std::make_shared<buffer_cache>(pageable_cache_bytes, /*huge_pages=*/true)) {}

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
                               : ("the pinned budget of " + format_bytes(budget_) + " is used up").c_str());
  }
  return bytes == 0 ? at::empty({0}, at::kByte) : pageable_cache_->take(bytes);
}

at::Tensor host_memory::allocate(bytes_t bytes) {
  if (budget_ == 0 || bytes == 0)
    return pageable(bytes, false);
  if (cannot_pin_)
    return pageable(bytes, true);
  // LibTorch's pinned allocator hands out blocks of a power of two: that is what pinning costs, and what
  // the budget counts. Reserve first, so that concurrent loads never overshoot the budget together.
  auto charged = bytes_t{1};
  while (charged < bytes)
    charged <<= 1;
  auto before = pinned_.fetch_add(charged);
  if (before + charged > budget_) {
    pinned_ -= charged;
    return pageable(bytes, true);
  }
  at::Tensor pinned;
  try {
    pinned = at::empty({static_cast<int64_t>(bytes)}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  } catch (const std::exception&) {
    pinned_ -= charged;
    cannot_pin_ = true;  // a CPU-only LibTorch (or a failing driver): not retried
    return pageable(bytes, true);
  }
  ++buffers_;
  auto now = before + charged;
  auto peak = peak_.load();
  while (now > peak && !peak_.compare_exchange_weak(peak, now)) {
  }
  // The budget gets the bytes back when the last view of the buffer goes.
  auto self = shared_from_this();
  auto keep = pinned;
  return at::from_blob(
    pinned.data_ptr(), {static_cast<int64_t>(bytes)},
    [self, keep, charged](void*) { self->pinned_ -= charged; }, pinned.options());
}

host_memory_stats host_memory::stats() const {
  return host_memory_stats{budget_,           pinned_.load(),         peak_.load(),
                           buffers_.load(),   fallbacks_.load(),      fallback_bytes_.load(),
                           pageable_cache_->cached_bytes()};
}

} // namespace mcache
