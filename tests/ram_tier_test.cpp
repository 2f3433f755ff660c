// The RAM tier without CAF: admission, leases, eviction, waiting and bad input. The copy-back mode
// (keep_ram_copy = false) has its own file: ram_tier_copy_back_test.cpp.

#include "runtime/core/tiers/ram_tier.hpp"

#include <ATen/ATen.h>

#include "support/catch.hpp"
#include "support/fake_models.hpp"
#include "support/ram_harness.hpp"
#include "support/stats_fields.hpp"

using namespace mcache;
using namespace mcache::test;

TEST_CASE("an acquire of an absent model starts one load and grants the lease when it finishes") {
  ram_harness h{100};
  auto a = fake_model("a", 40);
  auto r = h.acquire(a, alice);
  CHECK_FALSE(h.answered(r));
  CHECK(h.loads_started == std::vector<model_id>{"a"});
  CHECK(h.tier.stats().loading_bytes == 40);
  h.finish_load("a");
  REQUIRE(h.granted(r));
  CHECK(std::get<ram_lease>(h.answers.at(r)).payload->total_bytes() == 40);
  CHECK(h.tier.stats().used_bytes == 40);
  CHECK(h.tier.stats().leased_bytes == 40);
}

TEST_CASE("concurrent acquires of a loading model share one load") {
  ram_harness h{100};
  auto a = fake_model("a", 40);
  auto r1 = h.acquire(a, alice);
  auto r2 = h.acquire(a, bob);
  auto r3 = h.acquire(a, alice);
  CHECK(h.loads_started.size() == 1);
  h.finish_load("a");
  CHECK(h.granted(r1));
  CHECK(h.granted(r2));
  CHECK(h.granted(r3));
  auto s = h.tier.stats();
  CHECK(s.loads == 1);
  CHECK(s.shared_loads == 2);
  CHECK(s.leases_active == 3);
}

TEST_CASE("a leased model is never evicted to make room") {
  ram_harness h{100};
  auto a = fake_model("a", 60);
  auto b = fake_model("b", 60);
  auto la = h.lease(a, alice);
  auto rb = h.acquire(b, bob);
  CHECK_FALSE(h.answered(rb));  // queued: the only candidate would be 'a', which is leased
  CHECK(h.tier.residency("a") == ram_residency::resident);
  CHECK(h.tier.stats().waiting_now == 1);
  REQUIRE_FALSE(h.release(la, alice));
  // Now 'a' is a candidate: 'b' is admitted by evicting it.
  CHECK(h.tier.residency("a") == ram_residency::absent);
  CHECK(h.tier.residency("b") == ram_residency::loading);
  h.finish_load("b");
  CHECK(h.granted(rb));
  CHECK(h.tier.stats().evictions == 1);
}

TEST_CASE("eviction follows the policy's order among unleased models") {
  ram_harness h{90};
  auto a = fake_model("a", 30), b = fake_model("b", 30), c = fake_model("c", 30), d = fake_model("d", 30);
  auto la = h.lease(a, alice);
  auto lb = h.lease(b, alice);
  auto lc = h.lease(c, alice);
  // Released in the order b, c, a: b is least recently used.
  h.release(lb, alice);
  h.release(lc, alice);
  h.release(la, alice);
  h.lease(d, alice);
  CHECK(h.tier.residency("b") == ram_residency::absent);
  CHECK(h.tier.residency("a") == ram_residency::resident);
  CHECK(h.tier.residency("c") == ram_residency::resident);
}

TEST_CASE("a request that cannot be served evicts nothing") {
  ram_harness h{100};
  auto a = fake_model("a", 50), b = fake_model("b", 30), c = fake_model("c", 90);
  h.lease(a, alice);
  auto lb = h.lease(b, alice);
  h.release(lb, alice);  // b is a candidate, but freeing it leaves 50 < 90
  auto r = h.acquire(c, bob, /*may_wait=*/false);
  REQUIRE(h.answered(r));
  CHECK(h.error_of(r) == errc::budget_exhausted);
  CHECK(h.tier.residency("b") == ram_residency::resident);
  CHECK(h.tier.stats().evictions == 0);
}

