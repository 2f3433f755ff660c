// Correctness under contention through the actors, deterministically: who waits behind whom, and in which
// order memory is freed and reused.

#include "support/deterministic.hpp"
#include "support/fake_models.hpp"

#include <algorithm>
#include <cstdlib>
#include <random>

using namespace mcache;
using namespace mcache::test;
using namespace std::chrono_literals;

namespace {
constexpr int64_t mib_floats = (1 << 20) / 4;
constexpr bytes_t mib = 1 << 20;
} // namespace

SCENARIO("a job's pin of a model it already has on the device never waits behind another job") {
  GIVEN("job 1 holding its transformer pinned and its text encoder resident, and job 2 waiting for room") {
    deterministic_runtime rt{16 * mib, {3 * mib}};
    rt.add(synthetic_model("text_encoder", {mib_floats}));
    rt.add(synthetic_model("transformer", {2 * mib_floats}));
    rt.add(synthetic_model("other", {2 * mib_floats}));
    client job1{rt.sys}, job2{rt.sys};
    auto te = rt.lease(job1, "text_encoder");
    auto tr = rt.lease(job1, "transformer");
    auto other = rt.lease(job2, "other");
    auto first = rt.pinned(job1, rt.devices[0], te.lease);
    REQUIRE_FALSE(rt.release(job1, rt.devices[0], first.pin));
    auto p_tr = rt.pinned(job1, rt.devices[0], tr.lease);
    rt.send_pin(job2, rt.devices[0], other.lease, 0, 1h);
    rt.settle();
    REQUIRE(rt.device_snapshot(rt.devices[0]).waiting_now == 1);

    WHEN("job 1 pins its resident text encoder with no working memory") {
      rt.send_pin(job1, rt.devices[0], te.lease, 0, 1h);
      rt.settle();  // no deadline fires: an answer now means it did not wait
      THEN("it is granted at once, and job 2 still waits for job 1's memory") {
        auto r = job1.poll<device_pin>();
        REQUIRE(r);
        CHECK(succeeded(*r));
        CHECK_FALSE(job2.poll<device_pin>());
        CHECK(rt.device_snapshot(rt.devices[0]).hits == 1);
      }
    }
    rt.check_all();
  }
}

TEST_CASE("working memory that would wrap the device's arithmetic is refused and the borrowed lease returned") {
  deterministic_runtime rt{16 * mib, {4 * mib}};
  rt.add(synthetic_model("m", {mib_floats}));
  client s{rt.sys};
  auto l = rt.lease(s, "m");
  auto r = rt.pin(s, rt.devices[0], l.lease, std::numeric_limits<bytes_t>::max() - mib + 2);
  REQUIRE_FALSE(succeeded(r));
  CHECK(code_of(r) == errc::invalid_argument);
  CHECK(rt.device_snapshot(rt.devices[0]).used_bytes == 0);
  CHECK(rt.ram_snapshot().leases_active == 1);
  rt.check_all();
}

TEST_CASE("the memory of an evicted model is freed before the copy that needs it runs") {
  deterministic_runtime rt{16 * mib, {2 * mib}};
  rt.add(synthetic_model("a", {2 * mib_floats}));
  rt.add(synthetic_model("b", {2 * mib_floats}));
  client s{rt.sys};
  auto a = rt.lease(s, "a");
  auto b = rt.lease(s, "b");
  auto pa = rt.pinned(s, rt.devices[0], a.lease);
  std::weak_ptr<const device_model> a_on_device = pa.view;
  REQUIRE_FALSE(rt.release(s, rt.devices[0], pa.pin));
  pa = device_pin{};
  REQUIRE_FALSE(a_on_device.expired());  // lazily kept
  rt.send_pin(s, rt.devices[0], b.lease);
  rt.deliver();  // the pin evicts 'a' and posts the copy of 'b'; no copy task has run yet
  REQUIRE(rt.copies->pending() >= 1);
  rt.copies->run_one();  // the first task on the device's copy queue
  CHECK(a_on_device.expired());
  rt.settle();
  auto r = s.poll<device_pin>();
  REQUIRE(r);
  CHECK(succeeded(*r));
  rt.check_all();
}

