// The device tier without CAF: copies, pins, working memory, lazy and explicit offload, waiting.

#include "runtime/core/tiers/device_tier.hpp"

#include <ATen/ATen.h>

#include "support/answer_book.hpp"
#include "support/catch.hpp"
#include "support/fake_models.hpp"
#include "support/stats_fields.hpp"

#include <limits>
#include <map>

using namespace mcache;
using mcache::test::fields_of;

namespace {

constexpr holder_id alice = 11;
constexpr holder_id bob = 22;
constexpr holder_id carol = 33;

/// Drives a device_tier like its actor does; RAM leases are faked with increasing ids.
struct device_harness : test::answer_book<device_pin> {
  explicit device_harness(bytes_t budget, bytes_t reserve = 0, bool partial = true)
    : tier({0, budget, reserve, partial, 2}, make_lru_policy()) {}

  /// A pin request for model `m` made of `tensors` (bytes each; default: one tensor of `bytes`).
  pin_request request(const model_id& m, bytes_t bytes, holder_id h, bytes_t working = 0,
                      std::vector<bytes_t> tensors = {}, std::vector<bool> required = {}) {
    pin_request r;
    r.request = next_request++;
    r.holder = h;
    r.tensor_bytes = tensors.empty() ? std::vector<bytes_t>{bytes} : tensors;
    // The tier weighs tensors by tensor_bytes; the host copy only has to list as many.
    auto host = std::make_shared<host_model>();
    host->id = m;
    for (size_t k = 0; k < r.tensor_bytes.size(); ++k)
      host->tensors.push_back({"t" + std::to_string(k), at::zeros({1})});
    r.host = ram_lease{next_lease++, m, bytes, host};
    leases_out.insert(r.host.lease);
    lease_of[r.request] = r.host.lease;
    r.required = required;
    r.working_bytes = working;
    return r;
  }
  request_id submit(pin_request r, bool may_wait) {
    auto id = r.request;
    device_effects fx;
    tier.pin(std::move(r), may_wait, fx);
    absorb(fx);
    return id;
  }
  request_id pin(const model_id& m, bytes_t bytes, holder_id h, bytes_t working = 0, bool may_wait = true,
                 std::vector<bytes_t> tensors = {}, std::vector<bool> required = {}) {
    return submit(request(m, bytes, h, working, std::move(tensors), std::move(required)), may_wait);
  }
  /// A prefetch of `m` (it never waits), leaving room for the `sooner` uses.
  request_id prefetch(const model_id& m, bytes_t bytes, holder_id h, std::vector<std::pair<model_id, bytes_t>> sooner = {}) {
    auto r = request(m, bytes, h);
    r.prefetch = true;
    r.sooner = std::move(sooner);
    return submit(std::move(r), /*may_wait=*/false);
  }
  void finish_copy(const model_id& m) {
    device_effects fx;
    auto copy = std::make_shared<device_model>();
    for (size_t k = 0; k < last_order.at(m).size(); ++k)
      copy->tensors.push_back({"t", at::zeros({1})});
    tier.copy_finished(m, std::shared_ptr<const device_model>(copy), 1000, fx);
    absorb(fx);
  }
  void fail_copy(const model_id& m, errc code = errc::copy_failed) {
    device_effects fx;
    tier.copy_finished(m, failure{code, "injected"}, 0, fx);
    absorb(fx);
  }
  /// Pin and, when it starts a copy, finish it: the pin id.
  pin_id pinned(const model_id& m, bytes_t bytes, holder_id h, bytes_t working = 0) {
    auto r = pin(m, bytes, h, working);
    if (!answers.count(r))
      finish_copy(m);
    REQUIRE(granted(r));
    return std::get<device_pin>(answers.at(r)).pin;
  }
  /// Pins `m` (made of `tensors`), lets its copy land and releases the pin: resident and unpinned.
  void cached(const model_id& m, std::vector<bytes_t> tensors) {
    bytes_t bytes = 0;
    for (auto b : tensors)
      bytes += b;
    auto r = pin(m, bytes, alice, 0, true, tensors);
    finish_copy(m);
    REQUIRE(granted(r));
    release(std::get<device_pin>(answers.at(r)).pin, alice);
  }
  std::optional<failure> release(pin_id p, holder_id h) {
    device_effects fx;
    auto err = tier.release(p, h, fx);
    absorb(fx);
    return err;
  }
  outcome<bytes_t> offload(const model_id& m, bytes_t bytes) {
    device_effects fx;
    auto r = tier.offload(m, bytes, fx);
    absorb(fx);
    return r;
  }
  void expire(request_id r) {
    device_effects fx;
    tier.expire(r, fx);
    absorb(fx);
  }
  void retire(const model_id& m) {
    device_effects fx;
    tier.retire(m, fx);
    absorb(fx);
  }
  void withdraw(request_id r) {
    device_effects fx;
    tier.withdraw(r, failure{errc::cancelled, "withdrawn"}, fx);
    absorb(fx);
  }

