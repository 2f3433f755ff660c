#pragma once
// Deterministic actor tests: CAF's test coordinator runs messages one by one on the test's thread, its
// virtual clock fires deadlines on demand, and manual executors decide when loads and copies finish.

#include "actors/device_actor.hpp"
#include "actors/ram_cache_actor.hpp"
#include "messages/errors.hpp"
#include "support/catch.hpp"

#include <caf/all.hpp>
#include <caf/scheduler/test_coordinator.hpp>

#include <optional>

namespace mcache::test {

/// A blocking client inside the deterministic system: one holder (one session).
struct client {
  explicit client(caf::actor_system& sys) : self(sys, true) {}

  /// The next reply that arrived for this client, if any (does not block).
  template <class T>
  std::optional<outcome<T>> poll() {
    std::optional<outcome<T>> out;
    self->receive([&](T& x) { out = std::move(x); }, [&](caf::error& e) { out = to_failure(e); },
                  caf::after(std::chrono::seconds(0)) >> [] {});
    return out;
  }

  caf::scoped_actor self;
};

struct deterministic_runtime {
  static caf::actor_system_config& init(caf::actor_system_config& cfg) {
    register_types(cfg);
    cfg.set("scheduler.policy", caf::atom("testing"));
    cfg.set("logger.verbosity", caf::atom("quiet"));
    return cfg;
  }

  /// Devices 0..N-1 simulated with the given budgets; `cpu` is the CPU pin tier. `keep_ram_copy` false:
  /// Note [Copy back instead of a kept RAM copy], as the runtime sets it up.
  deterministic_runtime(bytes_t ram_budget, std::vector<bytes_t> device_budgets, bytes_t reserve = 0,
                        simulated_device_options simulated = {}, bool keep_ram_copy = true)
    : sys(init(cfg)), sched(dynamic_cast<caf::scheduler::test_coordinator&>(sys.scheduler())) {
    ram_cache_config rc;
    rc.tier.budget_bytes = ram_budget;
    rc.tier.keep_ram_copy = keep_ram_copy;
    rc.models = models;
    rc.loaders = loads;
    rc.check_invariants_each_step = true;
    ram = spawn_ram_cache(sys, rc);
    for (size_t i = 0; i < device_budgets.size(); ++i) {
      auto dc = device_config(static_cast<device_index>(i), device_budgets[i], reserve,
                              make_simulated_backend(static_cast<device_index>(i), simulated));
      dc.report_whole_copies = !keep_ram_copy;
      devices.push_back(spawn_device(sys, std::move(dc)));
    }
    cpu = spawn_device(sys, device_config(cpu_device, ram_budget, 0, make_host_backend()));
    settle();
  }

