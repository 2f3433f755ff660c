// Note [Reuse, do not re-fault] (buffer_cache.hpp).

#include "runtime/core/transfer/buffer_cache.hpp"

#include <ATen/ATen.h>

#include <sys/mman.h>

#include <cstdlib>

namespace mcache {

namespace {

constexpr bytes_t huge_page = 2 << 20;

/// A large buffer on transparent huge pages where the kernel allows them (`madvise` mode is the common
/// default): one fault per 2 MiB instead of one per 4 KiB the first time it is touched.
at::Tensor fresh_buffer(bytes_t bytes, bool huge_pages) {
  if (!huge_pages || bytes < huge_page)
    return at::empty({static_cast<int64_t>(bytes)}, at::kByte);
  auto rounded = (bytes + huge_page - 1) / huge_page * huge_page;
  void* p = std::aligned_alloc(huge_page, rounded);
  if (!p)
    return at::empty({static_cast<int64_t>(bytes)}, at::kByte);
  ::madvise(p, rounded, MADV_HUGEPAGE);  // advice only: without THP it is a no-op
  return at::from_blob(p, {static_cast<int64_t>(bytes)}, [](void* q) { std::free(q); }, at::kByte);
}

} // namespace

buffer_cache::buffer_cache(bytes_t limit_bytes, bool huge_pages)
  : limit_(limit_bytes), huge_pages_(huge_pages) {}

std::vector<at::Tensor> buffer_cache::shrink_locked() {
  std::vector<at::Tensor> dropped;
  while (live_ + cached_ > limit_ && !free_.empty()) {
    auto largest = std::prev(free_.end());
    cached_ -= largest->first;
    dropped.push_back(std::move(largest->second.back()));
    largest->second.pop_back();
    if (largest->second.empty())
      free_.erase(largest);
  }
  return dropped;
}

at::Tensor buffer_cache::take(bytes_t bytes) {
  at::Tensor raw;
  std::vector<at::Tensor> dropped;  // freed after the lock is let go
  {
    // Best fit among buffers at most a quarter larger: models of similar layer sizes share buffers, and
    // no request ties up a much larger one.
    std::lock_guard<std::mutex> guard{mutex_};
    auto i = free_.lower_bound(bytes);
    if (i != free_.end() && i->first <= bytes + bytes / 4) {
      raw = std::move(i->second.back());
      i->second.pop_back();
      cached_ -= i->first;
      if (i->second.empty())
        free_.erase(i);
      live_ += static_cast<bytes_t>(raw.numel());
    } else {
      live_ += bytes;
      dropped = shrink_locked();  // make the fresh buffer's room under the limit first
    }
  }
  dropped.clear();
  if (raw.defined())
    ++reuses_;
  else {
    raw = fresh_buffer(bytes, huge_pages_);
    ++allocations_;
  }
  std::weak_ptr<buffer_cache> cache = shared_from_this();
  return at::from_blob(
    raw.data_ptr(), {static_cast<int64_t>(bytes)},
    [cache, raw](void*) {
      if (auto c = cache.lock())
        c->put_back(raw);
    },
    raw.options());
}

void buffer_cache::put_back(at::Tensor raw) {
  auto bytes = static_cast<bytes_t>(raw.numel());
  std::lock_guard<std::mutex> guard{mutex_};
  live_ -= bytes;
  if (live_ + cached_ + bytes > limit_)
    return;  // over the limit: freed (the lambda holding `raw` goes)
  free_[bytes].push_back(std::move(raw));
  cached_ += bytes;
}

bytes_t buffer_cache::live_bytes() const {
  std::lock_guard<std::mutex> guard{mutex_};
  return live_;
}

bytes_t buffer_cache::cached_bytes() const {
  std::lock_guard<std::mutex> guard{mutex_};
  return cached_;
}

} // namespace mcache