  void absorb(device_effects& fx) {
    record(fx.replies);
    for (auto& c : fx.copies) {
      copies_started.push_back(c.model);
      last_order[c.model] = c.tensors;
    }
    for (auto l : fx.ram_leases_to_release) {
      REQUIRE(leases_out.count(l) == 1);  // every RAM lease comes back exactly once
      leases_out.erase(l);
    }
    tier.check_invariants();
  }

  device_tier tier;
  request_id next_request = 1;
  lease_id next_lease = 1000;
  std::set<lease_id> leases_out;  // RAM leases the tier still holds
  std::map<request_id, lease_id> lease_of;  // each pin request's RAM lease
  std::vector<model_id> copies_started;
  std::map<model_id, std::vector<size_t>> last_order;  // the tensors of each model's latest copy
};

} // namespace

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

TEST_CASE("withdrawing a pin whose copy is in flight changes nothing: it is answered when the copy ends") {
  device_harness h{100};
  auto r = h.pin("a", 40, alice);
  h.withdraw(r);
  CHECK_FALSE(h.answered(r));
  h.finish_copy("a");
  CHECK(h.granted(r));
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

TEST_CASE("a pin with working memory of its own resident, unpinned model gives up the model's last tensors instead of waiting on nothing") {
  // Note [A pin may trim its own model]. 'm' is resident whole (6 x 10), unpinned; 'b' is pinned; 10 free.
  device_harness h{100};
  h.cached("m", {10, 10, 10, 10, 10, 10});
  auto pb = h.pinned("b", 30, bob);
  // 30 of working memory: dropping t5..t2 frees 40 beside the 10 free, and the ring is 2 x 10.
  auto r = h.pin("m", 60, alice, 30, true, {10, 10, 10, 10, 10, 10});
  REQUIRE(h.granted(r));  // at once: nothing else would ever change
  auto pin = std::get<device_pin>(h.answers.at(r));
  CHECK(pin.partial());
  CHECK(pin.staging_bytes == 20);
  CHECK(h.tier.resident_bytes("m") == 20);
  auto s = h.tier.stats();
  CHECK(s.used_bytes == 100);
  CHECK(s.partial_evictions == 1);
  CHECK(s.evicted_bytes == 40);
  CHECK(h.copies_started == std::vector<model_id>{"m", "b"});  // nothing copied again
  h.release(pin.pin, alice);
  h.release(pb, bob);
  CHECK(h.tier.stats().working_bytes == 0);
}

TEST_CASE("a pin takes the other unpinned models' room before its own model's tensors") {
  device_harness h{100};
  h.cached("m", {10, 10, 10, 10, 10, 10});
  auto pc = h.pinned("c", 30, bob);
  h.release(pc, bob);  // used after 'm': 'm' is first in the eviction order
  auto r = h.pin("m", 60, alice, 40, false, {10, 10, 10, 10, 10, 10});
  REQUIRE(h.granted(r));
  CHECK(h.tier.residency("c") == device_residency::absent);
  CHECK(h.tier.resident_bytes("m") == 60);
  CHECK_FALSE(std::get<device_pin>(h.answers.at(r)).partial());
}

TEST_CASE("an only copy is not trimmed for a pin of its own model, which waits for room as before") {
  device_harness h{100};
  h.cached("m", {10, 10, 10, 10, 10, 10});
  REQUIRE(h.tier.hand_over("m"));
  h.pinned("b", 30, bob);
  auto r = h.pin("m", 60, alice, 30, false, {10, 10, 10, 10, 10, 10});
  CHECK(h.error_of(r) == errc::budget_exhausted);
  CHECK(h.tier.resident_bytes("m") == 60);
}

TEST_CASE("a pin that leaves room for the pins asked for after it loads its model in part so that they fit") {
  // Note [A stage's pins leave room for the ones after]: 'x' and 'y' are 10 x 10 each on 110 bytes; 'y'
  // needs at least a ring of 2 x 10.
  device_harness h{110};
  std::vector<bytes_t> tens(10, 10);
  auto rx = h.request("x", 100, alice, 0, tens);
  rx.pins_after = {{"y", 20}};
  auto x = h.submit(std::move(rx), true);
  h.finish_copy("x");
  REQUIRE(h.granted(x));
  CHECK(h.tier.resident_bytes("x") == 70);  // 70 + its ring of 20 leaves 20, reserved for 'y'
  CHECK(h.tier.stats().used_bytes == 110);
  auto ry = h.request("y", 100, alice, 0, tens);
  ry.earlier = std::get<device_pin>(h.answers.at(x)).pin;  // takes the room 'x' reserved
  auto y = h.submit(std::move(ry), false);
  REQUIRE(h.granted(y));
  CHECK(std::get<device_pin>(h.answers.at(y)).staging_bytes == 20);
  CHECK(h.tier.stats().used_bytes == 110);
}

TEST_CASE("a pin whose room to leave is not there waits or is refused, saying so, and one that could never leave it is too large") {
  device_harness h{110};
  std::vector<bytes_t> tens(10, 10);
  h.pinned("held", 60, bob);
  auto rx = h.request("x", 100, alice, 0, tens);
  rx.pins_after = {{"q", 30}};  // 50 free: its ring of 20 and 30 to leave fit, nothing more
  auto x = h.submit(std::move(rx), false);
  REQUIRE(h.granted(x));
  CHECK(h.tier.resident_bytes("x") == 0);  // it streams entirely
  auto rz = h.request("z", 100, alice, 0, tens);
  rz.pins_after = {{"q", 20}};
  auto z = h.submit(std::move(rz), false);
  CHECK(h.error_of(z) == errc::budget_exhausted);
  CHECK(h.text_of(z).find("left for the pins asked for with it 20 B") != std::string::npos);
  auto rw = h.request("w", 100, alice, 0, tens);
  rw.pins_after = {{"q", 100}};  // a ring of 20 and 100 to leave: more than 110 could ever give
  auto w = h.submit(std::move(rw), true);
  CHECK(h.error_of(w) == errc::model_too_large);
  CHECK(h.text_of(w).find("for the pins asked for with it") != std::string::npos);
}

TEST_CASE("a later model pinned here already is taken as it is: the pin leaves only that model's ring") {
  // From a review: the room left was the catalog's least for every later model, also one pinned here
  // whole by another holder, and a stage then waited for that holder although it had room.
  device_harness h{110};
  auto b = h.pin("b", 60, bob, 0, true, {10, 10, 10, 10, 10, 10});
  h.finish_copy("b");
  REQUIRE(h.granted(b));
  auto rx = h.request("x", 40, alice, 0, {10, 10, 10, 10});
  rx.pins_after = {{"b", 20}};  // were 'b' absent, its pin would need a ring of 2 x 10
  auto x = h.submit(std::move(rx), false);
  h.finish_copy("x");
  REQUIRE(h.granted(x));
  CHECK(h.tier.resident_bytes("x") == 40);  // whole: 'b' needs nothing more
  auto z_request = h.request("z", 40, alice, 0, {10, 10, 10, 10});
  z_request.pins_after = {{"y", 20}};  // 'y' is absent: its least is left
  auto z = h.submit(std::move(z_request), false);
  CHECK(h.error_of(z) == errc::budget_exhausted);  // 10 free: not its ring and the 20 to leave
  CHECK(h.tier.stats().used_bytes == 60 + 40);
}

TEST_CASE("a pin that trims its own model copies back the required tensor an eviction took") {
  // 'm' is 5 x 10 with its last tensor required (a final norm): trimming from the end took it first.
  device_harness h{100};
  auto first = h.pin("m", 50, alice, 0, true, {10, 10, 10, 10, 10}, {false, false, false, false, true});
  h.finish_copy("m");
  h.release(std::get<device_pin>(h.answers.at(first)).pin, alice);
  REQUIRE(succeeded(h.offload("m", 10)));
  h.pinned("b", 40, bob);  // 20 free
  // 20 of working memory: t4 back (10) and a ring of 2 x 10 need t3, t2 and t1 dropped.
  auto r = h.pin("m", 50, alice, 20, true, {10, 10, 10, 10, 10}, {false, false, false, false, true});
  REQUIRE_FALSE(h.answered(r));  // it waits for the copy of t4, not for room
  CHECK(h.last_order.at("m") == std::vector<size_t>{4});
  h.finish_copy("m");
  REQUIRE(h.granted(r));
  CHECK(h.tier.resident_bytes("m") == 20);
  CHECK(h.tier.stats().used_bytes == 100);
}

TEST_CASE("a stage's later pin takes the room its earlier pin reserved, ahead of a request that waits for that pin") {
  // Note [A stage's pins leave room for the ones after]. Alice's stage pins 'x' (60), reserving 30 for
  // 'y'; Bob's pin of 'p' (50) then waits for 'x'. Alice's pin of 'y' needs no new room: it is granted at
  // once, not queued behind Bob, who waits for 'x', which Alice lets go only once she has 'y'.
  device_harness h{100};
  auto rx = h.request("x", 60, alice);
  rx.pins_after = {{"y", 30}};
  auto x = h.submit(std::move(rx), true);
  h.finish_copy("x");
  REQUIRE(h.granted(x));
  auto x_pin = std::get<device_pin>(h.answers.at(x)).pin;
  CHECK(h.tier.stats().working_bytes == 30);  // the reservation
  auto p = h.pin("p", 50, bob);
  REQUIRE_FALSE(h.answered(p));
  auto ry = h.request("y", 30, alice);
  ry.earlier = x_pin;
  auto y = h.submit(std::move(ry), true);
  h.finish_copy("y");
  REQUIRE(h.granted(y));
  CHECK(h.tier.stats().working_bytes == 0);  // taken
  CHECK_FALSE(h.answered(p));
  h.release(std::get<device_pin>(h.answers.at(y)).pin, alice);
  h.release(x_pin, alice);
  h.finish_copy("p");
  CHECK(h.granted(p));
}

TEST_CASE("a stage's first pin needs room for its later pins even when its own model is resident, and gives it back when it ends") {
  // Two holders' stages could each take a first pin and wait for the other's room: a first pin of a
  // resident model with later pins to make room for is not one that needs nothing.
  device_harness h{100};
  h.cached("m", {40});
  h.pinned("held", 50, bob);  // 10 free
  auto rm = h.request("m", 40, alice);
  rm.pins_after = {{"y", 30}};
  auto m = h.submit(std::move(rm), false);
  CHECK(h.error_of(m) == errc::budget_exhausted);
  auto rm2 = h.request("m", 40, alice);
  rm2.pins_after = {{"y", 10}};
  auto m2 = h.submit(std::move(rm2), false);
  REQUIRE(h.granted(m2));
  CHECK(h.tier.stats().used_bytes == 100);
  h.release(std::get<device_pin>(h.answers.at(m2)).pin, alice);  // its stage stopped before 'y'
  CHECK(h.tier.stats().working_bytes == 0);
  CHECK(h.tier.stats().used_bytes == 90);
}

TEST_CASE("a first pin of a resident model that reserves room for later pins waits its turn behind the queue") {
  device_harness h{100};
  h.cached("m", {20});
  h.pinned("held", 40, bob);                  // 40 free
  auto big = h.pin("big", 70, carol);         // 40 free + 'm' 20 < 70: queued
  REQUIRE_FALSE(h.answered(big));
  auto rm = h.request("m", 20, alice);
  rm.pins_after = {{"y", 30}};                // 30 of the 40 free: there, but Carol is first
  auto m = h.submit(std::move(rm), true);
  CHECK_FALSE(h.answered(m));
  CHECK(h.tier.stats().waiting_now == 2);
}


TEST_CASE("a later model counted as it is stays so until its pin comes: neither evicted nor offloaded") {
  // From a probe (two schedulers, multi-model stages, waits for ever): a later model pinned by another
  // holder was counted as needing nothing more, was let go and evicted before its own pin, which then
  // needed room and queued behind a stage waiting for this one's pins: a hang.
  device_harness h{100};
  auto f = h.pinned("f", 40, bob);
  auto rx = h.request("x", 30, alice);
  rx.pins_after = {{"f", 40}};  // 'f' is pinned here whole: it needs nothing more, and is kept so
  auto x = h.submit(std::move(rx), false);
  h.finish_copy("x");
  REQUIRE(h.granted(x));
  h.release(f, bob);
  CHECK(h.tier.residency("f") == device_residency::resident);
  auto big = h.pin("big", 70, carol, 0, false);  // only evicting 'f' would make room
  CHECK(h.error_of(big) == errc::budget_exhausted);
  CHECK(h.tier.residency("f") == device_residency::resident);
  CHECK(h.offload("f", 0).index() == 1);  // refused: kept for a stage's next pin
  auto rf = h.request("f", 40, alice);
  rf.earlier = std::get<device_pin>(h.answers.at(x)).pin;
  auto f_again = h.submit(std::move(rf), false);
  REQUIRE(h.granted(f_again));  // at once: nothing to copy
  h.release(std::get<device_pin>(h.answers.at(f_again)).pin, alice);
  CHECK(h.offload("f", 0).index() == 0);  // no longer kept
}

TEST_CASE("a kept later model with nothing on the device is still there when its pin comes") {
  // From a probe (partial loading): a later model streamed entirely by another holder's pin was kept
  // with 0 bytes, and taking it for its own pin dropped its entry under the admission (map::at).
  device_harness h{100};
  std::vector<bytes_t> tens(10, 10);
  auto held = h.pinned("held", 80, carol);
  auto f = h.pin("f", 100, bob, 0, true, tens);  // 20 free: a ring of 2 x 10 and nothing resident
  REQUIRE(h.granted(f));
  CHECK(h.tier.resident_bytes("f") == 0);
  h.release(held, carol);
  auto rx = h.request("x", 10, alice);
  rx.pins_after = {{"f", 20}};
  auto x = h.submit(std::move(rx), false);
  h.finish_copy("x");
  REQUIRE(h.granted(x));
  h.release(std::get<device_pin>(h.answers.at(f)).pin, bob);
  CHECK(h.tier.residency("f") == device_residency::resident);  // kept, with nothing on the device
  auto rf = h.request("f", 100, alice, 0, tens);
  rf.earlier = std::get<device_pin>(h.answers.at(x)).pin;
  auto mine = h.submit(std::move(rf), false);
  if (!h.answered(mine))
    h.finish_copy("f");
  REQUIRE(h.granted(mine));
}

TEST_CASE("a stage whose models are all here needs nothing new: its pins are granted at once while others wait") {
  // From a review: a later model here but unpinned was counted as if absent, so the first pin needed room
  // for it, and a stage of resident models waited behind the queue (and could evict what it then copied
  // back). Counted as they are, and kept so, they need nothing.
  device_harness h{100};
  h.cached("a", {20});
  h.cached("b", {20});
  h.pinned("held", 40, bob);          // 20 free
  auto big = h.pin("big", 70, carol);  // 20 free + 40 evictable < 70: queued
  REQUIRE_FALSE(h.answered(big));
  auto ra = h.request("a", 20, alice);
  ra.pins_after = {{"b", 20}};
  auto a = h.submit(std::move(ra), false);
  REQUIRE(h.granted(a));
  auto rb = h.request("b", 20, alice);
  rb.earlier = std::get<device_pin>(h.answers.at(a)).pin;
  auto b = h.submit(std::move(rb), false);
  REQUIRE(h.granted(b));
  CHECK(h.tier.resident_bytes("b") == 20);
  CHECK(h.copies_started == std::vector<model_id>{"a", "b", "held"});  // nothing copied again
  CHECK_FALSE(h.answered(big));
}

TEST_CASE("a kept later model is counted the same by every pin of the stage, so the reservation passed on covers it") {
  // From a probe (two schedulers, waits for ever: hangs): the first pin counted a later model here but
  // unpinned by what its pin would add (5: one small absent tensor), the next pin counted it, kept, by
  // its staging ring (2 x 5), needed more than was reserved, and queued behind a request that waited
  // for the stage.
  device_harness h{100};
  auto c_first = h.pin("c", 25, alice, 0, true, {10, 10, 5});
  h.finish_copy("c");
  h.release(std::get<device_pin>(h.answers.at(c_first)).pin, alice);
  REQUIRE(succeeded(h.offload("c", 5)));  // 20 here, its last tensor (5) not
  h.pinned("held", 50, bob);              // 30 free
  auto ra = h.request("a", 10, alice);
  ra.pins_after = {{"b", 10}, {"c", 10}};
  auto a = h.submit(std::move(ra), false);
  h.finish_copy("a");
  REQUIRE(h.granted(a));
  auto big = h.pin("big", 80, carol);
  REQUIRE_FALSE(h.answered(big));
  auto rb = h.request("b", 10, alice);
  rb.earlier = std::get<device_pin>(h.answers.at(a)).pin;
  rb.pins_after = {{"c", 10}};
  auto b = h.submit(std::move(rb), false);
  if (!h.answered(b))
    h.finish_copy("b");
  REQUIRE(h.granted(b));  // at once, ahead of Carol: what 'a' reserved covers it
  auto rc = h.request("c", 25, alice, 0, {10, 10, 5});
  rc.earlier = std::get<device_pin>(h.answers.at(b)).pin;
  auto c = h.submit(std::move(rc), false);
  if (!h.answered(c))
    h.finish_copy("c");
  REQUIRE(h.granted(c));
  CHECK_FALSE(h.answered(big));
}
