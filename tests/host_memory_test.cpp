// Note [Pinned host memory]: pinned buffers within a budget, a pageable fallback that is counted.

#include "runtime/core/models/host_memory.hpp"

#include <ATen/ATen.h>

#include "support/catch.hpp"

using namespace mcache;

TEST_CASE("host buffers are pinned within the budget where LibTorch can pin, else pageable and counted") {
  auto memory = std::make_shared<host_memory>(1 << 20);
  auto a = memory->allocate(256 << 10);
  auto b = memory->allocate(1 << 20);  // past the budget either way
  CHECK(a.numel() == 256 << 10);
  CHECK(b.numel() == 1 << 20);
  auto s = memory->stats();
  CHECK(s.pinned_budget_bytes == 1 << 20);
  if (a.is_pinned()) {
    CHECK(s.pinned_bytes == 256 << 10);
    CHECK(s.pageable_fallbacks == 1);  // only b
    a = at::Tensor();
    CHECK(memory->stats().pinned_bytes == 0);  // the budget gets the bytes back
  } else {
    CHECK(s.pinned_bytes == 0);  // a CPU-only LibTorch: both fell back
    CHECK(s.pageable_fallbacks == 2);
    CHECK(s.pageable_fallback_bytes == (256 << 10) + (1 << 20));
  }
}

TEST_CASE("with no pinned budget nothing is pinned and nothing counts as a fallback") {
  auto memory = std::make_shared<host_memory>(0);
  auto a = memory->allocate(4096);
  CHECK_FALSE(a.is_pinned());
  CHECK(memory->stats().pageable_fallbacks == 0);
}

TEST_CASE("a loader thread takes its buffers from the host memory made current there") {
  auto memory = std::make_shared<host_memory>(1 << 20);
  CHECK(host_memory::buffer(64).numel() == 64);  // none current: plain memory, not counted
  CHECK(memory->stats().pageable_fallbacks + memory->stats().pinned_bytes == 0);
  {
    host_memory::scope use{memory};
    auto t = host_memory::buffer(64);
    auto s = memory->stats();
    CHECK(s.pageable_fallbacks + (t.is_pinned() ? 1 : 0) == 1);
  }
}

// -- Note [Reuse, do not re-fault] ------------------------------------------------------------------------

#include "runtime/core/transfer/buffer_cache.hpp"

TEST_CASE("a freed buffer is handed out again for a request of its size or a little smaller, within the bound") {
  auto cache = std::make_shared<buffer_cache>(8 << 20);
  void* first;
  {
    auto a = cache->take(4 << 20);
    first = a.data_ptr();
  }
  CHECK(cache->cached_bytes() == 4 << 20);
  {
    auto b = cache->take((4 << 20) - 4096);  // a little smaller: the same buffer
    CHECK(b.data_ptr() == first);
    CHECK(b.numel() == (4 << 20) - 4096);
    CHECK(cache->cached_bytes() == 0);
  }
  auto small = cache->take(1 << 20);  // a quarter of it: not worth tying up the large one
  CHECK(small.data_ptr() != first);
  CHECK(cache->reuses() == 1);
  CHECK(cache->allocations() == 2);
}

TEST_CASE("the buffer cache keeps no more than its bound") {
  auto cache = std::make_shared<buffer_cache>(3 << 20);
  {
    auto a = cache->take(2 << 20);
    auto b = cache->take(2 << 20);
  }
  CHECK(cache->cached_bytes() == 2 << 20);  // the second did not fit under the bound and was freed
}

TEST_CASE("a fresh buffer frees cached ones first, so buffers in use plus those kept stay within the limit") {
  auto cache = std::make_shared<buffer_cache>(4 << 20);
  { auto a = cache->take(2 << 20); }
  CHECK(cache->cached_bytes() == 2 << 20);
  auto b = cache->take(3 << 20);  // no fit: 3 MiB in use + 2 MiB kept would pass the 4 MiB limit
  CHECK(cache->cached_bytes() == 0);
  CHECK(cache->live_bytes() == 3 << 20);
  auto c = cache->take(1 << 20);
  CHECK(cache->live_bytes() + cache->cached_bytes() <= 4 << 20);
  b = at::Tensor();
  CHECK(cache->cached_bytes() == 3 << 20);  // room under the limit: kept
  CHECK(cache->live_bytes() == 1 << 20);
}