TEST_CASE("after shutdown every waiting request is answered and new ones are refused") {
  deterministic_runtime rt{4 * mib, {2 * mib}};
  rt.add(synthetic_model("a", {2 * mib_floats}));
  rt.add(synthetic_model("b", {2 * mib_floats}));
  rt.add(synthetic_model("c", {2 * mib_floats}));
  client s1{rt.sys}, s2{rt.sys}, s3{rt.sys};
  auto a = rt.lease(s1, "a");
  auto b = rt.lease(s2, "b");
  rt.pinned(s1, rt.devices[0], a.lease);
  rt.send_pin(s2, rt.devices[0], b.lease, 0, 1h);  // waits for device room
  rt.send_acquire(s3, "c", 1h);                     // waits for RAM room
  rt.settle();
  client admin{rt.sys};
  for (auto actor : {caf::actor_cast<caf::actor>(rt.devices[0]), caf::actor_cast<caf::actor>(rt.cpu),
                     caf::actor_cast<caf::actor>(rt.ram)}) {
    auto h = admin.self->request(actor, caf::infinite, shutdown_atom::value);
    rt.settle();
    h.receive([] {}, [](caf::error& e) { FAIL(to_failure(e).detail); });
  }
  auto pinned = s2.poll<device_pin>();
  REQUIRE(pinned);
  CHECK(code_of(*pinned) == errc::shutting_down);
  auto acquired = s3.poll<ram_lease>();
  REQUIRE(acquired);
  CHECK(code_of(*acquired) == errc::shutting_down);
  CHECK(code_of(rt.acquire(s3, "c")) == errc::shutting_down);
  CHECK(rt.ram_snapshot().leases_active == 3);  // s1's, s2's, and s1's pin's borrowed one
  CHECK_FALSE(rt.release(s2, rt.ram, b.lease));  // releases still work
  rt.check_all();
}

// -- randomized multi-model jobs ------------------------------------------------------------------------

namespace {

/// One job of a pipeline: lease two models together, pin the first, then pin the second while holding the
/// first, then release everything. Any failure must be a deadline (budget_exhausted); then the job gives
/// up what it holds and starts over.
struct job {
  enum class step { idle, leasing, pinning_first, pinning_second, done };
  explicit job(caf::actor_system& sys) : c(sys) {}
  client c;
  step at = step::idle;
  model_id first, second;
  device_index device = 0;
  std::vector<ram_lease> leases;
  std::vector<std::pair<device_actor, pin_id>> pins;
  bool waiting = false;  // a request is out and not answered yet
  bool must_not_wait = false;  // that request needs no room (Note [Admission] rule 1)
};

uint64_t jobs_seed() {
  if (const char* env = std::getenv("MCACHE_STRESS_SEED"))
    return std::strtoull(env, nullptr, 10);
  return std::random_device{}();
}

} // namespace

