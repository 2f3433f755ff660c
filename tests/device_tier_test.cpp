// The device tier without CAF: copies, pins, working memory, lazy and explicit offload, waiting. (A pin that
// trims its own model and a stage's pins that reserve room: device_tier_admission_test.cpp.)

#include "runtime/core/tiers/device_tier.hpp"

#include <ATen/ATen.h>

#include "support/device_harness.hpp"
#include "support/fake_models.hpp"
#include "support/stats_fields.hpp"

#include <limits>
#include <map>

using namespace mcache;
using namespace mcache::test;
using mcache::test::fields_of;

TEST_CASE("a pin copies a model once and later pins of it are hits") {
  device_harness h{100};
  auto r1 = h.pin("a", 40, alice);
  auto r2 = h.pin("a", 40, bob);
  CHECK(h.copies_started == std::vector<model_id>{"a"});
  h.finish_copy("a");
  CHECK(h.granted(r1));
  CHECK(h.granted(r2));
  auto r3 = h.pin("a", 40, bob);
  CHECK(h.granted(r3));
  auto s = h.tier.stats();
  CHECK(s.loads == 1);
  CHECK(s.shared_loads == 1);
  CHECK(s.hits == 1);
  CHECK(s.pins_active == 3);
  CHECK(s.pinned_bytes == 40);
}

TEST_CASE("a released pin leaves the model resident until room is needed") {
  device_harness h{100};
  auto p = h.pinned("a", 60, alice);
  h.release(p, alice);
  CHECK(h.tier.residency("a") == device_residency::resident);
  CHECK(h.tier.stats().used_bytes == 60);
  h.pinned("b", 60, alice);
  CHECK(h.tier.residency("a") == device_residency::absent);
  CHECK(h.tier.stats().evictions == 1);
}

TEST_CASE("a pinned model is never evicted to make room, and is a candidate again after release") {
  device_harness h{100};
  auto pa = h.pinned("a", 60, alice);
  auto rb = h.pin("b", 60, bob);
  CHECK_FALSE(h.answered(rb));
  CHECK(h.tier.residency("a") == device_residency::resident);
  h.release(pa, alice);
  CHECK(h.tier.residency("a") == device_residency::absent);
  h.finish_copy("b");
  CHECK(h.granted(rb));
}

TEST_CASE("eviction on a device follows the policy's order among unpinned models") {
  device_harness h{90};
  auto pa = h.pinned("a", 30, alice);
  auto pb = h.pinned("b", 30, alice);
  auto pc = h.pinned("c", 30, alice);
  h.release(pc, alice);
  h.release(pa, alice);
  h.release(pb, alice);
  h.pinned("d", 30, alice);
  CHECK(h.tier.residency("c") == device_residency::absent);
  CHECK(h.tier.residency("a") == device_residency::resident);
}

TEST_CASE("working memory counts against the budget while the pin lives") {
  device_harness h{100, 10};
  auto p = h.pinned("a", 40, alice, 30);
  auto s = h.tier.stats();
  CHECK(s.used_bytes == 70);
  CHECK(s.working_bytes == 30);
  // 90 usable, 70 used: a 30-byte model does not fit beside it, and 'a' is pinned.
  auto rb = h.pin("b", 30, bob, 0, false);
  CHECK(h.error_of(rb) == errc::budget_exhausted);
  CHECK(h.text_of(rb).find("working memory reserved 30 B") != std::string::npos);
  h.release(p, alice);
  CHECK(h.tier.stats().working_bytes == 0);
  CHECK(h.tier.stats().used_bytes == 40);
}

TEST_CASE("a pin asking for more than the usable budget fails at once with the numbers") {
  device_harness h{100, 20};
  auto before = fields_of(h.tier.stats());
  auto r = h.pin("a", 50, alice, 31);
  REQUIRE(h.answered(r));
  CHECK(h.error_of(r) == errc::model_too_large);
  auto text = h.text_of(r);
  CHECK(text.find("50 B for the model + 31 B working memory") != std::string::npos);
  CHECK(text.find("only 80 B") != std::string::npos);
  CHECK(fields_of(h.tier.stats()) == before);
  CHECK(h.leases_out.empty());
}

