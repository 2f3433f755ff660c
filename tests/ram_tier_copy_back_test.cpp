// The RAM tier's copy-back mode without CAF (Note [Copy back instead of a kept RAM copy], ram_tier.hpp):
// hand-overs to devices, copies back, their races with retirement and shutdown, and devices that go away.

#include "runtime/core/tiers/ram_tier.hpp"

#include "support/catch.hpp"
#include "support/fake_models.hpp"
#include "support/ram_harness.hpp"

#include <ATen/ATen.h>

using namespace mcache;
using namespace mcache::test;

TEST_CASE("with no kept RAM copy, a retired model is never handed over to a device") {
  ram_harness h{100, /*keep_ram_copy=*/false};
  auto a = fake_model("a", 40);
  auto l = h.lease(a, alice);
  h.tier.device_copy("a", 0, true);
  h.retire("a");
  h.tier.device_copy("a", 0, true);  // a report that crossed the retirement
  REQUIRE_FALSE(h.release(l, alice));
  CHECK(h.tier.residency("a") == ram_residency::absent);
  CHECK(h.hand_overs.empty());
}

TEST_CASE("without a kept RAM copy, a model evicted while a device holds it whole comes back from that device, not the disk") {
  ram_harness h{100, /*keep_ram_copy=*/false};
  auto a = fake_model("a", 60), b = fake_model("b", 60);
  h.resident_on_device(a);
  auto lb = h.lease(b, bob);  // evicts 'a': its only copy is now on device 0
  CHECK(h.hand_overs == std::vector<model_id>{"a"});
  REQUIRE_FALSE(h.release(lb, bob));
  auto ra = h.acquire(a, alice);  // evicts 'b' (on no device: simply dropped) and copies 'a' back
  CHECK(h.fetches_started == std::vector<model_id>{"a"});
  CHECK(h.loads_started == std::vector<model_id>{"a", "b"});  // no second disk load of 'a'
  CHECK(h.hand_overs == std::vector<model_id>{"a"});
  h.finish_copy_back("a");
  REQUIRE(h.granted(ra));
  // The model's non-tensor part stayed in RAM and is put back together with the device's tensors.
  CHECK(std::get<ram_lease>(h.answers.at(ra)).payload->opaque_bytes == 60);
  auto s = h.tier.stats();
  CHECK(s.hand_overs == 1);
  CHECK(s.device_fetches == 1);
  CHECK(s.loads == 2);
  CHECK(s.bytes_from_devices == 60);
}

TEST_CASE("without a kept RAM copy, eviction takes a model a device holds whole before an older one only the disk has") {
  for (bool keep_ram_copy : {false, true}) {
    ram_harness h{100, keep_ram_copy};
    auto a = fake_model("a", 30), b = fake_model("b", 30), c = fake_model("c", 60);
    REQUIRE_FALSE(h.release(h.lease(a, alice), alice));  // least recently used, on no device
    h.resident_on_device(b);
    REQUIRE_FALSE(h.release(h.lease(c, bob), bob));  // 60 bytes: one of the two must go
    INFO("keep_ram_copy " << keep_ram_copy);
    if (keep_ram_copy) {  // no hand-over: losing either costs a disk read, so LRU decides
      CHECK(h.tier.residency("a") == ram_residency::absent);
      CHECK(h.tier.residency("b") == ram_residency::resident);
      CHECK(h.hand_overs.empty());
    } else {  // 'b' comes back from device 0 at the link's speed; 'a' would come from the disk
      CHECK(h.tier.residency("a") == ram_residency::resident);
      CHECK(h.tier.residency("b") == ram_residency::absent);
      CHECK(h.hand_overs == std::vector<model_id>{"b"});
    }
  }
}