  ~deterministic_runtime() {
    for (auto& d : devices)
      caf::anon_send_exit(d, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(cpu, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(ram, caf::exit_reason::user_shutdown);
    settle();
  }

  device_actor_config device_config(device_index index, bytes_t budget, bytes_t reserve,
                                    std::shared_ptr<device_backend> backend) {
    device_actor_config dc;
    dc.tier = {index, budget, reserve};
    dc.backend = std::move(backend);
    dc.copiers = copies;
    dc.ram = ram;
    dc.models = models;
    dc.check_invariants_each_step = true;
    return dc;
  }

  /// Runs messages, loads and copies until nothing moves (no timer fires).
  void settle() {
    for (;;) {
      auto n = sched.run();
      n += loads->run_all();
      n += copies->run_all();
      if (n == 0)
        return;
    }
  }
  /// Runs messages only: loads and copies stay in flight.
  void deliver() { sched.run(); }
  /// Fires every pending deadline on the virtual clock, then settles.
  void fire_deadlines() {
    sched.trigger_timeouts();
    settle();
  }

  void add(model_descriptor d) { REQUIRE_FALSE(models->add(std::move(d))); }

  // -- requests: send now, answer later with client::poll --------------------------------------------

  void send_acquire(client& c, const model_id& m, caf::timespan wait = std::chrono::seconds(10)) {
    c.self->send(ram, acquire_atom::value, m, wait);
  }
  void send_pin(client& c, const device_actor& d, lease_id l, bytes_t working = 0,
                caf::timespan wait = std::chrono::seconds(10)) {
    c.self->send(d, pin_atom::value, l, working, wait);
  }

  // -- requests that settle and must have an answer --------------------------------------------------

  outcome<ram_lease> acquire(client& c, const model_id& m, caf::timespan wait = std::chrono::seconds(10)) {
    send_acquire(c, m, wait);
    settle();
    auto r = c.poll<ram_lease>();
    REQUIRE(r);
    return *r;
  }
  ram_lease lease(client& c, const model_id& m) {
    auto r = acquire(c, m);
    if (!succeeded(r))
      FAIL("acquire of " << m << " failed: " << std::get<failure>(r).detail);
    return std::get<ram_lease>(r);
  }
  outcome<device_pin> pin(client& c, const device_actor& d, lease_id l, bytes_t working = 0,
                          caf::timespan wait = std::chrono::seconds(10)) {
    send_pin(c, d, l, working, wait);
    settle();
    auto r = c.poll<device_pin>();
    REQUIRE(r);
    return *r;
  }
  device_pin pinned(client& c, const device_actor& d, lease_id l, bytes_t working = 0) {
    auto r = pin(c, d, l, working);
    if (!succeeded(r))
      FAIL("pin failed: " << std::get<failure>(r).detail);
    return std::get<device_pin>(r);
  }
  template <class Handle, class Id>
  std::optional<failure> release(client& c, const Handle& to, Id id) {
    std::optional<failure> err;
    auto h = c.self->request(to, caf::infinite, release_atom::value, id);
    settle();
    h.receive([] {}, [&](caf::error& e) { err = to_failure(e); });
    return err;
  }
  outcome<bytes_t> offload(const device_actor& d, const model_id& m, bytes_t bytes) {
    client c{sys};
    outcome<bytes_t> out = bytes_t{0};
    auto h = c.self->request(d, caf::infinite, offload_atom::value, m, bytes);
    settle();
    h.receive([&](bytes_t n) { out = n; }, [&](caf::error& e) { out = to_failure(e); });
    return out;
  }

  // -- observation -------------------------------------------------------------------------------------

  ram_stats ram_snapshot() {
    client c{sys};
    ram_stats out;
    auto h = c.self->request(ram, caf::infinite, stats_atom::value);
    settle();
    h.receive([&](ram_stats& s) { out = s; }, [](caf::error&) { FAIL("stats failed"); });
    return out;
  }
  device_stats device_snapshot(const device_actor& d) {
    client c{sys};
    device_stats out;
    auto h = c.self->request(d, caf::infinite, stats_atom::value);
    settle();
    h.receive([&](device_stats& s) { out = s; }, [](caf::error&) { FAIL("stats failed"); });
    return out;
  }
  /// Asks every actor to verify its tier; any broken invariant fails the test with its text.
  void check_all() { check_all_but({}); }
  /// The same, but for an actor that has ended.
  void check_all_but(const device_actor& ended) {
    client c{sys};
    auto check = [&](auto handle) {
      auto h = c.self->request(handle, caf::infinite, check_atom::value);
      settle();
      h.receive([] {}, [](caf::error& e) { FAIL(to_failure(e).detail); });
    };
    check(ram);
    for (auto& d : devices)
      if (d != ended)
        check(d);
    check(cpu);
  }

  caf::actor_system_config cfg;
  caf::actor_system sys;
  caf::scheduler::test_coordinator& sched;
  std::shared_ptr<catalog> models = std::make_shared<catalog>();
  std::shared_ptr<manual_executor> loads = std::make_shared<manual_executor>();
  std::shared_ptr<manual_executor> copies = std::make_shared<manual_executor>();
  ram_cache_actor ram;
  std::vector<device_actor> devices;
  device_actor cpu;
};

inline errc code_of(const outcome<ram_lease>& r) { return std::get<failure>(r).code; }
inline errc code_of(const outcome<device_pin>& r) { return std::get<failure>(r).code; }

} // namespace mcache::test
