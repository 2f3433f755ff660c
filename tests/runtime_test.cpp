// The embedding API with real threads: options, RAII handles, blocking sessions.

#include "runtime/runtime.hpp"
#include "runtime/metrics.hpp"

#include "support/catch.hpp"

#include <atomic>
#include <cmath>
#include <optional>
#include <thread>

using namespace mcache;
using namespace std::chrono_literals;

namespace {
constexpr bytes_t mib = 1 << 20;
constexpr int64_t mib_floats = mib / 4;

runtime_options small_options() {
  runtime_options o;
  o.ram_budget_bytes = 8 * mib;
  o.devices = {{device_kind::simulated, 4 * mib, 0, 0}, {device_kind::simulated, 2 * mib, 0, 0}};
  o.check_invariants = true;
  o.default_wait = 2s;
  return o;
}

errc code_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const request_error& e) {
    return e.code();
  }
  FAIL("no request_error was thrown");
  return errc::invalid_argument;
}
} // namespace

TEST_CASE("handles release their lease and pin when they go out of scope") {
  runtime rt{small_options()};
  rt.models().add(synthetic_model("m", {mib_floats}));
  auto s = rt.open_session();
  {
    auto lease = s.acquire("m");
    auto pin = s.pin(lease, 0, 4096);
    CHECK(pin.tensor("t0").equal(lease.host().find("t0")));
    auto st = rt.stats();
    CHECK(st.ram.leases_active == 2);
    CHECK(st.devices[0].pins_active == 1);
    CHECK(st.devices[0].working_bytes == 4096);
  }
  auto st = rt.stats();
  CHECK(st.ram.leases_active == 0);
  CHECK(st.devices[0].pins_active == 0);
  CHECK(st.devices[0].used_bytes == mib);  // lazily kept
}

TEST_CASE("a moved handle releases once") {
  runtime rt{small_options()};
  rt.models().add(synthetic_model("m", {mib_floats}));
  auto s = rt.open_session();
  auto a = s.acquire("m");
  lease b = std::move(a);
  CHECK_FALSE(a);
  b.release();
  CHECK_FALSE(b);
  CHECK(rt.stats().ram.leases_active == 0);
}

TEST_CASE("a pin survives the release of the session's lease and keeps the RAM copy") {
  runtime rt{small_options()};
  rt.models().add(synthetic_model("a", {4 * mib_floats}));
  rt.models().add(synthetic_model("b", {6 * mib_floats}));
  auto s = rt.open_session();
  auto lease = s.acquire("a");
  auto pin = s.pin(lease, 0);
  lease.release();
  CHECK(code_of([&] { s.acquire("b", 0ns); }) == errc::budget_exhausted);
  pin.release();
  CHECK(s.acquire("b").bytes() == 6 * mib);
}

TEST_CASE("a device index out of range is a typed error") {
  runtime rt{small_options()};
  rt.models().add(synthetic_model("m", {16}));
  auto s = rt.open_session();
  auto lease = s.acquire("m");
  CHECK(code_of([&] { s.pin(lease, 2); }) == errc::invalid_device);
  CHECK(code_of([&] { s.pin(lease, -7); }) == errc::invalid_device);
  CHECK(code_of([&] { s.offload(5); }) == errc::invalid_device);
  CHECK(rt.stats().ram.leases_active == 1);
}