TEST_CASE("making room for working memory never evicts the model being pinned") {
  device_harness h{100};
  auto pa = h.pinned("a", 60, alice);
  h.release(pa, alice);
  h.pinned("b", 30, alice);
  // 10 bytes free; the only candidate is 'a' itself, which must stay.
  auto r = h.pin("a", 60, bob, 20, false);
  CHECK(h.error_of(r) == errc::budget_exhausted);
  CHECK(h.tier.residency("a") == device_residency::resident);
  auto ok = h.pin("a", 60, bob, 10);
  CHECK(h.granted(ok));
}

TEST_CASE("offloading a named model frees exactly its bytes and refuses a pinned one") {
  device_harness h{100};
  auto pa = h.pinned("a", 30, alice);
  auto pb = h.pinned("b", 20, alice);
  h.release(pb, alice);
  auto pinned = h.offload("a", 0);
  REQUIRE_FALSE(succeeded(pinned));
  CHECK(std::get<failure>(pinned).code == errc::model_pinned);
  auto absent = h.offload("zzz", 0);
  CHECK(std::get<failure>(absent).code == errc::not_resident);
  auto freed = h.offload("b", 0);
  REQUIRE(succeeded(freed));
  CHECK(std::get<bytes_t>(freed) == 20);
  CHECK(h.tier.stats().used_bytes == 30);
  CHECK(h.tier.stats().offloaded_bytes == 20);
  (void) pa;
}

TEST_CASE("offloading a number of bytes drops whole unpinned models in policy order until enough is freed") {
  device_harness h{100};
  for (auto m : {"a", "b", "c"}) {
    auto p = h.pinned(m, 30, alice);
    h.release(p, alice);
  }
  auto freed = h.offload("", 40);  // full-model granularity: a (30) then b (30)
  REQUIRE(succeeded(freed));
  CHECK(std::get<bytes_t>(freed) == 60);
  CHECK(h.tier.residency("c") == device_residency::resident);
  auto rest = h.offload("", 0);
  CHECK(std::get<bytes_t>(rest) == 30);
  CHECK(h.tier.stats().used_bytes == 0);
}

TEST_CASE("a failed copy answers its waiters, returns their leases and frees the reservation") {
  device_harness h{100};
  auto r1 = h.pin("a", 40, alice, 5);
  auto r2 = h.pin("a", 40, bob, 5);
  h.fail_copy("a");
  CHECK(h.error_of(r1) == errc::copy_failed);
  CHECK(h.error_of(r2) == errc::copy_failed);
  CHECK(h.tier.stats().used_bytes == 0);
  CHECK(h.leases_out.empty());
}

TEST_CASE("a deadline passing in the queue returns budget_exhausted and the lease") {
  device_harness h{100};
  h.pinned("a", 70, alice);
  auto rb = h.pin("b", 70, bob);
  h.expire(rb);
  CHECK(h.error_of(rb) == errc::budget_exhausted);
  CHECK(h.leases_out.size() == 1);  // only alice's pin still holds one
}

TEST_CASE("a withdrawn pin request leaves the head of the queue at once, returns its lease, and the one behind it is served") {
  device_harness h{100};
  h.pinned("a", 70, alice);
  auto rb = h.pin("b", 50, bob);
  auto rc = h.pin("c", 20, carol);  // fits now, but waits behind b (FIFO)
  CHECK_FALSE(h.answered(rc));
  h.withdraw(rb);
  CHECK(h.error_of(rb) == errc::cancelled);
  CHECK(h.leases_out.count(h.lease_of.at(rb)) == 0);  // handed back
  h.finish_copy("c");
  CHECK(h.granted(rc));
  CHECK(h.tier.stats().timeouts == 0);
}

TEST_CASE("a withdrawn pin waiting for its copy is answered at once, and the copy lands unpinned and gives its lease back") {
  device_harness h{100};
  auto r = h.pin("a", 40, alice, /*working=*/20);
  REQUIRE(h.tier.stats().working_bytes == 20);
  h.withdraw(r);
  REQUIRE(h.answered(r));
  CHECK(h.error_of(r) == errc::cancelled);
  CHECK(h.tier.stats().working_bytes == 0);              // its working memory went at once
  CHECK(h.leases_out.count(h.lease_of.at(r)) == 1);      // the copy still reads the host copy
  h.finish_copy("a");
  CHECK(h.leases_out.count(h.lease_of.at(r)) == 0);
  CHECK(h.tier.residency("a") == device_residency::resident);
  CHECK(h.tier.stats().pins_active == 0);
  CHECK(h.tier.stats().used_bytes == 40);
}