TEST_CASE("waiting requests are served in FIFO order when room frees") {
  ram_harness h{100};
  auto a = fake_model("a", 100), b = fake_model("b", 60), c = fake_model("c", 40), d = fake_model("d", 10);
  auto la = h.lease(a, alice);
  auto rb = h.acquire(b, bob);
  auto rc = h.acquire(c, bob);
  auto rd = h.acquire(d, bob);
  CHECK(h.tier.stats().waiting_now == 3);
  h.release(la, alice);
  // Room for b (60) then c (40): both admitted in order; d waits behind them (no overtaking).
  CHECK(h.loads_started == std::vector<model_id>{"a", "b", "c"});
  CHECK_FALSE(h.answered(rd));
  h.finish_load("b");
  h.finish_load("c");
  CHECK(h.granted(rb));
  CHECK(h.granted(rc));
  CHECK_FALSE(h.answered(rd));
  CHECK(h.tier.stats().waiting_now == 1);
}

TEST_CASE("a waiting request fails at its deadline with the numbers and what is held") {
  ram_harness h{100};
  auto a = fake_model("a", 70), b = fake_model("b", 50);
  h.lease(a, alice);
  auto before = fields_of(h.tier.stats());
  auto rb = h.acquire(b, bob);
  h.expire(rb);
  REQUIRE(h.answered(rb));
  CHECK(h.error_of(rb) == errc::budget_exhausted);
  auto text = h.text_of(rb);
  CHECK(text.find("'b'") != std::string::npos);
  CHECK(text.find("wanted 50 B") != std::string::npos);
  CHECK(text.find("free 30 B") != std::string::npos);
  CHECK(text.find("'a' 70 B (1 lease)") != std::string::npos);
  auto after = h.tier.stats();
  CHECK(after.waiting_now == 0);
  CHECK(after.timeouts == 1);
  CHECK(after.used_bytes == 70);
  (void) before;
}

TEST_CASE("a withdrawn request leaves the head of the queue at once and the one behind it is served") {
  // FIFO: b (50) waits at the head for room a holds; c (20) would fit now but waits behind b. A cancelled
  // job's b is withdrawn: c is served without waiting for b's deadline.
  ram_harness h{100};
  auto a = fake_model("a", 70), b = fake_model("b", 50), c = fake_model("c", 20);
  h.lease(a, alice);
  auto rb = h.acquire(b, bob);
  auto rc = h.acquire(c, carol);
  CHECK_FALSE(h.answered(rc));
  h.withdraw(rb);
  REQUIRE(h.answered(rb));
  CHECK(h.error_of(rb) == errc::cancelled);
  CHECK(h.loads_started.back() == "c");
  h.finish_load("c");
  CHECK(h.granted(rc));
  CHECK(h.tier.stats().waiting_now == 0);
  CHECK(h.tier.stats().timeouts == 0);
}

TEST_CASE("a withdrawn request waiting for its load is answered at once and the load lands unleased") {
  ram_harness h{100};
  auto a = fake_model("a", 40);
  auto r = h.acquire(a, alice);
  REQUIRE(h.tier.awaited("a"));
  h.withdraw(r);
  REQUIRE(h.answered(r));
  CHECK(h.error_of(r) == errc::cancelled);
  CHECK_FALSE(h.tier.awaited("a"));  // its loader may stop now
  CHECK(h.tier.residency("a") == ram_residency::loading);
  h.finish_load("a");  // a loader that did not stop: its model is cached like any other
  CHECK(h.tier.residency("a") == ram_residency::resident);
  CHECK(h.tier.stats().leases_active == 0);
  CHECK(h.tier.stats().used_bytes == 40);
  h.withdraw(r);  // answered already: a no-op
  CHECK(h.error_of(r) == errc::cancelled);
}

