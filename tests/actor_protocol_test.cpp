// The lease/pin protocol through the actors, deterministically: the test decides when every message is
// delivered, when loads and copies finish and when deadlines pass. Every tier checks its invariants after
// every step (a broken one aborts the test binary).

#include "support/deterministic.hpp"
#include "support/fake_models.hpp"

using namespace mcache;
using namespace mcache::test;
using namespace std::chrono_literals;

namespace {
constexpr int64_t mib_floats = (1 << 20) / 4;  // a 1 MiB float32 tensor
constexpr bytes_t mib = 1 << 20;
} // namespace

SCENARIO("acquiring a second model never evicts a leased first one (the image server's KeyError)") {
  GIVEN("a RAM cache with room for the text encoder and the transformer only, and a device for one") {
    deterministic_runtime rt{3 * mib, {2 * mib}};
    rt.add(synthetic_model("text_encoder", {mib_floats}));
    rt.add(synthetic_model("transformer", {2 * mib_floats}));
    rt.add(synthetic_model("vae", {mib_floats}));
    client session{rt.sys};
    // An unleased model fills the cache first, so making room has a choice.
    auto vae = rt.lease(session, "vae");
    REQUIRE_FALSE(rt.release(session, rt.ram, vae.lease));

    WHEN("the session leases the text encoder, then the transformer") {
      auto h1 = rt.lease(session, "text_encoder");
      auto h2 = rt.lease(session, "transformer");
      THEN("the unleased vae was evicted and the text encoder stayed") {
        auto s = rt.ram_snapshot();
        CHECK(s.evictions == 1);
        CHECK(s.evicted_bytes == mib);
        CHECK(s.leased_bytes == 3 * mib);
      }
      AND_WHEN("both are pinned on the device one after the other") {
        auto p1 = rt.pinned(session, rt.devices[0], h1.lease);
        CHECK(p1.view->find("t0").equal(h1.payload->find("t0")));
        REQUIRE_FALSE(rt.release(session, rt.devices[0], p1.pin));
        auto p2 = rt.pinned(session, rt.devices[0], h2.lease);
        THEN("the device evicted the unpinned text encoder, and its RAM copy is still leased") {
          auto d = rt.device_snapshot(rt.devices[0]);
          CHECK(d.evictions == 1);
          CHECK(d.resident_bytes == 2 * mib);
          CHECK(rt.ram_snapshot().leased_bytes == 3 * mib);
        }
        AND_WHEN("the text encoder is pinned again after the transformer's pin ends") {
          REQUIRE_FALSE(rt.release(session, rt.devices[0], p2.pin));
          auto again = rt.pinned(session, rt.devices[0], h1.lease);
          THEN("it is copied from the kept RAM copy without a load from the source") {
            CHECK(rt.ram_snapshot().loads == 3);
            CHECK(rt.device_snapshot(rt.devices[0]).loads == 3);
            CHECK(again.view->find("t0").equal(h1.payload->find("t0")));
          }
        }
      }
      rt.check_all();
    }
  }
}

TEST_CASE("pins taken in either order succeed when the device fits one model at a time") {
  auto transformer_first = GENERATE(false, true);
  deterministic_runtime rt{4 * mib, {2 * mib}};
  rt.add(synthetic_model("text_encoder", {mib_floats}));
  rt.add(synthetic_model("transformer", {2 * mib_floats}));
  client session{rt.sys};
  auto te = rt.lease(session, "text_encoder");
  auto tr = rt.lease(session, "transformer");
  auto order = transformer_first ? std::vector<lease_id>{tr.lease, te.lease}
                                 : std::vector<lease_id>{te.lease, tr.lease};
  for (int round = 0; round < 2; ++round) {
    for (auto l : order) {
      auto p = rt.pinned(session, rt.devices[0], l);
      REQUIRE_FALSE(rt.release(session, rt.devices[0], p.pin));
    }
  }
  auto s = rt.ram_snapshot();
  CHECK(s.loads == 2);
  CHECK(s.evictions == 0);
  CHECK(rt.device_snapshot(rt.devices[0]).loads == 4);
  rt.check_all();
}