TEST_CASE("unusable options are refused with the reason") {
  auto o = small_options();
  SECTION("a zero device budget") {
    o.devices[1].budget_bytes = 0;
    CHECK(code_of([&] { runtime rt{o}; }) == errc::invalid_argument);
  }
  SECTION("a reserve that takes the whole device") {
    o.devices[0].reserve_bytes = o.devices[0].budget_bytes;
    CHECK(code_of([&] { runtime rt{o}; }) == errc::invalid_argument);
  }
  SECTION("an absurd RAM budget") {
    o.ram_budget_bytes = bytes_t{1} << 62;
    CHECK(code_of([&] { runtime rt{o}; }) == errc::invalid_argument);
  }
  SECTION("a RAM fraction outside (0, 1]") {
    o.ram_budget_bytes = 0;
    o.ram_fraction = 1.5;
    CHECK(code_of([&] { runtime rt{o}; }) == errc::invalid_argument);
  }
  SECTION("no loader threads") {
    o.loader_threads = 0;
    CHECK(code_of([&] { runtime rt{o}; }) == errc::invalid_argument);
  }
  SECTION("an absurd CPU working budget (it used to end the CPU tier's actor at start)") {
    o.cpu_working_budget_bytes = bytes_t{1} << 63;
    CHECK(code_of([&] { runtime rt{o}; }) == errc::invalid_argument);
  }
  SECTION("a simulated bandwidth that is not a number") {
    o.devices[0].simulated_bandwidth_bytes_per_s = std::nan("");
    CHECK(code_of([&] { runtime rt{o}; }) == errc::invalid_argument);
  }
}

TEST_CASE("a RAM budget left at zero is derived from available memory") {
  auto o = small_options();
  o.ram_budget_bytes = 0;
  o.ram_fraction = 0.25;
  runtime rt{o};
  auto expected = static_cast<double>(available_ram_bytes()) * 0.25;
  CHECK(static_cast<double>(rt.stats().ram.budget_bytes) == Approx(expected).epsilon(0.05));
}

TEST_CASE("errors from a blocking session carry the actionable text") {
  runtime rt{small_options()};
  rt.models().add(synthetic_model("m", {3 * mib_floats}));
  auto s = rt.open_session();
  auto lease = s.acquire("m");
  try {
    s.pin(lease, 1);
    FAIL("the pin should not fit");
  } catch (const request_error& e) {
    CHECK(e.code() == errc::model_too_large);
    std::string what = e.what();
    CHECK(what.find("mcache: model_too_large: pinning 'm' on device 1 needs 3.00 MiB") != std::string::npos);
  }
  CHECK(code_of([&] { s.acquire("nope"); }) == errc::unknown_model);
}

TEST_CASE("trimming RAM and offloading every device brings all budgets back to zero") {
  runtime rt{small_options()};
  rt.models().add(synthetic_model("a", {mib_floats}));
  rt.models().add(synthetic_model("b", {mib_floats}));
  auto s = rt.open_session();
  for (auto m : {"a", "b"}) {
    auto l = s.acquire(m);
    auto p0 = s.pin(l, 0);
    auto p1 = s.pin(l, 1);
  }
  CHECK(s.offload(0) == 2 * mib);
  CHECK(s.offload(1) == 2 * mib);
  CHECK(s.trim_ram() == 2 * mib);
  auto st = rt.stats();
  CHECK(st.ram.used_bytes == 0);
  CHECK(st.devices[0].used_bytes == 0);
  CHECK(st.devices[1].used_bytes == 0);
}

TEST_CASE("a session leases several models together and releases each on its own") {
  runtime rt{small_options()};
  rt.models().add(synthetic_model("a", {mib_floats}));
  rt.models().add(synthetic_model("b", {mib_floats}));
  auto s = rt.open_session();
  auto leases = s.acquire_all({"b", "a"});
  REQUIRE(leases.size() == 2);
  CHECK(leases[0].model() == "b");
  CHECK(rt.stats().ram.leases_active == 2);
  leases[0].release();
  CHECK(rt.stats().ram.leases_active == 1);
  leases.clear();
  CHECK(rt.stats().ram.leases_active == 0);
  CHECK(code_of([&] { s.acquire_all({"a", "missing"}); }) == errc::unknown_model);
}