// -- Note [Remove and replace] ------------------------------------------------------------------------------

TEST_CASE("a retired model is dropped from the device once unpinned, and at once if it is not pinned") {
  device_harness h{100};
  auto p = h.pinned("a", 40, alice);
  REQUIRE_FALSE(h.release(h.pinned("b", 30, bob), bob));
  h.retire("b");
  CHECK(h.tier.stats().used_bytes == 40);  // b went at once
  h.retire("a");
  CHECK(h.tier.stats().used_bytes == 40);  // a is pinned: valid and counted
  REQUIRE_FALSE(h.release(p, alice));
  CHECK(h.tier.stats().used_bytes == 0);
  CHECK(h.leases_out.empty());
}

TEST_CASE("a model retired before any pin of it, then pinned from a lease taken before, goes once unpinned") {
  device_harness h{100};
  h.retire("a");  // nothing of it here yet
  auto p = h.pinned("a", 40, alice);
  CHECK(h.tier.stats().used_bytes == 40);
  REQUIRE_FALSE(h.release(p, alice));
  CHECK(h.tier.stats().used_bytes == 0);
  CHECK(h.tier.stats().retired_drops == 1);
}

TEST_CASE("a model retired while its copy is in flight is pinned for the requests made before, then goes") {
  device_harness h{100};
  auto r = h.pin("a", 40, alice);
  h.retire("a");
  h.finish_copy("a");
  REQUIRE(h.granted(r));
  REQUIRE_FALSE(h.release(std::get<device_pin>(h.answers.at(r)).pin, alice));
  CHECK(h.tier.stats().used_bytes == 0);
}

TEST_CASE("a deadline bounds the wait for room, not a copy in flight") {
  device_harness h{100};
  auto r1 = h.pin("a", 40, alice);
  h.expire(r1);
  CHECK_FALSE(h.answered(r1));
  h.finish_copy("a");
  CHECK(h.granted(r1));
  CHECK(h.tier.stats().timeouts == 0);
}

TEST_CASE("a holder that dies during a copy keeps its lease out until the copy ends") {
  device_harness h{100};
  auto r1 = h.pin("a", 40, alice, 8);
  device_effects fx;
  h.tier.holder_down(alice, fx);
  h.absorb(fx);
  CHECK(h.error_of(r1) == errc::shutting_down);
  CHECK(h.leases_out.size() == 1);  // the copy still reads the host copy
  CHECK(h.tier.stats().working_bytes == 0);
  h.finish_copy("a");
  CHECK(h.leases_out.empty());
  CHECK(h.tier.residency("a") == device_residency::resident);
}

TEST_CASE("double release and another holder's pin fail and change nothing") {
  device_harness h{100};
  auto p = h.pinned("a", 40, alice);
  auto before = fields_of(h.tier.stats());
  CHECK(h.release(p, bob)->code == errc::foreign_pin);
  CHECK(h.release(777, alice)->code == errc::invalid_pin);
  CHECK(fields_of(h.tier.stats()) == before);
  REQUIRE_FALSE(h.release(p, alice));
  CHECK(h.release(p, alice)->code == errc::invalid_pin);
}

TEST_CASE("a holder that goes away has its pins released and its requests withdrawn") {
  device_harness h{100};
  h.pinned("a", 60, alice, 10);
  auto rb = h.pin("b", 60, alice);
  device_effects fx;
  h.tier.holder_down(alice, fx);
  h.absorb(fx);
  CHECK(h.error_of(rb) == errc::shutting_down);
  auto s = h.tier.stats();
  CHECK(s.pins_active == 0);
  CHECK(s.working_bytes == 0);
  CHECK(h.leases_out.empty());
}