TEST_CASE("random multi-model jobs over contended devices each complete or fail at a deadline, and no request that needs no room waits") {
  auto seed = jobs_seed();
  INFO("MCACHE_STRESS_SEED=" << seed);
  std::mt19937_64 rng{seed};
  auto pick = [&](size_t n) { return static_cast<size_t>(rng() % n); };
  deterministic_runtime rt{8 * mib, {3 * mib, 4 * mib}};
  const std::vector<std::pair<model_id, int64_t>> catalog_models{
    {"te", 1}, {"tr", 2}, {"vae", 1}, {"llm", 2}, {"lora", 1}};
  for (const auto& m : catalog_models)
    rt.add(synthetic_model(m.first, {m.second * mib_floats}));
  auto bytes_of = [&](const model_id& m) {
    for (const auto& x : catalog_models)
      if (x.first == m)
        return static_cast<bytes_t>(x.second) * mib;
    return bytes_t{0};
  };
  std::vector<std::unique_ptr<job>> jobs;
  for (int k = 0; k < 5; ++k)
    jobs.push_back(std::make_unique<job>(rt.sys));
  size_t completed = 0, deadline_failures = 0, granted_without_room = 0;

  auto give_up = [&](job& j) {
    for (auto& p : j.pins)
      REQUIRE_FALSE(rt.release(j.c, p.first, p.second));
    for (auto& l : j.leases)
      REQUIRE_FALSE(rt.release(j.c, rt.ram, l.lease));
    j.pins.clear();
    j.leases.clear();
    j.at = job::step::idle;
  };
  auto resident_whole = [&](const device_actor& d, const model_id& m) {
    client probe{rt.sys};
    placement_view v;
    auto r = probe.self->request(d, caf::infinite, place_atom::value, m);
    rt.settle();
    r.receive([&](placement_view& x) { v = x; }, [](caf::error&) { FAIL("place failed"); });
    return v.model_resident_bytes == bytes_of(m);
  };
  auto send_pin = [&](job& j, const model_id& m) {
    auto& d = rt.devices[static_cast<size_t>(j.device)];
    auto lease = std::find_if(j.leases.begin(), j.leases.end(), [&](const ram_lease& l) { return l.model == m; });
    // The probe settles everything in flight, and so does the settle after the send: the device sees this
    // pin in exactly the state the probe saw (a release in flight could otherwise evict the model between
    // the probe and the pin's arrival, after the pin's lease round trip).
    j.must_not_wait = resident_whole(d, m);
    rt.send_pin(j.c, d, lease->lease, 0, pick(4) == 0 ? caf::timespan{0} : caf::timespan{std::chrono::hours(1)});
    rt.settle();
    j.waiting = true;
  };
  // Delivers j's answer if it came: advances the job, or checks the failure and starts over.
  auto collect = [&](job& j) {
    if (j.at == job::step::leasing) {
      auto r = j.c.poll<std::vector<ram_lease>>();
      if (!r)
        return;
      j.waiting = false;
      if (!succeeded(*r)) {
        CHECK(std::get<failure>(*r).code == errc::budget_exhausted);
        ++deadline_failures;
        j.at = job::step::idle;
        return;
      }
      j.leases = std::get<std::vector<ram_lease>>(*r);
      j.at = job::step::pinning_first;
      send_pin(j, j.first);
      return;
    }
    auto r = j.c.poll<device_pin>();
    if (!r) {
      INFO("job pinning '" << (j.at == job::step::pinning_first ? j.first : j.second) << "' on device " << j.device
           << ", waiting " << rt.device_snapshot(rt.devices[static_cast<size_t>(j.device)]).waiting_now);
      CHECK_FALSE(j.must_not_wait);  // a pin that needed no room was not answered at once
      return;
    }
    j.waiting = false;
    if (j.must_not_wait) {
      CHECK(succeeded(*r));
      ++granted_without_room;
    }
    if (!succeeded(*r)) {
      CHECK(std::get<failure>(*r).code == errc::budget_exhausted);
      ++deadline_failures;
      give_up(j);
      return;
    }
    j.pins.emplace_back(rt.devices[static_cast<size_t>(j.device)], std::get<device_pin>(*r).pin);
    if (j.at == job::step::pinning_first) {
      j.at = job::step::pinning_second;
      send_pin(j, j.second);
    } else {
      ++completed;
      give_up(j);  // done: release everything
    }
  };

  for (int round = 0; round < 400; ++round) {
    auto& j = *jobs[pick(jobs.size())];
    if (j.at == job::step::idle && !j.waiting) {
      auto a = pick(catalog_models.size()), b = pick(catalog_models.size() - 1);
      if (b >= a)
        ++b;
      j.first = catalog_models[a].first;
      j.second = catalog_models[b].first;
      j.device = static_cast<device_index>(pick(rt.devices.size()));
      j.at = job::step::leasing;
      j.c.self->send(rt.ram, acquire_atom::value, std::vector<model_id>{j.first, j.second},
                     caf::timespan{std::chrono::hours(1)});
      j.waiting = true;
    }
    rt.settle();
    for (auto& each : jobs)
      if (each->waiting)
        collect(*each);
    if (pick(10) == 0) {  // time passes: every deadline fires
      rt.fire_deadlines();
      for (auto& each : jobs)
        if (each->waiting) {
          each->must_not_wait = false;
          collect(*each);
        }
    }
    rt.check_all();
  }
  // The end: deadlines fire until every job has an answer, then everything is given up.
  for (int k = 0; k < 10; ++k) {
    rt.fire_deadlines();
    for (auto& each : jobs)
      if (each->waiting) {
        each->must_not_wait = false;
        collect(*each);
      }
  }
  for (auto& each : jobs) {
    CHECK_FALSE(each->waiting);
    if (each->at != job::step::idle)
      give_up(*each);
  }
  rt.settle();
  CHECK(completed > 0);
  CHECK(granted_without_room > 0);
  INFO("completed " << completed << ", deadline failures " << deadline_failures);
  CHECK(rt.ram_snapshot().leases_active == 0);
  for (auto& d : rt.devices)
    CHECK(rt.device_snapshot(d).pins_active == 0);
  rt.check_all();
}