TEST_CASE("stats render as Prometheus metrics with a series per device and one for the CPU tier") {
  runtime rt{small_options()};
  rt.models().add(synthetic_model("m", {mib_floats}));
  auto s = rt.open_session();
  auto l = s.acquire("m");
  auto p = s.pin(l, 1);
  auto text = prometheus_text(rt.stats());
  CHECK(text.find("# TYPE mcache_ram_used_bytes gauge\nmcache_ram_used_bytes 1048576\n") != std::string::npos);
  CHECK(text.find("# TYPE mcache_ram_loads_total counter") != std::string::npos);
  CHECK(text.find("mcache_device_pins_active{device=\"1\"} 1\n") != std::string::npos);
  CHECK(text.find("mcache_device_pins_active{device=\"0\"} 0\n") != std::string::npos);
  CHECK(text.find("mcache_device_pins_active{device=\"cpu\"} 0\n") != std::string::npos);
  CHECK(text.find("mcache_device_info") == std::string::npos);  // no names given
  auto named = prometheus_text(rt);  // the runtime's own: its devices' LibTorch names (simulated: the CPU)
  CHECK(named.find("mcache_device_info{device=\"1\",torch_device=\"cpu\"} 1\n") != std::string::npos);
  CHECK(named.find("mcache_device_pins_active{device=\"1\"} 1\n") != std::string::npos);
}

TEST_CASE("pin_anywhere pins where the model already is, else on the device with the most free memory") {
  runtime rt{small_options()};  // device 0: 4 MiB, device 1: 2 MiB
  rt.models().add(synthetic_model("a", {mib_floats}));
  rt.models().add(synthetic_model("b", {mib_floats}));
  auto s = rt.open_session();
  auto a = s.acquire("a");
  {
    auto on_1 = s.pin(a, 1);  // 'a' is on device 1 now, and stays there as cache
  }
  CHECK(s.pin_anywhere(a).device() == 1);
  auto b = s.acquire("b");
  CHECK(s.pin_anywhere(b, 4096).device() == 0);
}

TEST_CASE("pin_anywhere never picks a device that could never hold the pin, even one the model is resident on") {
  auto o = small_options();  // device 0: 4 MiB, device 1: 2 MiB
  o.devices[1].partial_loading = false;
  runtime rt{o};
  rt.models().add(synthetic_model("a", {mib_floats}));
  rt.models().add(synthetic_model("big", {mib_floats, mib_floats, mib_floats / 2}));
  auto s = rt.open_session();
  auto a = s.acquire("a");
  s.pin(a, 1).release();  // resident on device 1
  CHECK(s.pin_anywhere(a).device() == 1);            // where it is: no copy
  CHECK(s.pin_anywhere(a, 3 * mib).device() == 0);  // 3 MiB of working memory: more than device 1 has
  auto big = s.acquire("big");  // 2.5 MiB whole, and device 1 loads nothing in part
  s.offload(0, "a");
  CHECK(s.pin_anywhere(big).device() == 0);
}

TEST_CASE("a wait check ends a session's wait for room with cancelled once it says so, and leaves nothing queued or held") {
  auto o = small_options();
  o.devices[0].partial_loading = false;  // a pin that does not fit whole waits
  runtime rt{o};
  rt.models().add(synthetic_model("a", std::vector<int64_t>(6, mib_floats)));
  rt.models().add(synthetic_model("b", std::vector<int64_t>(6, mib_floats)));
  rt.models().add(synthetic_model("p", std::vector<int64_t>(3, mib_floats)));
  rt.models().add(synthetic_model("q", std::vector<int64_t>(2, mib_floats)));
  auto holder = rt.open_session("holder");
  auto waiter = rt.open_session("waiter");
  std::atomic<bool> stop{false};  // another thread sets it, as Ctrl-C does for the Python binding's check
  waiter.set_wait_check([&] { return stop.load(); }, 5ms);
  auto code_after_stop = [&](const std::function<void()>& call, std::chrono::milliseconds& took) {
    stop = false;
    std::thread flip{[&] {
      std::this_thread::sleep_for(100ms);
      stop = true;
    }};
    std::optional<errc> code;
    auto start = std::chrono::steady_clock::now();
    try {
      call();
    } catch (const request_error& e) {
      code = e.code();
    }
    took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
    flip.join();
    return code;
  };
  std::chrono::milliseconds took{};
  {
    auto a = holder.acquire("a");  // 6 of 8 MiB leased: 'b' must wait for it
    auto code = code_after_stop([&] { waiter.acquire("b", 60s); }, took);
    REQUIRE(code);
    CHECK(*code == errc::cancelled);
    CHECK(took < 10s);
    code = code_after_stop([&] { waiter.acquire_all({"b", "q"}, 60s); }, took);
    REQUIRE(code);
    CHECK(*code == errc::cancelled);
    CHECK(rt.stats().ram.waiting_now == 0);
    stop = false;  // a check that never says so leaves the wait as it was
    CHECK(code_of([&] { waiter.acquire("b", 200ms); }) == errc::budget_exhausted);
    // A check that throws withdraws the call too, and the call throws that, leaving nothing queued.
    waiter.set_wait_check([]() -> bool { throw std::runtime_error("the check failed"); }, 5ms);
    CHECK_THROWS_WITH(waiter.acquire("b", 60s), "the check failed");
    CHECK(rt.stats().ram.waiting_now == 0);
    waiter.set_wait_check([&] { return stop.load(); }, 5ms);
  }
  CHECK(waiter.acquire("b").bytes() == 6 * mib);  // released by its holder: the queue is not stuck
  waiter.trim_ram();
  auto p = holder.acquire("p");
  auto pinned = holder.pin(p, 0);  // 3 of device 0's 4 MiB
  auto q = waiter.acquire("q");
  auto code = code_after_stop([&] { waiter.pin(q, 0, 0, 60s); }, took);
  REQUIRE(code);
  CHECK(*code == errc::cancelled);
  CHECK(took < 10s);
  CHECK(rt.stats().devices[0].waiting_now == 0);
  CHECK(rt.stats().ram.leases_active == 3);  // p, q, and device 0's borrow of p: none kept for the cancelled pin
  pinned.release();
  CHECK(waiter.pin(q, 0).resident_bytes() == 2 * mib);  // the lease is intact, and so is the device's queue
  CHECK(code_of([&] { waiter.set_wait_check([] { return false; }, 0ms); }) == errc::invalid_argument);
}