TEST_CASE("three leased models share a device that fits one at a time") {
  deterministic_runtime rt{3 * mib, {mib}};
  for (auto m : {"a", "b", "c"})
    rt.add(synthetic_model(m, {mib_floats}));
  client session{rt.sys};
  std::vector<ram_lease> leases;
  for (auto m : {"a", "b", "c"})
    leases.push_back(rt.lease(session, m));
  for (auto& l : leases) {
    auto p = rt.pinned(session, rt.devices[0], l.lease);
    CHECK(rt.device_snapshot(rt.devices[0]).pinned_bytes == mib);
    rt.release(session, rt.devices[0], p.pin);
  }
  CHECK(rt.ram_snapshot().evictions == 0);
  CHECK(rt.device_snapshot(rt.devices[0]).evictions == 2);
  rt.check_all();
}

TEST_CASE("a model pinned on the CPU is used from RAM at no device cost") {
  deterministic_runtime rt{4 * mib, {2 * mib}};
  rt.add(synthetic_model("text_encoder", {mib_floats}));
  rt.add(synthetic_model("transformer", {2 * mib_floats}));
  client session{rt.sys};
  auto te = rt.lease(session, "text_encoder");
  auto tr = rt.lease(session, "transformer");
  auto on_cpu = rt.pinned(session, rt.cpu, te.lease, 1024);
  auto on_gpu = rt.pinned(session, rt.devices[0], tr.lease);
  // The CPU pin aliases the RAM copy: same storage, nothing copied.
  CHECK(on_cpu.view->find("t0").data_ptr() == te.payload->find("t0").data_ptr());
  CHECK(on_gpu.view->find("t0").data_ptr() != tr.payload->find("t0").data_ptr());
  auto cpu = rt.device_snapshot(rt.cpu);
  CHECK(cpu.resident_bytes == 0);
  CHECK(cpu.working_bytes == 1024);
  CHECK(cpu.pins_active == 1);
  rt.check_all();
}

TEST_CASE("with RAM for one model, a second acquire waits for the first release") {
  deterministic_runtime rt{mib, {mib}};
  rt.add(synthetic_model("a", {mib_floats}));
  rt.add(synthetic_model("b", {mib_floats}));
  client alice{rt.sys}, bob{rt.sys};
  auto a = rt.lease(alice, "a");
  rt.send_acquire(bob, "b", 5s);
  rt.settle();
  CHECK_FALSE(bob.poll<ram_lease>());
  CHECK(rt.ram_snapshot().waiting_now == 1);
  SECTION("it is served when the lease is released") {
    REQUIRE_FALSE(rt.release(alice, rt.ram, a.lease));
    rt.settle();
    auto b = bob.poll<ram_lease>();
    REQUIRE(b);
    CHECK(succeeded(*b));
  }
  SECTION("it fails cleanly at its deadline and the leased model is untouched") {
    rt.fire_deadlines();
    auto b = bob.poll<ram_lease>();
    REQUIRE(b);
    CHECK(code_of(*b) == errc::budget_exhausted);
    auto p = rt.pinned(alice, rt.devices[0], a.lease);  // the first lease still works
    CHECK(p.model == "a");
  }
  rt.check_all();
}

TEST_CASE("waiting requests are served in FIFO order as room frees") {
  deterministic_runtime rt{2 * mib, {mib}};
  for (auto m : {"big", "x", "y"})
    rt.add(synthetic_model(m, {m == std::string{"big"} ? 2 * mib_floats : mib_floats}));
  client holder{rt.sys}, first{rt.sys}, second{rt.sys};
  auto big = rt.lease(holder, "big");
  rt.send_acquire(first, "x");
  rt.settle();
  rt.send_acquire(second, "y");
  rt.settle();
  CHECK(rt.ram_snapshot().waiting_now == 2);
  rt.release(holder, rt.ram, big.lease);
  rt.settle();
  REQUIRE(first.poll<ram_lease>());
  REQUIRE(second.poll<ram_lease>());
  CHECK(rt.ram_snapshot().waits == 2);
  rt.check_all();
}

