// Note [Pinned host memory]: pinned buffers within a budget, a pageable fallback that is counted.

#include "runtime/core/models/host_memory.hpp"

#include <ATen/ATen.h>

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>

#include <random>
#include <thread>
#include <vector>

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
    // One power-of-two slab as large as the budget: `a` is carved from it, `b` does not fit beside it.
    CHECK(s.pinned_bytes == 1 << 20);
    CHECK(s.pinned_in_use_bytes == 256 << 10);
    CHECK(s.pageable_fallbacks == 1);  // only b
    a = at::Tensor();
    CHECK(memory->stats().pinned_in_use_bytes == 0);  // the slab gets the bytes back
    auto c = memory->allocate(768 << 10);
    CHECK(c.is_pinned());
    CHECK(memory->stats().pinned_bytes == 1 << 20);  // the same slab: pinned once
  } else {
    CHECK(s.pinned_bytes == 0);  // a CPU-only LibTorch: both fell back
    CHECK(s.pageable_fallbacks == 2);
    CHECK(s.pageable_fallback_bytes == (256 << 10) + (1 << 20));
  }
}

namespace {
/// A pinned slab source for machines that cannot pin: pageable memory, with every slab's size recorded.
struct counting_source {
  std::shared_ptr<std::vector<bytes_t>> sizes = std::make_shared<std::vector<bytes_t>>();
  at::Tensor operator()(bytes_t bytes) const {
    sizes->push_back(bytes);
    return at::empty({static_cast<int64_t>(bytes)}, at::kByte);
  }
};
} // namespace