TEST_CASE("zero budgets, reserves that leave nothing and a single staging slot are rejected") {
  CHECK(device_tier::validate({0, 0, 0})->code == errc::invalid_argument);
  CHECK(device_tier::validate({0, 100, 100})->code == errc::invalid_argument);
  CHECK(device_tier::validate({0, 100, 0, true, 1})->code == errc::invalid_argument);
  CHECK_FALSE(device_tier::validate({0, 100, 99}));
}

// -- partial residency ------------------------------------------------------------------------------------

TEST_CASE("a model that does not fit loads its required tensors, then as many as fit in execution order") {
  device_harness h{40};
  auto r = h.pin("m", 50, alice, 0, true, {10, 10, 10, 10, 10}, {false, false, false, false, true});
  // Whole: 50 > 40. Partial: t4 (required) + 2 staging slots of 10 + t0 fills the 40.
  CHECK(h.last_order.at("m") == std::vector<size_t>{0, 4});
  h.finish_copy("m");
  REQUIRE(h.granted(r));
  const auto& pin = std::get<device_pin>(h.answers.at(r));
  CHECK(pin.partial());
  CHECK(pin.resident_bytes == 20);
  CHECK(pin.model_bytes == 50);
  CHECK(pin.staging_bytes == 20);
  CHECK(pin.view->tensors[0].tensor.defined());
  CHECK_FALSE(pin.view->tensors[1].tensor.defined());
  CHECK(pin.view->tensors[4].tensor.defined());
  auto s = h.tier.stats();
  CHECK(s.used_bytes == 40);
  CHECK(s.partial_loads == 1);
}

TEST_CASE("with partial loading off, a model that does not fit whole is too large") {
  device_harness h{40, 0, /*partial=*/false};
  auto r = h.pin("m", 50, alice, 0, true, {10, 10, 10, 10, 10});
  CHECK(h.error_of(r) == errc::model_too_large);
  CHECK(h.leases_out.empty());
}

TEST_CASE("a partial offload frees exactly the tensors needed, from the end of execution order") {
  device_harness h{100};
  auto p = h.pinned("m", 40, alice);
  h.release(p, alice);
  // Re-pin as four tensors: a fresh model id, so the layout is the one given.
  auto r = h.pin("n", 40, alice, 0, true, {10, 10, 10, 10});
  h.finish_copy("n");
  h.release(std::get<device_pin>(h.answers.at(r)).pin, alice);
  auto freed = h.offload("n", 15);
  REQUIRE(succeeded(freed));
  CHECK(std::get<bytes_t>(freed) == 20);
  CHECK(h.tier.resident_bytes("n") == 20);
  CHECK(h.tier.stats().used_bytes == 60);
}

TEST_CASE("making room trims a victim tensor by tensor and keeps the rest of it resident") {
  device_harness h{50};
  auto r = h.pin("a", 40, alice, 0, true, {10, 10, 10, 10});
  h.finish_copy("a");
  h.release(std::get<device_pin>(h.answers.at(r)).pin, alice);
  h.pinned("b", 20, bob);  // 10 free: one tensor of 'a' goes
  CHECK(h.tier.resident_bytes("a") == 30);
  auto s = h.tier.stats();
  CHECK(s.partial_evictions == 1);
  CHECK(s.evictions == 0);
  CHECK(s.evicted_bytes == 10);
}

TEST_CASE("an unpinned, partly resident model is topped up when it is pinned again and room allows") {
  device_harness h{60};
  auto rb = h.pin("b", 30, bob);
  h.finish_copy("b");
  auto r = h.pin("a", 40, alice, 0, true, {10, 10, 10, 10});
  h.finish_copy("a");
  auto first = std::get<device_pin>(h.answers.at(r));
  CHECK(first.partial());
  h.release(first.pin, alice);
  h.release(std::get<device_pin>(h.answers.at(rb)).pin, bob);
  h.offload("b", 0);
  auto again = h.pin("a", 40, alice, 0, true, {10, 10, 10, 10});
  h.finish_copy("a");
  REQUIRE(h.granted(again));
  CHECK_FALSE(std::get<device_pin>(h.answers.at(again)).partial());
  CHECK(h.tier.stats().top_ups == 1);
}