TEST_CASE("concurrent acquires of one model through the actor cause one load") {
  deterministic_runtime rt{4 * mib, {}};
  rt.add(synthetic_model("m", {mib_floats}));
  std::vector<std::unique_ptr<client>> sessions;
  for (int i = 0; i < 5; ++i) {
    sessions.push_back(std::make_unique<client>(rt.sys));
    rt.send_acquire(*sessions.back(), "m");
  }
  rt.deliver();  // every acquire is in before the load runs
  CHECK(rt.loads->pending() == 1);
  rt.settle();
  for (auto& s : sessions) {
    auto r = s->poll<ram_lease>();
    REQUIRE(r);
    CHECK(succeeded(*r));
  }
  auto s = rt.ram_snapshot();
  CHECK(s.loads == 1);
  CHECK(s.shared_loads == 4);
  CHECK(s.leases_active == 5);
}

TEST_CASE("concurrent pins of one model on one device cause one copy") {
  deterministic_runtime rt{4 * mib, {4 * mib}};
  rt.add(synthetic_model("m", {mib_floats}));
  client a{rt.sys}, b{rt.sys};
  auto la = rt.lease(a, "m");
  auto lb = rt.lease(b, "m");
  rt.send_pin(a, rt.devices[0], la.lease);
  rt.send_pin(b, rt.devices[0], lb.lease);
  rt.deliver();
  CHECK(rt.copies->pending() == 1);
  rt.settle();
  REQUIRE(a.poll<device_pin>());
  REQUIRE(b.poll<device_pin>());
  auto d = rt.device_snapshot(rt.devices[0]);
  CHECK(d.loads == 1);
  CHECK(d.shared_loads == 1);
  CHECK(d.pins_active == 2);
}

TEST_CASE("a holder that is killed mid-way gets its leases and pins released") {
  deterministic_runtime rt{4 * mib, {2 * mib}};
  rt.add(synthetic_model("a", {mib_floats}));
  rt.add(synthetic_model("b", {mib_floats}));
  {
    client doomed{rt.sys};
    auto a = rt.lease(doomed, "a");
    auto b = rt.lease(doomed, "b");
    rt.pinned(doomed, rt.devices[0], a.lease, 1000);
    rt.pinned(doomed, rt.cpu, b.lease, 1000);
    CHECK(rt.ram_snapshot().leases_active == 4);  // 2 of the session, 1 per pin
  }  // the session's actor terminates here
  rt.settle();
  auto ram = rt.ram_snapshot();
  CHECK(ram.leases_active == 0);
  CHECK(ram.models_resident == 2);  // lazily kept as cache
  auto dev = rt.device_snapshot(rt.devices[0]);
  CHECK(dev.pins_active == 0);
  CHECK(dev.working_bytes == 0);
  CHECK(dev.used_bytes == mib);
  CHECK(rt.device_snapshot(rt.cpu).pins_active == 0);
  rt.check_all();
}

TEST_CASE("a holder killed while its pin waits for room leaves nothing behind") {
  deterministic_runtime rt{4 * mib, {mib}};
  rt.add(synthetic_model("a", {mib_floats}));
  rt.add(synthetic_model("b", {mib_floats}));
  client keeper{rt.sys};
  auto a = rt.lease(keeper, "a");
  rt.pinned(keeper, rt.devices[0], a.lease);
  {
    client doomed{rt.sys};
    auto b = rt.lease(doomed, "b");
    rt.send_pin(doomed, rt.devices[0], b.lease);
    rt.settle();
    CHECK(rt.device_snapshot(rt.devices[0]).waiting_now == 1);
  }
  rt.settle();
  CHECK(rt.device_snapshot(rt.devices[0]).waiting_now == 0);
  CHECK(rt.ram_snapshot().leases_active == 2);  // keeper's lease and its pin's
  rt.check_all();
}

TEST_CASE("a holder killed while the device borrows its lease gets no pin and leaks no lease") {
  deterministic_runtime rt{4 * mib, {4 * mib}};
  rt.add(synthetic_model("a", {mib_floats}));
  {
    client doomed{rt.sys};
    auto a = rt.lease(doomed, "a");
    rt.send_pin(doomed, rt.devices[0], a.lease);
    rt.sched.run_once();  // the device receives the pin and asks the RAM cache for a lease of its own
  }
  rt.settle();
  CHECK(rt.ram_snapshot().leases_active == 0);
  auto d = rt.device_snapshot(rt.devices[0]);
  CHECK(d.pins_active == 0);
  CHECK(d.working_bytes == 0);
  rt.check_all();
}