TEST_CASE("a load goes on for the acquires still waiting for it when one of them is withdrawn") {
  ram_harness h{100};
  auto a = fake_model("a", 40);
  auto ra = h.acquire(a, alice);
  auto rb = h.acquire(a, bob);  // joins the load
  h.withdraw(ra);
  CHECK(h.error_of(ra) == errc::cancelled);
  CHECK(h.tier.awaited("a"));
  CHECK_FALSE(h.answered(rb));
  h.finish_load("a");
  CHECK(h.granted(rb));
  CHECK(h.tier.stats().leases_active == 1);
}

TEST_CASE("a withdrawn acquire_all gives back the leases it was granted while it waited for its other loads") {
  group_harness h{100};
  auto a = fake_model("a", 30), b = fake_model("b", 40);
  REQUIRE_FALSE(h.release(h.lease(a, alice), alice));
  auto r = h.acquire_all({a, b}, bob);  // a granted at once, b loading
  REQUIRE(h.tier.stats().leases_active == 1);
  h.withdraw(r);
  REQUIRE(h.group_answered(r));
  CHECK(h.test_answers::error_of(r) == errc::cancelled);
  CHECK(h.tier.stats().leases_active == 0);
  h.finish("b");
  CHECK(h.tier.stats().leases_active == 0);
  CHECK(h.tier.stats().used_bytes == 70);
}

TEST_CASE("a load stopped because its every waiter withdrew frees its bytes and the queue is served") {
  ram_harness h{100};
  auto a = fake_model("a", 70), b = fake_model("b", 50);
  auto ra = h.acquire(a, alice);
  auto rb = h.acquire(b, bob);  // 70 + 50 > 100, and a loading cannot be evicted: b waits
  REQUIRE_FALSE(h.answered(rb));
  h.withdraw(ra);
  REQUIRE_FALSE(h.tier.awaited("a"));
  CHECK(h.loads_started == std::vector<model_id>{"a"});  // a's bytes stay reserved while its loader runs
  h.stop_load("a");
  CHECK(h.tier.residency("a") == ram_residency::absent);
  CHECK(h.tier.stats().loads_stopped == 1);
  CHECK(h.tier.stats().load_failures == 0);
  CHECK(h.loads_started == std::vector<model_id>{"a", "b"});
  h.finish_load("b");
  CHECK(h.granted(rb));
  CHECK(h.tier.stats().used_bytes == 50);
}

TEST_CASE("a load that a request queued for room needs is still awaited when its last waiter withdraws") {
  group_harness h{100};
  auto a = fake_model("a", 40), b = fake_model("b", 50), c = fake_model("c", 20);
  h.lease(b, alice);
  auto ra = h.acquire(a, bob);                // loading: 90 of 100 used
  auto rq = h.acquire_all({a, c}, carol);     // c needs 20, 10 are free: queued
  REQUIRE_FALSE(h.group_answered(rq));
  h.withdraw(ra);
  CHECK(h.tier.awaited("a"));  // stopping it would read it twice
}

TEST_CASE("a load that stopped after an acquire joined it again is started again for that acquire") {
  ram_harness h{100};
  auto a = fake_model("a", 40);
  h.withdraw(h.acquire(a, alice));
  auto rb = h.acquire(a, bob);  // joins before the stop arrives: the flag and the stop crossed
  CHECK(h.tier.awaited("a"));
  h.stop_load("a");
  CHECK_FALSE(h.answered(rb));
  CHECK(h.loads_started == std::vector<model_id>{"a", "a"});
  CHECK(h.tier.stats().loads_stopped == 0);
  h.finish_load("a");
  CHECK(h.granted(rb));
}

// -- Note [Remove and replace] ------------------------------------------------------------------------------

TEST_CASE("a retired model nothing holds is dropped at once") {
  ram_harness h{100};
  auto a = fake_model("a", 40);
  REQUIRE_FALSE(h.release(h.lease(a, alice), alice));
  CHECK(h.tier.stats().used_bytes == 40);
  h.retire("a");
  CHECK(h.tier.residency("a") == ram_residency::absent);
  CHECK(h.tier.stats().used_bytes == 0);
}