TEST_CASE("a device out-of-memory frees every unpinned model and retries the copy once") {
  device_harness h{100};
  auto pa = h.pinned("a", 30, alice);
  h.release(pa, alice);
  auto r = h.pin("b", 40, bob);
  h.fail_copy("b", errc::device_oom);
  CHECK_FALSE(h.answered(r));
  CHECK(h.tier.residency("a") == device_residency::absent);
  h.finish_copy("b");
  REQUIRE(h.granted(r));
  CHECK(h.tier.stats().oom_retries == 1);
}

TEST_CASE("a second device out-of-memory falls back to the required tensors and streams the rest") {
  device_harness h{100};
  auto r = h.pin("m", 30, alice, 0, true, {10, 10, 10}, {true, false, false});
  h.fail_copy("m", errc::device_oom);
  h.fail_copy("m", errc::device_oom);
  CHECK(h.last_order.at("m") == std::vector<size_t>{0});
  h.finish_copy("m");
  REQUIRE(h.granted(r));
  const auto& pin = std::get<device_pin>(h.answers.at(r));
  CHECK(pin.resident_bytes == 10);
  CHECK(pin.staging_bytes == 20);
  CHECK(h.tier.stats().used_bytes == 30);
}

TEST_CASE("a third device out-of-memory fails with the numbers and leaves no bytes behind") {
  device_harness h{100};
  auto r = h.pin("m", 30, alice, 5, true, {10, 10, 10}, {true, false, false});
  for (int k = 0; k < 3; ++k)
    h.fail_copy("m", errc::device_oom);
  REQUIRE(h.answered(r));
  CHECK(h.error_of(r) == errc::device_oom);
  CHECK(h.text_of(r).find("ran out of memory copying 'm'") != std::string::npos);
  CHECK(h.text_of(r).find("lower budget_bytes") != std::string::npos);
  auto s = h.tier.stats();
  CHECK(s.used_bytes == 0);
  CHECK(s.working_bytes == 0);
  CHECK(h.tier.residency("m") == device_residency::absent);
  CHECK(h.leases_out.empty());
}

TEST_CASE("a failed top-up keeps what was resident and frees what it reserved") {
  device_harness h{60};
  auto rb = h.pin("b", 30, bob);
  h.finish_copy("b");
  auto r = h.pin("a", 40, alice, 0, true, {10, 10, 10, 10});
  h.finish_copy("a");
  h.release(std::get<device_pin>(h.answers.at(r)).pin, alice);
  auto kept = h.tier.resident_bytes("a");
  h.release(std::get<device_pin>(h.answers.at(rb)).pin, bob);
  h.offload("b", 0);
  auto again = h.pin("a", 40, alice, 0, true, {10, 10, 10, 10});
  h.fail_copy("a");
  CHECK(h.error_of(again) == errc::copy_failed);
  CHECK(h.tier.residency("a") == device_residency::resident);
  CHECK(h.tier.resident_bytes("a") == kept);
  CHECK(h.tier.stats().used_bytes == kept);
}

TEST_CASE("a model of which nothing fits beside the staging ring is granted at once and streams entirely") {
  device_harness h{25};
  auto r = h.pin("m", 30, alice, 0, true, {10, 10, 10});
  REQUIRE(h.granted(r));
  CHECK(h.copies_started.empty());
  const auto& pin = std::get<device_pin>(h.answers.at(r));
  CHECK(pin.resident_bytes == 0);
  CHECK(pin.staging_bytes == 20);
  h.release(pin.pin, alice);
  CHECK(h.tier.residency("m") == device_residency::absent);
  CHECK(h.tier.stats().used_bytes == 0);
}

TEST_CASE("a pin request that does not describe every tensor of the model is refused") {
  device_harness h{100};
  pin_request r;
  r.request = 99;
  r.holder = alice;
  auto host = std::make_shared<host_model>();
  host->tensors = {{"a", at::zeros({1})}, {"b", at::zeros({1})}};
  r.host = ram_lease{5000, "m", 8, host};
  h.leases_out.insert(5000);
  r.tensor_bytes = {4};  // one of two
  device_effects fx;
  h.tier.pin(std::move(r), true, fx);
  h.absorb(fx);
  CHECK(h.error_of(99) == errc::invalid_argument);
  CHECK(h.leases_out.empty());
}

