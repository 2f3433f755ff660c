// Note [Reuse, do not re-fault] (buffer_cache.hpp).

#include "runtime/core/transfer/buffer_cache.hpp"

#include <ATen/ATen.h>

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

namespace mcache {

namespace {

constexpr bytes_t huge_page = 2 << 20;

bytes_t round_up(bytes_t n, bytes_t to) { return (n + to - 1) / to * to; }

bytes_t power_of_two_at_least(bytes_t n) {
  bytes_t p = 1;
  while (p < n)
    p <<= 1;
  return p;
}

bytes_t power_of_two_at_most(bytes_t n) {
  if (n == 0)
    return 0;
  bytes_t p = 1;
  while (p <= n / 2)
    p <<= 1;
  return p;
}

} // namespace

at::Tensor pageable_slab(bytes_t bytes) {
  if (bytes < huge_page)
    return at::empty({static_cast<int64_t>(bytes)}, at::kByte);
  auto rounded = round_up(bytes, huge_page);
  void* p = std::aligned_alloc(huge_page, rounded);
  if (!p)
    return at::empty({static_cast<int64_t>(bytes)}, at::kByte);
  ::madvise(p, rounded, MADV_HUGEPAGE);  // advice only: without THP it is a no-op
  return at::from_blob(p, {static_cast<int64_t>(bytes)}, [](void* q) { std::free(q); }, at::kByte);
}

buffer_cache::buffer_cache(buffer_cache_options options) : options_(std::move(options)) {
  if (!options_.source)
    options_.source = pageable_slab;
}

bytes_t buffer_cache::new_slab_size(bytes_t aligned, bytes_t room) const {
  auto largest = std::min(options_.max_slab_bytes, room);
  if (options_.power_of_two_slabs) {
    auto needed = power_of_two_at_least(aligned);
    return needed > room ? 0 : std::max(needed, power_of_two_at_most(largest));
  }
  // Both terms are within `room`. A slab of at least a huge page is a whole number of them where room
  // allows, as pageable_slab allocates it: what the cache counts is what it holds.
  if (aligned > room)
    return 0;
  auto size = std::max(largest / huge_page * huge_page, aligned);
  if (size >= huge_page && round_up(size, huge_page) <= room)
    size = round_up(size, huge_page);
  return size;
}

void buffer_cache::add_free_locked(slab& s, bytes_t offset, bytes_t size) {
  auto next = s.free.lower_bound(offset);
  if (next != s.free.begin()) {
    auto previous = std::prev(next);
    if (previous->first + previous->second == offset) {
      offset = previous->first;
      size += previous->second;
      remove_free_locked(s, previous);
    }
  }
  if (next != s.free.end() && offset + size == next->first) {
    size += next->second;
    remove_free_locked(s, next);
  }
  s.free.emplace(offset, size);
  free_by_size_.emplace(size, s.id, offset);
}

void buffer_cache::remove_free_locked(slab& s, std::map<bytes_t, bytes_t>::iterator range) {
  free_by_size_.erase({range->second, s.id, range->first});
  s.free.erase(range);
}

at::Tensor buffer_cache::carve_locked(slab& s, bytes_t offset, bytes_t range, bytes_t aligned, bytes_t bytes) {
  remove_free_locked(s, s.free.find(offset));
  if (range > aligned)
    add_free_locked(s, offset + aligned, range - aligned);
  s.used += aligned;
  carved_ += aligned;
  live_ += bytes;
  std::weak_ptr<buffer_cache> cache = shared_from_this();
  auto owner = slabs_.at(s.id);  // the buffer keeps its slab's memory alive, even past the cache
  auto* base = static_cast<uint8_t*>(s.memory.data_ptr()) + offset;
  return at::from_blob(
    base, {static_cast<int64_t>(bytes)},
    [cache, owner, offset, aligned, bytes](void*) {
      if (auto c = cache.lock())
        c->give_back(owner->id, offset, aligned, bytes);
    },
    s.memory.options());
}

void buffer_cache::give_back(uint64_t slab_id, bytes_t offset, bytes_t aligned, bytes_t bytes) {
  std::lock_guard<std::mutex> guard{mutex_};
  auto& s = *slabs_.at(slab_id);  // a slab with buffers out is never let go
  s.used -= aligned;
  carved_ -= aligned;
  live_ -= bytes;
  add_free_locked(s, offset, aligned);
  nothing_returned_ = false;
  returned_.notify_all();
}

at::Tensor buffer_cache::carve_best_fit_locked(bytes_t aligned, bytes_t bytes) {
  auto fit = free_by_size_.lower_bound({aligned, 0, 0});
  if (fit == free_by_size_.end())
    return {};
  auto [range, id, offset] = *fit;
  ++reuses_;
  return carve_locked(*slabs_.at(id), offset, range, aligned, bytes);
}

std::vector<at::Tensor> buffer_cache::release_idle_locked(bytes_t aligned) {
  std::vector<at::Tensor> released;
  while (options_.release_idle_slabs && new_slab_size(aligned, options_.limit_bytes - held_) == 0) {
    std::shared_ptr<slab> largest_idle;
    for (const auto& [id, s] : slabs_)
      if (s->used == 0 && (!largest_idle || s->size > largest_idle->size))
        largest_idle = s;
    if (!largest_idle)
      break;
    remove_free_locked(*largest_idle, largest_idle->free.begin());  // idle: one free range, the whole slab
    held_ -= largest_idle->size;
    released.push_back(std::move(largest_idle->memory));
    slabs_.erase(largest_idle->id);
  }
  return released;
}

at::Tensor buffer_cache::try_take(bytes_t bytes) {
  if (bytes == 0)
    return at::empty({0}, at::kByte);
  if (bytes > (bytes_t{1} << 62))  // no machine has it; and no size arithmetic below may wrap
    throw std::length_error("buffer_cache: a buffer of " + std::to_string(bytes) + " bytes");
  const auto aligned = round_up(bytes, alignment);
  std::vector<at::Tensor> released;  // freed after the lock is let go (declared first: destroyed last)
  bytes_t size = 0;
  {
    std::unique_lock<std::mutex> guard{mutex_};
    if (auto buffer = carve_best_fit_locked(aligned, bytes); buffer.defined())
      return buffer;
    // Buffers on their way back (Note [Reuse, do not re-fault]): the slabs' buffers in use and this one
    // pass the limit, which the tier's budget allows only while some of them are being given back. Wait
    // for them, then look again. A wait that saw nothing come back is not repeated before something does
    // (a buffer kept past its tier's release, say): one wait, not one per request.
    const auto limit = options_.limit_bytes;
    if (options_.return_wait.count() > 0 && aligned <= limit && carved_ + aligned > limit && !nothing_returned_) {
      ++return_waits_;
      bool back = returned_.wait_for(guard, options_.return_wait, [&] {
        return carved_ + aligned <= limit || free_by_size_.lower_bound({aligned, 0, 0}) != free_by_size_.end();
      });
      nothing_returned_ = !back;
      if (auto buffer = carve_best_fit_locked(aligned, bytes); buffer.defined())
        return buffer;
    }
    if (held_ > options_.limit_bytes)
      return {};
    size = new_slab_size(aligned, options_.limit_bytes - held_);
    if (size == 0) {
      released = release_idle_locked(aligned);
      size = new_slab_size(aligned, options_.limit_bytes - held_);
    }
    if (size == 0)
      return {};
    held_ += size;  // reserved: concurrent requests never take more slabs than the limit together
  }
  released.clear();
  at::Tensor memory;
  try {
    memory = options_.source(size);  // pinning costs about 0.5 s per GiB: not under the lock
  } catch (...) {
    std::lock_guard<std::mutex> guard{mutex_};
    held_ -= size;
    throw;
  }
  std::lock_guard<std::mutex> guard{mutex_};
  auto s = std::make_shared<slab>();
  s->id = next_slab_id_++;
  s->memory = std::move(memory);
  s->size = size;
  slabs_.emplace(s->id, s);
  add_free_locked(*s, 0, size);
  ++allocations_;
  return carve_locked(*s, 0, size, aligned, bytes);
}

at::Tensor buffer_cache::take(bytes_t bytes) {
  auto buffer = try_take(bytes);
  if (buffer.defined())
    return buffer;
  if (options_.discard_free_pages_on_overflow)
    discard_free_pages(bytes);
  // No slab can hold it within the limit: memory of its own, freed when it goes.
  auto raw = options_.source(bytes);
  ++overflows_;
  ++allocations_;
  {
    std::lock_guard<std::mutex> guard{mutex_};
    live_ += bytes;
    overflowing_ += bytes;
  }
  std::weak_ptr<buffer_cache> cache = shared_from_this();
  return at::from_blob(
    raw.data_ptr(), {static_cast<int64_t>(bytes)},
    [cache, raw, bytes](void*) {
      if (auto c = cache.lock()) {
        std::lock_guard<std::mutex> guard{c->mutex_};
        c->live_ -= bytes;
        c->overflowing_ -= bytes;
      }
    },
    raw.options());
}

// Largest free ranges first, until `wanted` resident bytes are given back (or none is left); whole pages
// inside each range only. Only pages resident now count (mincore): a range never touched, or given back
// before and not used since, frees nothing, and counting it would stop the walk with the memory still
// held (the default sample then peaked 15 % over its budgets after "discarding" 465 MB for a 393 MB
// overflow). Under the lock: no range can be carved (and written) while its pages go.
void buffer_cache::discard_free_pages(bytes_t wanted) {
  static const auto page = static_cast<bytes_t>(::sysconf(_SC_PAGESIZE));
  std::lock_guard<std::mutex> guard{mutex_};
  bytes_t given = 0;
  std::vector<unsigned char> in_core;
  for (auto r = free_by_size_.rbegin(); r != free_by_size_.rend() && given < wanted; ++r) {
    const auto& [size, id, offset] = *r;
    const auto start = reinterpret_cast<std::uintptr_t>(slabs_.at(id)->memory.data_ptr());
    auto from = round_up(start + offset, page);
    auto to = (start + offset + size) / page * page;
    if (to <= from)
      continue;
    in_core.assign((to - from) / page, 0);
    if (::mincore(reinterpret_cast<void*>(from), to - from, in_core.data()) != 0)
      continue;
    auto resident = static_cast<bytes_t>(std::count_if(in_core.begin(), in_core.end(),
                                                       [](unsigned char v) { return (v & 1) != 0; })) * page;
    if (resident > 0 && ::madvise(reinterpret_cast<void*>(from), to - from, MADV_DONTNEED) == 0)
      given += resident;
  }
  discarded_bytes_ += given;
}

bytes_t buffer_cache::live_bytes() const {
  std::lock_guard<std::mutex> guard{mutex_};
  return live_;
}

bytes_t buffer_cache::overflow_bytes() const {
  std::lock_guard<std::mutex> guard{mutex_};
  return overflowing_;
}

bytes_t buffer_cache::slab_bytes() const {
  std::lock_guard<std::mutex> guard{mutex_};
  bytes_t total = 0;
  for (const auto& [id, s] : slabs_)
    total += s->size;
  return total;
}

bytes_t buffer_cache::cached_bytes() const {
  std::lock_guard<std::mutex> guard{mutex_};
  bytes_t total = 0;
  for (const auto& [id, s] : slabs_)
    total += s->size;
  return total - carved_;
}

size_t buffer_cache::slab_count() const {
  std::lock_guard<std::mutex> guard{mutex_};
  return slabs_.size();
}

void buffer_cache::check() const {
  std::lock_guard<std::mutex> guard{mutex_};
  auto fail = [](const std::string& what) { throw std::logic_error("buffer_cache: " + what); };
  bytes_t total = 0, used = 0;
  size_t ranges = 0;
  for (const auto& [id, s] : slabs_) {
    total += s->size;
    used += s->used;
    bytes_t free = 0, end = 0;
    bool first = true;
    for (const auto& [offset, size] : s->free) {
      if (size == 0 || offset + size > s->size)
        fail("slab " + std::to_string(id) + " has a free range outside it");
      if (!first && offset <= end)
        fail("slab " + std::to_string(id) + " has free ranges that overlap or touch (not merged)");
      if (!free_by_size_.count({size, id, offset}))
        fail("slab " + std::to_string(id) + " has a free range missing from the size index");
      free += size;
      end = offset + size;
      first = false;
      ++ranges;
    }
    if (free + s->used != s->size)
      fail("slab " + std::to_string(id) + ": free + used != size");
  }
  if (ranges != free_by_size_.size())
    fail("the size index holds ranges no slab has");
  if (used != carved_)
    fail("carved bytes do not add up");
  if (total > held_ || held_ > options_.limit_bytes)
    fail("slabs held pass the limit");
}

} // namespace mcache