TEST_CASE("waiting pins are served in order and fail at their deadline on the virtual clock") {
  deterministic_runtime rt{8 * mib, {2 * mib}};
  for (auto m : {"a", "b", "c"})
    rt.add(synthetic_model(m, {2 * mib_floats}));
  client s1{rt.sys}, s2{rt.sys}, s3{rt.sys};
  auto a = rt.lease(s1, "a");
  auto b = rt.lease(s2, "b");
  auto c = rt.lease(s3, "c");
  auto pa = rt.pinned(s1, rt.devices[0], a.lease);
  rt.send_pin(s2, rt.devices[0], b.lease, 0, 1s);
  rt.settle();
  rt.send_pin(s3, rt.devices[0], c.lease, 0, 1h);
  rt.settle();
  CHECK(rt.device_snapshot(rt.devices[0]).waiting_now == 2);
  rt.sched.trigger_timeout();  // the earliest deadline: s2's
  rt.settle();
  auto r2 = s2.poll<device_pin>();
  REQUIRE(r2);
  CHECK(code_of(*r2) == errc::budget_exhausted);
  CHECK(std::get<failure>(*r2).detail.find("'a'") != std::string::npos);
  CHECK_FALSE(s3.poll<device_pin>());
  rt.release(s1, rt.devices[0], pa.pin);
  rt.settle();
  auto r3 = s3.poll<device_pin>();
  REQUIRE(r3);
  CHECK(succeeded(*r3));
  CHECK(rt.device_snapshot(rt.devices[0]).timeouts == 1);
  rt.check_all();
}

TEST_CASE("offload is lazy, and an explicit offload frees exactly what it says") {
  deterministic_runtime rt{8 * mib, {4 * mib}};
  rt.add(synthetic_model("a", {mib_floats}));
  rt.add(synthetic_model("b", {2 * mib_floats}));
  client s{rt.sys};
  auto a = rt.lease(s, "a");
  auto b = rt.lease(s, "b");
  auto pa = rt.pinned(s, rt.devices[0], a.lease);
  auto pb = rt.pinned(s, rt.devices[0], b.lease);
  rt.release(s, rt.devices[0], pa.pin);
  CHECK(rt.device_snapshot(rt.devices[0]).used_bytes == 3 * mib);  // lazy: still resident
  auto pinned = rt.offload(rt.devices[0], "b", 0);
  CHECK(std::get<failure>(pinned).code == errc::model_pinned);
  auto freed = rt.offload(rt.devices[0], "a", 0);
  REQUIRE(succeeded(freed));
  CHECK(std::get<bytes_t>(freed) == mib);
  auto d = rt.device_snapshot(rt.devices[0]);
  CHECK(d.used_bytes == 2 * mib);
  CHECK(d.offloads == 1);
  CHECK(d.bytes_copied_in == 3 * mib);  // the kept RAM copy means offload copied nothing back
  (void) pb;
  rt.check_all();
}

TEST_CASE("device out-of-memory injected in copies leaves every tier consistent") {
  auto failures = std::make_shared<int>(0);
  simulated_device_options sim;
  // The first two copies of all of 'm' (1 MiB) fail; other copies work.
  sim.inject_oom = [failures](bytes_t bytes) { return bytes == mib && (*failures)++ < 2; };
  deterministic_runtime rt{8 * mib, {4 * mib}, 0, sim};
  model_descriptor m = synthetic_model("m", {mib_floats / 4, mib_floats / 4, mib_floats / 4, mib_floats / 4});
  m.required_tensors = {"t0"};
  rt.add(m);
  rt.add(synthetic_model("other", {2 * mib_floats}));
  client s{rt.sys};
  auto other = rt.lease(s, "other");
  auto po = rt.pinned(s, rt.devices[0], other.lease);
  rt.release(s, rt.devices[0], po.pin);  // 'other' stays as cache
  auto lease = rt.lease(s, "m");
  auto pin = rt.pinned(s, rt.devices[0], lease.lease);
  // Rung 1 freed the cache, rung 2 copied the required tensor alone: the rest streams.
  CHECK(pin.resident_bytes == mib / 4);
  CHECK(pin.view->find("t0").equal(lease.payload->find("t0")));
  auto d = rt.device_snapshot(rt.devices[0]);
  CHECK(d.oom_retries == 2);
  CHECK(d.evictions == 1);
  CHECK(d.used_bytes == mib / 4 + pin.staging_bytes);
  rt.check_all();
}