TEST_CASE("a retired model stays valid and counted while leased, and goes with its last lease") {
  ram_harness h{100};
  auto a = fake_model("a", 40);
  auto l1 = h.lease(a, alice);
  auto l2 = h.lease(a, bob);
  h.retire("a");
  CHECK(h.tier.residency("a") == ram_residency::resident);
  CHECK(h.tier.stats().used_bytes == 40);
  REQUIRE_FALSE(h.release(l1, alice));
  CHECK(h.tier.stats().used_bytes == 40);
  REQUIRE_FALSE(h.release(l2, bob));
  CHECK(h.tier.residency("a") == ram_residency::absent);
  CHECK(h.tier.stats().used_bytes == 0);
}

TEST_CASE("a model retired while it loads serves the acquires made before, then goes when they release") {
  ram_harness h{100};
  auto a = fake_model("a", 40);
  auto r = h.acquire(a, alice);
  h.retire("a");
  h.finish_load("a");
  REQUIRE(h.granted(r));
  CHECK(h.tier.stats().used_bytes == 40);
  REQUIRE_FALSE(h.release(std::get<ram_lease>(h.answers.at(r)).lease, alice));
  CHECK(h.tier.stats().used_bytes == 0);
}

TEST_CASE("a deadline bounds the wait for room, not a load in flight") {
  ram_harness h{100};
  auto a = fake_model("a", 40);
  auto r1 = h.acquire(a, alice);
  auto r2 = h.acquire(a, bob);
  h.expire(r2);
  CHECK_FALSE(h.answered(r2));
  h.finish_load("a");
  CHECK(h.granted(r1));
  CHECK(h.granted(r2));
  CHECK(h.tier.stats().timeouts == 0);
}

TEST_CASE("a model larger than the whole RAM budget fails at once and changes nothing") {
  ram_harness h{100};
  auto before = fields_of(h.tier.stats());
  auto r = h.acquire(fake_model("huge", 101), alice);
  REQUIRE(h.answered(r));
  CHECK(h.error_of(r) == errc::model_too_large);
  CHECK(h.text_of(r).find("ram_budget_bytes") != std::string::npos);
  CHECK(fields_of(h.tier.stats()) == before);
}

TEST_CASE("double release, unknown leases and another holder's lease fail and change nothing") {
  ram_harness h{100};
  auto la = h.lease(fake_model("a", 10), alice);
  auto before = fields_of(h.tier.stats());
  auto foreign = h.release(la, bob);
  REQUIRE(foreign);
  CHECK(foreign->code == errc::foreign_lease);
  auto unknown = h.release(9999, alice);
  REQUIRE(unknown);
  CHECK(unknown->code == errc::invalid_lease);
  CHECK(fields_of(h.tier.stats()) == before);
  REQUIRE_FALSE(h.release(la, alice));
  auto after_release = fields_of(h.tier.stats());
  auto twice = h.release(la, alice);
  REQUIRE(twice);
  CHECK(twice->code == errc::invalid_lease);
  CHECK(fields_of(h.tier.stats()) == after_release);
}

TEST_CASE("a failed load answers every waiter with its text and frees the reservation") {
  ram_harness h{100};
  auto a = fake_model("a", 40);
  auto r1 = h.acquire(a, alice);
  auto r2 = h.acquire(a, bob);
  h.fail_load("a", "disk on fire");
  CHECK(h.error_of(r1) == errc::load_failed);
  CHECK(h.error_of(r2) == errc::load_failed);
  CHECK(h.text_of(r1) == "disk on fire");
  auto s = h.tier.stats();
  CHECK(s.used_bytes == 0);
  CHECK(s.load_failures == 1);
  CHECK(h.tier.residency("a") == ram_residency::absent);
}