// A model whose loader takes `for_up_to` unless nobody waits for it any more (Note [An abandoned load
// stops]): it asks between steps, as the safetensors reader does between chunks.
model_descriptor slow_model(model_id id, std::chrono::milliseconds for_up_to) {
  auto d = synthetic_model(std::move(id), {mib_floats});
  d.loader = [inner = d.loader, for_up_to](const model_descriptor& self) {
    auto until = std::chrono::steady_clock::now() + for_up_to;
    while (std::chrono::steady_clock::now() < until) {
      stop_if_abandoned();
      std::this_thread::sleep_for(1ms);
    }
    return inner(self);
  };
  return d;
}

TEST_CASE("a wait check ends a session's wait for a slow load at once, and the load nobody waits for stops and frees its bytes") {
  runtime rt{small_options()};
  rt.models().add(slow_model("slow", 20s));
  auto waiter = rt.open_session("waiter");
  std::atomic<bool> stop{false};
  waiter.set_wait_check([&] { return stop.load(); }, 5ms);
  std::thread flip{[&] {
    std::this_thread::sleep_for(100ms);
    stop = true;
  }};
  auto start = std::chrono::steady_clock::now();
  CHECK(code_of([&] { waiter.acquire("slow", 60s); }) == errc::cancelled);
  auto took = std::chrono::steady_clock::now() - start;
  flip.join();
  CHECK(took < 10s);
  for (int i = 0; i < 5000 && rt.stats().ram.loads_stopped == 0; ++i)
    std::this_thread::sleep_for(1ms);
  auto s = rt.stats().ram;
  CHECK(s.loads_stopped == 1);
  CHECK(s.load_failures == 0);
  CHECK(s.used_bytes == 0);
  CHECK(s.leases_active == 0);
}

TEST_CASE("a slow load goes on for the session still waiting for it when another session's wait check withdraws") {
  runtime rt{small_options()};
  rt.models().add(slow_model("slow", 300ms));
  auto quitter = rt.open_session("quitter");
  auto patient = rt.open_session("patient");
  quitter.set_wait_check([] { return true; }, 5ms);
  std::optional<std::size_t> patient_bytes;
  std::thread waits{[&] { patient_bytes = patient.acquire("slow", 60s).bytes(); }};
  for (int i = 0; i < 5000 && rt.stats().ram.loads == 0; ++i)
    std::this_thread::sleep_for(1ms);
  CHECK(code_of([&] { quitter.acquire("slow", 60s); }) == errc::cancelled);
  waits.join();
  REQUIRE(patient_bytes);
  CHECK(*patient_bytes == mib);
  auto s = rt.stats().ram;
  CHECK(s.loads == 1);
  CHECK(s.loads_stopped == 0);
}