TEST_CASE("the image server's sequence through acquire_all: both models leased together, then pinned in turn") {
  deterministic_runtime rt{3 * mib, {2 * mib}};
  rt.add(synthetic_model("text_encoder", {mib_floats}));
  rt.add(synthetic_model("transformer", {2 * mib_floats}));
  client s{rt.sys};
  s.self->send(rt.ram, acquire_atom::value, std::vector<model_id>{"text_encoder", "transformer"},
               caf::timespan{std::chrono::seconds(5)});
  rt.settle();
  auto r = s.poll<std::vector<ram_lease>>();
  REQUIRE(r);
  REQUIRE(succeeded(*r));
  auto& leases = std::get<std::vector<ram_lease>>(*r);
  REQUIRE(leases.size() == 2);
  for (auto& l : leases) {
    auto p = rt.pinned(s, rt.devices[0], l.lease);
    rt.release(s, rt.devices[0], p.pin);
  }
  CHECK(rt.ram_snapshot().leases_active == 2);
  client other{rt.sys};
  s.self->send(rt.ram, acquire_atom::value, std::vector<model_id>{"text_encoder", "no-such"},
               caf::timespan{std::chrono::seconds(5)});
  rt.settle();
  auto bad = s.poll<std::vector<ram_lease>>();
  REQUIRE(bad);
  CHECK(std::get<failure>(*bad).code == errc::unknown_model);
  rt.check_all();
}

TEST_CASE("an event-based actor session leases and pins with request/then, and its exit releases both") {
  deterministic_runtime rt{4 * mib, {4 * mib}};
  rt.add(synthetic_model("m", {mib_floats}));
  auto pinned = std::make_shared<std::optional<device_pin>>();
  auto session = rt.sys.spawn([ram = rt.ram, dev = rt.devices[0], pinned](caf::event_based_actor* self) {
    // Each step waits on another actor: other messages may run in between, the state lives in the lambdas.
    self->request(ram, caf::infinite, acquire_atom::value, model_id{"m"}, caf::timespan{std::chrono::seconds(1)})
      .then([=](ram_lease& lease) {
        self->request(dev, caf::infinite, pin_atom::value, lease.lease, bytes_t{4096},
                      caf::timespan{std::chrono::seconds(1)})
          .then([=](device_pin& pin) { *pinned = std::move(pin); });
      });
    return caf::behavior{[](int) {}};  // stays alive, holding its lease and pin, until told to exit
  });
  rt.settle();
  REQUIRE(*pinned);
  CHECK((*pinned)->working_bytes == 4096);
  CHECK(rt.ram_snapshot().leases_active == 2);
  CHECK(rt.device_snapshot(rt.devices[0]).pins_active == 1);
  pinned->reset();
  caf::anon_send_exit(session, caf::exit_reason::user_shutdown);
  rt.settle();
  CHECK(rt.ram_snapshot().leases_active == 0);
  CHECK(rt.device_snapshot(rt.devices[0]).pins_active == 0);
  CHECK(rt.device_snapshot(rt.devices[0]).working_bytes == 0);
  rt.check_all();
}

