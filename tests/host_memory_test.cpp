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