TEST_CASE("a loader that produces another size than the catalog declares fails the load") {
  ram_harness h{100};
  auto a = fake_model("a", 40);
  auto r = h.acquire(a, alice);
  ram_effects fx;
  auto wrong = fake_model("a", 41);
  h.tier.load_finished("a", wrong.loader(wrong), 0, fx);
  h.absorb(fx);
  CHECK(h.error_of(r) == errc::load_failed);
  CHECK(h.text_of(r).find("declares 40 B") != std::string::npos);
  CHECK(h.tier.stats().used_bytes == 0);
}

TEST_CASE("a holder that goes away releases its leases and withdraws its waiting requests") {
  ram_harness h{100};
  auto la = h.lease(fake_model("a", 80), alice);
  auto rb = h.acquire(fake_model("b", 50), alice);
  auto rc = h.acquire(fake_model("c", 50), bob);
  ram_effects fx;
  h.tier.holder_down(alice, fx);
  h.absorb(fx);
  CHECK(h.error_of(rb) == errc::shutting_down);
  CHECK(h.tier.leases_of(alice) == 0);
  // 'a' became a candidate, so bob's request was admitted.
  CHECK(h.tier.residency("c") == ram_residency::loading);
  CHECK(h.tier.residency("a") == ram_residency::absent);
  (void) la;
  (void) rc;
}

TEST_CASE("a shared lease keeps the model in RAM after the owner's lease ends") {
  ram_harness h{100};
  auto la = h.lease(fake_model("a", 60), alice);
  auto shared = h.tier.share(la, alice, /*borrower=*/99);
  REQUIRE(succeeded(shared));
  CHECK(std::get<ram_lease>(shared).model == "a");
  auto foreign = h.tier.share(la, bob, 99);
  REQUIRE_FALSE(succeeded(foreign));
  CHECK(std::get<failure>(foreign).code == errc::foreign_lease);
  h.release(la, alice);
  auto rb = h.acquire(fake_model("b", 60), bob, false);
  CHECK(h.error_of(rb) == errc::budget_exhausted);
  CHECK(h.tier.residency("a") == ram_residency::resident);
}

TEST_CASE("a trim drops exactly the unleased models it names and refuses leased ones") {
  ram_harness h{100};
  auto la = h.lease(fake_model("a", 30), alice);
  auto lb = h.lease(fake_model("b", 20), alice);
  h.release(lb, alice);
  ram_effects fx;
  auto leased = h.tier.trim("a", 0, fx);
  REQUIRE_FALSE(succeeded(leased));
  CHECK(std::get<failure>(leased).code == errc::model_leased);
  auto freed = h.tier.trim("b", 0, fx);
  h.absorb(fx);
  REQUIRE(succeeded(freed));
  CHECK(std::get<bytes_t>(freed) == 20);
  CHECK(h.tier.stats().used_bytes == 30);
  (void) la;
}

TEST_CASE("a RAM tier with a zero budget is rejected") {
  CHECK(ram_tier::validate({0}));
  CHECK_THROWS_AS(ram_tier({0}, make_lru_policy()), std::invalid_argument);
}

// -- acquiring several models together ---------------------------------------------------------------------

TEST_CASE("acquire_all grants every lease together, in the order asked, once every load is done") {
  group_harness h{100};
  auto a = fake_model("a", 30), b = fake_model("b", 30), c = fake_model("c", 30);
  h.lease(a, alice);  // 'a' is resident and leased already
  auto r = h.acquire_all({c, a, b}, bob);
  CHECK(h.loads_started == std::vector<model_id>{"a", "c", "b"});
  h.finish("c");
  CHECK_FALSE(h.group_answered(r));
  h.finish("b");
  REQUIRE(h.group_granted(r));
  const auto& leases = std::get<std::vector<ram_lease>>(h.test_answers::answers.at(r));
  REQUIRE(leases.size() == 3);
  CHECK(leases[0].model == "c");
  CHECK(leases[1].model == "a");
  CHECK(leases[2].model == "b");
  CHECK(h.tier.leases_of(bob) == 3);
}