TEST_CASE("handles read after their release throw a typed error instead of reading freed memory") {
  runtime rt{small_options()};
  rt.models().add(synthetic_model("m", {mib_floats}));
  auto s = rt.open_session();
  auto l = s.acquire("m");
  auto p = s.pin(l, 0);
  CHECK(p.tensor("t0").defined());
  p.release();
  CHECK(code_of([&] { (void)p.tensor("t0"); }) == errc::invalid_pin);
  CHECK(code_of([&] { (void)p.tensors(); }) == errc::invalid_pin);
  CHECK(code_of([&] { (void)p.stream(); }) == errc::invalid_pin);
  CHECK(code_of([&] { (void)p.staging(); }) == errc::invalid_pin);
  auto moved = std::move(l);
  CHECK(code_of([&] { (void)l.host(); }) == errc::invalid_lease);
  CHECK(moved.host().find("t0").defined());
  moved.release();
  CHECK(code_of([&] { (void)moved.host(); }) == errc::invalid_lease);
  CHECK(code_of([&] { (void)pin_handle{}.tensor("t0"); }) == errc::invalid_pin);
}

TEST_CASE("a handle that outlives its session does nothing when it goes: the session's end released what it held") {
  runtime rt{small_options()};
  rt.models().add(synthetic_model("m", {mib_floats}));
  lease l;
  pin_handle p;
  {
    auto s = rt.open_session();
    l = s.acquire("m");
    p = s.pin(l, 0);
  }
  for (int i = 0; i < 200 && (rt.stats().ram.leases_active > 0 || rt.stats().devices[0].pins_active > 0); ++i)
    std::this_thread::sleep_for(5ms);
  CHECK(rt.stats().ram.leases_active == 0);
  CHECK(rt.stats().devices[0].pins_active == 0);
  CHECK_NOTHROW(p.release());
  CHECK_NOTHROW(l = lease{});
  auto s = rt.open_session();  // the runtime goes on as before
  CHECK(s.pin(s.acquire("m"), 0).device() == 0);
}

TEST_CASE("a wait for room of nearly nanoseconds max lasts until room is made, not zero") {
  auto o = small_options();  // device 1: 2 MiB
  o.ram_budget_bytes = 3 * mib;
  runtime rt{o};
  rt.models().add(synthetic_model("a", {mib_floats, mib_floats}));
  rt.models().add(synthetic_model("b", {mib_floats}));
  rt.models().add(synthetic_model("c", {mib_floats}));
  constexpr auto nearly_for_ever = std::chrono::nanoseconds::max() - 1s;
  auto holder = rt.open_session();
  auto waiter = rt.open_session();
  auto a = holder.acquire("a");
  auto c = holder.acquire("c");  // RAM is full, and all of it leased
  auto a_on_1 = holder.pin(a, 1);  // so is device 1
  auto later = [](auto& handle) {
    return std::thread{[&handle] {
      std::this_thread::sleep_for(200ms);
      handle.release();
    }};
  };
  auto started = std::chrono::steady_clock::now();
  auto releasing_c = later(c);
  lease b;
  CHECK_NOTHROW(b = waiter.acquire("b", nearly_for_ever));
  releasing_c.join();
  CHECK(std::chrono::steady_clock::now() - started >= 150ms);
  started = std::chrono::steady_clock::now();
  auto unpinning_a = later(a_on_1);
  pin_handle b_on_1;
  CHECK_NOTHROW(b_on_1 = waiter.pin(b, 1, 0, nearly_for_ever));
  unpinning_a.join();
  CHECK(b_on_1.device() == 1);
  CHECK(std::chrono::steady_clock::now() - started >= 150ms);
}

TEST_CASE("a pinned budget larger than the RAM budget is refused at start") {
  auto o = small_options();
  o.pinned_budget_bytes = o.ram_budget_bytes + 1;
  CHECK(code_of([&] { runtime rt{o}; }) == errc::invalid_argument);
}