// -- prechecks hold a place in line ---------------------------------------------------------------------

namespace {
model_descriptor prechecked(model_id id, int64_t floats, int* checks) {
  auto d = synthetic_model(std::move(id), {floats});
  d.precheck = [checks](const model_descriptor&) -> std::optional<failure> {
    ++*checks;
    return std::nullopt;
  };
  return d;
}
} // namespace

TEST_CASE("an acquire whose file is being prechecked keeps its place in line: a later one does not take its room") {
  deterministic_runtime rt{3 * mib, {}};
  int checks = 0;
  rt.add(synthetic_model("held", {mib_floats}));
  rt.add(prechecked("checked", 2 * mib_floats, &checks));
  rt.add(synthetic_model("plain", {2 * mib_floats}));
  client s0{rt.sys}, s1{rt.sys}, s2{rt.sys};
  rt.lease(s0, "held");  // 2 MiB stay free: room for one of the two
  rt.send_acquire(s1, "checked", 1h);
  rt.deliver();  // the precheck is posted, not run
  rt.send_acquire(s2, "plain", 1h);
  rt.deliver();
  CHECK(rt.ram_snapshot().loads == 1);  // only 'held' so far: 'plain' waits behind 'checked'
  rt.settle();  // the precheck passes, 'checked' loads
  auto r1 = s1.poll<ram_lease>();
  REQUIRE(r1);
  CHECK(succeeded(*r1));
  CHECK_FALSE(s2.poll<ram_lease>());
  CHECK(checks == 1);
  rt.check_all();
}

TEST_CASE("the deadline of an acquire runs from its arrival, its precheck included") {
  deterministic_runtime rt{3 * mib, {}};
  int checks = 0;
  rt.add(prechecked("checked", 2 * mib_floats, &checks));
  client s{rt.sys};
  rt.send_acquire(s, "checked", 1s);
  rt.deliver();  // the precheck is posted, not run
  CHECK(rt.sched.has_pending_timeout());
  rt.sched.trigger_timeouts();
  rt.deliver();
  auto r = s.poll<ram_lease>();
  REQUIRE(r);
  CHECK(code_of(*r) == errc::budget_exhausted);
  rt.settle();  // the precheck ends later and finds nobody waiting: nothing is loaded
  CHECK(rt.ram_snapshot().loads == 0);
  rt.check_all();
}

TEST_CASE("an acquire that may not wait is not failed by a deadline while its file is prechecked") {
  deterministic_runtime rt{3 * mib, {}};
  int checks = 0;
  rt.add(prechecked("checked", 2 * mib_floats, &checks));
  client s{rt.sys};
  rt.send_acquire(s, "checked", 0s);  // room exists: it is granted once the precheck passes
  rt.deliver();
  CHECK_FALSE(rt.sched.has_pending_timeout());
  rt.settle();
  auto r = s.poll<ram_lease>();
  REQUIRE(r);
  CHECK(succeeded(*r));
  CHECK(checks == 1);
  CHECK(rt.ram_snapshot().timeouts == 0);
  rt.check_all();
}