// Note [Grants wait for the frees before them] (device_actor.cpp).
namespace {
/// Registers 'big' (2 MiB) and 'small' (1 MiB) and leaves both cached on device 0, unpinned, alice holding
/// their leases: a pin of 'small' with 2 MiB of working memory then needs 'big' gone. The lease on 'small'.
ram_lease cache_big_and_small(deterministic_runtime& rt, client& alice) {
  rt.add(synthetic_model("big", {2 * mib_floats}));
  rt.add(synthetic_model("small", {mib_floats}));
  auto& device = rt.devices[0];
  auto big = rt.lease(alice, "big");
  auto small = rt.lease(alice, "small");
  REQUIRE_FALSE(rt.release(alice, device, rt.pinned(alice, device, big.lease).pin));
  REQUIRE_FALSE(rt.release(alice, device, rt.pinned(alice, device, small.lease).pin));
  return small;
}
} // namespace

TEST_CASE("a pin granted at once with working memory is answered only once the device memory made room for it is freed") {
  deterministic_runtime rt{8 * mib, {4 * mib}};
  client alice{rt.sys};
  client bob{rt.sys};
  auto& device = rt.devices[0];
  auto small = cache_big_and_small(rt, alice);
  auto bobs = rt.lease(bob, "small");
  // 'small' is here, but 2 MiB of working memory need 'big' gone: its free waits on the copy queue.
  rt.send_pin(alice, device, small.lease, 2 * mib);
  rt.deliver();
  CHECK(rt.copies->pending() > 0);
  CHECK_FALSE(alice.poll<device_pin>());
  // A hit that reserves nothing is not held behind the free.
  rt.send_pin(bob, device, bobs.lease, 0);
  rt.deliver();
  auto at_once = bob.poll<device_pin>();
  REQUIRE(at_once);
  REQUIRE(succeeded(*at_once));
  CHECK_FALSE(alice.poll<device_pin>());
  rt.settle();  // the copy queue frees 'big', then reaches the ticket behind it
  auto held = alice.poll<device_pin>();
  REQUIRE(held);
  REQUIRE(succeeded(*held));
  CHECK(std::get<device_pin>(*held).working_bytes == 2 * mib);
  CHECK(rt.device_snapshot(device).evictions == 1);
  REQUIRE_FALSE(rt.release(alice, device, std::get<device_pin>(*held).pin));
  REQUIRE_FALSE(rt.release(bob, device, std::get<device_pin>(*at_once).pin));
  rt.check_all();
}

TEST_CASE("a pin granted when its copy lands is not held behind frees queued after that copy") {
  deterministic_runtime rt{8 * mib, {4 * mib}};
  rt.add(synthetic_model("cached", {mib_floats}));
  rt.add(synthetic_model("new", {mib_floats}));
  client alice{rt.sys};
  auto& device = rt.devices[0];
  auto cached = rt.lease(alice, "cached");
  REQUIRE_FALSE(rt.release(alice, device, rt.pinned(alice, device, cached.lease).pin));
  auto fresh = rt.lease(alice, "new");
  rt.send_pin(alice, device, fresh.lease, mib);  // room to spare: its copy is queued, no free before it
  rt.deliver();
  client operator_{rt.sys};
  operator_.self->send(device, offload_atom::value, model_id{"cached"}, bytes_t{0});
  rt.deliver();  // the offload's free and its ticket are queued behind the copy
  REQUIRE(rt.copies->pending() == 3);
  REQUIRE(rt.copies->run_one());  // the copy lands
  rt.deliver();
  auto granted = alice.poll<device_pin>();
  REQUIRE(granted);  // not held for the offload's ticket, which it never needed
  REQUIRE(succeeded(*granted));
  CHECK(rt.copies->pending() == 2);
  rt.settle();
  REQUIRE_FALSE(rt.release(alice, device, std::get<device_pin>(*granted).pin));
  rt.check_all();
}

TEST_CASE("shutdown answers a pin held for frees the copy queue has not reached") {
  deterministic_runtime rt{8 * mib, {4 * mib}};
  client alice{rt.sys};
  auto& device = rt.devices[0];
  auto small = cache_big_and_small(rt, alice);
  rt.send_pin(alice, device, small.lease, 2 * mib);  // held: 'big' is freed on the copy queue
  rt.deliver();
  REQUIRE_FALSE(alice.poll<device_pin>());
  client stopper{rt.sys};
  stopper.self->send(device, shutdown_atom::value);
  rt.deliver();  // the copy queue may stop before it reaches the ticket: the grant goes out now
  auto r = alice.poll<device_pin>();
  REQUIRE(r);
  REQUIRE(succeeded(*r));
  rt.settle();
  REQUIRE_FALSE(rt.release(alice, device, std::get<device_pin>(*r).pin));
  rt.check_all();
}