TEST_CASE("empty_cache drops everything unheld from every tier and says what it kept and why") {
  runtime rt{small_options()};
  rt.models().add(synthetic_model("kept", {mib_floats}));
  rt.models().add(synthetic_model("dropped", {mib_floats}));
  auto s = rt.open_session("worker-3");
  {
    auto l = s.acquire("dropped");
    s.pin(l, 0);
  }
  auto l = s.acquire("kept");
  auto p = s.pin(l, 0);
  auto report = rt.empty_cache();
  CHECK(report.ram_freed_bytes == mib);
  REQUIRE(report.device_freed_bytes.size() == 2);
  CHECK(report.device_freed_bytes[0] == mib);
  CHECK(report.device_freed_bytes[1] == 0);
  auto st = rt.stats();
  CHECK(st.ram.used_bytes == mib);
  CHECK(st.devices[0].used_bytes == mib);
  REQUIRE(report.kept.size() == 2);
  CHECK_THAT(report.kept[0], Catch::StartsWith("device 0: 'kept'") && Catch::Contains("is pinned by 'worker-3' for"));
  CHECK_THAT(report.kept[1], Catch::StartsWith("RAM: 'kept'") && Catch::Contains("'worker-3'")
                               && Catch::Contains("'device 0'"));
}

TEST_CASE("with a keep-alive, the runtime's timers drop an unused model from RAM and the device, never a held one") {
  auto o = small_options();
  o.keep_alive = 100ms;
  runtime rt{o};
  rt.models().add(synthetic_model("unused", {mib_floats}));
  rt.models().add(synthetic_model("held", {mib_floats}));
  auto s = rt.open_session();
  {
    auto l = s.acquire("unused");
    s.pin(l, 0);
  }
  auto l = s.acquire("held");
  auto p = s.pin(l, 0);
  runtime_stats st;
  for (int i = 0; i < 300; ++i) {  // at most 3 s
    st = rt.stats();
    if (st.ram.idle_drops == 1 && st.devices[0].idle_drops == 1)
      break;
    std::this_thread::sleep_for(10ms);
  }
  CHECK(st.ram.idle_drops == 1);
  CHECK(st.devices[0].idle_drops == 1);
  CHECK(st.ram.used_bytes == mib);
  CHECK(st.devices[0].used_bytes == mib);
  auto bad = small_options();
  bad.keep_alive = -1s;
  CHECK_THROWS_AS(runtime{bad}, request_error);
}

// -- Note [Remove and replace] ------------------------------------------------------------------------------

namespace {
/// Waits until the RAM tier uses `bytes` (releases and retirements are asynchronous).
bool ram_used_becomes(runtime& rt, bytes_t bytes) {
  for (int i = 0; i < 2000; ++i) {  // up to 10 s: generous for sanitizer builds
    if (rt.stats().ram.used_bytes == bytes)
      return true;
    std::this_thread::sleep_for(5ms);
  }
  return false;
}
} // namespace

TEST_CASE("a model replaced while held stays valid for its holders, new acquires get the new one, and the old bytes count until released") {
  runtime rt{small_options()};
  rt.models().add(synthetic_model("m", {mib_floats}, /*seed=*/1));
  auto s = rt.open_session("worker");
  auto old_lease = s.acquire("m");
  auto old_pin = s.pin(old_lease, 0);
  auto old_value = old_lease.host().tensors[0].tensor[0].item<float>();
  rt.replace_model(synthetic_model("m", {mib_floats / 2}, /*seed=*/2));  // half the size, other values
  auto new_lease = s.acquire("m");
  CHECK(new_lease.model() == "m#2");
  CHECK(new_lease.bytes() == mib / 2);
  CHECK(new_lease.host().tensors[0].tensor[0].item<float>() != old_value);
  CHECK(old_lease.host().tensors[0].tensor[0].item<float>() == old_value);  // the holder's copy is intact
  CHECK(old_pin.tensors().tensors[0].tensor[0].item<float>() == old_value);
  CHECK(rt.stats().ram.used_bytes == mib + mib / 2);  // both generations, counted
  old_pin.release();
  old_lease.release();
  CHECK(ram_used_becomes(rt, mib / 2));  // the old generation went with its last holder
  for (int i = 0; i < 2000 && rt.stats().devices[0].used_bytes != 0; ++i)
    std::this_thread::sleep_for(5ms);
  CHECK(rt.stats().devices[0].used_bytes == 0);  // and its device copy, unpinned, too
  CHECK(rt.stats().devices[0].retired_drops == 1);
}