TEST_CASE("acquire_all never holds some models while waiting for room for the others") {
  group_harness h{100};
  auto a = fake_model("a", 40), b = fake_model("b", 40), c = fake_model("c", 40);
  auto la = h.lease(a, alice);
  // bob wants b and c (80): there are only 60 free and 'a' is leased, so bob waits holding nothing.
  auto r = h.acquire_all({b, c}, bob);
  CHECK_FALSE(h.group_answered(r));
  CHECK(h.tier.leases_of(bob) == 0);
  CHECK(h.tier.residency("b") == ram_residency::absent);
  CHECK(h.tier.stats().waiting_now == 1);
  h.release(la, alice);
  h.finish("b");
  h.finish("c");
  CHECK(h.group_granted(r));
}

TEST_CASE("two jobs asking for the same two models in opposite orders do not deadlock") {
  group_harness h{80};
  auto a = fake_model("a", 40), b = fake_model("b", 40);
  auto r1 = h.acquire_all({a, b}, alice);
  auto r2 = h.acquire_all({b, a}, bob);  // joins both loads: no room needed
  h.finish("b");
  h.finish("a");
  CHECK(h.group_granted(r1));
  CHECK(h.group_granted(r2));
}

TEST_CASE("acquire_all never evicts one of its own models to make room for another") {
  group_harness h{100};
  auto a = fake_model("a", 50), b = fake_model("b", 40), c = fake_model("c", 30);
  auto la = h.lease(a, alice);
  h.release(la, alice);  // 'a' is an unleased candidate, the only one
  h.lease(c, alice);     // 20 bytes free
  auto r = h.acquire_all({a, b}, bob, false);
  CHECK(h.test_answers::error_of(r) == errc::budget_exhausted);
  CHECK(h.tier.residency("a") == ram_residency::resident);
  CHECK(h.tier.stats().evictions == 0);
}

TEST_CASE("acquire_all fails at once when the models together exceed the budget, or repeat a model") {
  group_harness h{100};
  auto before = fields_of(h.tier.stats());
  auto big = h.acquire_all({fake_model("a", 60), fake_model("b", 60)}, alice);
  CHECK(h.test_answers::error_of(big) == errc::model_too_large);
  CHECK(h.test_answers::text_of(big).find("'a', 'b'") != std::string::npos);
  auto twice = h.acquire_all({fake_model("a", 10), fake_model("a", 10)}, alice);
  CHECK(h.test_answers::error_of(twice) == errc::invalid_argument);
  CHECK(fields_of(h.tier.stats()) == before);
}

TEST_CASE("a failed load fails the whole group and gives back the leases it had been granted") {
  group_harness h{100};
  auto a = fake_model("a", 30), b = fake_model("b", 30);
  h.lease(a, alice);
  auto r = h.acquire_all({a, b}, bob);
  CHECK(h.tier.leases_of(bob) == 1);  // 'a' was granted at admission
  ram_effects fx;
  h.tier.load_finished("b", failure{errc::load_failed, "bad disk"}, 0, fx);
  h.test_answers::record(fx.group_replies);
  h.absorb(fx);
  CHECK(h.test_answers::error_of(r) == errc::load_failed);
  CHECK(h.tier.leases_of(bob) == 0);
}

TEST_CASE("a holder that goes away while its group waits for loads gives back what it was granted") {
  group_harness h{100};
  auto a = fake_model("a", 30), b = fake_model("b", 30);
  h.lease(a, alice);
  auto r = h.acquire_all({a, b}, bob);
  ram_effects fx;
  h.tier.holder_down(bob, fx);
  h.test_answers::record(fx.group_replies);
  h.absorb(fx);
  CHECK(h.test_answers::error_of(r) == errc::shutting_down);
  CHECK(h.tier.leases_of(bob) == 0);
  h.finish("b");  // the load still completes, as cache
  CHECK(h.tier.residency("b") == ram_residency::resident);
  CHECK(h.tier.stats().leases_active == 1);
}