// -- Note [Admission] and the defects of issue 7 ------------------------------------------------------------

TEST_CASE("a pin of a resident model that needs no room is granted at once while another pin waits") {
  // Job 1 holds a pin on its 2-byte model and has its 1-byte model resident but unpinned; job 2 waits for
  // room that only job 1's pin can free. Job 1's next pin needs nothing new: it must not wait behind job 2.
  device_harness h{3};
  auto small = h.pinned("small", 1, alice);
  h.release(small, alice);
  h.pinned("big", 2, alice);
  auto waiting = h.pin("other", 2, bob);
  CHECK_FALSE(h.answered(waiting));
  auto again = h.pin("small", 1, alice, /*working=*/0, /*may_wait=*/false);
  REQUIRE(h.granted(again));
  CHECK(h.tier.stats().hits == 1);
  CHECK_FALSE(h.answered(waiting));
}

TEST_CASE("a pin that needs room does not overtake the queue, and a refusal says what is queued ahead") {
  device_harness h{4};
  h.pinned("a", 2, alice);
  auto first = h.pin("b", 3, bob);
  CHECK_FALSE(h.answered(first));
  // One byte is free, but "b" was first: a one-byte pin that may not wait is refused, naming the queue.
  auto late = h.pin("c", 1, alice, 0, /*may_wait=*/false);
  CHECK(h.error_of(late) == errc::budget_exhausted);
  CHECK(h.text_of(late).find("1 request is queued ahead") != std::string::npos);
}

TEST_CASE("working memory near 2^64 is refused as invalid and changes nothing") {
  device_harness h{100};
  auto before = fields_of(h.tier.stats());
  auto r = h.pin("a", 40, alice, std::numeric_limits<bytes_t>::max() - 40 + 2);
  CHECK(h.error_of(r) == errc::invalid_argument);
  CHECK(h.leases_out.empty());
  CHECK(fields_of(h.tier.stats()) == before);
  auto huge = h.pin("b", 0, alice, 0, true, {std::numeric_limits<bytes_t>::max(), 2});
  CHECK(h.error_of(huge) == errc::invalid_argument);
  CHECK(h.tier.stats().used_bytes == 0);
}

TEST_CASE("staging is sized by the tensors that stream, never by required ones") {
  // A large required embedding and four small layers: staging is 2 slots x the largest layer (10), not
  // 2 x the embedding (30), so the model fits partly where the old sizing said it was too large.
  device_harness h{60};
  auto r = h.pin("m", 70, alice, 0, true, {30, 10, 10, 10, 10}, {true, false, false, false, false});
  REQUIRE_FALSE(h.answered(r));
  h.finish_copy("m");
  REQUIRE(h.granted(r));
  const auto& pin = std::get<device_pin>(h.answers.at(r));
  CHECK(pin.staging_bytes == 20);
  CHECK(pin.resident_bytes == 40);  // the embedding and one layer beside 20 of staging
}

TEST_CASE("a refused pin leaves the eviction order as it was") {
  device_harness h{100};
  h.pinned("held", 20, alice);
  h.release(h.pinned("a", 30, alice), alice);  // a is the least recently used candidate
  h.release(h.pinned("b", 30, alice), alice);
  // A pin of "a" that cannot get its working memory (60; 20 are free and only "b" may go) is refused...
  auto refused = h.pin("a", 30, bob, 60, /*may_wait=*/false);
  CHECK(h.error_of(refused) == errc::budget_exhausted);
  // ...and "a" is still the first victim.
  h.pinned("c", 30, bob);
  CHECK(h.tier.residency("a") == device_residency::absent);
  CHECK(h.tier.residency("b") == device_residency::resident);
}

TEST_CASE("with partial loading off, out-of-memory retries only what really runs again") {
  device_harness h{100, 0, /*partial=*/false};
  auto r = h.pin("m", 30, alice);
  h.fail_copy("m", errc::device_oom);  // rung 1: free and retry
  h.fail_copy("m", errc::device_oom);  // no rung 2 without partial loading: fail
  CHECK(h.error_of(r) == errc::device_oom);
  CHECK(h.tier.stats().oom_retries == 1);
  CHECK(h.tier.stats().used_bytes == 0);
}