TEST_CASE("a model retired while it is copied back from a device lands for the acquire waiting, then goes") {
  ram_harness h{100, /*keep_ram_copy=*/false};
  auto a = fake_model("a", 60), b = fake_model("b", 60);
  h.resident_on_device(a);
  REQUIRE_FALSE(h.release(h.lease(b, bob), bob));  // 'a' handed over to device 0
  auto ra = h.acquire(a, alice);                    // copies 'a' back
  REQUIRE(h.fetches_started == std::vector<model_id>{"a"});
  h.retire("a");
  h.finish_copy_back("a");  // must still find what it needs to put the model back together
  REQUIRE(h.granted(ra));
  REQUIRE_FALSE(h.release(std::get<ram_lease>(h.answers.at(ra)).lease, alice));
  CHECK(h.tier.residency("a") == ram_residency::absent);
  CHECK(h.tier.stats().retired_drops == 1);
}

TEST_CASE("a copy back that fails while an acquire waits for it falls back to the disk") {
  ram_harness h{100, false};
  auto a = fake_model("a", 60), b = fake_model("b", 60);
  auto ra = h.acquire_handed_over(a, b);
  REQUIRE(h.fetches_started.size() == 1);
  h.finish_copy_back("a", /*ok=*/false);
  h.expect_served_from_disk(ra, a, b);
}

TEST_CASE("a device dropping the only copy gets room from free RAM alone, and the copy back is a load acquires can join") {
  ram_harness h{100, false};
  auto a = fake_model("a", 60), b = fake_model("b", 60);
  h.resident_on_device(a);
  auto lb = h.lease(b, bob);
  CHECK_FALSE(h.tier.reserve_return("a", 0));  // 40 bytes free: refused, and 'b' is not evicted for it
  CHECK(h.tier.residency("b") == ram_residency::resident);
  CHECK(h.tier.stats().copy_backs_refused == 1);
  // Refused means dropped: the disk has the only copy now.
  REQUIRE_FALSE(h.release(lb, bob));
  h.acquire(a, alice);
  CHECK(h.fetches_started.empty());
  CHECK(h.loads_started.back() == "a");
}

TEST_CASE("a copy back granted from free room reserves its bytes until it lands, then is ordinary cache") {
  ram_harness h{100, false};
  auto a = fake_model("a", 60), b = fake_model("b", 60);
  h.handed_over_with_free_room(a, b);
  CHECK_FALSE(h.tier.reserve_return("a", 1));  // another device's word is not this one's
  REQUIRE(h.tier.reserve_return("a", 0));
  CHECK(h.tier.residency("a") == ram_residency::loading);
  CHECK(h.tier.stats().loading_bytes == 60);
  auto ra = h.acquire(a, alice);  // joins the copy back
  CHECK_FALSE(h.answered(ra));
  h.finish_copy_back("a");
  CHECK(h.granted(ra));
  auto s = h.tier.stats();
  CHECK(s.copy_backs == 1);
  CHECK(s.loads == 2);
  CHECK(s.bytes_from_devices == 60);
}

TEST_CASE("a copy back never goes ahead of a request waiting for room") {
  ram_harness h{100, false};
  auto a = fake_model("a", 30), b = fake_model("b", 60), c = fake_model("c", 50);
  h.resident_on_device(a);
  auto lb = h.lease(b, bob);
  auto lc = h.acquire(c, alice);  // waits: 'a' alone (30) is not enough beside leased 'b'
  CHECK_FALSE(h.answered(lc));
  CHECK(h.tier.residency("a") == ram_residency::resident);
  ram_effects fx;
  REQUIRE(succeeded(h.tier.trim("a", 0, fx)));  // handed over to device 0; 70 free is still too little
  h.absorb(fx);
  CHECK_FALSE(h.tier.reserve_return("a", 0));  // 40 free would fit its 30, but 'c' waits for room
  REQUIRE_FALSE(h.release(lb, bob));
  CHECK(h.tier.residency("c") == ram_residency::loading);
}