// -- Note [Admission] and the defects of issue 7 ------------------------------------------------------------

TEST_CASE("acquire_all of sizes that would wrap 64 bits is refused as invalid and changes nothing") {
  group_harness h{100};
  auto a = fake_model("a", bytes_t{1} << 63), b = fake_model("b", (bytes_t{1} << 63) + 10);
  auto before = fields_of(h.tier.stats());
  auto r = h.acquire_all({a, b}, alice);
  REQUIRE(h.group_answered(r));
  CHECK(h.test_answers::error_of(r) == errc::invalid_argument);
  CHECK(fields_of(h.tier.stats()) == before);
  CHECK(h.loads_started.empty());
}

TEST_CASE("a refused acquire leaves the eviction order as it was") {
  group_harness h{100};
  auto held = fake_model("held", 20), a = fake_model("a", 30), b = fake_model("b", 30);
  auto x = fake_model("x", 60), c = fake_model("c", 30);
  h.lease(held, alice);
  h.release(h.lease(a, alice), alice);  // 'a' is the least recently used candidate
  h.release(h.lease(b, alice), alice);
  // a group of 'a' and 'x' cannot be admitted ('x' needs 60; 20 are free and only 'b' may go): refused...
  auto r = h.acquire_all({a, x}, bob, false);
  CHECK(h.test_answers::error_of(r) == errc::budget_exhausted);
  // ...and 'a' is still the first victim.
  h.lease(c, bob);
  CHECK(h.tier.residency("a") == ram_residency::absent);
  CHECK(h.tier.residency("b") == ram_residency::resident);
}

TEST_CASE("a RAM hit is granted at once while an acquire that needs room waits") {
  ram_harness h{100};
  auto a = fake_model("a", 60), b = fake_model("b", 60);
  h.lease(a, alice);
  auto waiting = h.acquire(b, bob);
  CHECK_FALSE(h.answered(waiting));
  auto hit = h.acquire(a, alice, /*may_wait=*/false);
  CHECK(h.granted(hit));
  CHECK_FALSE(h.answered(waiting));
}

TEST_CASE("shutdown answers queued acquires and those waiting for a load, and keeps granted leases") {
  ram_harness h{100};
  auto a = fake_model("a", 60), b = fake_model("b", 30), c = fake_model("c", 60);
  auto la = h.lease(a, alice);
  auto loading = h.acquire(b, bob);
  auto queued = h.acquire(c, bob);
  ram_effects fx;
  h.tier.shutdown(fx);
  h.absorb(fx);
  CHECK(h.error_of(loading) == errc::shutting_down);
  CHECK(h.error_of(queued) == errc::shutting_down);
  h.finish_load("b");  // the load in flight ends later: nobody is left to answer
  CHECK(h.tier.stats().leases_active == 1);
  CHECK_FALSE(h.release(la, alice));
}

TEST_CASE("evicted host copies are handed over to be freed off the actor thread") {
  ram_harness h{100};
  auto a = fake_model("a", 60), b = fake_model("b", 60);
  h.release(h.lease(a, alice), alice);
  (void)h.tier.take_released();
  h.lease(b, alice);
  auto released = h.tier.take_released();
  REQUIRE(released.size() == 1);
  CHECK(released.front()->id == "a");
}