TEST_CASE("without a kept RAM copy, an only copy offloaded after shutdown is dropped, not copied back") {
  deterministic_runtime rt(8 * mib, {4 * mib}, 0, {}, /*keep_ram_copy=*/false);
  rt.add(synthetic_model("x", {2 * mib_floats}));
  rt.add(synthetic_model("y", {7 * mib_floats}));
  client alice{rt.sys};
  auto& device = rt.devices[0];
  auto x = rt.lease(alice, "x");
  REQUIRE_FALSE(rt.release(alice, device, rt.pinned(alice, device, x.lease).pin));
  REQUIRE_FALSE(rt.release(alice, rt.ram, x.lease));
  REQUIRE_FALSE(rt.release(alice, rt.ram, rt.lease(alice, "y").lease));  // 'x' leaves RAM: device 0 has it
  REQUIRE(rt.ram_snapshot().hand_overs == 1);
  client stopper{rt.sys};
  stopper.self->send(rt.ram, shutdown_atom::value);
  stopper.self->send(device, shutdown_atom::value);
  rt.settle();
  auto freed = rt.offload(device, "x", 0);
  REQUIRE(succeeded(freed));
  CHECK(std::get<bytes_t>(freed) == 2 * mib);
  auto s = rt.ram_snapshot();
  CHECK(s.copy_backs == 0);
  CHECK(s.loading_bytes == 0);  // no room reserved for a copy back the stopped copy queue would never run
  CHECK(rt.device_snapshot(device).used_bytes == 0);
  rt.check_all();
}

TEST_CASE("a pin granted at once with working memory is not held behind frees it did not need") {
  // From an outside probe: such a pin waited ~2 s for an unrelated 40 MiB copy and the free queued behind
  // it, with room to spare. 'c' is cached; 'b' is being copied; an offload of 'a' queues its free behind
  // that copy. A pin of 'c' with 1 MiB of working memory leaves 1 MiB counted free, as much as is
  // still to be freed: the device never holds more than its budget, so it is granted at once.
  deterministic_runtime rt{8 * mib, {4 * mib}};
  rt.add(synthetic_model("a", {mib_floats}));
  rt.add(synthetic_model("b", {mib_floats}));
  rt.add(synthetic_model("c", {mib_floats}));
  client alice{rt.sys};
  auto& device = rt.devices[0];
  auto a = rt.lease(alice, "a");
  auto c = rt.lease(alice, "c");
  REQUIRE_FALSE(rt.release(alice, device, rt.pinned(alice, device, a.lease).pin));
  REQUIRE_FALSE(rt.release(alice, device, rt.pinned(alice, device, c.lease).pin));
  auto b = rt.lease(alice, "b");
  rt.send_pin(alice, device, b.lease, 0);
  rt.deliver();
  client operator_{rt.sys};
  operator_.self->send(device, offload_atom::value, model_id{"a"}, bytes_t{0});
  rt.deliver();
  REQUIRE(rt.copies->pending() == 3);  // the copy of 'b', the free of 'a', its ticket
  REQUIRE(succeeded(*operator_.poll<bytes_t>()));
  rt.send_pin(alice, device, c.lease, mib);
  rt.deliver();
  CHECK(rt.copies->pending() == 3);
  auto hit = alice.poll<device_pin>();
  REQUIRE(hit);  // at once, the copy and the free still queued
  REQUIRE(succeeded(*hit));
  CHECK(std::get<device_pin>(*hit).working_bytes == mib);
  rt.settle();
  auto copied = alice.poll<device_pin>();
  REQUIRE(copied);
  REQUIRE(succeeded(*copied));
  REQUIRE_FALSE(rt.release(alice, device, std::get<device_pin>(*hit).pin));
  REQUIRE_FALSE(rt.release(alice, device, std::get<device_pin>(*copied).pin));
  rt.check_all();
}