TEST_CASE("pinned slabs are powers of two and buffers carved from them keep the pinned budget byte-exact") {
  // Five 96 KiB buffers in a 512 KiB budget: pinned one by one, each would cost a 128 KiB block and only
  // four would fit.
  counting_source source;
  auto memory = std::make_shared<host_memory>(512 << 10, 0, source);
  std::vector<at::Tensor> buffers;
  for (int i = 0; i < 5; ++i)
    buffers.push_back(memory->allocate(96 << 10));
  auto s = memory->stats();
  CHECK(s.pageable_fallbacks == 0);
  CHECK(s.pinned_buffers == 5);
  CHECK(s.pinned_in_use_bytes == 5 * (96 << 10));
  CHECK(s.pinned_bytes <= 512 << 10);
  bytes_t slabs = 0;
  for (auto size : *source.sizes) {
    CHECK((size & (size - 1)) == 0);
    slabs += size;
  }
  CHECK(slabs == s.pinned_bytes);
  buffers.push_back(memory->allocate(96 << 10));  // no room left in the budget: pageable, counted
  CHECK(memory->stats().pageable_fallbacks == 1);
  buffers.clear();
  buffers.push_back(memory->allocate(400 << 10));  // freed ranges merge: reused, nothing pinned anew
  CHECK(source.sizes->size() == 1);
  CHECK(memory->stats().pageable_fallbacks == 1);
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

namespace {
void* address(const at::Tensor& t) { return t.data_ptr(); }
uint8_t* at_byte(const at::Tensor& t, bytes_t offset) { return static_cast<uint8_t*>(t.data_ptr()) + offset; }
} // namespace

TEST_CASE("a freed range is handed out again for any size that fits, split from its front, without fresh memory") {
  auto cache = std::make_shared<buffer_cache>(8 << 20);
  void* first;
  {
    auto a = cache->take(4 << 20);
    first = address(a);
  }
  cache->check();
  CHECK(cache->slab_bytes() == 8 << 20);  // one slab, as large as the limit allows
  CHECK(cache->cached_bytes() == 8 << 20);
  auto b = cache->take((4 << 20) - 4096);
  CHECK(address(b) == first);
  CHECK(b.numel() == (4 << 20) - 4096);
  auto small = cache->take(1 << 20);  // split from what is left
  CHECK(at_byte(small, 0) == static_cast<uint8_t*>(first) + (4 << 20) - 4096);
  cache->check();
  CHECK(cache->allocations() == 1);
  CHECK(cache->reuses() == 2);
  CHECK(cache->live_bytes() == (5 << 20) - 4096);
}

TEST_CASE("neighbouring free ranges merge, so a request as large as both fits where they were") {
  auto cache = std::make_shared<buffer_cache>(4 << 20);
  auto a = cache->take(1 << 20);
  auto b = cache->take(1 << 20);
  auto c = cache->take(2 << 20);  // the slab is full
  void* where = address(a);
  a = at::Tensor();
  b = at::Tensor();
  cache->check();
  auto d = cache->take(2 << 20);
  CHECK(address(d) == where);
  CHECK(cache->allocations() == 1);
  cache->check();
}

TEST_CASE("slabs never pass the limit: a request that no slab can hold gets memory of its own, freed when it goes") {
  auto cache = std::make_shared<buffer_cache>(3 << 20);
  auto a = cache->take(2 << 20);
  auto b = cache->take(2 << 20);  // 1 MiB left under the limit, and the only slab is in use
  CHECK(cache->slab_bytes() <= 3 << 20);
  CHECK(cache->overflows() == 1);
  CHECK(cache->live_bytes() == 4 << 20);
  CHECK_FALSE(cache->try_take(2 << 20).defined());
  b = at::Tensor();
  CHECK(cache->live_bytes() == 2 << 20);
  CHECK(cache->slab_count() == 1);
  cache->check();
}

TEST_CASE("a request that passes the limit only with buffers on their way back waits for them instead of taking memory of its own") {
  using namespace std::chrono_literals;
  for (bool waits : {true, false}) {
    auto options = buffer_cache::pageable(4 << 20);
    options.max_slab_bytes = 4 << 20;
    options.return_wait = waits ? 2000ms : 0ms;
    auto cache = std::make_shared<buffer_cache>(options);
    auto evicted = cache->take(3 << 20);  // its tier has let go of it, but it has not come back yet
    auto* where = evicted.data_ptr();
    std::thread freeing{[&] {
      std::this_thread::sleep_for(50ms);
      evicted = at::Tensor();
    }};
    auto load = cache->take(3 << 20);
    freeing.join();
    INFO("return_wait " << (waits ? "2 s" : "0"));
    CHECK(cache->overflows() == (waits ? 0u : 1u));
    CHECK(cache->overflow_bytes() == (waits ? 0u : 3u << 20));
    CHECK(cache->return_waits() == (waits ? 1u : 0u));
    CHECK((load.data_ptr() == where) == waits);
    load = at::Tensor();
    CHECK(cache->overflow_bytes() == 0);
    cache->check();
  }
}

TEST_CASE("a request waits for buffers on their way back once, not again before one comes back, and never past a limit it cannot fit") {
  using namespace std::chrono_literals;
  auto options = buffer_cache::pageable(4 << 20);
  options.max_slab_bytes = 4 << 20;
  options.return_wait = 30ms;
  auto cache = std::make_shared<buffer_cache>(options);
  auto kept = cache->take(3 << 20);  // kept past its tier's release: it does not come back
  auto small = cache->take(1 << 20);
  auto first = cache->take(3 << 20);
  CHECK(cache->return_waits() == 1);  // waited, nothing came back: an overflow
  auto second = cache->take(3 << 20);
  CHECK(cache->return_waits() == 1);  // not waited again
  CHECK(cache->overflows() == 2);
  first = at::Tensor();  // an overflow buffer going is no buffer coming back to a slab
  auto third = cache->take(3 << 20);
  CHECK(cache->return_waits() == 1);
  small = at::Tensor();  // one came back: the next request that passes the limit waits again
  auto fourth = cache->take(3 << 20);
  CHECK(cache->return_waits() == 2);
  auto too_large = cache->take(5 << 20);  // more than the limit: nothing could come back for it
  CHECK(cache->return_waits() == 2);
  auto nothing_cached = std::make_shared<buffer_cache>([] {
    auto o = buffer_cache::pageable(0);
    o.return_wait = 30ms;
    return o;
  }());
  auto uncached = nothing_cached->take(1 << 20);
  CHECK(nothing_cached->return_waits() == 0);
  cache->check();
}

TEST_CASE("a request that finds the free bytes but no range large enough gives the free ranges' pages back before it takes memory of its own") {
  constexpr bytes_t mib = 1 << 20;
  auto cache = std::make_shared<buffer_cache>(8 * mib);  // one slab of 8 MiB
  auto a = cache->take(3 * mib);
  auto b = cache->take(2 * mib);
  auto c = cache->take(3 * mib);
  REQUIRE(cache->slab_count() == 1);
  for (auto* t : {&a, &b, &c})
    t->fill_(1);  // every page touched: resident
  auto* slab_start = static_cast<unsigned char*>(a.data_ptr());
  auto* tail = static_cast<unsigned char*>(c.data_ptr());
  a = at::Tensor();
  c = at::Tensor();  // 6 MiB free, in two ranges of 3 MiB
  auto resident_pages = [](unsigned char* at, bytes_t bytes) {
    static const auto page = static_cast<bytes_t>(::sysconf(_SC_PAGESIZE));
    std::vector<unsigned char> in_core((bytes + page - 1) / page);
    REQUIRE(::mincore(at, bytes, in_core.data()) == 0);
    return std::count_if(in_core.begin(), in_core.end(), [](unsigned char v) { return (v & 1) != 0; });
  };
  REQUIRE(resident_pages(slab_start, 3 * mib) > 0);
  auto d = cache->take(4 * mib);  // fits the limit with b (6 of 8 MiB), but no range of 4 MiB: an overflow
  CHECK(cache->overflows() == 1);
  CHECK(cache->discarded_bytes() == 6 * mib);  // both ranges, whole pages
  CHECK(resident_pages(slab_start, 3 * mib) == 0);
  CHECK(resident_pages(tail, 3 * mib) == 0);
  CHECK(b.sum().item<double>() == 2.0 * mib);  // the buffer in use between them is untouched
  auto again = cache->take(3 * mib);  // a discarded range is reused, its pages faulted in afresh
  CHECK(again.data_ptr() == slab_start);
  again.fill_(2);
  CHECK(again.sum().item<double>() == 6.0 * mib);
  cache->check();
}

TEST_CASE("an overflow counts only resident pages as given back, so a range never touched does not stop it short") {
  constexpr bytes_t mib = 1 << 20;
  static const auto page = static_cast<bytes_t>(::sysconf(_SC_PAGESIZE));
  auto options = buffer_cache::pageable(8 * mib);
  // Fresh pages, none resident until touched, and no huge page spilling a touch over into a neighbour
  // (malloc could hand back memory an earlier test touched).
  options.source = [](bytes_t n) {
    void* p = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(p != MAP_FAILED);
    ::madvise(p, n, MADV_NOHUGEPAGE);
    return at::from_blob(p, {static_cast<int64_t>(n)}, [n](void* q) { ::munmap(q, n); }, at::kByte);
  };
  auto cache = std::make_shared<buffer_cache>(options);
  auto a = cache->take(3 * mib);
  auto b = cache->take(2 * mib);
  auto c = cache->take(3 * mib);
  REQUIRE(cache->slab_count() == 1);
  a.fill_(1);
  b.fill_(1);  // c is never touched: its pages were never faulted in
  auto* head = static_cast<unsigned char*>(a.data_ptr());
  a = at::Tensor();
  c = at::Tensor();  // two free ranges of 3 MiB; the later one (walked first on a tie) holds no pages
  auto d = cache->take(4 * mib);  // an overflow that wants 4 MiB given back
  CHECK(cache->overflows() == 1);
  // Only the touched range counts: its whole pages (less at most one page at each unaligned end).
  CHECK(cache->discarded_bytes() <= 3 * mib);
  CHECK(cache->discarded_bytes() >= 3 * mib - 2 * page);
  std::vector<unsigned char> in_core(3 * mib / page);
  auto inner = reinterpret_cast<unsigned char*>((reinterpret_cast<std::uintptr_t>(head) + page - 1) / page * page);
  REQUIRE(::mincore(inner, 2 * mib, in_core.data()) == 0);
  CHECK(std::count_if(in_core.begin(), in_core.begin() + 2 * mib / page, [](unsigned char v) { return v & 1; }) == 0);
  CHECK(b.sum().item<double>() == 2.0 * mib);
  cache->check();
}

TEST_CASE("slabs with nothing in use are let go to make room for the slab a request needs") {
  auto cache = std::make_shared<buffer_cache>(buffer_cache_options{6 << 20, pageable_slab, false, 2 << 20});
  auto a = cache->take(2 << 20);
  auto b = cache->take(2 << 20);
  auto c = cache->take(2 << 20);
  CHECK(cache->slab_count() == 3);
  a = at::Tensor();
  b = at::Tensor();
  auto d = cache->take(4 << 20);  // two idle 2 MiB slabs go; one slab of 4 MiB comes
  CHECK(cache->overflows() == 0);
  CHECK(cache->slab_count() == 2);
  CHECK(cache->slab_bytes() == 6 << 20);
  cache->check();
}

TEST_CASE("a buffer outlives its cache and keeps its memory") {
  auto cache = std::make_shared<buffer_cache>(1 << 20);
  auto a = cache->take(4096);
  a.fill_(7);
  cache.reset();
  CHECK(a[4095].item<uint8_t>() == 7);
}

TEST_CASE("after any sequence of takes and frees, buffers never overlap and free ranges tile the rest of the slabs") {
  // Each buffer holds its own byte; a buffer that shared memory with another would lose it, and so would
  // one whose pages an overflow gave back. Slabs of 2 MiB (huge-page aligned) and of a size that is no
  // whole number of pages (from the CPU allocator: their start is not page-aligned either).
  const bytes_t max_slab = GENERATE(bytes_t{2} << 20, (bytes_t{1} << 20) + 1536);
  auto options = buffer_cache_options{8 << 20, pageable_slab, false, max_slab};
  options.discard_free_pages_on_overflow = true;
  auto cache = std::make_shared<buffer_cache>(options);
  std::mt19937 random{20261128};
  std::vector<std::pair<at::Tensor, uint8_t>> live;
  uint8_t next_mark = 1;
  for (int step = 0; step < 3000; ++step) {
    if (!live.empty() && random() % 2 == 0) {
      auto i = random() % live.size();
      auto& [buffer, mark] = live[i];
      CHECK((buffer == mark).all().item<bool>());
      live.erase(live.begin() + static_cast<std::ptrdiff_t>(i));
    } else {
      auto bytes = static_cast<bytes_t>(1 + random() % (768 << 10));
      auto buffer = cache->take(bytes);
      REQUIRE(static_cast<bytes_t>(buffer.numel()) == bytes);
      buffer.fill_(next_mark);
      live.emplace_back(buffer, next_mark);
      next_mark = static_cast<uint8_t>(next_mark % 250 + 1);
    }
    cache->check();
    REQUIRE(cache->slab_bytes() <= 8 << 20);
  }
  for (auto& [buffer, mark] : live)
    CHECK((buffer == mark).all().item<bool>());
  CHECK(cache->reuses() > cache->allocations());
  CHECK(cache->overflows() > 0);        // the sequence does overflow,
  CHECK(cache->discarded_bytes() > 0);  // and gives free pages back around live buffers
}

TEST_CASE("buffers taken and freed on several threads at once keep the books straight") {
  auto cache = std::make_shared<buffer_cache>(buffer_cache_options{16 << 20, pageable_slab, false, 4 << 20});
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([cache, t] {
      std::mt19937 random{static_cast<unsigned>(t)};
      std::vector<at::Tensor> mine;
      for (int i = 0; i < 500; ++i) {
        if (mine.size() > 4 || (!mine.empty() && random() % 3 == 0))
          mine.erase(mine.begin());
        mine.push_back(cache->take(static_cast<bytes_t>(1 + random() % (512 << 10))));
      }
    });
  for (auto& t : threads)
    t.join();
  cache->check();
  CHECK(cache->live_bytes() == 0);
  CHECK(cache->cached_bytes() == cache->slab_bytes());
}