TEST_CASE("a prefetch never waits and never evicts a model with a known next use") {
  group_harness h{100};
  auto a = fake_model("a", 40), b = fake_model("b", 40), c = fake_model("c", 40);
  REQUIRE_FALSE(h.release(h.lease(a, alice), alice));
  REQUIRE_FALSE(h.release(h.lease(b, alice), alice));
  h.tier.set_next_uses({"a", "b"});
  auto prefetch = [&](const model_descriptor& d) {
    auto id = h.next++;
    h.descriptors[d.id] = d;
    ram_effects fx;
    h.tier.prefetch(id, {std::make_shared<const model_descriptor>(d)}, alice, fx);
    h.test_answers::record(fx.group_replies);
    h.absorb(fx);
    return id;
  };
  auto r = prefetch(c);  // room only by evicting 'a' or 'b', both needed soon: refused at once
  REQUIRE(h.group_answered(r));
  CHECK(std::get<failure>(h.test_answers::answers.at(r)).code == errc::budget_exhausted);
  CHECK(h.tier.residency("a") == ram_residency::resident);
  CHECK(h.tier.residency("b") == ram_residency::resident);
  h.tier.set_next_uses({"b", "c"});  // 'a' has no known next use any more
  auto r2 = prefetch(c);
  CHECK(h.tier.residency("a") == ram_residency::absent);
  h.finish("c");
  CHECK(h.group_granted(r2));
}

TEST_CASE("a prefetch does not evict a model needed later than the one it brings either") {
  group_harness h{100};
  auto a = fake_model("a", 40), b = fake_model("b", 40), c = fake_model("c", 40);
  REQUIRE_FALSE(h.release(h.lease(a, alice), alice));
  REQUIRE_FALSE(h.release(h.lease(b, alice), alice));
  h.tier.set_next_uses({"b", "c", "a"});  // 'c' is needed before 'a', after 'b'
  auto id = h.next++;
  h.descriptors["c"] = c;
  ram_effects fx;
  h.tier.prefetch(id, {std::make_shared<const model_descriptor>(c)}, alice, fx);
  h.test_answers::record(fx.group_replies);
  h.absorb(fx);
  REQUIRE(h.group_answered(id));
  CHECK_FALSE(h.group_granted(id));
  CHECK(h.tier.residency("a") == ram_residency::resident);
  CHECK(h.tier.residency("b") == ram_residency::resident);
}

// -- Note [Keep-alive] ---------------------------------------------------------------------------------------

TEST_CASE("a model unused for its keep-alive is dropped, a held one never is, and zero keeps it until room is needed") {
  auto now = std::chrono::steady_clock::time_point{} + std::chrono::hours(1);
  ram_tier_options o{100, true, std::chrono::seconds(10), [&] { return now; }};
  ram_tier tier{o, make_lru_policy()};
  auto add = [&](model_descriptor d, request_id r) {
    ram_effects fx;
    tier.acquire(r, std::make_shared<const model_descriptor>(d), alice, true, fx);
    tier.load_finished(d.id, d.loader(d), 1, fx);
    REQUIRE(fx.replies.size() == 1);
    return std::get<ram_lease>(fx.replies.front().result).lease;
  };
  auto idle = fake_model("idle", 10);
  auto held = fake_model("held", 10);
  auto forever = fake_model("forever", 10);
  forever.keep_alive = std::chrono::nanoseconds::zero();  // its own: kept until room is needed
  auto quick = fake_model("quick", 10);
  quick.keep_alive = std::chrono::seconds(1);
  ram_effects fx;
  REQUIRE_FALSE(tier.release(add(idle, 1), alice, fx));
  add(held, 2);
  REQUIRE_FALSE(tier.release(add(forever, 3), alice, fx));
  REQUIRE_FALSE(tier.release(add(quick, 4), alice, fx));
  now += std::chrono::seconds(2);
  CHECK(tier.drop_idle(fx) == 1);  // 'quick' only
  CHECK(tier.residency("quick") == ram_residency::absent);
  now += std::chrono::seconds(7);
  CHECK(tier.drop_idle(fx) == 0);  // 'idle' has been unused 9 s
  now += std::chrono::seconds(1);
  CHECK(tier.drop_idle(fx) == 1);
  CHECK(tier.residency("idle") == ram_residency::absent);
  now += std::chrono::hours(100);
  CHECK(tier.drop_idle(fx) == 0);
  CHECK(tier.residency("held") == ram_residency::resident);
  CHECK(tier.residency("forever") == ram_residency::resident);
  CHECK(tier.stats().idle_drops == 2);
  tier.check_invariants();
}