TEST_CASE("a device that no longer holds a model whole takes back the hand over, and a kept RAM copy hands nothing over") {
  SECTION("the device dropped it") {
    ram_harness h{100, false};
    auto a = fake_model("a", 60), b = fake_model("b", 60);
    h.resident_on_device(a);
    REQUIRE_FALSE(h.release(h.lease(b, bob), bob));
    h.tier.device_copy("a", 0, false);
    h.acquire(a, alice);
    CHECK(h.fetches_started.empty());
    CHECK(h.loads_started.back() == "a");
  }
  SECTION("RAM copies are kept") {
    ram_harness h{100, true};
    auto a = fake_model("a", 60), b = fake_model("b", 60);
    h.resident_on_device(a);
    REQUIRE_FALSE(h.release(h.lease(b, bob), bob));
    CHECK(h.hand_overs.empty());
    CHECK_FALSE(h.tier.reserve_return("a", 0));
    h.acquire(a, alice);
    CHECK(h.fetches_started.empty());
    CHECK(h.tier.stats().hand_overs == 0);
  }
}

TEST_CASE("acquires waiting for a copy back from a device whose actor went away read the disk, and a late copy back is dropped") {
  ram_harness h{100, false};
  auto a = fake_model("a", 60), b = fake_model("b", 60);
  auto ra = h.acquire_handed_over(a, b);
  REQUIRE(h.fetches_started == std::vector<model_id>{"a"});
  h.device_gone(0);
  CHECK_FALSE(h.answered(ra));
  CHECK(h.loads_started == std::vector<model_id>{"a", "b", "a"});
  h.finish_copy_back("a");  // the device's copy thread finished after all: dropped, the disk load goes on
  CHECK_FALSE(h.answered(ra));
  CHECK(h.tier.residency("a") == ram_residency::loading);
  h.finish_load("a");
  REQUIRE(h.granted(ra));
  REQUIRE_FALSE(h.release(std::get<ram_lease>(h.answers.at(ra)).lease, alice));
  CHECK(h.tier.stats().used_bytes == 60);
  CHECK(h.tier.stats().load_failures == 0);
}

TEST_CASE("a model handed over to a device whose actor went away comes from the disk, and that device gets no more") {
  ram_harness h{100, false};
  auto a = fake_model("a", 60), b = fake_model("b", 60);
  h.resident_on_device(a);
  REQUIRE_FALSE(h.release(h.lease(b, bob), bob));  // 'a' handed over to device 0
  h.device_gone(0);
  h.tier.device_copy("a", 0, true);  // whatever it said before it went is forgotten
  auto la = h.lease(a, alice);
  CHECK(h.fetches_started.empty());
  CHECK(h.loads_started == std::vector<model_id>{"a", "b", "a"});
  REQUIRE_FALSE(h.release(la, alice));
  REQUIRE_FALSE(h.release(h.lease(b, bob), bob));  // evicts 'a' again: dropped, not handed to device 0
  CHECK(h.hand_overs == std::vector<model_id>{"a"});
  CHECK(h.tier.residency("a") == ram_residency::absent);
}

TEST_CASE("a copy back granted to a device whose actor then went away gives its reserved room back") {
  ram_harness h{100, false};
  auto a = fake_model("a", 60), b = fake_model("b", 60);
  h.handed_over_with_free_room(a, b);
  REQUIRE(h.tier.reserve_return("a", 0));
  CHECK(h.tier.stats().used_bytes == 60);
  h.device_gone(0);  // its copy thread was told "no" as the actor ended: nothing will come
  CHECK(h.tier.residency("a") == ram_residency::absent);
  CHECK(h.tier.stats().used_bytes == 0);
  CHECK(h.loads_started == std::vector<model_id>{"a", "b"});  // nobody waited: nothing read
}

