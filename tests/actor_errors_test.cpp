// Bad input through the actors: each gets its typed error and leaves every tier as it was.

#include "support/deterministic.hpp"
#include "support/fake_models.hpp"
#include "support/stats_fields.hpp"

using namespace mcache;
using namespace mcache::test;

namespace {
constexpr int64_t kib_floats = 256;  // a 1 KiB float32 tensor
constexpr bytes_t kib = 1024;

struct everything {
  std::vector<int64_t> ram, dev, cpu;
  bool operator==(const everything& o) const { return ram == o.ram && dev == o.dev && cpu == o.cpu; }
};

everything snapshot(deterministic_runtime& rt) {
  return {fields_of(rt.ram_snapshot()), fields_of(rt.device_snapshot(rt.devices[0])),
          fields_of(rt.device_snapshot(rt.cpu))};
}

struct fixture {
  fixture() : rt(64 * kib, {16 * kib}) {
    rt.add(synthetic_model("m", {4 * kib_floats}));
    rt.add(synthetic_model("huge", {128 * kib_floats}));
    rt.add(synthetic_model("wide", {32 * kib_floats}));
    rt.add(test::throwing_model("broken", kib, "checksum mismatch in shard 3"));
    lease = rt.lease(alice, "m");
    pin = rt.pinned(alice, rt.devices[0], lease.lease);
  }
  deterministic_runtime rt;
  client alice{rt.sys};
  client bob{rt.sys};
  ram_lease lease;
  device_pin pin;
};
} // namespace

TEST_CASE_METHOD(fixture, "an unknown model is refused and nothing changes") {
  auto before = snapshot(rt);
  auto r = rt.acquire(bob, "no-such-model");
  CHECK(code_of(r) == errc::unknown_model);
  CHECK(snapshot(rt) == before);
}

TEST_CASE_METHOD(fixture, "a lease released twice is refused the second time and nothing changes") {
  REQUIRE_FALSE(rt.release(alice, rt.ram, lease.lease));
  auto before = snapshot(rt);
  auto err = rt.release(alice, rt.ram, lease.lease);
  REQUIRE(err);
  CHECK(err->code == errc::invalid_lease);
  CHECK(snapshot(rt) == before);
}

TEST_CASE_METHOD(fixture, "a lease used after release cannot be pinned") {
  REQUIRE_FALSE(rt.release(alice, rt.ram, lease.lease));
  auto before = snapshot(rt);
  auto r = rt.pin(alice, rt.devices[0], lease.lease);
  CHECK(code_of(r) == errc::invalid_lease);
  CHECK(snapshot(rt) == before);
}

TEST_CASE_METHOD(fixture, "another session's lease can be neither pinned nor released") {
  auto before = snapshot(rt);
  CHECK(code_of(rt.pin(bob, rt.devices[0], lease.lease)) == errc::foreign_lease);
  CHECK(rt.release(bob, rt.ram, lease.lease)->code == errc::foreign_lease);
  CHECK(rt.release(bob, rt.devices[0], pin.pin)->code == errc::foreign_pin);
  CHECK(snapshot(rt) == before);
}

TEST_CASE_METHOD(fixture, "a pin released twice is refused the second time") {
  REQUIRE_FALSE(rt.release(alice, rt.devices[0], pin.pin));
  auto before = snapshot(rt);
  CHECK(rt.release(alice, rt.devices[0], pin.pin)->code == errc::invalid_pin);
  CHECK(snapshot(rt) == before);
}

TEST_CASE_METHOD(fixture, "a model larger than the RAM budget fails at once") {
  auto before = snapshot(rt);
  auto r = rt.acquire(bob, "huge");
  CHECK(code_of(r) == errc::model_too_large);
  CHECK(snapshot(rt) == before);
}

TEST_CASE_METHOD(fixture, "a model larger than the device fails at once and its borrowed lease is returned") {
  auto wide = rt.lease(bob, "wide");
  auto before = snapshot(rt);
  auto r = rt.pin(bob, rt.devices[0], wide.lease);
  CHECK(code_of(r) == errc::model_too_large);
  CHECK(std::get<failure>(r).detail.find("larger device") != std::string::npos);
  CHECK(snapshot(rt) == before);
}

TEST_CASE_METHOD(fixture, "working memory beyond the device fails at once with the numbers") {
  auto before = snapshot(rt);
  auto r = rt.pin(alice, rt.devices[0], lease.lease, 64 * kib);
  CHECK(code_of(r) == errc::model_too_large);
  CHECK(std::get<failure>(r).detail.find("working memory") != std::string::npos);
  CHECK(snapshot(rt) == before);
}

