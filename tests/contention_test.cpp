// Correctness under contention through the actors, deterministically: who waits behind whom, and in which
// order memory is freed and reused.

#include "support/deterministic.hpp"
#include "support/fake_models.hpp"

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