TEST_CASE("a handed-over model's non-tensor payload stays in RAM beyond the budget, and the stats say how much") {
  ram_harness h{100, false};
  auto a = fake_model("a", 60), b = fake_model("b", 60);
  a.loader = [](const model_descriptor& self) {
    auto m = std::make_shared<host_model>();
    m->id = self.id;
    m->opaque = std::make_shared<std::vector<char>>(self.bytes);  // a tokenizer, say: real memory
    m->opaque_bytes = self.bytes;
    return std::shared_ptr<const host_model>(std::move(m));
  };
  h.resident_on_device(a);
  CHECK(h.tier.stats().skeleton_bytes == 0);
  auto lb = h.lease(b, bob);  // evicts 'a': handed over, its payload kept
  REQUIRE(h.hand_overs == std::vector<model_id>{"a"});
  CHECK(h.tier.stats().skeleton_bytes == 60);
  CHECK(h.tier.stats().used_bytes == 60);  // 'b' alone: the budget counts models in RAM
  REQUIRE_FALSE(h.release(lb, bob));
  auto ra = h.acquire(a, alice);  // copied back: the reservation counts the payload again
  REQUIRE(h.fetches_started == std::vector<model_id>{"a"});
  CHECK(h.tier.stats().skeleton_bytes == 0);
  h.finish_copy_back("a");
  REQUIRE(h.granted(ra));
  CHECK(std::get<ram_lease>(h.answers.at(ra)).payload->opaque != nullptr);
}

TEST_CASE("a copy back of another size than the catalog's is taken as a failed one: waiters read the disk") {
  ram_harness h{100, false};
  auto a = fake_model("a", 60), b = fake_model("b", 60);
  auto ra = h.acquire_handed_over(a, b);
  REQUIRE(h.fetches_started == std::vector<model_id>{"a"});
  auto wrong = std::make_shared<host_model>();
  wrong->tensors.push_back({"extra", at::zeros({4})});  // 16 bytes the model does not have
  ram_effects fx;
  h.tier.load_finished("a", std::shared_ptr<const host_model>(wrong), 1000, fx, load_source::device, 0);
  h.absorb(fx);
  h.expect_served_from_disk(ra, a, b);
}

TEST_CASE("a device's only copy comes back to RAM when the request at the head of the queue needs it, and is not read from disk again") {
  group_harness h{100, /*keep_ram_copy=*/false};
  auto a = fake_model("a", 20), b = fake_model("b", 50), c = fake_model("c", 40), d = fake_model("d", 10);
  h.resident_on_device(a);
  ram_effects fx;
  REQUIRE(succeeded(h.tier.trim("a", 0, fx)));  // device 0 has the only copy of 'a'
  h.absorb(fx);
  REQUIRE(h.hand_overs == std::vector<model_id>{"a"});
  auto lb = h.lease(b, bob);                // 50 free
  auto r = h.acquire_all({a, c}, carol);    // 60: waits at the head of the queue
  REQUIRE_FALSE(h.group_answered(r));
  CHECK_FALSE(h.tier.reserve_return("d", 0));  // (not handed over: stale)
  REQUIRE(h.tier.reserve_return("a", 0));   // the head needs 'a': its copy comes back rather than go
  CHECK(h.tier.stats().loading_bytes == 20);
  h.finish_copy_back("a");
  CHECK(h.tier.residency("a") == ram_residency::resident);
  REQUIRE_FALSE(h.release(lb, bob));        // room for 'c' now
  h.finish("c");
  REQUIRE(h.group_granted(r));
  CHECK(h.loads_started == std::vector<model_id>{"a", "b", "c"});  // 'a' from disk once only
  auto s = h.tier.stats();
  CHECK(s.copy_backs == 1);
  CHECK(s.copy_backs_refused == 0);
}

TEST_CASE("a device's only copy is still dropped when the head of the queue does not need it") {
  group_harness h{100, /*keep_ram_copy=*/false};
  auto a = fake_model("a", 20), b = fake_model("b", 50), c = fake_model("c", 60);
  h.resident_on_device(a);
  ram_effects fx;
  REQUIRE(succeeded(h.tier.trim("a", 0, fx)));
  h.absorb(fx);
  auto lb = h.lease(b, bob);
  auto r = h.acquire_all({c}, carol);  // 60 > 50 free: waits, and does not need 'a'
  REQUIRE_FALSE(h.group_answered(r));
  CHECK_FALSE(h.tier.reserve_return("a", 0));  // FIFO: the room is the head's to have
  CHECK(h.tier.stats().copy_backs_refused == 1);
  REQUIRE_FALSE(h.release(lb, bob));
}
