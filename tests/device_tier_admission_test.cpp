// The device tier's admission beyond a pin alone, without CAF: Note [A pin may trim its own model]
// (residency_plan.hpp) and Note [A stage's pins leave room for the ones after] (actors/scheduler_actor.cpp):
// the room a stage's pin reserves for the pins after it, the later models it keeps, and who goes first.

#include "runtime/core/tiers/device_tier.hpp"

#include "support/device_harness.hpp"

using namespace mcache;
using namespace mcache::test;

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