TEST_CASE("the no-room text names every part of what a streaming pin needs, staging included") {
  device_harness h{50};
  h.pinned("a", 20, alice);
  // 90 bytes never fit whole: partial with the required tensor (10) + 2 x 20 staging = 50 > 30 free.
  auto r = h.pin("m", 90, bob, 0, false, {10, 20, 20, 20, 20}, {true, false, false, false, false});
  REQUIRE(h.answered(r));
  CHECK(h.error_of(r) == errc::budget_exhausted);
  auto text = h.text_of(r);
  CHECK(text.find("staging 40 B") != std::string::npos);
  CHECK(text.find("wanted 50 B") != std::string::npos);
}

TEST_CASE("shutdown answers queued pins and pins waiting for a copy, and returns their leases") {
  device_harness h{100};
  h.pinned("a", 80, alice);
  auto copying = h.pin("b", 10, bob);
  auto queued = h.pin("c", 50, bob);
  CHECK_FALSE(h.answered(copying));
  CHECK_FALSE(h.answered(queued));
  device_effects fx;
  h.tier.shutdown(fx);
  h.absorb(fx);
  CHECK(h.error_of(copying) == errc::shutting_down);
  CHECK(h.error_of(queued) == errc::shutting_down);
  h.finish_copy("b");  // the copy in flight ends later: its lease comes back then
  CHECK(h.leases_out.size() == 1);  // only the live pin's
}

// Note [Copy back instead of a kept RAM copy]

namespace {
/// Pins 'a' as three tensors of 20 bytes, lets the copy finish and releases the pin.
void three_tensors_resident(device_harness& h) {
  auto r = h.pin("a", 60, alice, 0, true, {20, 20, 20});
  h.finish_copy("a");
  REQUIRE(h.granted(r));
  REQUIRE_FALSE(h.release(std::get<device_pin>(h.answers.at(r)).pin, alice));
}
} // namespace

TEST_CASE("the only copy of a model is dropped whole, never trimmed in part, and handed out to be copied back") {
  device_harness h{100};
  three_tensors_resident(h);
  CHECK(h.tier.whole_models() == std::vector<model_id>{"a"});
  REQUIRE(h.tier.hand_over("a"));
  h.pinned("b", 50, bob);  // 40 free before: needs 10 more, which would trim one tensor of 'a'
  CHECK(h.tier.residency("a") == device_residency::absent);
  auto backs = h.tier.take_copy_backs();
  REQUIRE(backs.size() == 1);
  CHECK(backs[0].model == "a");
  REQUIRE(backs[0].copy);
  CHECK(h.tier.take_released().empty() == true);  // the copy goes back to RAM, not to be freed
  CHECK(h.tier.stats().used_bytes == 50);
}

TEST_CASE("a model not resident whole is not handed over, and a fetched copy is no longer the only one") {
  device_harness h{100};
  auto pa = h.pinned("a", 60, alice);
  REQUIRE_FALSE(h.release(pa, alice));
  REQUIRE(succeeded(h.offload("a", 0)));
  CHECK_FALSE(h.tier.hand_over("a"));  // gone
  CHECK(h.tier.fetch("a") == nullptr);
  three_tensors_resident(h);
  REQUIRE(h.tier.hand_over("a"));
  CHECK(h.tier.fetch("a") != nullptr);  // RAM copies it back: this copy may be trimmed again
  REQUIRE(succeeded(h.offload("a", 10)));
  CHECK(h.tier.residency("a") == device_residency::resident);
  CHECK(h.tier.take_copy_backs().empty());
}

TEST_CASE("an explicit offload of the only copy hands it out whole to be copied back") {
  device_harness h{100};
  REQUIRE_FALSE(h.release(h.pinned("a", 60, alice), alice));
  REQUIRE(h.tier.hand_over("a"));
  auto freed = h.offload("a", 10);
  REQUIRE(succeeded(freed));
  CHECK(std::get<bytes_t>(freed) == 60);
  CHECK(h.tier.take_copy_backs().size() == 1);
}

