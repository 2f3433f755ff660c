// Shutting down with work in flight, with real threads: waiters are answered, nothing hangs, and handles
// that outlive the shutdown release as no-ops.

#include "runtime/runtime.hpp"

#include "support/catch.hpp"

#include <future>
#include <thread>

using namespace mcache;
using namespace std::chrono_literals;

namespace {
constexpr bytes_t mib = 1 << 20;
constexpr int64_t mib_floats = mib / 4;

runtime_options options_with_ram(bytes_t ram) {
  runtime_options o;
  o.ram_budget_bytes = ram;
  o.devices = {{device_kind::simulated, 8 * mib, 0, 0}};
  o.check_invariants = true;
  o.default_wait = 60s;
  return o;
}

/// Polls `done` every few milliseconds for up to 20 s (a wait for another thread to reach a state).
template <class Done>
bool eventually(Done done) {
  for (int i = 0; i < 4000; ++i) {
    if (done())
      return true;
    std::this_thread::sleep_for(5ms);
  }
  return false;
}

errc error_code_of(std::future<void>& f) {
  try {
    f.get();
  } catch (const request_error& e) {
    return e.code();
  }
  return errc{};
}
} // namespace

TEST_CASE("destroying the runtime does not wait for threads that once opened or ended a session") {
  auto rt = std::make_unique<runtime>(options_with_ram(8 * mib));
  rt->models().add(synthetic_model("m", {mib_floats}));
  std::promise<void> finish_threads;
  auto finished = finish_threads.get_future().share();
  std::vector<std::thread> workers;
  std::atomic<int> done_with_sessions{0};
  for (int t = 0; t < 3; ++t)
    workers.emplace_back([&, finished] {
      {
        auto s = rt->open_session();
        s.acquire("m");
      }
      ++done_with_sessions;
      finished.wait();  // a server's worker thread lives on after its session
    });
  // One more thread opens a session and hands it to another thread, which ends it.
  std::promise<session> handed;
  workers.emplace_back([&, finished] {
    handed.set_value(rt->open_session());
    finished.wait();
  });
  auto taker = std::async(std::launch::async, [&] {
    auto s = handed.get_future().get();
    s.acquire("m");
  });
  taker.get();
  REQUIRE(eventually([&] { return done_with_sessions == 3; }));
  auto destroyed = std::async(std::launch::async, [&] { rt.reset(); });
  auto in_time = destroyed.wait_for(4s) == std::future_status::ready;
  finish_threads.set_value();
  for (auto& w : workers)
    w.join();
  destroyed.wait();
  CHECK(in_time);
}

TEST_CASE("shutdown answers a session waiting for room, and handles held across it still release") {
  runtime rt{options_with_ram(8 * mib)};
  rt.models().add(synthetic_model("a", {6 * mib_floats}));
  rt.models().add(synthetic_model("b", {6 * mib_floats}));
  auto holder = rt.open_session();
  auto a = holder.acquire("a");
  auto pin = holder.pin(a, 0);
  auto waiter = std::async(std::launch::async, [&] {
    auto s = rt.open_session();
    s.acquire("b");  // no room until 'a' is released: waits up to a minute
  });
  REQUIRE(eventually([&] { return rt.stats().ram.waiting_now == 1; }));
  CHECK(rt.shutdown(1s));
  CHECK(error_code_of(waiter) == errc::shutting_down);
  // Work after shutdown is refused; handles held across it release what they held.
  CHECK_THROWS_AS(holder.acquire("b"), request_error);
  pin.release();
  a.release();
  CHECK(rt.stopped());
  auto st = rt.stats();
  CHECK(st.devices[0].pins_active == 0);
  CHECK(st.ram.leases_active == 0);
  CHECK(holder.offload(0, "a") > 0);  // unpinned now: offload frees it
}

TEST_CASE("a load that hangs does not hold shutdown past its grace") {
  runtime rt{options_with_ram(8 * mib)};
  std::promise<void> unblock;
  auto unblocked = unblock.get_future().share();
  auto hanging = synthetic_model("hangs", {mib_floats});
  auto inner = hanging.loader;
  hanging.loader = [inner, unblocked](const model_descriptor& d) {
    unblocked.wait();
    return inner(d);
  };
  rt.models().add(hanging);
  auto waiter = std::async(std::launch::async, [&] {
    auto s = rt.open_session();
    s.acquire("hangs");
  });
  REQUIRE(eventually([&] { return rt.stats().ram.loading_bytes == mib; }));
  auto started = std::chrono::steady_clock::now();
  CHECK_FALSE(rt.shutdown(200ms));  // the loader was abandoned
  CHECK(std::chrono::steady_clock::now() - started < 10s);
  CHECK(error_code_of(waiter) == errc::shutting_down);
  // The abandoned loader returns on its own later; its completion still finds the actors (they stop when
  // the runtime is destroyed).
  unblock.set_value();
  CHECK(eventually([&] { return rt.stats().ram.models_resident == 1; }));
}

TEST_CASE("a null eviction or placement policy in the options means the default") {
  auto o = options_with_ram(8 * mib);
  o.eviction = nullptr;
  o.placement = nullptr;
  runtime rt{o};
  rt.models().add(synthetic_model("a", {5 * mib_floats}));
  rt.models().add(synthetic_model("b", {5 * mib_floats}));
  auto s = rt.open_session();
  for (auto m : {"a", "b", "a"}) {
    auto l = s.acquire(m);
    auto p = s.pin_anywhere(l);
    CHECK(p.resident_bytes() == 5 * mib);
  }
  CHECK(rt.stats().devices[0].evictions == 2);
}

TEST_CASE("a session can be moved, and its handles stay valid") {
  runtime rt{options_with_ram(8 * mib)};
  rt.models().add(synthetic_model("a", {mib_floats}));
  std::vector<session> sessions;
  sessions.push_back(rt.open_session());
  auto l = sessions.back().acquire("a");
  auto p = sessions.back().pin(l, 0);
  sessions.push_back(rt.open_session());  // the first session moves inside the vector
  session moved = std::move(sessions.front());
  p.release();
  l.release();
  auto st = rt.stats();
  CHECK(st.ram.leases_active == 0);
  CHECK(st.devices[0].pins_active == 0);
}

TEST_CASE("slow copies to one device do not hold another device's pin: each device has its own copy queue") {
  runtime_options o;
  o.ram_budget_bytes = 32 * mib;
  o.check_invariants = true;
  o.devices = {{device_kind::simulated, 16 * mib, 0, 3.0 * mib},  // 4 MiB at 3 MiB/s: about 1.3 s a copy
               {device_kind::simulated, 16 * mib, 0, 0}};
  runtime rt{o};
  rt.models().add(synthetic_model("slow1", {4 * mib_floats}));
  rt.models().add(synthetic_model("slow2", {4 * mib_floats}));
  rt.models().add(synthetic_model("fast", {mib_floats}));
  // Two copies to device 0: enough to fill a shared pool of two copy threads.
  auto pin_slow = [&](const char* m) {
    return std::async(std::launch::async, [&rt, m] {
      auto s = rt.open_session();
      auto l = s.acquire(m);
      s.pin(l, 0);
    });
  };
  auto a = pin_slow("slow1");
  auto b = pin_slow("slow2");
  REQUIRE(eventually([&] { return rt.stats().devices[0].loads == 2; }));  // both copies are in flight
  auto s = rt.open_session();
  auto l = s.acquire("fast");
  auto p = s.pin(l, 1);
  CHECK(rt.stats().devices[0].bytes_copied_in == 0);  // device 1's pin did not wait for device 0's copies
  a.get();
  b.get();
}