TEST_CASE("offload and trim_ram of a replaced model's registered id free the copy new pins use, and of an id the catalog does not know are unknown_model") {
  runtime rt{small_options()};
  rt.models().add(synthetic_model("m", {mib_floats}, /*seed=*/1));
  rt.replace_model(synthetic_model("m", {mib_floats / 2}, /*seed=*/2));
  auto s = rt.open_session();
  {
    auto l = s.acquire("m");  // "m#2" in the tiers
    s.pin(l, 0).release();
  }
  CHECK(rt.stats().devices[0].used_bytes == mib / 2);
  CHECK(s.offload(0, "m") == mib / 2);  // the tiers know it as "m#2"; the caller names it "m"
  CHECK(rt.stats().devices[0].used_bytes == 0);
  CHECK(s.trim_ram("m") == mib / 2);
  CHECK(rt.stats().ram.used_bytes == 0);
  CHECK(code_of([&] { s.offload(0, "nope"); }) == errc::unknown_model);
  CHECK(code_of([&] { s.trim_ram("nope"); }) == errc::unknown_model);
  CHECK(code_of([&] { s.offload(0, "m"); }) == errc::not_resident);  // known, but not on the device
  CHECK(code_of([&] { s.offload(7, "nope"); }) == errc::invalid_device);
}

TEST_CASE("a model removed while held is unknown to new acquires and goes when its holders release it") {
  runtime rt{small_options()};
  rt.models().add(synthetic_model("m", {mib_floats}));
  auto s = rt.open_session("worker");
  auto held = s.acquire("m");
  rt.remove_model("m");
  CHECK(code_of([&] { s.acquire("m"); }) == errc::unknown_model);
  CHECK(code_of([&] { rt.remove_model("m"); }) == errc::unknown_model);
  CHECK(held.host().tensor_bytes() == mib);
  CHECK(rt.stats().ram.used_bytes == mib);
  held.release();
  CHECK(ram_used_becomes(rt, 0));
  rt.models().add(synthetic_model("m", {mib_floats}));  // registered again: a fresh generation
  CHECK(s.acquire("m").model() == "m#2");
}

TEST_CASE("a refused pin's borrowed lease is back before the caller hears of the refusal") {
  runtime rt{small_options()};
  rt.models().add(synthetic_model("m", {mib_floats}));
  auto s = rt.open_session();
  // The device borrowed a lease for the pin and gives it back when it refuses: before, the refusal could
  // reach the caller first, and its next look at the RAM tier still counted that lease (3 runs of 5 failed
  // with two busy loops beside them).
  for (int i = 0; i < 200; ++i) {
    auto lease = s.acquire("m");
    CHECK(code_of([&] { s.pin(lease, 0, 64 * mib); }) == errc::model_too_large);
    lease.release();
    REQUIRE(rt.stats().ram.leases_active == 0);
  }
}

TEST_CASE("a negative wait is refused as invalid_argument and takes nothing") {
  runtime rt{small_options()};
  rt.models().add(synthetic_model("m", {mib_floats}));
  auto s = rt.open_session();
  CHECK(code_of([&] { s.acquire("m", -1ms); }) == errc::invalid_argument);
  CHECK(code_of([&] { s.acquire_all({"m"}, -1ms); }) == errc::invalid_argument);
  auto lease = s.acquire("m", 0ms);  // 0: do not wait
  CHECK(code_of([&] { s.pin(lease, 0, 0, -1ms); }) == errc::invalid_argument);
  auto st = rt.stats();
  CHECK(st.ram.leases_active == 1);
  CHECK(st.devices[0].pins_active == 0);
}