TEST_CASE("a prefetch pin evicts only models with no known next use, and an ordinary pin evicts the farthest needed first") {
  device_harness h{100};
  REQUIRE_FALSE(h.release(h.pinned("a", 40, alice), alice));
  REQUIRE_FALSE(h.release(h.pinned("b", 40, alice), alice));
  h.tier.set_next_uses({"b", "a"});
  auto r = h.prefetch("c", 40, alice);
  REQUIRE(h.answered(r));
  CHECK_FALSE(h.granted(r));
  CHECK(h.tier.residency("a") == device_residency::resident);
  CHECK(h.tier.residency("b") == device_residency::resident);
  // An ordinary pin still gets room: it takes 'a', whose next use is farther away than 'b''s.
  h.pinned("c", 40, bob);
  CHECK(h.tier.residency("a") == device_residency::absent);
  CHECK(h.tier.residency("b") == device_residency::resident);
}

TEST_CASE("a prefetch leaves the room that sooner uses still need, counting what it could evict") {
  device_harness h{100};
  REQUIRE_FALSE(h.release(h.pinned("idle", 30, alice), alice));  // no known next use: a prefetch may evict it
  REQUIRE_FALSE(h.release(h.pinned("soon", 20, alice), alice));  // needed soon: it stays
  h.tier.set_next_uses({"soon", "next"});
  // 'soon' is here already: it needs no room.
  auto prefetch = [&](const model_id& m, bytes_t later) { return h.prefetch(m, 40, alice, {{"later-stage", later}, {"soon", 20}}); };
  // Free 50 and 'idle''s 30 could hold 80: 40 for the prefetch leaves 40, not the 41 asked for.
  auto refused = prefetch("next", 41);
  REQUIRE(h.answered(refused));
  CHECK_FALSE(h.granted(refused));
  CHECK(h.tier.residency("idle") == device_residency::resident);  // and nothing was evicted for it
  auto granted = prefetch("next", 40);
  h.finish_copy("next");
  REQUIRE(h.answered(granted));
  CHECK(h.granted(granted));
  CHECK(h.tier.residency("soon") == device_residency::resident);
  h.tier.check_invariants();
}

TEST_CASE("a device drops a model unused for its keep-alive whole, and never a pinned one") {
  auto now = std::chrono::steady_clock::time_point{} + std::chrono::hours(1);
  device_tier_options o{0, 100, 0, true, 2, std::chrono::seconds(5), [&] { return now; }};
  device_harness h{100};
  h.tier = device_tier{o, make_lru_policy()};
  auto r = h.pin("a", 60, alice, 0, true, {20, 20, 20});
  h.finish_copy("a");
  REQUIRE_FALSE(h.release(std::get<device_pin>(h.answers.at(r)).pin, alice));
  auto pb = h.pinned("b", 30, bob);
  now += std::chrono::seconds(4);
  device_effects fx;
  CHECK(h.tier.drop_idle(fx) == 0);
  now += std::chrono::seconds(1);
  CHECK(h.tier.drop_idle(fx) == 1);
  h.absorb(fx);
  CHECK(h.tier.residency("a") == device_residency::absent);
  now += std::chrono::hours(1);
  CHECK(h.tier.drop_idle(fx) == 0);
  CHECK(h.tier.residency("b") == device_residency::resident);
  CHECK(h.tier.stats().idle_drops == 1);
  (void)pb;
}

TEST_CASE("a pin that costs the device nothing (a CPU pin without working memory) is granted at once, whatever is queued") {
  device_harness h{30};
  auto first = h.pinned("a", 0, alice, 25);  // a CPU pin: tensors take no device bytes
  auto queued = h.pin("b", 0, bob, 10);      // 10 of working memory: 5 free, so it waits
  REQUIRE_FALSE(h.answered(queued));
  auto free_pin = h.pin("c", 0, carol, 0, /*may_wait=*/false);  // admitted, not refused for the queue
  REQUIRE_FALSE(h.answered(free_pin));
  h.finish_copy("c");  // (the CPU tier's "copy" is a view of the host copy)
  REQUIRE(h.granted(free_pin));
  CHECK(h.tier.stats().used_bytes == 25);
  REQUIRE_FALSE(h.release(first, alice));
  h.finish_copy("b");
  CHECK(h.granted(queued));
}