TEST_CASE_METHOD(fixture, "a loader that throws fails the acquire with its text and frees its room") {
  auto before = rt.ram_snapshot();
  auto r = rt.acquire(bob, "broken");
  REQUIRE(code_of(r) == errc::load_failed);
  CHECK(std::get<failure>(r).detail.find("checksum mismatch in shard 3") != std::string::npos);
  auto after = rt.ram_snapshot();
  CHECK(after.used_bytes == before.used_bytes);
  CHECK(after.leases_active == before.leases_active);
  CHECK(after.models_resident == before.models_resident);
  CHECK(after.load_failures == before.load_failures + 1);
  rt.check_all();
}

TEST_CASE_METHOD(fixture, "offloading a model that is not on the device is refused") {
  auto before = snapshot(rt);
  auto r = rt.offload(rt.devices[0], "wide", 0);
  CHECK(std::get<failure>(r).code == errc::not_resident);
  CHECK(snapshot(rt) == before);
}

// Note [Copy back instead of a kept RAM copy]: a device actor that ends (a bug) takes its only copies with
// it; nothing may wait for a copy back from it.

TEST_CASE("without a kept RAM copy, a model whose only copy was on a device whose actor ended is read from disk") {
  deterministic_runtime rt(8 * kib, {16 * kib}, 0, {}, /*keep_ram_copy=*/false);
  rt.add(synthetic_model("x", {4 * kib_floats}));
  rt.add(synthetic_model("y", {6 * kib_floats}));  // RAM holds one of the two
  client alice{rt.sys};
  auto x = rt.lease(alice, "x");
  auto px = rt.pinned(alice, rt.devices[0], x.lease);
  REQUIRE_FALSE(rt.release(alice, rt.devices[0], px.pin));
  REQUIRE_FALSE(rt.release(alice, rt.ram, x.lease));
  REQUIRE_FALSE(rt.release(alice, rt.ram, rt.lease(alice, "y").lease));  // 'x' leaves RAM
  REQUIRE(rt.ram_snapshot().hand_overs == 1);
  caf::anon_send_exit(rt.devices[0], caf::exit_reason::kill);
  rt.settle();
  auto again = rt.acquire(alice, "x");  // before: a fetch sent to the dead actor, never answered
  REQUIRE(succeeded(again));
  CHECK(std::get<ram_lease>(again).payload->tensors.size() == 1);
  auto s = rt.ram_snapshot();
  CHECK(s.device_fetches == 0);
  CHECK(s.loads == 3);
  REQUIRE_FALSE(rt.release(alice, rt.ram, std::get<ram_lease>(again).lease));
  rt.check_all_but(rt.devices[0]);
}

TEST_CASE("without a kept RAM copy, an acquire waiting for a copy back from a device whose actor ends is served from disk") {
  deterministic_runtime rt(8 * kib, {16 * kib}, 0, {}, /*keep_ram_copy=*/false);
  rt.add(synthetic_model("x", {4 * kib_floats}));
  rt.add(synthetic_model("y", {6 * kib_floats}));
  client alice{rt.sys};
  auto x = rt.lease(alice, "x");
  auto px = rt.pinned(alice, rt.devices[0], x.lease);
  REQUIRE_FALSE(rt.release(alice, rt.devices[0], px.pin));
  REQUIRE_FALSE(rt.release(alice, rt.ram, x.lease));
  REQUIRE_FALSE(rt.release(alice, rt.ram, rt.lease(alice, "y").lease));
  rt.send_acquire(alice, "x");
  rt.deliver();  // the fetch reached the device; its copy back waits on the copy executor
  REQUIRE(rt.copies->pending() == 1);
  caf::anon_send_exit(rt.devices[0], caf::exit_reason::kill);
  rt.deliver();  // the RAM actor learns it before the copy back lands: it reads the disk instead
  rt.settle();   // then the copy back lands from the ended device, and is dropped
  auto r = alice.poll<ram_lease>();
  REQUIRE(r);
  REQUIRE(succeeded(*r));
  auto s = rt.ram_snapshot();
  CHECK(s.device_fetches == 1);
  CHECK(s.bytes_from_devices == 0);
  CHECK(s.used_bytes == 4 * kib);
  REQUIRE_FALSE(rt.release(alice, rt.ram, std::get<ram_lease>(*r).lease));
  rt.check_all_but(rt.devices[0]);
}
